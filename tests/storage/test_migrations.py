"""Migrations build the schema from nothing, upgrade it in place, match the code, render for SQL Server."""

from __future__ import annotations

import io
import re
import sqlite3
import subprocess
import sys
from contextlib import redirect_stdout
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import URL, Connection, insert, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from image_grouping.models.messages import DEFAULT_LIBRARY
from image_grouping.storage import SqlUnitOfWork, ensure_schema, read_database_id
from image_grouping.storage.database import async_url, engine_for_url, odbc_url
from image_grouping.storage.migrations import render_upgrade_sql
from image_grouping.storage.repositories import path_key
from image_grouping.storage.schema import faces, images, metadata, persons, recluster_runs

HEAD_REVISION = "0010"
TABLES = {
    "images",
    "faces",
    "persons",
    "cannot_links",
    "recluster_runs",
    "database_identity",
    "face_tombstones",
    "person_merges",
    "face_edits",
}


@pytest.fixture(params=["sqlite", "postgresql"])
async def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncEngine:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'empty.sqlite3'}"
    else:
        url = request.getfixturevalue("fresh_postgres_url")
    engine = engine_for_url(async_url(url))
    yield engine
    await engine.dispose()


def _state(connection: Connection) -> tuple[set[str], str | None, list]:
    tables = set(inspect(connection).get_table_names()) - {"alembic_version"}
    revision = MigrationContext.configure(connection).get_current_revision()
    differences = compare_metadata(MigrationContext.configure(connection), metadata)
    return tables, revision, differences


async def test_migrations_create_the_schema_from_nothing_as_the_code_declares_it(
    empty_engine: AsyncEngine,
) -> None:
    await ensure_schema(empty_engine)
    identity = await read_database_id(empty_engine)
    await ensure_schema(empty_engine)  # a second run has nothing to do

    async with empty_engine.connect() as connection:
        tables, revision, differences = await connection.run_sync(_state)
    assert tables == TABLES
    assert revision == HEAD_REVISION
    assert differences == []
    assert re.fullmatch("[0-9a-f]{32}", identity)
    assert await read_database_id(empty_engine) == identity  # made once, kept
    if empty_engine.dialect.name == "postgresql":
        async with empty_engine.connect() as connection:
            options = await connection.scalar(text("SELECT reloptions FROM pg_class WHERE relname = 'faces'"))
        assert options == ["toast_tuple_target=8160"]


@pytest.mark.parametrize("previous", ["0001", "0002", "0003", "0004", "0005", "0006", "0007"])
async def test_upgrade_from_a_previous_revision_keeps_the_data(
    empty_engine: AsyncEngine, previous: str
) -> None:
    await ensure_schema(empty_engine, previous)
    async with empty_engine.begin() as connection:
        tables_before, revision_before, _ = await connection.run_sync(_state)
        assert revision_before == previous
        assert ("recluster_runs" in tables_before) == (previous >= "0002")
        await connection.execute(
            insert(images).values(
                source_path="//srv/a.jpg",
                path_key="k" * 64,
                status="pending",
                created_at=datetime.now(UTC),
            )
        )

    await ensure_schema(empty_engine)

    async with empty_engine.connect() as connection:
        tables, revision, differences = await connection.run_sync(_state)
        paths = (await connection.execute(select(images.c.source_path))).scalars().all()
    assert (tables, revision, differences) == (TABLES, HEAD_REVISION, [])
    assert paths == ["//srv/a.jpg"]
    assert re.fullmatch("[0-9a-f]{32}", await read_database_id(empty_engine))  # an old database gets one


