"""Switching the model pack: analyse the stored images again with the current pack, carry persons over.

Embeddings of two packs are never compared. Each image whose result is another pack's is read again from
its stored path and analysed with the current pack; each new face then takes over what the old face at
the same place (box IoU) had: its person, whether that was set by hand, its cannot-links, its place as a
person's cover. Persons are rows shared by the packs, so names and hidden flags stay as they are. The old
pack's faces are kept, so switching back is a repack the other way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import structlog
from tqdm import tqdm

from image_grouping.config import Settings
from image_grouping.errors import BadInputError, ImageNotFoundError, ImagePathError
from image_grouping.handlers.detection import PathResolver, Thumbnails
from image_grouping.models.faces import ImageAnalysis
from image_grouping.models.records import ImageRecord
from image_grouping.storage import (
    ImagePathResolver,
    SqlUnitOfWork,
    ThumbnailStore,
    create_engine,
    ensure_schema,
    read_image_file,
    redact,
)
from image_grouping.storage.repositories import match_boxes

log = structlog.get_logger(__name__)

IMAGES_PER_WORKER = 4  # images read and analysed per analysis worker and round: one recognition batch each


class BatchAnalyzer(Protocol):
    model_pack: str

    async def analyze_batch_async(self, images: list[bytes]) -> list[ImageAnalysis | BadInputError]: ...


@dataclass
class RepackSummary:
    to_pack: str
    dry_run: bool = False
    images: int = 0  # images found with another pack's result
    repacked: int = 0
    failed: int = 0
    faces: int = 0  # faces the current pack found in them
    matched: int = 0  # of those, faces at the place of an old face
    carried: int = 0  # of those, faces that got the old face's person or manual choice
    cannot_links: int = 0

    def __str__(self) -> str:
        dry = " (dry run, nothing written)" if self.dry_run else ""
        return (
            f"{self.images} images to {self.to_pack}{dry}: {self.repacked} analysed, {self.failed} failed; "
            f"{self.faces} faces, {self.matched} where an old face was, {self.carried} persons or manual "
            f"choices and {self.cannot_links} cannot-links carried over"
        )


@dataclass(frozen=True)
class RepackDeps:
    analyzer: BatchAnalyzer
    unit_of_work: Callable[[], SqlUnitOfWork]
    thumbnails: Thumbnails
    paths: PathResolver
    max_image_bytes: int
    workers: int


class SourceFiles:
    """The file of a stored `source_path`: the uploader's paths map through DB_PREFIX into the images
    root (as detection reads them); `image-grouping scan` stores absolute local paths, read as they are."""

    def __init__(self, images: ImagePathResolver) -> None:
        self._images = images

    def resolve(self, stored_path: str) -> Path:
        try:
            return self._images.resolve(stored_path)
        except ImagePathError:
            local = Path(stored_path)
            if stored_path.startswith("//") or not local.is_absolute():
                raise
        if not local.is_file():
            raise ImageNotFoundError(f"image not found: {stored_path!r}")
        return local


async def repack(
    settings: Settings, *, from_pack: str | None = None, dry_run: bool = False, limit: int | None = None
) -> RepackSummary:
    """`image-grouping repack`: bring every image analysed by another pack (or only by `from_pack`) to
    the current pack, at most `limit` images; a dry run analyses and matches but writes nothing."""
    from image_grouping.bootstrap import load_analyzer

    analyzer = load_analyzer(settings)
    engine = create_engine(settings)
    try:
        if not dry_run:  # a dry run leaves even the schema alone
            await ensure_schema(engine)
        deps = RepackDeps(
            analyzer=analyzer,
            unit_of_work=lambda: SqlUnitOfWork(engine),
            thumbnails=ThumbnailStore(settings.thumbnail_save_path, settings.system_storage),
            paths=SourceFiles(ImagePathResolver(settings.db_prefix, settings.container_images_root)),
            max_image_bytes=settings.max_image_bytes,
            workers=settings.analysis_workers,
        )
        async with deps.unit_of_work() as uow:
            total = await uow.images.count_analysed_by_other_pack(analyzer.model_pack, from_pack)
        total = total if limit is None else min(total, limit)
        with tqdm(total=total, unit="img", desc=f"repacking to {analyzer.model_pack}") as progress:
            return await repack_images(
                deps, from_pack=from_pack, dry_run=dry_run, limit=limit, progress=progress
            )
    finally:
        await engine.dispose()
        analyzer.close()


async def repack_images(
    deps: RepackDeps, *, from_pack: str | None, dry_run: bool, limit: int | None, progress: tqdm
) -> RepackSummary:
    """Work through the images in id order, a round of reads and batched analyses at a time; every
    image is written in its own transaction, so an interrupted run goes on where it stopped."""
    pack = deps.analyzer.model_pack
    summary = RepackSummary(to_pack=pack, dry_run=dry_run)
    after_id = 0
    while limit is None or summary.images < limit:
        size = deps.workers * IMAGES_PER_WORKER
        async with deps.unit_of_work() as uow:
            page = await uow.images.analysed_by_other_pack(
                pack, from_pack, after_id, size if limit is None else min(size, limit - summary.images)
            )
        if not page:
            break
        after_id = page[-1].id
        files = await asyncio.gather(*(_read(image, deps) for image in page))
        readable = [file for file in files if not isinstance(file, BadInputError)]
        analyses = iter(await _analyse([data for data, _ in readable], deps))
        for image, file in zip(page, files, strict=True):
            summary.images += 1
            try:
                if isinstance(file, BadInputError):
                    raise file
                analysis = next(analyses)
                if isinstance(analysis, BadInputError):
                    raise analysis
                await _save(image, file, analysis, deps, summary, dry_run)
                summary.repacked += 1
            except BadInputError as error:
                summary.failed += 1
                progress.write(f"skipped {image.source_path}: {error.reason} ({error})")
            except Exception as error:  # one image never stops the others
                summary.failed += 1
                log.exception("repack of an image failed", db_image_id=image.id)
                progress.write(f"failed {image.source_path}: {redact(error)}")
            progress.update()
            progress.set_postfix(faces=summary.faces, carried=summary.carried, failed=summary.failed)
    log.info(
        "repack done",
        to_pack=pack,
        images=summary.images,
        repacked=summary.repacked,
        failed=summary.failed,
        carried=summary.carried,
        dry_run=dry_run,
    )
    return summary


async def _read(image: ImageRecord, deps: RepackDeps) -> tuple[bytes, str] | BadInputError:
    try:
        path = deps.paths.resolve(image.source_path)
        return await asyncio.to_thread(read_image_file, path, deps.max_image_bytes)
    except BadInputError as error:
        return error


async def _analyse(images: list[bytes], deps: RepackDeps) -> list[ImageAnalysis | BadInputError]:
    """One recognition batch per analysis worker, all at once."""
    size = -(-len(images) // deps.workers)  # ceiling
    batches = [images[start : start + size] for start in range(0, len(images), size or 1)]
    analysed = await asyncio.gather(*(deps.analyzer.analyze_batch_async(batch) for batch in batches))
    return [result for batch in analysed for result in batch]


async def _save(
    image: ImageRecord,
    file: tuple[bytes, str],
    analysis: ImageAnalysis,
    deps: RepackDeps,
    summary: RepackSummary,
    dry_run: bool,
) -> None:
    """Store the new pack's faces and carry over the old faces' persons, in one transaction."""
    old_pack = image.model_pack or ""
    new_boxes = np.array([face.box for face in analysis.faces], np.float64).reshape(-1, 4)
    if dry_run:
        async with deps.unit_of_work() as uow:
            _, old_boxes = await uow.faces.boxes_of_image(image.id, old_pack)
        summary.faces += len(analysis.faces)
        summary.matched += len(match_boxes(old_boxes, new_boxes))
        return

    data, content_hash = file
    thumbnail_paths = await asyncio.to_thread(deps.thumbnails.save_faces, image.id, analysis)
    async with deps.unit_of_work() as uow:
        new_ids = await uow.save_analysis(image.id, content_hash, len(data), analysis, thumbnail_paths)
        old_ids, old_boxes = await uow.faces.boxes_of_image(image.id, old_pack)
        pairs = match_boxes(old_boxes, new_boxes)
        carried, links = await uow.faces.carry_over(
            {old_ids[old]: new_ids[new] for new, old in pairs.items()}
        )
        await uow.commit()
    summary.faces += len(new_ids)
    summary.matched += len(pairs)
    summary.carried += carried
    summary.cannot_links += links
    log.debug("image repacked", db_image_id=image.id, faces=len(new_ids), matched=len(pairs), carried=carried)
