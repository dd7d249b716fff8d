"""Which database the settings point at, and that passwords never leak into text."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import make_url

from image_grouping.config import load_settings
from image_grouping.storage import create_engine, database_url, redact
from image_grouping.storage.database import async_url, odbc_url

ODBC = (
    "Driver={ODBC Driver 18 for SQL Server};Server=tcp:db,1433;Database=faces;Uid=sa;Pwd=s3cr3t!;"
    "TrustServerCertificate=yes"
)


def test_the_odbc_connection_string_of_the_original_service_is_passed_through_unchanged() -> None:
    url = database_url(load_settings(sql_connection_string=ODBC, database_url=None))

    assert url.drivername == "mssql+aioodbc"
    assert url.query["odbc_connect"] == ODBC
    assert make_url(url.render_as_string(hide_password=False)).query["odbc_connect"] == ODBC  # round trip
    dialect = create_engine(load_settings(sql_connection_string=ODBC, database_url=None)).dialect
    assert dialect.name == "mssql"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@h/db", "postgresql+asyncpg"),
        ("postgres://u:p@h/db", "postgresql+asyncpg"),
        ("postgresql+psycopg2://u:p@h/db", "postgresql+asyncpg"),
        ("postgresql+asyncpg://u:p@h/db", "postgresql+asyncpg"),
        ("sqlite:///x.db", "sqlite+aiosqlite"),
        ("mssql+pyodbc://u:p@dsn", "mssql+aioodbc"),
    ],
)
def test_database_url_maps_sync_drivers_to_async_ones(given: str, expected: str) -> None:
    assert async_url(given).drivername == expected


def test_database_url_wins_over_the_odbc_string_and_sqlite_is_the_default(tmp_path: Path) -> None:
    both = load_settings(sql_connection_string=ODBC, database_url="postgresql://u:p@h/db")
    assert database_url(both).drivername == "postgresql+asyncpg"

    default = database_url(
        load_settings(sql_connection_string=None, database_url=None, system_storage=tmp_path)
    )
    assert default.drivername == "sqlite+aiosqlite"
    assert Path(default.database).parent == tmp_path


@pytest.mark.parametrize(
    "text",
    [
        ODBC,
        "DRIVER={FreeTDS};SERVER=db;PWD={s3cr3t!;with braces};UID=sa",
        "Server=db;Password = s3cr3t!;User Id=sa",
        "postgresql+asyncpg://app:s3cr3t!@db:5432/faces",
        "mssql+pyodbc://sa:s3cr3t!@db/faces?driver=ODBC+Driver+18",
        "postgresql://db/faces?user=app&password=s3cr3t!",
        str(odbc_url(ODBC)),
        odbc_url(ODBC).render_as_string(hide_password=False),
    ],
)
def test_redact_hides_passwords(text: str) -> None:
    hidden = redact(text)
    assert "s3cr3t" not in hidden
    assert "***" in hidden


def test_redact_keeps_the_rest_and_accepts_url_objects() -> None:
    url = make_url("postgresql+asyncpg://app:s3cr3t!@db:5432/faces")
    assert redact(url) == "postgresql+asyncpg://app:***@db:5432/faces"
    assert redact(odbc_url(ODBC)).count("Uid%3Dsa") == 1


def test_a_malformed_url_is_refused_without_echoing_its_password() -> None:
    with pytest.raises(ValueError, match="not a database URL") as error:
        async_url("postgresql://app:s3cr3t!@db:notaport/faces")
    assert "s3cr3t" not in str(error.value)
    with pytest.raises(ValueError, match="unsupported database") as error:
        async_url("oracle://app:s3cr3t!@db/faces")
    assert "s3cr3t" not in str(error.value)
