"""The one place that wires real adapters to the handlers, for every entry point: the service, the
oneshot run, scan, recluster, repack, report, eval and migrate. Tests wire fakes instead.

A dry run is a choice of adapters, not a flag the handlers check: a unit of work whose commit commits
nothing, a thumbnail store that writes no file, a publisher that publishes nothing, and (in the
consumer) messages held instead of acknowledged.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import URL, make_url, text
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from image_grouping.config import Settings
from image_grouping.grouping import GroupingParams
from image_grouping.grouping.params import pack_defaults
from image_grouping.handlers.add_face import AddFaceDeps
from image_grouping.handlers.detection import DetectionDeps
from image_grouping.handlers.people import PeopleDeps
from image_grouping.handlers.ports import Analyzer, GroupingReader, UnitOfWork, UnitOfWorkFactory
from image_grouping.handlers.queries import SuggestionParams
from image_grouping.handlers.recognition import ColdGroupingReader, GroupingDeps
from image_grouping.models.messages import DEFAULT_LIBRARY
from image_grouping.packs import pack_info
from image_grouping.retry import backoff
from image_grouping.storage import (
    ImagePathResolver,
    SqlUnitOfWork,
    ThumbnailStore,
    create_engine,
    ensure_schema,
    read_database_id,
    redact,
)
from image_grouping.storage.database import engine_for_url
from image_grouping.storage.files import ImageFiles
from image_grouping.storage.grouping_cache import WarmGroupingReader
from image_grouping.storage.migrations import schema_is_current
from image_grouping.storage.thumbnails import DryRunThumbnailStore
from image_grouping.storage.unit_of_work import DryRunUnitOfWork

if TYPE_CHECKING:
    from image_grouping.vision import FaceAnalyzer
    from image_grouping.vision.params import VisionParams

log = structlog.get_logger(__name__)

PROBE_TIMEOUT_SECONDS = 5.0
# What a database that is down (or restarting) raises.
UNREACHABLE = (OSError, TimeoutError, OperationalError, InterfaceError)


def vision_params(settings: Settings) -> VisionParams:
    """The settings face analysis reads (`model_pack`, `model_dir`, ...: the same names)."""
    from image_grouping.vision.params import VisionParams

    return VisionParams(**{item.name: getattr(settings, item.name) for item in fields(VisionParams)})


def grouping_params(settings: Settings, model_pack: str | None = None) -> GroupingParams:
    """The GROUPING_* settings, without their prefix; those left unset are the pack's own (the pack of
    `model_pack`, default MODEL_PACK)."""
    values = {item.name: getattr(settings, f"grouping_{item.name}") for item in fields(GroupingParams)}
    chosen = {name: value for name, value in values.items() if value is not None}
    return replace(pack_defaults(model_pack or settings.model_pack), **chosen)


def log_model_licence(settings: Settings) -> None:
    """The start-up line that states the licence of the pack in use, a warning when it excludes commercial
    use and nobody has said that it is accepted (ACCEPT_NON_COMMERCIAL_MODELS; false refused it already,
    when the settings were read)."""
    info = pack_info(settings.model_pack) if settings.model_dir is None else None
    if info is None:
        log.warning(
            "model pack licence unknown: check that its weights' licence allows your use",
            model_pack=settings.model_pack,
            model_dir=str(settings.model_dir),
        )
        return
    fields_ = {"model_pack": info.id, "licence": info.licence, "commercial_use": info.commercial_use}
    if not info.commercial_use and settings.accept_non_commercial_models is None:
        log.warning(
            "model pack licensed for non-commercial use only: set MODEL_PACK=yunet_dlib for commercial use, "
            "or ACCEPT_NON_COMMERCIAL_MODELS=true to accept the licence",
            **fields_,
        )
    else:
        log.info("model pack licence", **fields_)


def suggestion_params(settings: Settings) -> SuggestionParams:
    """Suggestions compare the faces of the current model pack."""
    return SuggestionParams(model_pack=settings.model_pack)


@dataclass
class Adapters:
    """The real adapters of one process, built once; `detection_deps()` and `grouping_deps()` are what
    the handlers take."""

    settings: Settings
    engine: AsyncEngine
    thumbnails: ThumbnailStore
    files: ImageFiles
    _analyzer: Analyzer | None = None
    _grouping_reader: GroupingReader | None = None

    @property
    def grouping_reader(self) -> GroupingReader:
        """The process's warm copy of the faces grouping reads (one for every shard it consumes)."""
        if self._grouping_reader is None:
            settings = self.settings
            self._grouping_reader = (
                WarmGroupingReader(
                    max_faces=settings.grouping_cache_faces,
                    window_seconds=settings.grouping_cache_window_seconds,
                )
                if settings.grouping_cache_faces > 0
                else ColdGroupingReader()
            )
        return self._grouping_reader

    @property
    def dry_run(self) -> bool:
        return self.settings.dry_run

    @property
    def analyzer(self) -> Analyzer:
        """The face analyzer, loaded on first use (commands that only group never load the models)."""
        if self._analyzer is None:
            self._analyzer = load_analyzer(self.settings)
        return self._analyzer

    @property
    def unit_of_work(self) -> UnitOfWorkFactory:
        engine, kind = self.engine, DryRunUnitOfWork if self.dry_run else SqlUnitOfWork

        def unit_of_work(library_id: str = DEFAULT_LIBRARY) -> UnitOfWork:
            return kind(engine, library_id)

        return unit_of_work

    def detection_deps(self, *, skip_known_content: bool = False) -> DetectionDeps:
        return DetectionDeps(
            analyzer=self.analyzer,
            unit_of_work=self.unit_of_work,
            thumbnails=self.thumbnails,
            files=self.files,
            skip_known_content=skip_known_content,
            # Enough read ahead that an analysis thread never waits for a file.
            read_ahead=asyncio.Semaphore(2 * self.settings.analysis_workers),
        )

    def grouping_deps(self) -> GroupingDeps:
        return GroupingDeps(
            unit_of_work=self.unit_of_work,
            params=grouping_params(self.settings),
            model_pack=self.settings.model_pack,
            params_of_pack=lambda model_pack: grouping_params(self.settings, model_pack),
            interval_seconds=self.settings.interval_seconds,
            reader=self.grouping_reader,
        )

    def people_deps(self) -> PeopleDeps:
        return PeopleDeps(
            unit_of_work=self.unit_of_work, thumbnails=self.thumbnails, model_pack=self.settings.model_pack
        )

    def add_face_deps(self) -> AddFaceDeps:
        """What adding a face by hand needs: the analyzer (loaded by the first photo analysed) and the
        photos."""
        return AddFaceDeps(
            model_pack=self._analyzer.model_pack if self._analyzer is not None else self.settings.model_pack,
            analyzer=lambda: self.analyzer,
            unit_of_work=self.unit_of_work,
            thumbnails=self.thumbnails,
            files=self.files,
        )

    async def probe_database(self) -> None:
        """Raises unless the database answers within a few seconds."""
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS), self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))


