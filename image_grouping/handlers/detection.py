"""`image.uploaded`: find the image's faces, store them with their thumbnails, announce `faces.detected`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from image_grouping.errors import BadInputError
from image_grouping.models.faces import ImageAnalysis
from image_grouping.models.messages import FacesDetected, ImageUploaded
from image_grouping.models.records import ImageResult
from image_grouping.storage import SqlUnitOfWork, read_image_file

log = structlog.get_logger(__name__)


class Analyzer(Protocol):
    model_pack: str

    async def analyze_async(self, data: bytes) -> ImageAnalysis: ...


class Thumbnails(Protocol):
    def save_faces(self, image_id: int, analysis: ImageAnalysis) -> list[str]: ...


class PathResolver(Protocol):
    def resolve(self, stored_path: str) -> Path: ...


@dataclass(frozen=True)
class DetectionDeps:
    analyzer: Analyzer
    unit_of_work: Callable[[], SqlUnitOfWork]
    thumbnails: Thumbnails
    paths: PathResolver
    max_image_bytes: int
    dry_run: bool = False


async def handle_image_uploaded(event: ImageUploaded, deps: DetectionDeps) -> list[FacesDetected]:
    """One image: `handle_images_uploaded` of a batch of one; bad input is raised (BadInputError)."""
    (outcome,) = await handle_images_uploaded([event], deps)
    if isinstance(outcome, BadInputError):
        raise outcome
    return [outcome]


async def handle_images_uploaded(
    events: Sequence[ImageUploaded], deps: DetectionDeps
) -> list[FacesDetected | BadInputError]:
    """Analyse the images side by side and commit their faces in one transaction; idempotent, so a
    redelivered message stores its faces once.

    One outcome per event, in their order: its `faces.detected`, or the BadInputError that refused it (a
    path outside the images root, a missing, unreadable or oversized image), that image marked failed.
    The others are stored all the same. Anything else is transient: raised, with nothing stored, and
    the consumer retries the batch.
    """
    outcomes = await asyncio.gather(*(_load(event, deps) for event in events), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, BadInputError):
            raise outcome
    good = [(event, item) for event, item in zip(events, outcomes, strict=True) if isinstance(item, _Loaded)]
    detected = iter(await _store(good, deps) if good else [])
    return [outcome if isinstance(outcome, BadInputError) else next(detected) for outcome in outcomes]


async def _store(loaded: Sequence[tuple[ImageUploaded, _Loaded]], deps: DetectionDeps) -> list[FacesDetected]:
    """Register the analysed images, write their thumbnails, store their faces in one transaction;
    their `faces.detected`."""
    if deps.dry_run:
        faces = sum(len(item.analysis.faces) for _, item in loaded)
        log.info("dry run: faces found, nothing written", faces=faces)
        return [_faces_detected(event, [], item.analysis.model_pack) for event, item in loaded]

    # Two commits for the whole batch rather than a few per image: round trips are where the service
    # spends its time.
    async with deps.unit_of_work() as uow:
        images = await uow.images.get_or_create_many([(event.image_id, event.path) for event, _ in loaded])
        # Registered for good first: a retry after a failed commit below finds the same image ids, so it
        # overwrites the same thumbnail files instead of leaving them orphaned.
        await uow.commit()
        # Written before the commit that records their paths, so a committed face always has its file.
        thumbnail_paths = await asyncio.to_thread(
            lambda: [
                deps.thumbnails.save_faces(image.id, item.analysis)
                for image, (_, item) in zip(images, loaded, strict=True)
            ]
        )
        face_ids = await uow.save_analyses(
            [
                ImageResult(image.id, item.content_hash, item.size_bytes, item.analysis, paths)
                for image, (_, item), paths in zip(images, loaded, thumbnail_paths, strict=True)
            ]
        )
        await uow.commit()
    log.debug("faces stored", images=len(loaded), faces=sum(len(ids) for ids in face_ids))
    return [
        _faces_detected(event, ids, item.analysis.model_pack)
        for (event, item), ids in zip(loaded, face_ids, strict=True)
    ]


@dataclass(frozen=True, slots=True)
class _Loaded:
    content_hash: str
    size_bytes: int
    analysis: ImageAnalysis


async def _load(event: ImageUploaded, deps: DetectionDeps) -> _Loaded:
    """Read and analyse one image; bad input is recorded (outside a dry run) and raised."""
    try:
        path = deps.paths.resolve(event.path)
        data, content_hash = await asyncio.to_thread(read_image_file, path, deps.max_image_bytes)
    except BadInputError as error:
        # Recorded, so MODE=oneshot does not take it up again.
        if not deps.dry_run:
            await _register_failed(deps, event, error)
        raise
    try:
        analysis = await deps.analyzer.analyze_async(data)
    except BadInputError as error:
        # With the hash, the same bytes under another path are known bad too.
        if not deps.dry_run:
            await _register_failed(deps, event, error, content_hash, deps.analyzer.model_pack)
        raise
    return _Loaded(content_hash, len(data), analysis)


async def _register_failed(
    deps: DetectionDeps,
    event: ImageUploaded,
    error: BadInputError,
    content_hash: str | None = None,
    model_pack: str | None = None,
) -> None:
    async with deps.unit_of_work() as uow:
        image = await uow.images.get_or_create(event.image_id, event.path)
        await uow.images.mark_failed(image.id, error.reason, content_hash, model_pack)
        await uow.commit()


def _faces_detected(event: ImageUploaded, face_ids: list[int], model_pack: str) -> FacesDetected:
    return FacesDetected(
        image_id=event.image_id, face_ids=face_ids, face_count=len(face_ids), model_pack=model_pack
    )
