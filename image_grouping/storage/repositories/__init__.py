"""Repositories, one module per aggregate: the only code that writes SQL. Each works on the connection
of one unit of work.

Every statement is SQLAlchemy Core that compiles for SQL Server, PostgreSQL and SQLite alike
(tests/storage/test_mssql_compat.py checks it): no RETURNING lists, no ON CONFLICT, LIMIT only with ORDER BY,
and IN lists chunked below SQL Server's 2,100-parameter limit.
"""

from image_grouping.storage.repositories.common import path_key
from image_grouping.storage.repositories.faces import FaceRepository
from image_grouping.storage.repositories.images import ImageRepository
from image_grouping.storage.repositories.persons import PersonRepository
from image_grouping.storage.repositories.runs import ReclusterRunRepository
from image_grouping.storage.repositories.views import ViewRepository

__all__ = [
    "FaceRepository",
    "ImageRepository",
    "PersonRepository",
    "ReclusterRunRepository",
    "ViewRepository",
    "path_key",
]
