"""What the repositories share: the clock, chunked IN lists, the key of a stored path."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from image_grouping.storage.schema import DEFAULT_LIBRARY

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
