"""What the storage and grouping fixtures share: a migrated engine per backend, emptied per test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial

import pytest
from sqlalchemy import URL, delete
from sqlalchemy.ext.asyncio import AsyncEngine

from image_grouping.storage import SqlUnitOfWork, ensure_schema
from image_grouping.storage.database import async_url, engine_for_url, odbc_url
from image_grouping.storage.schema import (
    cannot_links,
    face_edits,
    face_tombstones,
    faces,
    images,
    person_merges,
    persons,
    recluster_runs,
)

# SQL Server, when MSSQL_URL is set (a URL or an ODBC connection string; the tests empty that database).
MSSQL_URL = os.environ.get("MSSQL_URL")
MSSQL = pytest.param(
    "mssql",
    marks=[
        pytest.mark.mssql,
        pytest.mark.skipif(not MSSQL_URL, reason="MSSQL_URL is not set: no SQL Server to test against"),
    ],
)


def mssql_url() -> str | URL:
    assert MSSQL_URL
    return MSSQL_URL if "://" in MSSQL_URL else odbc_url(MSSQL_URL)


@asynccontextmanager
async def migrated_engine(url: str | URL) -> AsyncIterator[AsyncEngine]:
    engine = engine_for_url(async_url(url))
    await ensure_schema(engine)
    try:
        yield engine
    finally:
        await engine.dispose()


async def emptied(engine: AsyncEngine) -> Callable[[], SqlUnitOfWork]:
    """A factory of units of work on the engine's database, emptied first (children before parents)."""
    async with engine.begin() as connection:
        for table in (
            cannot_links,
            face_edits,
            face_tombstones,
            person_merges,
            faces,
            persons,
            images,
            recluster_runs,
        ):
            await connection.execute(delete(table))
    return partial(SqlUnitOfWork, engine)
