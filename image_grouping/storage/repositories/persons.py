"""Persons: listing with face counts, creation, names, covers, hiding, merging by hand."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import structlog
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from image_grouping.models.records import PersonRecord
from image_grouping.storage.repositories.common import chunks, now
from image_grouping.storage.schema import (
    AUTOMATIC,
    BY_HAND,
    cannot_links,
    faces,
    persons,
)

log = structlog.get_logger(__name__)


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
        moment = now()
        result = await self._connection.execute(
            insert(persons).values(
                name=name, hidden=False, cover_face_id=cover_face_id, created_at=moment, updated_at=moment
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

    async def _update(self, person_id: int, **values: Any) -> None:
        result = await self._connection.execute(
            update(persons).where(persons.c.id == person_id).values(updated_at=now(), **values)
        )
        if result.rowcount == 0:
            raise LookupError(f"no person with id {person_id}")
