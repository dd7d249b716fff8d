"""Storage tests run once per database: SQLite, the PostgreSQL server of this machine and, when
`MSSQL_URL` is set, SQL Server (that database is emptied by the tests)."""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from database_helpers import emptied, migrated_engine
from sqlalchemy.ext.asyncio import AsyncEngine

from image_grouping.storage import SqlUnitOfWork
from image_grouping.storage.database import odbc_url

POSTGRES_ADMIN_DSN = os.environ.get("POSTGRES_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
MSSQL_URL = os.environ.get("MSSQL_URL")
BACKENDS = [
    "sqlite",
    "postgresql",
    pytest.param(
        "mssql",
        marks=[
            pytest.mark.mssql,
            pytest.mark.skipif(not MSSQL_URL, reason="MSSQL_URL is not set: no SQL Server to test against"),
        ],
    ),
]


@pytest.fixture(scope="session", params=BACKENDS)
async def engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[AsyncEngine]:
    """A migrated database of each backend, shared by the session; `uow_factory` empties it per test."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('sqlite') / 'test.sqlite3'}"
    elif request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
    else:
        url = MSSQL_URL if "://" in MSSQL_URL else odbc_url(MSSQL_URL)  # a URL or an ODBC string
    async with migrated_engine(url) as engine:
        yield engine


@pytest.fixture
async def uow_factory(engine: AsyncEngine) -> Callable[[], SqlUnitOfWork]:
    return await emptied(engine)


@pytest.fixture
def deny_reading(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], None]:
    """Makes reading a file fail with "permission denied": by its mode, or, for root (who reads any file,
    as the tests may run), by what the file calls answer for that one path."""

    def deny(denied: Path) -> None:
        if os.geteuid() != 0:
            denied.chmod(0)
            return
        read_bytes, access = Path.read_bytes, os.access

        def guarded_read_bytes(path: Path) -> bytes:
            if path == denied:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return read_bytes(path)

        monkeypatch.setattr(Path, "read_bytes", guarded_read_bytes)
        monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != denied and access(path, mode))

    return deny
