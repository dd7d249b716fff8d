"""Liveness: a file touched while the event loop runs and the broker connection is up.

A blocked loop stops touching it, and so does a lost connection; Docker's HEALTHCHECK
(`docker/healthcheck.py` or `image-grouping healthcheck`) reads its age.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)


def check_liveness(path: Path, max_age: float) -> tuple[bool, str]:
    """Whether the liveness file was touched within `max_age` seconds, and why not."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False, f"unhealthy: {path} does not exist"
    if age > max_age:
        return False, f"unhealthy: {path} is {age:.0f}s old (max {max_age:.0f}s)"
    return True, f"healthy: {path} is {age:.1f}s old"


async def keep_alive(path: Path, interval: float, is_healthy: Callable[[], bool]) -> None:
    """Touch `path` every `interval` seconds while `is_healthy()`; runs until cancelled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    was_healthy = True
    while True:
        healthy = is_healthy()
        if healthy:
            await asyncio.to_thread(path.touch)
        elif was_healthy:
            log.warning("not touching the liveness file: broker connection is down", path=str(path))
        was_healthy = healthy
        await asyncio.sleep(interval)
