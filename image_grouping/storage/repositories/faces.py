"""Faces: what grouping loads, person assignments, boxes and carry-over between packs, thumbnails."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import structlog
from sqlalchemy import Row, bindparam, delete, exists, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from image_grouping.models.records import FaceEdit, FaceRecord, FaceSet
from image_grouping.storage.repositories.common import chunks, covers_cleared, now
from image_grouping.storage.schema import (
    AUTOMATIC,
    BY_HAND,
    DEFAULT_LIBRARY,
    cannot_links,
    face_edits,
    face_tombstones,
    faces,
    persons,
)

log = structlog.get_logger(__name__)


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


# Grouping looks at every face but those taken out of a person by hand (they stay unassigned): the rule of
# `FaceSet.groupable`, in SQL, for a warm copy's counts.
_GROUPABLE = or_(faces.c.assigned_by != BY_HAND, faces.c.person_id.is_not(None))
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def microseconds(moment: datetime) -> int:
    """A stored time as an exact integer (SQLite gives it without its offset: every time stored is UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MICROSECOND


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


_RECORD_COLUMNS = (
    faces.c.id,
    faces.c.image_id,
    faces.c.model_pack,
    faces.c.person_id,
    faces.c.assigned_by,
    faces.c.thumbnail_path,
    faces.c.added_by_hand,
)


def _face_record(row: Row[Any]) -> FaceRecord:
    return FaceRecord(
        id=row.id,
        image_id=row.image_id,
        model_pack=row.model_pack,
        person_id=row.person_id,
        manual=row.assigned_by == BY_HAND,
        thumbnail_path=row.thumbnail_path,
        added_by_hand=bool(row.added_by_hand),
    )


class FaceRepository:
    """The faces of one library: a face of another library is not found by any of these."""

    def __init__(self, connection: AsyncConnection, library_id: str = DEFAULT_LIBRARY) -> None:
        self._connection = connection
        self._library = library_id

    async def load_for_grouping(self, model_pack: str) -> FaceSet:
        """Every face of the library and the pack, ordered by id, as arrays (one query, no per-row
        objects)."""
        query = (
            select(*_GROUPING_COLUMNS)
            .where(faces.c.library_id == self._library, faces.c.model_pack == model_pack)
            .order_by(faces.c.id)
        )
        return _face_set((await self._connection.execute(query)).all())

    async def count_in_library(self) -> int:
        """How many faces (of every pack) the library has."""
        query = select(func.count()).select_from(faces).where(faces.c.library_id == self._library)
        return int((await self._connection.execute(query)).scalar_one())

    async def in_other_library(self, face_id: int) -> bool:
        """Whether the face exists, in another library than this one."""
        query = select(faces.c.id).where(faces.c.id == face_id, faces.c.library_id != self._library)
        return (await self._connection.execute(query)).first() is not None

    async def load_versioned(
        self, model_pack: str, face_ids: Sequence[int] | None = None
    ) -> tuple[FaceSet, np.ndarray]:
        """The library's faces of the pack (all, or those of `face_ids` that exist), ordered by id, as
        `load_for_grouping` gives them, and each one's version: its updated_at in microseconds."""
        columns = (*_GROUPING_COLUMNS, faces.c.updated_at)
        query = (
            select(*columns)
            .where(faces.c.library_id == self._library, faces.c.model_pack == model_pack)
            .order_by(faces.c.id)
        )
        if face_ids is None:
            rows = (await self._connection.execute(query)).all()
        else:
            rows = []
            for chunk in chunks(sorted({int(face_id) for face_id in face_ids})):
                rows.extend((await self._connection.execute(query.where(faces.c.id.in_(chunk)))).all())
        versions = np.array([microseconds(row[-1]) for row in rows], np.int64)
        return _face_set([row[:-1] for row in rows]), versions

    async def versions_since(self, model_pack: str, since: datetime) -> tuple[np.ndarray, np.ndarray]:
        """(ids, versions) of the library's faces of the pack written at or after `since` (by the writer's
        clock)."""
        query = select(faces.c.id, faces.c.updated_at).where(
            faces.c.library_id == self._library, faces.c.model_pack == model_pack, faces.c.updated_at >= since
        )
        rows = (await self._connection.execute(query)).all()
        return (
            np.array([row.id for row in rows], np.int64),
            np.array([microseconds(row.updated_at) for row in rows], np.int64),
        )

    async def count_groupable(self, model_pack: str) -> int:
        """How many of the library's faces of the pack grouping looks at."""
        query = (
            select(func.count())
            .select_from(faces)
            .where(faces.c.library_id == self._library, faces.c.model_pack == model_pack, _GROUPABLE)
        )
        return int((await self._connection.execute(query)).scalar_one())

    async def groupable_ids(self, model_pack: str) -> np.ndarray:
        """The ids of the library's faces of the pack grouping looks at, sorted."""
        query = (
            select(faces.c.id)
            .where(faces.c.library_id == self._library, faces.c.model_pack == model_pack, _GROUPABLE)
            .order_by(faces.c.id)
        )
        return np.array((await self._connection.execute(query)).scalars().all(), np.int64)

    async def load_by_ids(self, face_ids: Iterable[int]) -> FaceSet:
        """These faces (those that exist), ordered by id."""
        rows: list[Any] = []
        for chunk in chunks(sorted({int(face_id) for face_id in face_ids})):
            query = (
                select(*_GROUPING_COLUMNS)
                .where(faces.c.id.in_(chunk), faces.c.library_id == self._library)
                .order_by(faces.c.id)
            )
            rows.extend((await self._connection.execute(query)).all())
        return _face_set(rows)

    async def set_persons(self, assignments: Mapping[int, int | None]) -> int:
        """Assign faces to persons (None: to nobody) in batches; returns how many faces changed.

        Faces whose person was set by hand are never changed, whatever `assignments` says.
        """
        changes = []
        for chunk in chunks(sorted(int(face_id) for face_id in assignments)):
            current = await self._connection.execute(
                select(faces.c.id, faces.c.person_id).where(
                    faces.c.id.in_(chunk), faces.c.assigned_by == AUTOMATIC
                )
            )
            changes.extend(
                {"face_id": face_id, "person": assignments[face_id], "now": now()}
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

    async def regroup(
        self, moves: Sequence[tuple[int, int | None, int | None]], persons_seen: Mapping[int, datetime]
    ) -> set[int]:
        """Write grouping's decisions, each (face, person it had when read, person it goes to; None: no
        person), only where nothing changed since grouping read them, checked by each UPDATE's WHERE inside
        the transaction: the face is still set by grouping and still in that person, that person is still
        as read (`persons_seen`: its updated_at; an edited person keeps its faces), and the person it goes to
        still exists and was not refused for it. Returns the faces written."""
        moment = now()
        shapes: dict[tuple[bool, bool], list[dict[str, Any]]] = {}
        for face_id, before, after in moves:
            row: dict[str, Any] = {"face": face_id, "now": moment}
            if before is not None:
                row |= {"before": before, "seen": persons_seen[before]}
            if after is not None:
                row |= {"after": after, "after_exists": after, "after_refused": after}
            shapes.setdefault((before is None, after is None), []).append(row)
        for (from_nobody, to_nobody), rows in shapes.items():
            statement = update(faces).where(faces.c.id == bindparam("face"), faces.c.assigned_by == AUTOMATIC)
            if from_nobody:
                statement = statement.where(faces.c.person_id.is_(None))
            else:
                statement = statement.where(
                    faces.c.person_id == bindparam("before"),
                    exists().where(
                        persons.c.id == faces.c.person_id, persons.c.updated_at == bindparam("seen")
                    ),
                )
            if not to_nobody:
                statement = statement.where(
                    exists().where(persons.c.id == bindparam("after_exists")),
                    ~exists().where(
                        cannot_links.c.face_id == faces.c.id,
                        cannot_links.c.person_id == bindparam("after_refused"),
                    ),
                )
            person = None if to_nobody else bindparam("after")
            await self._connection.execute(
                statement.values(person_id=person, updated_at=bindparam("now")), rows
            )
        target = {face_id: after for face_id, _, after in moves}
        written: set[int] = set()
        for chunk in chunks(sorted(target)):
            rows = await self._connection.execute(
                select(faces.c.id, faces.c.person_id).where(
                    faces.c.id.in_(chunk), faces.c.assigned_by == AUTOMATIC
                )
            )
            written.update(row.id for row in rows if row.person_id == target[row.id])
        return written

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
        moment = now()
        carried, links = 0, []
        for chunk in chunks(sorted(pairs)):
            rows = await self._connection.execute(
                select(faces.c.id, faces.c.person_id, faces.c.assigned_by).where(faces.c.id.in_(chunk))
            )
            # bind names must differ from column names in an UPDATE's SET clause
            updates = [
                {"face_id": pairs[row.id], "person": row.person_id, "how": row.assigned_by, "now": moment}
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
                .values(cover_face_id=bindparam("new_face"), updated_at=bindparam("now")),
                [{"old_face": old, "new_face": pairs[old], "now": now()} for old in chunk],
            )
        known: set[tuple[int, int]] = set()
        for chunk in chunks(sorted({face_id for face_id, _ in links})):
            rows = await self._connection.execute(
                select(cannot_links.c.face_id, cannot_links.c.person_id).where(
                    cannot_links.c.face_id.in_(chunk)
                )
            )
            known.update((row.face_id, row.person_id) for row in rows)
        added = [
            {"face_id": face_id, "person_id": person_id, "created_at": moment}
            for face_id, person_id in sorted(set(links) - known)
        ]
        if added:
            await self._connection.execute(insert(cannot_links), added)
        return carried, len(added)

    async def cannot_links(self) -> list[tuple[int, int]]:
        """(face id, person id) pairs set by hand on the library's faces: that face is not that person."""
        query = (
            select(cannot_links.c.face_id, cannot_links.c.person_id)
            .select_from(cannot_links.join(faces, faces.c.id == cannot_links.c.face_id))
            .where(faces.c.library_id == self._library)
            .order_by(cannot_links.c.face_id, cannot_links.c.person_id)
        )
        return [(row.face_id, row.person_id) for row in await self._connection.execute(query)]

    async def thumbnails(
        self, person_id: int | None, limit: int, model_pack: str | None = None
    ) -> list[tuple[int, str]]:
        """(face id, thumbnail path) of a person's faces, best detections first; None: unassigned faces."""
        belongs = faces.c.person_id.is_(None) if person_id is None else faces.c.person_id == person_id
        query = (
            select(faces.c.id, faces.c.thumbnail_path)
            .where(belongs, faces.c.library_id == self._library, faces.c.thumbnail_path.is_not(None))
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
        await self._connection.execute(covers_cleared([face_id]).where(persons.c.id == person_id))
        known = await self._connection.execute(
            select(cannot_links.c.face_id).where(
                cannot_links.c.face_id == face_id, cannot_links.c.person_id == person_id
            )
        )
        if known.first() is None:
            await self._connection.execute(
                insert(cannot_links).values(face_id=face_id, person_id=person_id, created_at=now())
            )

    async def _set_by_hand(self, face_id: int, person_id: int | None) -> None:
        result = await self._connection.execute(
            update(faces)
            .where(faces.c.id == face_id)
            .values(person_id=person_id, assigned_by=BY_HAND, updated_at=now())
        )
        if result.rowcount == 0:
            raise LookupError(f"no face with id {face_id}")

    # --- edits and deletions by hand (image_grouping.handlers.people) ---

    async def get(self, face_ids: Iterable[int]) -> dict[int, FaceRecord]:
        """These faces (those that exist), by id."""
        found: dict[int, FaceRecord] = {}
        for chunk in chunks(sorted({int(face_id) for face_id in face_ids})):
            query = select(*_RECORD_COLUMNS).where(faces.c.id.in_(chunk), faces.c.library_id == self._library)
            for row in await self._connection.execute(query):
                found[row.id] = _face_record(row)
        return found

    async def get_for_edit(self, face_id: int) -> FaceRecord | None:
        """The face as it is once no other transaction is editing it: the face is locked first (an UPDATE
        that changes nothing) until this one ends, so two edits of one face at once go one after the other,
        the second reading what the first committed."""
        await self._connection.execute(
            update(faces)
            .where(faces.c.id == face_id, faces.c.library_id == self._library)
            .values(updated_at=faces.c.updated_at)
        )
        return (await self.get([face_id])).get(face_id)

    async def record_edits(self, edits: Sequence[FaceEdit]) -> None:
        """Add edits by hand to the faces' record (face_edits), in this transaction."""
        if edits:
            moment = now()
            await self._connection.execute(
                insert(face_edits),
                [
                    {
                        "face_id": edit.face_id,
                        "from_person_id": edit.from_person_id,
                        "to_person_id": edit.to_person_id,
                        "action": edit.action,
                        "created_at": moment,
                    }
                    for edit in edits
                ],
            )

    async def edits(self, face_ids: Iterable[int]) -> list[FaceEdit]:
        """The recorded edits of these faces, oldest first."""
        found: list[tuple[int, FaceEdit]] = []
        for chunk in chunks(sorted({int(face_id) for face_id in face_ids})):
            rows = await self._connection.execute(select(face_edits).where(face_edits.c.face_id.in_(chunk)))
            found += [
                (
                    row.id,
                    FaceEdit(row.face_id, row.from_person_id, row.to_person_id, row.action, row.created_at),
                )
                for row in rows
            ]
        return [edit for _, edit in sorted(found, key=lambda pair: pair[0])]

    async def of_persons(self, person_ids: Iterable[int]) -> list[FaceRecord]:
        """Every face (of every pack) of these persons, by id."""
        return await self._records(faces.c.person_id, person_ids)

    async def of_images(self, image_ids: Iterable[int]) -> list[FaceRecord]:
        """Every face (of every pack) of these images, by id."""
        return await self._records(faces.c.image_id, image_ids)

    async def _records(self, column: Any, values: Iterable[int]) -> list[FaceRecord]:
        found: list[FaceRecord] = []
        for chunk in chunks(sorted({int(value) for value in values})):
            query = (
                select(*_RECORD_COLUMNS)
                .where(column.in_(chunk), faces.c.library_id == self._library)
                .order_by(faces.c.id)
            )
            found += [_face_record(row) for row in await self._connection.execute(query)]
        return sorted(found, key=lambda face: face.id)

    async def refuse(self, face_id: int, person_id: int) -> None:
        """ "Not this person": the face leaves the person if it is in it (by hand: it stays without one),
        and a cannot-link keeps grouping from ever putting it there again."""
        await self._connection.execute(
            update(faces)
            .where(faces.c.id == face_id, faces.c.person_id == person_id)
            .values(person_id=None, assigned_by=BY_HAND, updated_at=now())
        )
        await self._connection.execute(covers_cleared([face_id]).where(persons.c.id == person_id))
        if not await self.is_refused(face_id, person_id):
            await self._connection.execute(
                insert(cannot_links).values(face_id=face_id, person_id=person_id, created_at=now())
            )

    async def is_refused(self, face_id: int, person_id: int) -> bool:
        query = select(cannot_links.c.face_id).where(
            cannot_links.c.face_id == face_id, cannot_links.c.person_id == person_id
        )
        return (await self._connection.execute(query)).first() is not None

    async def delete(self, face_ids: Sequence[int]) -> None:
        """Delete faces, their cannot-links and the covers they were."""
        for chunk in chunks(sorted({int(face_id) for face_id in face_ids})):
            await self._connection.execute(covers_cleared(chunk))
            await self._connection.execute(delete(cannot_links).where(cannot_links.c.face_id.in_(chunk)))
            await self._connection.execute(delete(face_edits).where(face_edits.c.face_id.in_(chunk)))
            await self._connection.execute(delete(faces).where(faces.c.id.in_(chunk)))

    async def forget(self, face_ids: Sequence[int], person_id: int) -> None:
        """Erase faces (`delete`), keeping of each a tombstone: its image, its box and the person's id."""
        created = now()
        for chunk in chunks(sorted({int(face_id) for face_id in face_ids})):
            rows = await self._connection.execute(
                select(
                    faces.c.image_id, faces.c.box_x1, faces.c.box_y1, faces.c.box_x2, faces.c.box_y2
                ).where(faces.c.id.in_(chunk))
            )
            tombstones = [row._asdict() | {"person_id": person_id, "created_at": created} for row in rows]
            if tombstones:
                await self._connection.execute(insert(face_tombstones), tombstones)
            await self.delete(chunk)
