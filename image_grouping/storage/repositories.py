"""Repositories: the only code that writes SQL. Each works on the connection of one unit of work.

Every statement is SQLAlchemy Core that compiles for SQL Server, PostgreSQL and SQLite alike
(tests/storage/test_mssql_compat.py checks it): no RETURNING lists, no ON CONFLICT, LIMIT only with ORDER BY,
and IN lists chunked below SQL Server's 2,100-parameter limit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import structlog
from sqlalchemy import ColumnElement, Row, and_, bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from image_grouping.models.faces import DetectedFace, ImageAnalysis
from image_grouping.models.records import FaceSet, ImageRecord, ImageResult, PersonRecord
from image_grouping.storage.schema import (
    AUTOMATIC,
    BY_HAND,
    cannot_links,
    faces,
    images,
    persons,
    recluster_runs,
)

log = structlog.get_logger(__name__)

IN_CHUNK = 1000  # SQL Server accepts at most 2,100 parameters per statement
SAME_FACE_IOU = 0.5  # a re-detected face overlapping an old one this much is the same face


def _now() -> datetime:
    return datetime.now(UTC)


def _chunks(values: Sequence[Any], size: int = IN_CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def path_key(source_path: str) -> str:
    """The unique key of a stored path: its sha256, slashes normalised."""
    return hashlib.sha256(source_path.strip().replace("\\", "/").encode()).hexdigest()


def match_boxes(old: np.ndarray, new: np.ndarray, threshold: float = SAME_FACE_IOU) -> dict[int, int]:
    """Pairs each new box (x1, y1, x2, y2) with at most one old box, best IoU first: {new: old index}."""
    if len(old) == 0 or len(new) == 0:
        return {}
    old, new = np.asarray(old, np.float64)[:, None, :], np.asarray(new, np.float64)[None, :, :]
    width = np.clip(np.minimum(old[..., 2], new[..., 2]) - np.maximum(old[..., 0], new[..., 0]), 0, None)
    height = np.clip(np.minimum(old[..., 3], new[..., 3]) - np.maximum(old[..., 1], new[..., 1]), 0, None)
    overlap = width * height

    def area(box: np.ndarray) -> np.ndarray:
        return (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])

    iou = overlap / np.maximum(area(old) + area(new) - overlap, 1e-9)  # (old, new)
    pairs: dict[int, int] = {}
    used_old: set[int] = set()
    for flat in np.argsort(-iou, axis=None):
        old_index, new_index = np.unravel_index(flat, iou.shape)
        if iou[old_index, new_index] < threshold:
            break
        if old_index not in used_old and new_index not in pairs:
            pairs[int(new_index)] = int(old_index)
            used_old.add(int(old_index))
    return pairs


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
        "updated_at": _now(),
    }


def _face_changes(
    result: ImageResult, old: Sequence[tuple[Any, ...]]
) -> tuple[list[int], list[dict[str, Any]], list[dict[str, Any]]]:
    """How one image's faces change: the ids of old faces no longer found, the updates of those found
    again (box IoU >= 0.5: same id and person), the rows of new ones. `old`: (id, x1, y1, x2, y2)."""
    new_boxes = np.array([face.box for face in result.analysis.faces], np.float64).reshape(-1, 4)
    old_boxes = np.array([row[1:] for row in old], np.float64).reshape(-1, 4)
    pairs = match_boxes(old_boxes, new_boxes)
    kept_ids = {old[old_index][0] for old_index in pairs.values()}
    gone = [row[0] for row in old if row[0] not in kept_ids]
    updates, inserts = [], []
    for index, (face, thumbnail) in enumerate(
        zip(result.analysis.faces, result.thumbnail_paths, strict=True)
    ):
        values = _face_values(face, index, thumbnail)
        if index in pairs:
            # bind names must differ from column names in an UPDATE's SET clause
            updates.append({"face_id": old[pairs[index]][0]} | {f"new_{k}": v for k, v in values.items()})
        else:
            new_face = {
                "image_id": result.image_id,
                "model_pack": result.analysis.model_pack,
                "person_id": None,
            }
            inserts.append(values | new_face | {"assigned_by": AUTOMATIC, "created_at": values["updated_at"]})
    return gone, updates, inserts


def _analysed_by_other_pack(model_pack: str, from_pack: str | None) -> ColumnElement[bool]:
    other = images.c.model_pack != model_pack
    if from_pack is not None:
        other = and_(other, images.c.model_pack == from_pack)
    return and_(images.c.status == "done", other)


class ImageRepository:
    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def get(self, image_id: int) -> ImageRecord | None:
        row = (await self._connection.execute(select(images).where(images.c.id == image_id))).first()
        return _image(row) if row else None

    async def get_or_create(self, source_id: str | None, source_path: str) -> ImageRecord:
        """The image registered under this path, registering it (status pending) if new.

        Two workers registering the same path at once both get the one row: the loser of the race hits
        the unique key inside a savepoint and reads the winner's row.
        """
        key = path_key(source_path)
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
                        status="pending",
                        created_at=_now(),
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
        )

    async def get_or_create_many(self, registrations: Sequence[tuple[str | None, str]]) -> list[ImageRecord]:
        """`get_or_create` of several (source id, path) pairs, in their order, with a few statements in
        all instead of a few each; a path given twice gets its one row twice."""
        keys = [path_key(source_path) for _, source_path in registrations]
        found = await self._by_keys(keys)
        new = {key: each for key, each in zip(keys, registrations, strict=True) if key not in found}
        if new:
            rows = [
                {
                    "source_id": source_id,
                    "source_path": source_path,
                    "path_key": key,
                    "status": "pending",
                    "created_at": _now(),
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
        for chunk in _chunks(sorted(set(keys))):
            for row in await self._connection.execute(select(images).where(images.c.path_key.in_(chunk))):
                records[row.path_key] = _image(row)
        return records

    async def find_processed(self, content_hash: str, model_pack: str) -> ImageRecord | None:
        """An image with these bytes already analysed by this pack (or refused as bad input)."""
        query = (
            select(images)
            .where(
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
        """Registered images without a result yet, oldest first (MODE=oneshot works through these)."""
        query = select(images).where(images.c.status == "pending").order_by(images.c.id).limit(limit)
        return [_image(row) for row in await self._connection.execute(query)]

    async def analysed_by_other_pack(
        self, model_pack: str, from_pack: str | None, after_id: int, limit: int
    ) -> list[ImageRecord]:
        """Images whose result is another pack's (or `from_pack`'s), id above `after_id`, oldest first.

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
        values: dict[str, Any] = {"status": "failed", "error": reason[:1000], "processed_at": _now()}
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
        connection, now = self._connection, _now()
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
                processed_at=now,
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
        old_faces = await self._current_faces(image_ids)
        if missing := [image_id for image_id in image_ids if image_id not in old_faces]:
            raise LookupError(f"no image with id {missing[0]}")

        old_ids: list[int] = []
        gone_ids: list[int] = []
        updates: list[dict[str, Any]] = []
        inserts: list[dict[str, Any]] = []
        for image_id in image_ids:
            old = old_faces[image_id]
            old_ids += [row[0] for row in old]
            gone, kept, new = _face_changes(latest[image_id], old)
            gone_ids += gone
            updates += kept
            inserts += new

        # Old indexes move out of the way first, so re-numbering never collides with the unique key.
        for chunk in _chunks(old_ids):
            await connection.execute(
                update(faces).where(faces.c.id.in_(chunk)).values(face_index=-1 - faces.c.face_index)
            )
        for chunk in _chunks(gone_ids):
            await connection.execute(
                update(persons).where(persons.c.cover_face_id.in_(chunk)).values(cover_face_id=None)
            )
            await connection.execute(delete(faces).where(faces.c.id.in_(chunk)))
        if updates:
            columns = {name[4:]: bindparam(name) for name in updates[0] if name != "face_id"}
            await connection.execute(
                update(faces).where(faces.c.id == bindparam("face_id")).values(columns), updates
            )
        if inserts:
            await connection.execute(insert(faces), inserts)

        stored = {
            image_id: [row[0] for row in rows]
            for image_id, rows in (await self._current_faces(image_ids)).items()
        }
        log.debug(
            "analyses saved",
            images=len(image_ids),
            faces=sum(map(len, stored.values())),
            kept=len(old_ids) - len(gone_ids),
            removed=len(gone_ids),
        )
        return [stored[result.image_id] for result in results]

    async def _current_faces(self, image_ids: Sequence[int]) -> dict[int, list[tuple[Any, ...]]]:
        """(id, x1, y1, x2, y2) of the faces of each image from its current pack, in face order; every
        image that exists has an entry, an empty one if it has no faces."""
        current = and_(faces.c.image_id == images.c.id, faces.c.model_pack == images.c.model_pack)
        query = (
            select(images.c.id, faces.c.id, faces.c.box_x1, faces.c.box_y1, faces.c.box_x2, faces.c.box_y2)
            .select_from(images.outerjoin(faces, current))
            .order_by(images.c.id, faces.c.face_index)
        )
        found: dict[int, list[tuple[Any, ...]]] = {}
        for chunk in _chunks(image_ids):
            for image_id, *face in await self._connection.execute(query.where(images.c.id.in_(chunk))):
                rows = found.setdefault(image_id, [])
                if face[0] is not None:  # the outer join's row of an image without faces
                    rows.append(tuple(face))
        return found