async def test_upgrade_to_libraries_puts_what_was_stored_into_the_default_library(
    empty_engine: AsyncEngine,
) -> None:
    await ensure_schema(empty_engine, "0007")
    moment = datetime.now(UTC)
    async with empty_engine.begin() as connection:
        image_id = (
            await connection.execute(
                insert(images).values(
                    source_path="//srv/a.jpg",
                    path_key=path_key("//srv/a.jpg"),
                    status="done",
                    content_hash="c" * 64,
                    model_pack="buffalo_sc",
                    created_at=moment,
                )
            )
        ).inserted_primary_key[0]
        person_id = (
            await connection.execute(
                insert(persons).values(name="Ann", hidden=False, created_at=moment, updated_at=moment)
            )
        ).inserted_primary_key[0]
        await connection.execute(
            insert(faces).values(
                image_id=image_id,
                model_pack="buffalo_sc",
                face_index=0,
                box_x1=0.0,
                box_y1=0.0,
                box_x2=40.0,
                box_y2=40.0,
                landmarks=b"\0" * 40,
                det_score=0.9,
                size_px=40.0,
                sharpness=50.0,
                yaw=0.0,
                pose="frontal",
                embedding=b"\0" * 2048,
                person_id=person_id,
                assigned_by="manual",
                created_at=moment,
                updated_at=moment,
            )
        )
        await connection.execute(
            insert(recluster_runs).values(kind="recluster", status="done", started_at=moment, stats={})
        )

    await ensure_schema(empty_engine)

    async with empty_engine.connect() as connection:
        for table in (images, persons, faces, recluster_runs):
            libraries = (await connection.execute(select(table.c.library_id))).scalars().all()
            assert libraries == [DEFAULT_LIBRARY], table.name
    # The default library's keys are what they were: the same path is the same image, in that library only.
    async with SqlUnitOfWork(empty_engine) as uow:
        assert (await uow.images.get_or_create(None, "//srv/a.jpg")).id == image_id
        assert [person.name for person in await uow.persons.list()] == ["Ann"]
        assert (await uow.faces.load_for_grouping("buffalo_sc")).face_ids.tolist() != []
    async with SqlUnitOfWork(empty_engine, "another") as uow:
        assert await uow.images.find(None, "//srv/a.jpg") == []
        assert await uow.persons.list() == []
        assert await uow.persons.in_other_library(person_id)


def _offline_sql(url: URL) -> str:
    output = io.StringIO()
    with redirect_stdout(output):
        render_upgrade_sql(url)
    return output.getvalue()


def test_migrations_render_for_sql_server_in_offline_mode() -> None:
    sql = _offline_sql(odbc_url("Driver={ODBC Driver 18 for SQL Server};Server=db;Uid=sa;Pwd=x"))

    for table in TABLES:
        assert f"CREATE TABLE {table} (" in sql
    assert "IDENTITY" in sql
    assert "VARBINARY(max)" in sql
    assert "DATETIMEOFFSET" in sql
    assert "BIT NOT NULL" in sql  # persons.hidden
    assert "ALTER TABLE faces ADD added_by_hand BIT NOT NULL DEFAULT 0" in sql  # old rows: 0
    for table in ("images", "faces", "persons", "recluster_runs"):  # old rows: the default library
        assert f"ALTER TABLE {table} ADD library_id NVARCHAR(255) NOT NULL DEFAULT 'default'" in sql
    assert "BOOLEAN" not in sql.upper()
    assert "AUTOINCREMENT" not in sql.upper()
    assert re.search(r"INSERT INTO database_identity \(id\) VALUES \('[0-9a-f]{32}'\)", sql)
    assert "UPDATE alembic_version SET version_num='0004'" in sql
    assert f"UPDATE alembic_version SET version_num='{HEAD_REVISION}'" in sql
    assert "ON DELETE CASCADE" in sql.split("CREATE TABLE face_edits")[1].split(";")[0]


def test_migrate_dry_run_prints_sql_and_no_password(tmp_path: Path) -> None:
    odbc = "Driver={ODBC Driver 18 for SQL Server};Server=tcp:db,1433;Database=faces;Uid=sa;Pwd=s3cr3t!"
    result = subprocess.run(
        [sys.executable, "-m", "image_grouping.cli", "migrate", "--dry-run"],
        env={"SQL_CONNECTION_STRING": odbc, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "CREATE TABLE faces" in result.stdout
    assert "s3cr3t" not in result.stdout + result.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_migrate_creates_the_default_sqlite_database(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "image_grouping.cli", "migrate"],
        env={"SYSTEM_STORAGE": str(tmp_path / "data"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        cwd=tmp_path,
        capture_output=True,
        check=True,
    )
    with sqlite3.connect(tmp_path / "data" / "image-grouping.sqlite3") as connection:
        names = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert names >= TABLES | {"alembic_version"}
