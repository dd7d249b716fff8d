"""`image.uploaded`: find the image's faces, store them with their thumbnails, announce `faces.detected`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from image_grouping.errors import BadInputError
from image_grouping.models.faces import ImageAnalysis
from image_grouping.models.messages import FacesDetected, ImageUploaded
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
    """Analyse the image and commit its faces; idempotent, so a redelivered message stores them once.

    Raises BadInputError (a path outside the images root, a missing, unreadable or oversized image) after
    marking the image failed; anything else is transient and the consumer retries it.
    """
    if deps.dry_run:
        path = deps.paths.resolve(event.path)
        data, _ = await asyncio.to_thread(read_image_file, path, deps.max_image_bytes)
        analysis = await deps.analyzer.analyze_async(data)
        log.info("dry run: faces found, nothing written", faces=len(analysis.faces))
        return [_faces_detected(event, [], analysis.model_pack)]

    try:
        path = deps.paths.resolve(event.path)
        data, content_hash = await asyncio.to_thread(read_image_file, path, deps.max_image_bytes)
    except BadInputError as error:
        # Recorded, so MODE=oneshot does not take it up again.
        await _register_failed(deps, event, error)
        raise
    try:
        analysis = await deps.analyzer.analyze_async(data)
    except BadInputError as error:
        # With the hash, the same bytes under another path are known bad too.
        await _register_failed(deps, event, error, content_hash, deps.analyzer.model_pack)
        raise

    # One transaction per image: registering the image and storing its faces commit together.
    async with deps.unit_of_work() as uow:
        image = await uow.images.get_or_create(event.image_id, event.path)
        # Written before the commit that records their paths, so a committed face always has its file. A
        # commit that fails leaves them behind: overwritten by the retry for a known image, orphaned (a
        # few files per database outage) for a new one, whose retry gets a new id.
        thumbnail_paths = await asyncio.to_thread(deps.thumbnails.save_faces, image.id, analysis)
        face_ids = await uow.save_analysis(image.id, content_hash, len(data), analysis, thumbnail_paths)
        await uow.commit()
    log.info("faces stored", faces=len(face_ids), db_image_id=image.id)
    return [_faces_detected(event, face_ids, analysis.model_pack)]


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