_GROUPING_COLUMNS = (
    faces.c.id,
    faces.c.image_id,
    faces.c.embedding,
    faces.c.person_id,
    faces.c.assigned_by,
    faces.c.det_score,
    faces.c.size_px,
    faces.c.sharpness,
    faces.c.yaw,
)


def _face_set(rows: Sequence[Sequence[Any]]) -> FaceSet:
    if not rows:
        return FaceSet.empty()
    ids, image_ids, blobs, person_ids, assigned_by, det_score, size_px, sharpness, yaw = zip(
        *rows, strict=True
    )
    count = len(ids)
    dim = len(blobs[0]) // 4
    # One copy into a mutable buffer, used in place (100k embeddings are 200 MB); no copy on little-endian.
    embeddings = np.frombuffer(bytearray().join(blobs), "<f4").astype(np.float32, copy=False)
    if embeddings.size != count * dim:
        raise ValueError("faces of one model pack have embeddings of different sizes")
    return FaceSet(
        face_ids=np.array(ids, np.int64),
        image_ids=np.array(image_ids, np.int64),
        embeddings=embeddings.reshape(count, dim),
        person_ids=np.array([-1 if person is None else person for person in person_ids], np.int64),
        manual=np.array([value == BY_HAND for value in assigned_by], bool),
        det_score=np.array(det_score, np.float32),
        size_px=np.array(size_px, np.float32),
        sharpness=np.array(sharpness, np.float32),
        yaw=np.array(yaw, np.float32),
    )


