"""What the storage and grouping fixtures share: a migrated engine per backend, emptied per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncEngine

from image_grouping.storage import SqlUnitOfWork, ensure_schema
from image_grouping.storage.database import async_url, engine_for_url
from image_grouping.storage.schema import (
    cannot_links,
    face_tombstones,
    faces,
    images,
    person_merges,
    persons,
    recluster_runs,
)


@asynccontextmanager
async def migrated_engine(url: str) -> AsyncIterator[AsyncEngine]:
    engine = engine_for_url(async_url(url))
    await ensure_schema(engine)
    try:
        yield engine
    finally:
        await engine.dispose()


async def emptied(engine: AsyncEngine) -> Callable[[], SqlUnitOfWork]:
    """A factory of units of work on the engine's database, emptied first (children before parents)."""
    async with engine.begin() as connection:
        for table in (cannot_links, face_tombstones, person_merges, faces, persons, images, recluster_runs):
            await connection.execute(delete(table))
    return lambda: SqlUnitOfWork(engine)
