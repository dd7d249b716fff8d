"""Images and their analyses: registration, status, and the faces each analysis stores."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import structlog
from sqlalchemy import (
    ColumnElement,
    Row,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from image_grouping.models.face_identity import ReanalysisPlan, StoredFace, distinct_boxes, plan_reanalysis
from image_grouping.models.faces import Box, DetectedFace, ImageAnalysis
from image_grouping.models.records import ImageRecord, ImageResult
from image_grouping.storage.repositories.common import chunks, covers_cleared, now, path_key
from image_grouping.storage.schema import (
    AUTOMATIC,
    DEFAULT_LIBRARY,
    cannot_links,
    face_edits,
    face_tombstones,
    faces,
    images,
)

log = structlog.get_logger(__name__)


def _image(row: Row[Any]) -> ImageRecord:
    return ImageRecord(
        id=row.id,
        source_id=row.source_id,
        source_path=row.source_path,
        status=row.status,
        content_hash=row.content_hash,
        size_bytes=row.size_bytes,
        width=row.width,
        height=row.height,
        model_pack=row.model_pack,
        error=row.error,
        processed_at=row.processed_at,
        library_id=row.library_id,
    )


def _face_values(face: DetectedFace, index: int, thumbnail_path: str | None) -> dict[str, Any]:
    x1, y1, x2, y2 = (float(value) for value in face.box)
    return {
        "face_index": index,
        "box_x1": x1,
        "box_y1": y1,
        "box_x2": x2,
        "box_y2": y2,
        "landmarks": np.asarray(face.landmarks, "<f4").reshape(5, 2).tobytes(),
        "det_score": float(face.quality.det_score),
        "size_px": float(face.quality.size_px),
        "sharpness": float(face.quality.sharpness),
        "yaw": float(face.quality.yaw),
        "pose": face.quality.pose,
        "thumbnail_path": thumbnail_path,
        "embedding": np.asarray(face.embedding, "<f4").ravel().tobytes(),
        "added_by_hand": bool(face.added_by_hand),
    }


def _analysed_by_other_pack(model_pack: str, from_pack: str | None) -> ColumnElement[bool]:
    other = images.c.model_pack != model_pack
    if from_pack is not None:
        other = and_(other, images.c.model_pack == from_pack)
    return and_(images.c.status == "done", other)


class ImageRepository:
    """The images of one library; `pending` and the repack's listings see every library (their records
    say each image's)."""

    def __init__(self, connection: AsyncConnection, library_id: str = DEFAULT_LIBRARY) -> None:
        self._connection = connection
        self._library = library_id

    async def get(self, image_id: int) -> ImageRecord | None:
        query = select(images).where(images.c.id == image_id, images.c.library_id == self._library)
        row = (await self._connection.execute(query)).first()
        return _image(row) if row else None

    async def in_other_library(self, image_id: int) -> bool:
        """Whether the image exists, in another library than this one."""
        query = select(images.c.id).where(images.c.id == image_id, images.c.library_id != self._library)
        return (await self._connection.execute(query)).first() is not None

    async def libraries(self) -> list[str]:
        """Every library that has an image."""
        query = select(images.c.library_id).distinct().order_by(images.c.library_id)
        return [row.library_id for row in await self._connection.execute(query)]

    async def erase_library(self) -> tuple[list[int], list[str]]:
        """Delete every image of this library with all that goes with them (`delete`): their ids and the
        thumbnail files of their faces, to remove once committed."""
        ids = [
            row.id
            for row in await self._connection.execute(
                select(images.c.id).where(images.c.library_id == self._library).order_by(images.c.id)
            )
        ]
        thumbnails = [
            row.thumbnail_path
            for row in await self._connection.execute(
                select(faces.c.thumbnail_path).where(
                    faces.c.library_id == self._library, faces.c.thumbnail_path.is_not(None)
                )
            )
        ]
        await self.delete(ids)
        # Faces are their image's; any left (none should be) go too, so no embedding outlives the library.
        await self._connection.execute(delete(faces).where(faces.c.library_id == self._library))
        return ids, thumbnails

    async def get_or_create(self, source_id: str | None, source_path: str) -> ImageRecord:
        """The image registered under this path, registering it (status pending) if new.

        Two workers registering the same path at once both get the one row: the loser of the race hits
        the unique key inside a savepoint and reads the winner's row.
        """
        key = path_key(source_path, self._library)
        found = (await self._by_keys([key])).get(key)
        if found is not None:
            return found
        try:
            async with self._connection.begin_nested():
                inserted = await self._connection.execute(
                    insert(images).values(
                        source_id=source_id,
                        source_path=source_path,
                        path_key=key,
                        library_id=self._library,
                        status="pending",
                        created_at=now(),
                    )
                )
        except IntegrityError:
            log.debug("image registered concurrently", source_path=source_path)
            found = (await self._by_keys([key])).get(key)
            if found is None:
                raise
            return found
        return ImageRecord(
            id=int(inserted.inserted_primary_key[0]),
            source_id=source_id,
            source_path=source_path,
            status="pending",
            content_hash=None,
            size_bytes=None,
            width=None,
            height=None,
            model_pack=None,
            error=None,
            processed_at=None,
            library_id=self._library,
        )

    async def get_or_create_many(self, registrations: Sequence[tuple[str | None, str]]) -> list[ImageRecord]:
        """`get_or_create` of several (source id, path) pairs, in their order, with a few statements in
        all instead of a few each; a path given twice gets its one row twice."""
        keys = [path_key(source_path, self._library) for _, source_path in registrations]
        found = await self._by_keys(keys)
        new = {key: each for key, each in zip(keys, registrations, strict=True) if key not in found}
        if new:
            rows = [
                {
                    "source_id": source_id,
                    "source_path": source_path,
                    "path_key": key,
                    "library_id": self._library,
                    "status": "pending",
                    "created_at": now(),
                }
                for key, (source_id, source_path) in new.items()
            ]
            try:
                async with self._connection.begin_nested():
                    await self._connection.execute(insert(images), rows)
            except IntegrityError:  # another worker registered one of them meanwhile: one at a time
                log.debug("images registered concurrently", count=len(new))
                return [await self.get_or_create(source_id, path) for source_id, path in registrations]
            found |= await self._by_keys(list(new))
        return [found[key] for key in keys]

    async def _by_keys(self, keys: Sequence[str]) -> dict[str, ImageRecord]:
        records: dict[str, ImageRecord] = {}
        for chunk in chunks(sorted(set(keys))):
            for row in await self._connection.execute(select(images).where(images.c.path_key.in_(chunk))):
                records[row.path_key] = _image(row)
        return records

    async def find_processed(self, content_hash: str, model_pack: str) -> ImageRecord | None:
        """An image of this library with these bytes already analysed by this pack (or refused as bad
        input); another library's analysis is never reused."""
        query = (
            select(images)
            .where(
                images.c.library_id == self._library,
                images.c.content_hash == content_hash,
                images.c.model_pack == model_pack,
                images.c.status.in_(["done", "failed"]),
            )
            .order_by(images.c.id)
            .limit(1)
        )
        row = (await self._connection.execute(query)).first()
        return _image(row) if row else None

    async def pending(self, limit: int) -> list[ImageRecord]:
        """Registered images of every library without a result yet, oldest first (MODE=oneshot works
        through these)."""
        query = select(images).where(images.c.status == "pending").order_by(images.c.id).limit(limit)
        return [_image(row) for row in await self._connection.execute(query)]

    async def analysed_by_other_pack(
        self, model_pack: str, from_pack: str | None, after_id: int, limit: int
    ) -> list[ImageRecord]:
        """Images of every library whose result is another pack's (or `from_pack`'s), id above
        `after_id`, oldest first.

        An image's row names the pack of its latest result, so once re-analysed it drops out of this list.
        """
        query = select(images).where(_analysed_by_other_pack(model_pack, from_pack), images.c.id > after_id)
        rows = await self._connection.execute(query.order_by(images.c.id).limit(limit))
        return [_image(row) for row in rows]

    async def count_analysed_by_other_pack(self, model_pack: str, from_pack: str | None) -> int:
        query = select(func.count()).select_from(images).where(_analysed_by_other_pack(model_pack, from_pack))
        return int((await self._connection.execute(query)).scalar_one())

    async def mark_failed(
        self, image_id: int, reason: str, content_hash: str | None = None, model_pack: str | None = None
    ) -> None:
        """Record a permanent failure; with the hash and pack, a re-run skips the same bytes."""
        values: dict[str, Any] = {"status": "failed", "error": reason[:1000], "processed_at": now()}
        if content_hash is not None:
            values.update(content_hash=content_hash, model_pack=model_pack)
        await self._connection.execute(update(images).where(images.c.id == image_id).values(**values))

    async def save_analysis(
        self,
        image_id: int,
        content_hash: str,
        size_bytes: int,
        analysis: ImageAnalysis,
        thumbnail_paths: Sequence[str | None],
    ) -> list[int]:
        """`save_analyses` of one image: its face ids in the order of `analysis.faces`."""
        result = ImageResult(image_id, content_hash, size_bytes, analysis, thumbnail_paths)
        (face_ids,) = await self.save_analyses([result])
        return face_ids

    async def save_analyses(self, results: Sequence[ImageResult]) -> list[list[int]]:
        """Store the images' results, replacing what earlier runs stored for the same pack, with a few
        statements for the whole batch rather than a few per image.

        Idempotent: re-detected faces (box IoU >= 0.5) keep their id and person, so a redelivered
        message changes nothing and manual edits survive; faces no longer found are removed, new ones
        added. The image rows are updated first, in id order: that locks them, so a second worker writing
        the same images waits (taking its locks in the same order, so it cannot deadlock) and then sees
        these faces; the unique (image, pack, index) key backs that up. An image given twice keeps its
        last result. Returns each result's face ids, in the order of its faces.
        """
        latest = {result.image_id: result for result in results}
        if any(len(each.thumbnail_paths) != len(each.analysis.faces) for each in latest.values()):
            raise ValueError("one thumbnail path per face is needed")
        image_ids = sorted(latest)
        if not image_ids:
            return []
        connection = self._connection
        # Update: the image rows first, in id order, which locks them (see above).
        # bind names must differ from column names in an UPDATE's SET clause
        await connection.execute(
            update(images)
            .where(images.c.id == bindparam("image_id"))
            .values(
                status="done",
                content_hash=bindparam("new_content_hash"),
                size_bytes=bindparam("new_size_bytes"),
                width=bindparam("new_width"),
                height=bindparam("new_height"),
                model_pack=bindparam("new_model_pack"),
                error=None,
                processed_at=now(),
            ),
            [
                {
                    "image_id": image_id,
                    "new_content_hash": latest[image_id].content_hash,
                    "new_size_bytes": latest[image_id].size_bytes,
                    "new_width": latest[image_id].analysis.width,
                    "new_height": latest[image_id].analysis.height,
                    "new_model_pack": latest[image_id].analysis.model_pack,
                }
                for image_id in image_ids
            ],
        )
        stored = await self._current_faces(image_ids)
        if missing := [image_id for image_id in image_ids if image_id not in stored]:
            raise LookupError(f"no image with id {missing[0]}")
        # Plan: which new face is which stored face (the domain's rule), image by image.
        plans = {
            image_id: plan_reanalysis(stored[image_id], [face.box for face in result.analysis.faces])
            for image_id, result in latest.items()
        }
        # Apply: a few statements for the whole batch.
        await self._apply(latest, stored, plans)
        saved = {
            image_id: [face.id for face in faces_now]
            for image_id, faces_now in (await self._current_faces(image_ids)).items()
        }
        log.debug(
            "analyses saved",
            images=len(image_ids),
            faces=sum(map(len, saved.values())),
            removed=sum(len(plan.removed) for plan in plans.values()),
        )
        return [saved[result.image_id] for result in results]

    async def _apply(
        self,
        results: Mapping[int, ImageResult],
        stored: Mapping[int, list[StoredFace]],
        plans: Mapping[int, ReanalysisPlan],
    ) -> None:
        """Write the plans: faces found again updated in place (id and person kept), new faces inserted,
        faces no longer found deleted (and no person's cover any more)."""
        connection, moment = self._connection, now()
        old_ids = [face.id for image_id in plans for face in stored[image_id]]
        gone_ids = [face_id for plan in plans.values() for face_id in plan.removed]
        updates: list[dict[str, Any]] = []
        inserts: list[dict[str, Any]] = []
        for image_id, plan in plans.items():
            result = results[image_id]
            for index, (face, thumbnail) in enumerate(
                zip(result.analysis.faces, result.thumbnail_paths, strict=True)
            ):
                values = _face_values(face, index, thumbnail) | {"updated_at": moment}
                if index in plan.kept:
                    # bind names must differ from column names in an UPDATE's SET clause
                    updates.append({"face_id": plan.kept[index]} | {f"new_{k}": v for k, v in values.items()})
                else:
                    inserts.append(
                        values
                        | {
                            "image_id": image_id,
                            "model_pack": result.analysis.model_pack,
                            "person_id": None,
                            "assigned_by": AUTOMATIC,
                            "created_at": moment,
                            "library_id": self._library,
                        }
                    )
        # Old indexes move out of the way first, so re-numbering never collides with the unique key.
        for chunk in chunks(old_ids):
            await connection.execute(
                update(faces).where(faces.c.id.in_(chunk)).values(face_index=-1 - faces.c.face_index)
            )
        for chunk in chunks(gone_ids):
            await connection.execute(covers_cleared(chunk))
            await connection.execute(delete(faces).where(faces.c.id.in_(chunk)))
        if updates:
            columns = {name[4:]: bindparam(name) for name in updates[0] if name != "face_id"}
            await connection.execute(
                update(faces).where(faces.c.id == bindparam("face_id")).values(columns), updates
            )
        if inserts:
            await connection.execute(insert(faces), inserts)

    async def _current_faces(self, image_ids: Sequence[int]) -> dict[int, list[StoredFace]]:
        """The faces of each image from its current pack, in face order; every image that exists has an
        entry, an empty one if it has no faces."""
        current = and_(faces.c.image_id == images.c.id, faces.c.model_pack == images.c.model_pack)
        query = (
            select(
                images.c.id,
                faces.c.id,
                faces.c.added_by_hand,
                faces.c.box_x1,
                faces.c.box_y1,
                faces.c.box_x2,
                faces.c.box_y2,
            )
            .select_from(images.outerjoin(faces, current))
            .order_by(images.c.id, faces.c.face_index)
        )
        found: dict[int, list[StoredFace]] = {}
        for chunk in chunks(image_ids):
            for image_id, face_id, by_hand, *box in await self._connection.execute(
                query.where(images.c.id.in_(chunk))
            ):
                stored = found.setdefault(image_id, [])
                if face_id is not None:  # the outer join's row of an image without faces
                    stored.append(StoredFace(face_id, tuple(box), bool(by_hand)))
        return found

    async def hand_boxes(self, source_paths: Sequence[str]) -> dict[str, list[Box]]:
        """The boxes of the faces added by hand to the images registered under these paths, of every
        model pack, one per place (a repack analyses the old pack's with the new one); paths whose image
        has none are left out."""
        keys = {path_key(path, self._library): path for path in source_paths}
        by_key: dict[str, list[Box]] = {}
        query = (
            select(images.c.path_key, faces.c.box_x1, faces.c.box_y1, faces.c.box_x2, faces.c.box_y2)
            .select_from(images.join(faces, faces.c.image_id == images.c.id))
            .where(faces.c.added_by_hand == true())
            # the photo's current pack first: its boxes are the ones kept where two packs' overlap
            .order_by(
                images.c.path_key, case((faces.c.model_pack == images.c.model_pack, 0), else_=1), faces.c.id
            )
        )
        for chunk in chunks(sorted(keys)):
            for key, *box in await self._connection.execute(query.where(images.c.path_key.in_(chunk))):
                by_key.setdefault(key, []).append(tuple(box))  # type: ignore[arg-type]
        return {keys[key]: distinct_boxes(boxes) for key, boxes in by_key.items()}

    # --- deletions (image_grouping.handlers.people) ---

    async def find(self, source_id: str | None, source_path: str | None) -> list[ImageRecord]:
        """The library's images registered under the uploader's id or under the path (either may be None)."""
        conditions = []
        if source_id is not None:
            conditions.append(images.c.source_id == source_id)
        if source_path is not None:
            conditions.append(images.c.path_key == path_key(source_path, self._library))
        if not conditions:
            return []
        query = (
            select(images).where(images.c.library_id == self._library, or_(*conditions)).order_by(images.c.id)
        )
        return [_image(row) for row in await self._connection.execute(query)]

    async def delete(self, image_ids: Sequence[int]) -> None:
        """Delete images with their faces (every pack's), the faces' cannot-links and edits, the tombstones of
        their forgotten faces, and the covers they were. Persons are left to the caller."""
        for chunk in chunks(sorted({int(image_id) for image_id in image_ids})):
            gone = select(faces.c.id).where(faces.c.image_id.in_(chunk))
            await self._connection.execute(covers_cleared(gone))
            await self._connection.execute(delete(cannot_links).where(cannot_links.c.face_id.in_(gone)))
            await self._connection.execute(delete(face_edits).where(face_edits.c.face_id.in_(gone)))
            await self._connection.execute(delete(faces).where(faces.c.image_id.in_(chunk)))
            await self._connection.execute(
                delete(face_tombstones).where(face_tombstones.c.image_id.in_(chunk))
            )
            await self._connection.execute(delete(images).where(images.c.id.in_(chunk)))

    async def forgotten_boxes(self, image_ids: Sequence[int]) -> dict[int, np.ndarray]:
        """The (n, 4) boxes of the forgotten faces of each image that has any."""
        found: dict[int, list[tuple[float, ...]]] = {}
        columns = (
            face_tombstones.c.box_x1,
            face_tombstones.c.box_y1,
            face_tombstones.c.box_x2,
            face_tombstones.c.box_y2,
        )
        for chunk in chunks(sorted({int(image_id) for image_id in image_ids})):
            query = select(face_tombstones.c.image_id, *columns).where(face_tombstones.c.image_id.in_(chunk))
            for image_id, *box in await self._connection.execute(query):
                found.setdefault(image_id, []).append(tuple(box))
        return {image_id: np.array(boxes, np.float64).reshape(-1, 4) for image_id, boxes in found.items()}
