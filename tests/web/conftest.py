"""The web tests' fixtures: the library of web_library.py on SQLite and PostgreSQL, and a client of the app
over it (its lifespan run: the adapters bootstrapped as `image-grouping serve` does)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from web_library import Library, build_library, web_settings

from image_grouping.web import create_app


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'web.sqlite3'}"
    return str(request.getfixturevalue("fresh_postgres_url"))


@pytest.fixture
def library(database: str, tmp_path: Path) -> Library:
    return build_library(web_settings(database, tmp_path), tmp_path)


@pytest.fixture
def client(library: Library) -> Iterator[TestClient]:
    with TestClient(create_app(library.settings)) as client:
        yield client
