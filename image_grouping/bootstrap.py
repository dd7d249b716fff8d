"""Wires the real adapters the handlers need; tests and benchmarks pass their own where they need to."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import text
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from image_grouping.config import Settings
from image_grouping.grouping.params import GroupingParams
from image_grouping.handlers.detection import Analyzer, DetectionDeps
from image_grouping.storage import (
    ImagePathResolver,
    SqlUnitOfWork,
    ThumbnailStore,
    create_engine,
    ensure_schema,
)

if TYPE_CHECKING:
    from image_grouping.vision import FaceAnalyzer
    from image_grouping.vision.params import VisionParams

log = structlog.get_logger(__name__)

PROBE_TIMEOUT_SECONDS = 5.0
# What a database that is down (or restarting) raises.
UNREACHABLE = (OSError, TimeoutError, OperationalError, InterfaceError)


@dataclass
class Adapters:
    settings: Settings
    engine: AsyncEngine
    analyzer: Analyzer | None  # loaded only when detection runs
    thumbnails: ThumbnailStore = field(init=False)
    paths: ImagePathResolver = field(init=False)

    def __post_init__(self) -> None:
        self.thumbnails = ThumbnailStore(self.settings.thumbnail_save_path, self.settings.system_storage)
        self.paths = ImagePathResolver(self.settings.db_prefix, self.settings.container_images_root)

    def unit_of_work(self) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.engine)

    async def probe_database(self) -> None:
        """Raises unless the database answers within a few seconds."""
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS), self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    def detection_deps(self) -> DetectionDeps:
        if self.analyzer is None:
            raise RuntimeError("detection needs a face analyzer")
        return DetectionDeps(
            analyzer=self.analyzer,
            unit_of_work=self.unit_of_work,
            thumbnails=self.thumbnails,
            paths=self.paths,
            max_image_bytes=self.settings.max_image_bytes,
            dry_run=self.settings.dry_run,
        )

    async def close(self) -> None:
        close_analyzer = getattr(self.analyzer, "close", None)
        if close_analyzer is not None:
            close_analyzer()
        await self.engine.dispose()


async def bootstrap(
    settings: Settings, *, analyzer: Analyzer | None = None, engine: AsyncEngine | None = None
) -> Adapters:
    """The adapters for `settings`: the database (schema ensured, waiting for it while it is down) and,
    when detection runs, the face analyzer."""
    engine = engine or create_engine(settings)
    await _retry_until_up(lambda: ensure_schema(engine), what="database")
    if analyzer is None and settings.service in ("detection", "both"):
        analyzer = load_analyzer(settings)
    return Adapters(settings, engine, analyzer)


def load_analyzer(settings: Settings) -> FaceAnalyzer:
    """The face analyzer the settings describe (vision is imported only by processes that detect)."""
    from image_grouping.vision import FaceAnalyzer

    return FaceAnalyzer.load(vision_params(settings))


def vision_params(settings: Settings) -> VisionParams:
    """The settings face analysis reads (`model_pack`, `model_dir`, ...: the same names)."""
    from image_grouping.vision.params import VisionParams

    return VisionParams(**{item.name: getattr(settings, item.name) for item in fields(VisionParams)})


def grouping_params(settings: Settings) -> GroupingParams:
    """The GROUPING_* settings, without their prefix."""
    return GroupingParams(
        **{item.name: getattr(settings, f"grouping_{item.name}") for item in fields(GroupingParams)}
    )


async def _retry_until_up(connect: Callable[[], Awaitable[object]], *, what: str) -> None:
    delay = 0.5
    while True:
        try:
            await connect()
            return
        except UNREACHABLE as error:
            log.warning("unreachable at start, retrying", what=what, error=repr(error), retry_in=delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 30.0)