class FaceRepository:
    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def load_for_grouping(self, model_pack: str) -> FaceSet:
        """Every face of the pack, ordered by id, as arrays (one query, no per-row objects)."""
        query = select(*_GROUPING_COLUMNS).where(faces.c.model_pack == model_pack).order_by(faces.c.id)
        return _face_set((await self._connection.execute(query)).all())

    async def load_by_ids(self, face_ids: Iterable[int]) -> FaceSet:
        """These faces (those that exist), ordered by id."""
        rows: list[Any] = []
        for chunk in _chunks(sorted({int(face_id) for face_id in face_ids})):
            query = select(*_GROUPING_COLUMNS).where(faces.c.id.in_(chunk)).order_by(faces.c.id)
            rows.extend((await self._connection.execute(query)).all())
        return _face_set(rows)

    async def set_persons(self, assignments: Mapping[int, int | None]) -> int:
        """Assign faces to persons (None: to nobody) in batches; returns how many faces changed.

        Faces whose person was set by hand are never changed, whatever `assignments` says.
        """
        changes = []
        for chunk in _chunks(sorted(int(face_id) for face_id in assignments)):
            current = await self._connection.execute(
                select(faces.c.id, faces.c.person_id).where(
                    faces.c.id.in_(chunk), faces.c.assigned_by == AUTOMATIC
                )
            )
            changes.extend(
                {"face_id": face_id, "person": assignments[face_id], "now": _now()}
                for face_id, person_id in current
                if assignments[face_id] != person_id
            )
        if changes:
            await self._connection.execute(
                update(faces)
                .where(faces.c.id == bindparam("face_id"), faces.c.assigned_by == AUTOMATIC)
                .values(person_id=bindparam("person"), updated_at=bindparam("now")),
                changes,
            )
        return len(changes)

    async def boxes_of_image(self, image_id: int, model_pack: str) -> tuple[list[int], np.ndarray]:
        """The ids and (n, 4) boxes of one image's faces found by one pack, in analysis order."""
        rows = (
            await self._connection.execute(
                select(faces.c.id, faces.c.box_x1, faces.c.box_y1, faces.c.box_x2, faces.c.box_y2)
                .where(faces.c.image_id == image_id, faces.c.model_pack == model_pack)
                .order_by(faces.c.face_index)
            )
        ).all()
        return [row.id for row in rows], np.array([row[1:] for row in rows], np.float64).reshape(-1, 4)

    async def carry_over(self, old_to_new: Mapping[int, int]) -> tuple[int, int]:
        """Give each new face ({old face id: new face id}, the new one of another pack) what its old face
        had: its person, set the same way (by hand or by grouping), its cannot-links, and the persons it
        is the cover of.

        Persons are shared by the packs, so their names and hidden flags need no copy. Returns how many
        faces got a person or a manual choice, and how many cannot-links were added.
        """
        pairs = {int(old): int(new) for old, new in old_to_new.items()}
        now = _now()
        carried, links = 0, []
        for chunk in _chunks(sorted(pairs)):
            rows = await self._connection.execute(
                select(faces.c.id, faces.c.person_id, faces.c.assigned_by).where(faces.c.id.in_(chunk))
            )
            # bind names must differ from column names in an UPDATE's SET clause
            updates = [
                {"face_id": pairs[row.id], "person": row.person_id, "how": row.assigned_by, "now": now}
                for row in rows
            ]
            carried += sum(1 for row in updates if row["person"] is not None or row["how"] == BY_HAND)
            if updates:
                await self._connection.execute(
                    update(faces)
                    .where(faces.c.id == bindparam("face_id"))
                    .values(
                        person_id=bindparam("person"),
                        assigned_by=bindparam("how"),
                        updated_at=bindparam("now"),
                    ),
                    updates,
                )
            refused = await self._connection.execute(
                select(cannot_links.c.face_id, cannot_links.c.person_id).where(
                    cannot_links.c.face_id.in_(chunk)
                )
            )
            links += [(pairs[row.face_id], row.person_id) for row in refused]
            await self._connection.execute(
                update(persons)
                .where(persons.c.cover_face_id == bindparam("old_face"))
                .values(cover_face_id=bindparam("new_face")),
                [{"old_face": old, "new_face": pairs[old]} for old in chunk],
            )
        known: set[tuple[int, int]] = set()
        for chunk in _chunks(sorted({face_id for face_id, _ in links})):
            rows = await self._connection.execute(
                select(cannot_links.c.face_id, cannot_links.c.person_id).where(
                    cannot_links.c.face_id.in_(chunk)
                )
            )
            known.update((row.face_id, row.person_id) for row in rows)
        added = [
            {"face_id": face_id, "person_id": person_id, "created_at": now}
            for face_id, person_id in sorted(set(links) - known)
        ]
        if added:
            await self._connection.execute(insert(cannot_links), added)
        return carried, len(added)

    async def cannot_links(self) -> list[tuple[int, int]]:
        """(face id, person id) pairs set by hand: that face is not that person."""
        query = select(cannot_links.c.face_id, cannot_links.c.person_id).order_by(
            cannot_links.c.face_id, cannot_links.c.person_id
        )
        return [(row.face_id, row.person_id) for row in await self._connection.execute(query)]

    async def thumbnails(
        self, person_id: int | None, limit: int, model_pack: str | None = None
    ) -> list[tuple[int, str]]:
        """(face id, thumbnail path) of a person's faces, best detections first; None: unassigned faces."""
        belongs = faces.c.person_id.is_(None) if person_id is None else faces.c.person_id == person_id
        query = (
            select(faces.c.id, faces.c.thumbnail_path)
            .where(belongs, faces.c.thumbnail_path.is_not(None))
            .order_by(faces.c.det_score.desc(), faces.c.id)
            .limit(limit)
        )
        if model_pack is not None:
            query = query.where(faces.c.model_pack == model_pack)
        return [(row.id, row.thumbnail_path) for row in await self._connection.execute(query)]

    async def assign_by_hand(self, face_id: int, person_id: int) -> None:
        """Put a face into a person for good: grouping will not move it again."""
        await self._set_by_hand(face_id, person_id)
        await self._connection.execute(
            delete(cannot_links).where(
                cannot_links.c.face_id == face_id, cannot_links.c.person_id == person_id
            )
        )

    async def remove_from_person(self, face_id: int) -> None:
        """Take a face out of its person, remember that it is not that person, and keep it unassigned."""
        person_id = (
            await self._connection.execute(select(faces.c.person_id).where(faces.c.id == face_id))
        ).scalar_one_or_none()
        await self._set_by_hand(face_id, None)
        if person_id is None:
            return
        await self._connection.execute(
            update(persons)
            .where(persons.c.id == person_id, persons.c.cover_face_id == face_id)
            .values(cover_face_id=None, updated_at=_now())
        )
        known = await self._connection.execute(
            select(cannot_links.c.face_id).where(
                cannot_links.c.face_id == face_id, cannot_links.c.person_id == person_id
            )
        )
        if known.first() is None:
            await self._connection.execute(
                insert(cannot_links).values(face_id=face_id, person_id=person_id, created_at=_now())
            )

    async def _set_by_hand(self, face_id: int, person_id: int | None) -> None:
        result = await self._connection.execute(
            update(faces)
            .where(faces.c.id == face_id)
            .values(person_id=person_id, assigned_by=BY_HAND, updated_at=_now())
        )
        if result.rowcount == 0:
            raise LookupError(f"no face with id {face_id}")


