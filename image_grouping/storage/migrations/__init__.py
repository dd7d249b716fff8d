"""Alembic migrations shipped inside the package, run programmatically (no alembic.ini needed)."""

from __future__ import annotations

from pathlib import Path

import structlog
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from image_grouping.storage.database import redact
from image_grouping.storage.schema import database_identity

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
    log.debug("database schema ready", url=redact(engine.url), revision=revision)


async def read_database_id(engine: AsyncEngine) -> str:
    """The identity the schema's creation gave this database; it names the database's thumbnail folder."""
    async with engine.connect() as connection:
        return (await connection.execute(select(database_identity.c.id))).scalar_one()


async def schema_is_current(engine: AsyncEngine) -> bool:
    """Whether the database's schema is at the latest revision; reads only (a dry run must not write)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    heads = set(ScriptDirectory.from_config(alembic_config()).get_heads())

    def current(connection: Connection) -> set[str]:
        return set(MigrationContext.configure(connection).get_current_heads())

    async with engine.connect() as connection:
        return await connection.run_sync(current) == heads


def render_upgrade_sql(url: object, revision: str = HEAD) -> None:
    """Print the SQL of the migrations for the URL's dialect without connecting (Alembic offline mode)."""
    config = alembic_config()
    config.attributes["url"] = url
    command.upgrade(config, revision, sql=True)
