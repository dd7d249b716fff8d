"""The recluster run log."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from image_grouping.storage.repositories.common import now
from image_grouping.storage.schema import (
    recluster_runs,
)

log = structlog.get_logger(__name__)


class ReclusterRunRepository:
    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def start(self, kind: str) -> int:
        result = await self._connection.execute(
            insert(recluster_runs).values(kind=kind, status="running", started_at=now())
        )
        return int(result.inserted_primary_key[0])

    async def finish(self, run_id: int, stats: Mapping[str, Any], status: str = "done") -> None:
        await self._connection.execute(
            update(recluster_runs)
            .where(recluster_runs.c.id == run_id)
            .values(status=status, finished_at=now(), stats=dict(stats))
        )

    async def latest(self, kind: str) -> dict[str, Any] | None:
        query = (
            select(recluster_runs)
            .where(recluster_runs.c.kind == kind)
            .order_by(recluster_runs.c.started_at.desc(), recluster_runs.c.id.desc())
            .limit(1)
        )
        row = (await self._connection.execute(query)).first()
        return dict(row._mapping) if row else None