class PersonRepository:
    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def list(self) -> list[PersonRecord]:
        counts = (
            select(faces.c.person_id, func.count().label("face_count"))
            .where(faces.c.person_id.is_not(None))
            .group_by(faces.c.person_id)
            .subquery()
        )
        query = (
            select(persons, func.coalesce(counts.c.face_count, 0).label("face_count"))
            .select_from(persons.outerjoin(counts, counts.c.person_id == persons.c.id))
            .order_by(persons.c.id)
        )
        return [
            PersonRecord(
                id=row.id,
                name=row.name,
                hidden=bool(row.hidden),
                cover_face_id=row.cover_face_id,
                face_count=row.face_count,
                created_at=row.created_at,
                updated_at=row.updated_at,
            )
            for row in await self._connection.execute(query)
        ]

    async def create(self, cover_face_id: int | None = None, name: str | None = None) -> int:
        now = _now()
        result = await self._connection.execute(
            insert(persons).values(
                name=name, hidden=False, cover_face_id=cover_face_id, created_at=now, updated_at=now
            )
        )
        return int(result.inserted_primary_key[0])

    async def delete(self, person_ids: Iterable[int]) -> None:
        """Delete persons; their faces become unassigned and free for grouping again."""
        for chunk in _chunks(sorted({int(person_id) for person_id in person_ids})):
            await self._connection.execute(
                update(faces)
                .where(faces.c.person_id.in_(chunk))
                .values(person_id=None, assigned_by=AUTOMATIC, updated_at=_now())
            )
            await self._connection.execute(delete(cannot_links).where(cannot_links.c.person_id.in_(chunk)))
            await self._connection.execute(delete(persons).where(persons.c.id.in_(chunk)))

    async def set_cover(self, person_id: int, face_id: int | None) -> None:
        await self._update(person_id, cover_face_id=face_id)

    async def rename(self, person_id: int, name: str | None) -> None:
        await self._update(person_id, name=name)

    async def set_hidden(self, person_id: int, hidden: bool) -> None:
        await self._update(person_id, hidden=hidden)

    async def merge_by_hand(self, target_id: int, source_id: int) -> None:
        """Move every face of `source` into `target` as a manual choice, then delete `source`."""
        if target_id == source_id:
            return
        connection = self._connection
        await connection.execute(
            update(faces)
            .where(faces.c.person_id == source_id)
            .values(person_id=target_id, assigned_by=BY_HAND, updated_at=_now())
        )
        # A face refused from the source is refused from the merged person too.
        already = select(cannot_links.c.face_id).where(cannot_links.c.person_id == target_id)
        await connection.execute(
            update(cannot_links)
            .where(cannot_links.c.person_id == source_id, cannot_links.c.face_id.not_in(already))
            .values(person_id=target_id)
        )
        await connection.execute(delete(cannot_links).where(cannot_links.c.person_id == source_id))
        source_cover = (
            await connection.execute(select(persons.c.cover_face_id).where(persons.c.id == source_id))
        ).scalar_one_or_none()
        await connection.execute(
            update(persons)
            .where(persons.c.id == target_id, persons.c.cover_face_id.is_(None))
            .values(cover_face_id=source_cover)
        )
        await self._update(target_id)
        await connection.execute(delete(persons).where(persons.c.id == source_id))

    async def _update(self, person_id: int, **values: Any) -> None:
        result = await self._connection.execute(
            update(persons).where(persons.c.id == person_id).values(updated_at=_now(), **values)
        )
        if result.rowcount == 0:
            raise LookupError(f"no person with id {person_id}")


class ReclusterRunRepository:
    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def start(self, kind: str) -> int:
        result = await self._connection.execute(
            insert(recluster_runs).values(kind=kind, status="running", started_at=_now())
        )
        return int(result.inserted_primary_key[0])

    async def finish(self, run_id: int, stats: Mapping[str, Any], status: str = "done") -> None:
        await self._connection.execute(
            update(recluster_runs)
            .where(recluster_runs.c.id == run_id)
            .values(status=status, finished_at=_now(), stats=dict(stats))
        )

    async def latest(self, kind: str) -> dict[str, Any] | None:
        query = (
            select(recluster_runs)
            .where(recluster_runs.c.kind == kind)
            .order_by(recluster_runs.c.started_at.desc(), recluster_runs.c.id.desc())
            .limit(1)
        )
        row = (await self._connection.execute(query)).first()
        return dict(row._mapping) if row else None
