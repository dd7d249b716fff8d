"""The recluster run log."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from image_grouping.storage.repositories.common import now
from image_grouping.storage.schema import DEFAULT_LIBRARY, face_edits, faces, recluster_runs

log = structlog.get_logger(__name__)


class ReclusterRunRepository:
    """The runs of one library."""

    def __init__(self, connection: AsyncConnection, library_id: str = DEFAULT_LIBRARY) -> None:
        self._connection = connection
        self._library = library_id

    async def start(self, kind: str, model_pack: str | None = None) -> int:
        result = await self._connection.execute(
            insert(recluster_runs).values(
                kind=kind, status="running", started_at=now(), library_id=self._library, model_pack=model_pack
            )
        )
        return int(result.inserted_primary_key[0])

    async def changed_libraries(self, kind: str, model_pack: str) -> list[str]:
        """The libraries with faces of the pack that have had new faces or edits of faces by hand since
        their last completed run of `kind` started (or have had no such run), in every library: what a
        periodic recluster has work in. (A run's own writes are neither: grouping creates no face and
        records no edit, so a quiet library stays quiet.)"""
        newest_face = (
            select(faces.c.library_id, func.max(faces.c.created_at).label("at"))
            .where(faces.c.model_pack == model_pack)
            .group_by(faces.c.library_id)
        )
        newest_edit = (
            select(faces.c.library_id, func.max(face_edits.c.created_at).label("at"))
            .select_from(face_edits.join(faces, faces.c.id == face_edits.c.face_id))
            .where(faces.c.model_pack == model_pack)
            .group_by(faces.c.library_id)
        )
        last_run = (
            select(recluster_runs.c.library_id, func.max(recluster_runs.c.started_at).label("at"))
            .where(
                recluster_runs.c.kind == kind,
                recluster_runs.c.status == "done",
                recluster_runs.c.model_pack == model_pack,
            )
            .group_by(recluster_runs.c.library_id)
        )
        changed: dict[str, datetime] = {}
        for query in (newest_face, newest_edit):
            for row in await self._connection.execute(query):
                at = _utc(row.at)
                changed[row.library_id] = max(at, changed.get(row.library_id, at))
        ran = {row.library_id: _utc(row.at) for row in await self._connection.execute(last_run)}
        return sorted(library for library, at in changed.items() if library not in ran or at >= ran[library])

    async def erase_library(self) -> None:
        """Forget the library's runs (the library is being erased)."""
        await self._connection.execute(
            delete(recluster_runs).where(recluster_runs.c.library_id == self._library)
        )

    async def finish(self, run_id: int, stats: Mapping[str, Any], status: str = "done") -> None:
        await self._connection.execute(
            update(recluster_runs)
            .where(recluster_runs.c.id == run_id)
            .values(status=status, finished_at=now(), stats=dict(stats))
        )

    async def latest(self, kind: str) -> dict[str, Any] | None:
        query = (
            select(recluster_runs)
            .where(recluster_runs.c.kind == kind, recluster_runs.c.library_id == self._library)
            .order_by(recluster_runs.c.started_at.desc(), recluster_runs.c.id.desc())
            .limit(1)
        )
        row = (await self._connection.execute(query)).first()
        return dict(row._mapping) if row else None


def _utc(moment: datetime) -> datetime:
    """SQLite keeps no offset; every time stored is UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
