"""`image-grouping scan DIR`: analyse a folder of photos into the local database, group, write the gallery.

Images already analysed with the same bytes (sha256) and model pack are skipped, so a second run only
hashes files. Bad images are reported and skipped; nothing about one image aborts the scan.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
import typer
from tqdm import tqdm

from image_grouping.config import Settings
from image_grouping.errors import BadInputError
from image_grouping.storage import (
    SqlUnitOfWork,
    ThumbnailStore,
    create_engine,
    ensure_schema,
    read_image_file,
    redact,
)
from image_grouping.storage.database import database_url

if TYPE_CHECKING:
    from image_grouping.vision import FaceAnalyzer

log = structlog.get_logger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".heic", ".heif"}


class Outcome(Enum):
    ANALYSED = "analysed"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass
class ScanSummary:
    images: int = 0
    analysed: int = 0
    skipped: int = 0
    failed: int = 0
    faces: int = 0
    gallery: Path | None = None

    def __str__(self) -> str:
        return (
            f"{self.images} images: {self.analysed} analysed ({self.faces} faces), "
            f"{self.skipped} already done, {self.failed} failed"
        )


def find_images(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively, as absolute paths (their keys in the database), in a
    stable order; hidden files and folders are left out."""
    folder = folder.resolve()
    return sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


class _Scanner:
    """Analyses one image at a time per worker; the analyzer's executor runs the models."""

    def __init__(
        self,
        settings: Settings,
        analyzer: FaceAnalyzer,
        unit_of_work: Callable[[], SqlUnitOfWork],
        progress: tqdm,
    ) -> None:
        self.settings = settings
        self.analyzer = analyzer
        self.unit_of_work = unit_of_work
        self.thumbnails = ThumbnailStore(settings.thumbnail_save_path, settings.system_storage)
        self.progress = progress
        self.summary = ScanSummary()

    async def work(self, files: Iterator[Path]) -> None:
        for path in files:  # the workers share one iterator: each file is taken once
            try:
                outcome, faces = await self.scan(path)
            except BadInputError as error:
                outcome, faces = Outcome.FAILED, 0
                self.progress.write(f"skipped {path}: {error.reason} ({error})")
            except Exception as error:  # never abort the whole scan for one image
                outcome, faces = Outcome.FAILED, 0
                log.exception("image failed", path=str(path))
                self.progress.write(f"failed {path}: {redact(error)}")
            self._count(outcome, faces)

    async def scan(self, path: Path) -> tuple[Outcome, int]:
        try:
            data, content_hash = await asyncio.to_thread(read_image_file, path, self.settings.max_image_bytes)
        except OSError as error:
            self.progress.write(f"skipped {path}: unreadable ({error.strerror})")
            return Outcome.FAILED, 0
        pack = self.analyzer.model_pack
        async with self.unit_of_work() as uow:
            if await uow.images.find_processed(content_hash, pack) is not None:
                return Outcome.SKIPPED, 0
            image = await uow.images.get_or_create(None, path.as_posix())
            await uow.commit()
        try:
            analysis = await self.analyzer.analyze_async(data)
        except BadInputError as error:
            async with self.unit_of_work() as uow:
                await uow.images.mark_failed(image.id, error.reason, content_hash, pack)
                await uow.commit()
            raise
        thumbnail_paths = await asyncio.to_thread(self.thumbnails.save_faces, image.id, analysis)
        async with self.unit_of_work() as uow:
            await uow.save_analysis(image.id, content_hash, len(data), analysis, thumbnail_paths)
            await uow.commit()
        return Outcome.ANALYSED, len(analysis.faces)

    def _count(self, outcome: Outcome, faces: int) -> None:
        summary = self.summary
        summary.images += 1
        summary.faces += faces
        if outcome is Outcome.ANALYSED:
            summary.analysed += 1
        elif outcome is Outcome.SKIPPED:
            summary.skipped += 1
        else:
            summary.failed += 1
        self.progress.update()
        self.progress.set_postfix(faces=summary.faces, skipped=summary.skipped, failed=summary.failed)


async def _dry_run(files: list[Path], analyzer: FaceAnalyzer) -> ScanSummary:
    """Analyse everything, write nothing (no database, no thumbnails)."""
    summary = ScanSummary()
    for path in tqdm(files, unit="img", desc="analysing (dry run)"):
        summary.images += 1
        try:
            data, _ = await asyncio.to_thread(read_image_file, path, analyzer.params.max_image_bytes)
            summary.faces += len((await analyzer.analyze_async(data)).faces)
            summary.analysed += 1
        except (BadInputError, OSError) as error:
            summary.failed += 1
            tqdm.write(f"skipped {path}: {error}")
    return summary


async def scan_folder(settings: Settings, folder: Path, write_report: bool = True) -> ScanSummary:
    from image_grouping.bootstrap import load_analyzer

    files = await asyncio.to_thread(find_images, folder)
    analyzer = load_analyzer(settings)
    try:
        if settings.dry_run:
            summary = await _dry_run(files, analyzer)
            typer.echo(f"dry run, nothing written: {summary}")
            return summary
        engine = create_engine(settings)
        try:
            await ensure_schema(engine)
            typer.echo(f"database: {redact(database_url(settings))}")
            # Enough images in flight to keep every analysis thread busy while others read or write.
            workers = settings.analysis_workers + 1
            with tqdm(total=len(files), unit="img", desc="analysing") as progress:
                scanner = _Scanner(settings, analyzer, lambda: SqlUnitOfWork(engine), progress)
                shared = iter(files)
                await asyncio.gather(*(scanner.work(shared) for _ in range(workers)))
            summary = scanner.summary
        finally:
            await engine.dispose()
    finally:
        analyzer.close()
    typer.echo(str(summary))

    try:
        from image_grouping.handlers.recognition import run_full_recluster
    except ImportError:
        typer.echo("grouping is not available yet: faces stored, not grouped")
    else:
        typer.echo(str(await run_full_recluster(settings)))

    if write_report:
        try:
            from image_grouping.report.gallery import write_gallery
        except ImportError:
            typer.echo("the gallery is not available yet")
        else:
            summary.gallery = await write_gallery(settings, None)
            typer.echo(str(summary.gallery))  # the last line: where to look
    return summary
