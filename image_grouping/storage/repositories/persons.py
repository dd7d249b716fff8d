"""Persons: listing with face counts, creation, names, covers, hiding, merging by hand."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import ColumnElement, and_, bindparam, delete, exists, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from image_grouping.models.records import PersonRecord
from image_grouping.storage.repositories.common import chunks, now
from image_grouping.storage.schema import (
    AUTOMATIC,
    BY_HAND,
    DEFAULT_LIBRARY,
    cannot_links,
    face_tombstones,
    faces,
    person_merges,
    persons,
)

log = structlog.get_logger(__name__)


_RECORD_COLUMNS = ("id", "name", "hidden", "cover_face_id", "created_at", "updated_at")


def _record(row: Any, face_count: int) -> PersonRecord:
    return PersonRecord(
        id=row.id,
        name=row.name,
        hidden=bool(row.hidden),
        cover_face_id=row.cover_face_id,
        face_count=face_count,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class PersonRepository:
    """The persons of one library: a person of another library is not found by any of these."""

    def __init__(self, connection: AsyncConnection, library_id: str = DEFAULT_LIBRARY) -> None:
        self._connection = connection
        self._library = library_id

    async def in_other_library(self, person_id: int) -> bool:
        """Whether the person exists, in another library than this one."""
        query = select(persons.c.id).where(persons.c.id == person_id, persons.c.library_id != self._library)
        return (await self._connection.execute(query)).first() is not None

    async def erase_library(self) -> list[int]:
        """Delete every person of the library (their faces are gone already: `ImageRepository.
        erase_library`), with the tombstones and merge records that name them; their ids."""
        ids = [
            row.id
            for row in await self._connection.execute(
                select(persons.c.id).where(persons.c.library_id == self._library).order_by(persons.c.id)
            )
        ]
        # The merge records into these persons, and into the persons merged into them, and so on.
        into = ids
        while into:
            merged_away: list[int] = []
            for chunk in chunks(into):
                query = select(person_merges.c.person_id).where(person_merges.c.into_person_id.in_(chunk))
                merged_away += [row.person_id for row in await self._connection.execute(query)]
                await self._connection.execute(
                    delete(person_merges).where(person_merges.c.into_person_id.in_(chunk))
                )
            into = merged_away
        await self.delete(ids)
        return ids

    async def list(self, *, counted: bool = True) -> list[PersonRecord]:
        """Every person of the library, by id; `counted` False: without counting their faces (face_count 0),
        a count over every face that grouping, which reads the persons for each batch, has no use for."""
        if not counted:
            return await self._uncounted()
        return await self._records()

    async def changed_since(self, since: datetime) -> list[PersonRecord]:
        """The library's persons written at or after `since` (by the writer's clock), by id, without face
        counts: every write of a person sets its `updated_at`."""
        return await self._uncounted(persons.c.updated_at >= since)

    async def count(self) -> int:
        query = select(func.count()).select_from(persons).where(persons.c.library_id == self._library)
        return int((await self._connection.execute(query)).scalar_one())

    async def ids(self) -> list[int]:
        query = select(persons.c.id).where(persons.c.library_id == self._library).order_by(persons.c.id)
        return list((await self._connection.execute(query)).scalars())

    async def _uncounted(self, *conditions: ColumnElement[bool]) -> list[PersonRecord]:
        query = (
            select(*(persons.c[name] for name in _RECORD_COLUMNS))
            .where(persons.c.library_id == self._library, *conditions)
            .order_by(persons.c.id)
        )
        # Unpacked by position: taken by name, a hundred thousand persons' columns cost more than their
        # query.
        return [
            PersonRecord(id_, name, bool(hidden), cover, 0, created, updated)
            for id_, name, hidden, cover, created, updated in await self._connection.execute(query)
        ]

    async def _records(self, *person_ids: int) -> list[PersonRecord]:
        """Persons with their face counts, by id: all of them, or those of `person_ids`."""
        counted = and_(faces.c.person_id.is_not(None), faces.c.library_id == self._library)
        chosen = persons.c.library_id == self._library
        if person_ids:
            counted = and_(faces.c.person_id.in_(person_ids), faces.c.library_id == self._library)
            chosen = and_(persons.c.id.in_(person_ids), persons.c.library_id == self._library)
        counts = (
            select(faces.c.person_id, func.count().label("face_count"))
            .where(counted)
            .group_by(faces.c.person_id)
            .subquery()
        )
        query = (
            select(persons, func.coalesce(counts.c.face_count, 0).label("face_count"))
            .select_from(persons.outerjoin(counts, counts.c.person_id == persons.c.id))
            .where(chosen)
            .order_by(persons.c.id)
        )
        return [_record(row, row.face_count) for row in await self._connection.execute(query)]

    async def create(self, cover_face_id: int | None = None, name: str | None = None) -> int:
        moment = now()
        result = await self._connection.execute(
            insert(persons).values(
                name=name,
                hidden=False,
                cover_face_id=cover_face_id,
                created_at=moment,
                updated_at=moment,
                library_id=self._library,
            )
        )
        return int(result.inserted_primary_key[0])

    async def delete(self, person_ids: Iterable[int]) -> None:
        """Delete persons; their faces become unassigned and free for grouping again."""
        for chunk in chunks(sorted({int(person_id) for person_id in person_ids})):
            await self._connection.execute(
                update(faces)
                .where(faces.c.person_id.in_(chunk))
                .values(person_id=None, assigned_by=AUTOMATIC, updated_at=now())
            )
            await self._connection.execute(delete(cannot_links).where(cannot_links.c.person_id.in_(chunk)))
            await self._connection.execute(delete(persons).where(persons.c.id.in_(chunk)))

    async def set_cover(
        self, person_id: int, face_id: int | None, *, expected_updated_at: datetime | None = None
    ) -> bool:
        """Make the face the person's cover; with `expected_updated_at`, only while the person is still as
        it was read then (checked in the UPDATE's WHERE). Whether it was set."""
        if expected_updated_at is None:
            await self._update(person_id, cover_face_id=face_id)
            return True
        result = await self._connection.execute(
            update(persons)
            .where(persons.c.id == person_id, persons.c.updated_at == expected_updated_at)
            .values(cover_face_id=face_id, updated_at=now())
        )
        return bool(result.rowcount)

    async def delete_unchanged_empty(self, seen: Mapping[int, datetime]) -> list[int]:
        """Delete those of the persons ({person: updated_at as read}) that are still as read, unnamed and
        without faces, checked inside the transaction; their ids. Grouping's deletions: a person renamed,
        hidden or given a face or a cover since grouping read it stays."""
        if not seen:
            return []
        # Claim them first: the UPDATE checks each person and locks those it matched until the commit, so
        # what is deleted below is what was checked (SET updated_at = updated_at changes nothing).
        claimable = (
            update(persons)
            .where(
                persons.c.id == bindparam("person"),
                persons.c.updated_at == bindparam("seen"),
                persons.c.name.is_(None),
                ~exists().where(faces.c.person_id == persons.c.id),
            )
            .values(updated_at=persons.c.updated_at)
        )
        await self._connection.execute(
            claimable, [{"person": person, "seen": version} for person, version in sorted(seen.items())]
        )
        claimed: list[int] = []
        for chunk in chunks(sorted(seen)):
            rows = await self._connection.execute(
                select(persons.c.id, persons.c.updated_at).where(
                    persons.c.id.in_(chunk),
                    persons.c.name.is_(None),
                    ~exists().where(faces.c.person_id == persons.c.id),
                )
            )
            claimed += [row.id for row in rows if row.updated_at == seen[row.id]]
        for chunk in chunks(sorted(claimed)):
            await self._connection.execute(delete(cannot_links).where(cannot_links.c.person_id.in_(chunk)))
            await self._connection.execute(delete(persons).where(persons.c.id.in_(chunk)))
        return sorted(claimed)

    async def rename(self, person_id: int, name: str | None) -> None:
        await self._update(person_id, name=name)

    async def set_hidden(self, person_id: int, hidden: bool) -> None:
        await self._update(person_id, hidden=hidden)

    async def merge_by_hand(self, target_id: int, source_id: int) -> None:
        """Move every face of `source` into `target` as a manual choice, then delete `source`.

        The target's own faces are pinned too: a merge says all of them are one person, and a recluster
        that saw two identities would otherwise give the target's unpinned faces a new person."""
        if target_id == source_id:
            return
        connection = self._connection
        await connection.execute(
            update(faces)
            .where(
                or_(
                    faces.c.person_id == source_id,
                    and_(faces.c.person_id == target_id, faces.c.assigned_by != BY_HAND),
                )
            )
            .values(person_id=target_id, assigned_by=BY_HAND, updated_at=now())
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
        await connection.execute(delete(person_merges).where(person_merges.c.person_id == source_id))
        await connection.execute(
            insert(person_merges).values(person_id=source_id, into_person_id=target_id, created_at=now())
        )

    # --- edits and deletions by hand (image_grouping.handlers.people) ---

    async def get(self, person_ids: Iterable[int], *, counted: bool = True) -> dict[int, PersonRecord]:
        """These persons (those that exist), by id; `counted` False: without their face counts, as
        `list(counted=False)` reads them."""
        found: dict[int, PersonRecord] = {}
        for chunk in chunks(sorted({int(person_id) for person_id in person_ids})):
            records = (
                await self._records(*chunk) if counted else await self._uncounted(persons.c.id.in_(chunk))
            )
            found |= {person.id: person for person in records}
        return found

    async def merged_into(self, person_ids: Iterable[int]) -> dict[int, int]:
        """{person merged away by hand: the person it went into} for those of `person_ids` that were."""
        found: dict[int, int] = {}
        for chunk in chunks(sorted({int(person_id) for person_id in person_ids})):
            query = select(person_merges.c.person_id, person_merges.c.into_person_id).where(
                person_merges.c.person_id.in_(chunk)
            )
            found |= {row.person_id: row.into_person_id for row in await self._connection.execute(query)}
        return found

    async def forgotten(self, person_id: int) -> bool:
        """Whether the person was forgotten (its faces left tombstones)."""
        query = select(face_tombstones.c.id).where(face_tombstones.c.person_id == person_id).limit(1)
        return (await self._connection.execute(query.order_by(face_tombstones.c.id))).first() is not None

    async def model_packs(self, person_id: int) -> set[str]:
        """The model packs of the person's faces."""
        query = select(faces.c.model_pack).where(faces.c.person_id == person_id).distinct()
        return {row.model_pack for row in await self._connection.execute(query)}

    async def delete_empty(self, person_ids: Iterable[int]) -> list[int]:
        """Delete those of the persons that have no face and no name (checked now, in this transaction);
        their ids."""
        empty: list[int] = []
        for chunk in chunks(sorted({int(person_id) for person_id in person_ids})):
            has_faces = select(faces.c.person_id).where(faces.c.person_id.in_(chunk))
            query = select(persons.c.id).where(
                persons.c.id.in_(chunk), persons.c.name.is_(None), persons.c.id.not_in(has_faces)
            )
            empty += [row.id for row in await self._connection.execute(query)]
        await self.delete(empty)
        return sorted(empty)

    async def choose_cover(self, person_ids: Iterable[int]) -> None:
        """Give each of the persons whose cover is none (or not one of its faces) its clearest face."""
        for person_id in sorted({int(person_id) for person_id in person_ids}):
            cover = (
                await self._connection.execute(
                    select(persons.c.cover_face_id).where(persons.c.id == person_id)
                )
            ).first()
            if cover is None:  # no such person
                continue
            if cover.cover_face_id is not None:
                still_theirs = select(faces.c.id).where(
                    faces.c.id == cover.cover_face_id, faces.c.person_id == person_id
                )
                if (await self._connection.execute(still_theirs)).first() is not None:
                    continue
            best = (
                select(faces.c.id)
                .where(faces.c.person_id == person_id)
                .order_by(faces.c.det_score.desc(), faces.c.id)
                .limit(1)
            )
            await self._connection.execute(
                update(persons)
                .where(persons.c.id == person_id)
                .values(
                    cover_face_id=(await self._connection.execute(best)).scalar_one_or_none(),
                    updated_at=now(),
                )
            )

    async def _update(self, person_id: int, **values: Any) -> None:
        result = await self._connection.execute(
            update(persons).where(persons.c.id == person_id).values(updated_at=now(), **values)
        )
        if result.rowcount == 0:
            raise LookupError(f"no person with id {person_id}")
