"""Which database to talk to, and an async engine tuned for it.

`DATABASE_URL` (any SQLAlchemy URL) wins; else the ODBC `SQL_CONNECTION_STRING` of the original service is
used as is through `odbc_connect`; else a SQLite file under `SYSTEM_STORAGE`.

A setting that is no URL or names an unsupported database raises `SettingsError`; a database that cannot
be connected to (refused, unknown host, missing database, bad login) raises `DatabaseUnreachableError`.
Both name the setting and say the problem in one line, which the command line prints as it is.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import URL, event, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from image_grouping.config import Settings, SettingsError
from image_grouping.errors import DatabaseUnreachableError

log = structlog.get_logger(__name__)

SQLITE_FILE_NAME = "image-grouping.sqlite3"
SQLITE_BUSY_TIMEOUT_MS = 30_000

# Sync driver names people write in DATABASE_URL, and the async driver that serves each backend.
_ASYNC_DRIVERS = {"postgresql": "asyncpg", "postgres": "asyncpg", "sqlite": "aiosqlite", "mssql": "aioodbc"}

_SECRET_PATTERNS = [
    # user:password@ in a URL
    (re.compile(r"(?P<keep>://[^:/@\s]*:)[^@\s]+@"), r"\g<keep>***@"),
    # PWD=...; / Password=... in an ODBC string or a URL query, the value possibly {braced}
    (
        re.compile(r"(?i)(?P<keep>(?:^|[;&?\s])(?:pwd|password)\s*=\s*)(?:\{(?:[^}]|\}\})*\}|[^;&\s]*)"),
        r"\g<keep>***",
    ),
    # the same, percent-encoded inside odbc_connect=...
    (re.compile(r"(?i)(?P<keep>(?:=|%3B|%20)(?:pwd|password)%3D).*?(?=%3B|&|$|\s)"), r"\g<keep>***"),
]


def redact(text_or_url: str | URL | object) -> str:
    """The text with every password replaced by ***; safe to log or put in an error."""
    text = (
        text_or_url.render_as_string(hide_password=False)
        if isinstance(text_or_url, URL)
        else str(text_or_url)
    )
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def odbc_url(connection_string: str) -> URL:
    """A SQLAlchemy URL for an ODBC connection string, passed to the driver untouched."""
    return URL.create("mssql+aioodbc", query={"odbc_connect": connection_string.strip()})


def async_url(url: str | URL) -> URL:
    """The URL with its driver replaced by the async one of its backend (postgresql:// -> asyncpg)."""
    try:
        url = make_url(url)
    except Exception:  # the parser's message would echo the URL, password included
        raise ValueError(f"not a database URL: {redact(url)}") from None
    backend = url.get_backend_name()
    if backend == "postgres":
        backend = "postgresql"
    driver = _ASYNC_DRIVERS.get(backend)
    if driver is None:
        raise ValueError(f"unsupported database {backend!r} in {redact(url)}")
    return url.set(drivername=f"{backend}+{driver}")


def database_setting(settings: Settings) -> str:
    """The setting the database comes from, to name in messages (`--db` overrides DATABASE_URL)."""
    if settings.database_url is not None:
        return "DATABASE_URL"
    if settings.sql_connection_string is not None:
        return "SQL_CONNECTION_STRING"
    return "SYSTEM_STORAGE"  # the local SQLite file in it


def database_url(settings: Settings) -> URL:
    if settings.database_url is not None:
        try:
            return async_url(settings.database_url.get_secret_value())
        except ValueError as error:
            raise SettingsError(f"DATABASE_URL: {error}") from None
    if settings.sql_connection_string is not None:
        return odbc_url(settings.sql_connection_string.get_secret_value())
    return URL.create("sqlite+aiosqlite", database=str(settings.system_storage / SQLITE_FILE_NAME))


def create_engine(settings: Settings) -> AsyncEngine:
    return engine_for_url(database_url(settings), setting=database_setting(settings))


def engine_for_url(url: URL, *, setting: str = "database") -> AsyncEngine:
    options: dict[str, Any] = {"pool_pre_ping": True}
    backend = url.get_backend_name()
    if backend == "sqlite":
        options = {}
        if url.database and url.database != ":memory:":
            try:
                Path(url.database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise SettingsError(
                    f"{setting}: cannot create the folder of {url.database}: {error.strerror}"
                ) from None
    elif backend == "postgresql":
        options.update(pool_size=5, max_overflow=10, pool_recycle=1800)
    elif backend == "mssql":
        # Azure SQL drops idle connections after ~30 min; recycle before that.
        options.update(pool_size=5, max_overflow=10, pool_recycle=1200)
    engine = create_async_engine(url, **options)
    _explain_connect_failures(engine, setting)
    if backend == "sqlite":
        _tune_sqlite(engine)
    log.debug("database engine created", url=redact(url))
    return engine


def _explain_connect_failures(engine: AsyncEngine, setting: str) -> None:
    """A failed connect raises DatabaseUnreachableError naming the setting, the URL (no password) and
    the driver's reason, instead of the driver's own error under dozens of lines of traceback."""

    @event.listens_for(engine.sync_engine, "do_connect")
    def _connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        try:
            return dialect.connect(*cargs, **cparams)
        except Exception as error:
            reason = getattr(error, "orig", None) or error  # a driver error wrapped by SQLAlchemy's adapter
            detail = str(reason).strip().splitlines()[0] if str(reason).strip() else type(reason).__name__
            raise DatabaseUnreachableError(
                f"{setting}: cannot connect to {redact(engine.url)}: {redact(detail)}"
            ) from error


def _tune_sqlite(engine: AsyncEngine) -> None:
    """WAL for readers beside a writer, a busy timeout instead of instant lock errors, and transactions
    that take the write lock up front, so two writers queue instead of failing on lock upgrade."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
