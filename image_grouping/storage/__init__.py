"""Persistence: the database (SQL Server, PostgreSQL, SQLite), its migrations, image paths and thumbnails."""

from image_grouping.storage.database import create_engine, database_url, redact
from image_grouping.storage.migrations import ensure_schema, read_database_id
from image_grouping.storage.paths import ImagePathResolver, read_image_file
from image_grouping.storage.repositories import (
    FaceRepository,
    ImageRepository,
    PersonRepository,
    ReclusterRunRepository,
)
from image_grouping.storage.thumbnails import ThumbnailStore
from image_grouping.storage.unit_of_work import SqlUnitOfWork

__all__ = [
    "FaceRepository",
    "ImagePathResolver",
    "ImageRepository",
    "PersonRepository",
    "ReclusterRunRepository",
    "SqlUnitOfWork",
    "ThumbnailStore",
    "create_engine",
    "database_url",
    "ensure_schema",
    "read_database_id",
    "read_image_file",
    "redact",
]
