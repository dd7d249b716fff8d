"""The liveness file and the Docker health check that reads it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from image_grouping.consumer.liveness import check_liveness, keep_alive

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_a_fresh_file_is_healthy_and_a_stale_or_missing_one_is_not(tmp_path: Path) -> None:
    alive = tmp_path / "alive"
    assert check_liveness(alive, 60)[0] is False
    alive.touch()
    assert check_liveness(alive, 60)[0]
    old = time.time() - 120
    os.utime(alive, (old, old))
    healthy, reason = check_liveness(alive, 60)
    assert not healthy
    assert "old" in reason


async def test_the_heartbeat_touches_only_while_healthy(tmp_path: Path) -> None:
    alive = tmp_path / "alive"
    connected = True
    task = asyncio.create_task(keep_alive(alive, 0.05, lambda: connected))
    await asyncio.sleep(0.2)
    assert check_liveness(alive, 1)[0]
    connected = False
    await asyncio.sleep(0.1)
    touched = alive.stat().st_mtime
    await asyncio.sleep(0.3)
    task.cancel()
    assert alive.stat().st_mtime == touched


def test_the_docker_healthcheck_exits_non_zero_when_stale(tmp_path: Path) -> None:
    alive = tmp_path / "alive"
    environment = os.environ | {"LIVENESS_FILE": str(alive), "LIVENESS_MAX_AGE_SECONDS": "30"}
    script = [sys.executable, str(REPO_ROOT / "docker" / "healthcheck.py")]

    assert subprocess.run(script, env=environment, capture_output=True, check=False).returncode == 1
    alive.touch()
    assert subprocess.run(script, env=environment, capture_output=True, check=False).returncode == 0
    old = time.time() - 60
    os.utime(alive, (old, old))
    stale = subprocess.run(script, env=environment, capture_output=True, text=True, check=False)
    assert stale.returncode == 1
    assert "unhealthy" in stale.stdout
