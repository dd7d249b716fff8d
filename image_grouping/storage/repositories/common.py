"""What the repositories share: the clock, chunked IN lists, the key of a stored path, clearing covers."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, Update, update

from image_grouping.storage.schema import DEFAULT_LIBRARY, persons

IN_CHUNK = 1000  # SQL Server accepts at most 2,100 parameters per statement


def now() -> datetime:
    return datetime.now(UTC)


def chunks(values: Sequence[Any], size: int = IN_CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def path_key(source_path: str, library_id: str = DEFAULT_LIBRARY) -> str:
    """The unique key of a stored path in a library: the sha256 of the path, slashes normalised, with the
    library before it for every library but the default one (whose keys are those stored before
    libraries), so the same path in two libraries is two images."""
    normalised = source_path.strip().replace("\\", "/")
    if library_id != DEFAULT_LIBRARY:
        # NUL cannot occur in a path, so no library and path run together into another's
        normalised = f"{library_id}\0{normalised}"
    return hashlib.sha256(normalised.encode()).hexdigest()


def covers_cleared(face_ids: Sequence[int] | Select[Any]) -> Update:
    """The persons whose cover is one of these faces (ids, or a query of them) lose it. Stamped like every
    write of a person: the warm copy of grouping catches persons up by `updated_at`."""
    cleared = update(persons).where(persons.c.cover_face_id.in_(face_ids))
    return cleared.values(cover_face_id=None, updated_at=now())