@asynccontextmanager
async def bootstrap(
    settings: Settings,
    *,
    analyzer: Analyzer | None = None,
    engine: AsyncEngine | None = None,
    load_models: bool = False,
    local_files: bool = False,
    wait_for_database: bool = False,
) -> AsyncIterator[Adapters]:
    """The adapters for `settings`, closed when the block ends.

    The schema is brought to the latest revision first (the service waits for a database that is down
    with `wait_for_database`); a dry run only checks it, and works on an empty in-memory database when
    the real one has no current schema (a first `scan --dry-run`), so that it writes nothing anywhere.
    `load_models` loads the face analyzer now rather than on first use; `local_files` lets detection
    read absolute local paths (scan, repack) besides the uploader's paths under the images root.
    """
    own_engine = engine is None
    engine = engine or create_engine(settings)
    scratch = Path(tempfile.mkdtemp(prefix="image-grouping-dry-run-")) if settings.dry_run else None

    async def prepare() -> AsyncEngine:
        """The database the handlers will use, its schema current."""
        if scratch is not None:
            return await _dry_run_engine(engine, scratch)
        await ensure_schema(engine)
        return engine

    if wait_for_database:
        async for attempt in backoff("database", retry_on=UNREACHABLE):
            with attempt:
                database = await prepare()
    else:
        database = await prepare()
    thumbnail_store = DryRunThumbnailStore if settings.dry_run else ThumbnailStore
    database_id = await read_database_id(database)  # each database has its own thumbnail folder
    adapters = Adapters(
        settings,
        database,
        thumbnail_store(settings.thumbnail_save_path, settings.system_storage, database_id),
        ImageFiles(
            ImagePathResolver(settings.db_prefix, settings.container_images_root),
            settings.max_image_bytes,
            local_paths=local_files,
        ),
        analyzer,
    )
    try:
        if load_models:
            _ = adapters.analyzer
        yield adapters
    finally:
        close_analyzer = getattr(adapters._analyzer, "close", None)
        if close_analyzer is not None and analyzer is None:  # an analyzer handed in stays its owner's
            close_analyzer()
        if database is not engine:  # the dry run's scratch database
            await database.dispose()
        if own_engine:  # an engine handed in stays its owner's
            await engine.dispose()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


async def _dry_run_engine(engine: AsyncEngine, scratch: Path) -> AsyncEngine:
    """The database itself when its schema is current; else an empty one in `scratch`, with the schema."""
    url = engine.url
    if not _is_new_sqlite_file(url) and await schema_is_current(engine):
        return engine
    log.warning("dry run: the database has no current schema; working on an empty one", url=redact(url))
    empty = engine_for_url(make_url(f"sqlite+aiosqlite:///{scratch / 'dry-run.sqlite3'}"))
    await ensure_schema(empty)
    return empty


def _is_new_sqlite_file(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file()


def load_analyzer(settings: Settings) -> FaceAnalyzer:
    """The face analyzer the settings describe (vision is imported only by processes that detect)."""
    from image_grouping.vision import FaceAnalyzer

    log_model_licence(settings)
    return FaceAnalyzer.load(vision_params(settings))
