"""Real faces for grouping tests: a fixed subset of the LFW identities, analysed by the production
pipeline (cached in .bench/ after the first run), and the databases the handlers write to."""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from database_helpers import MSSQL, emptied, migrated_engine, mssql_url
from sqlalchemy.ext.asyncio import AsyncEngine

from image_grouping.config import Settings, load_settings
from image_grouping.evaluation.grouping import LabelledFaces, load_labelled_faces
from image_grouping.storage import SqlUnitOfWork

IDENTITIES = 24  # people with 6+ photos, every few names in alphabetical order
PHOTOS_PER_IDENTITY = 10
DISTRACTORS = 16  # people with a single photo


@pytest.fixture(scope="session")
def grouping_settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="session")
def lfw_subset(
    eval_dir: Path, grouping_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> LabelledFaces:
    with (eval_dir / "identity_labels.csv").open(newline="") as file:
        photos: defaultdict[str, list[str]] = defaultdict(list)
        for row in csv.DictReader(file):
            photos[row["label"]].append(row["path"])
    several = sorted(label for label, paths in photos.items() if len(paths) >= 6)
    single = sorted(label for label, paths in photos.items() if len(paths) == 1)
    step = len(several) // IDENTITIES
    chosen = [
        (label, path)
        for label in several[::step][:IDENTITIES]
        for path in photos[label][:PHOTOS_PER_IDENTITY]
    ]
    chosen += [(label, photos[label][0]) for label in single[:: len(single) // DISTRACTORS][:DISTRACTORS]]
    labels = tmp_path_factory.mktemp("lfw") / "subset.csv"
    with labels.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["path", "label"])
        writer.writerows((path, label) for label, path in chosen)
    return load_labelled_faces(grouping_settings, labels, eval_dir)


@pytest.fixture(scope="session", params=["sqlite", "postgresql", MSSQL])
async def grouping_engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('grouping') / 'test.sqlite3'}"
    elif request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
    else:
        url = mssql_url()
    async with migrated_engine(url) as engine:
        yield engine


@pytest.fixture
async def unit_of_work(grouping_engine: AsyncEngine) -> Callable[[], SqlUnitOfWork]:
    """A factory of units of work on an emptied database."""
    return await emptied(grouping_engine)
