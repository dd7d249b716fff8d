"""Alembic migrations shipped inside the package, run programmatically (no alembic.ini needed)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

from image_grouping.config import Settings
from image_grouping.storage.database import create_engine, database_url, redact

log = structlog.get_logger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent
HEAD = "head"

# Serialises migrations when several workers start at once against the same server.
_LOCKS = {
    "postgresql": "SELECT pg_advisory_xact_lock(4242170001)",
    "mssql": "EXEC sp_getapplock @Resource = 'image-grouping-migrate', @LockMode = 'Exclusive', "
    "@LockOwner = 'Transaction', @LockTimeout = 600000",
}


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def _upgrade(connection: Connection, revision: str) -> None:
    lock = _LOCKS.get(connection.dialect.name)
    if lock:
        connection.execute(text(lock))
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def ensure_schema(engine: AsyncEngine, revision: str = HEAD) -> None:
    """Create or upgrade the schema to `revision` (the latest by default) in one transaction."""
    async with engine.begin() as connection:
        await connection.run_sync(_upgrade, revision)
    log.info("database schema ready", url=redact(engine.url), revision=revision)


def render_upgrade_sql(url: object, revision: str = HEAD) -> None:
    """Print the SQL of the migrations for the URL's dialect without connecting (Alembic offline mode)."""
    config = alembic_config()
    config.attributes["url"] = url
    command.upgrade(config, revision, sql=True)


def upgrade_database(settings: Settings, sql_only: bool) -> None:
    """`image-grouping migrate`: apply the migrations, or with `sql_only` print their SQL."""
    if sql_only:
        render_upgrade_sql(database_url(settings))
        return

    async def run() -> None:
        engine = create_engine(settings)
        try:
            await ensure_schema(engine)
        finally:
            await engine.dispose()

    asyncio.run(run())
