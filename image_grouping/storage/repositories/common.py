"""What the repositories share: the clock, chunked IN lists, the key of a stored path."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

IN_CHUNK = 1000  # SQL Server accepts at most 2,100 parameters per statement


def now() -> datetime:
    return datetime.now(UTC)


def chunks(values: Sequence[Any], size: int = IN_CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def path_key(source_path: str) -> str:
    """The unique key of a stored path: its sha256, slashes normalised."""
    return hashlib.sha256(source_path.strip().replace("\\", "/").encode()).hexdigest()
