"""`image.uploaded`: find the images' faces, store them with their thumbnails, announce `faces.detected`.

The one detection flow of every entry point: the service's consumer and MODE=oneshot, the local scan
(which skips bytes this pack already analysed) and repack (which carries persons over from the old
pack's faces in the same transaction). An image that has faces added by hand is analysed with their boxes
(every pack's), so they are found again however the detector does (image_grouping.handlers.add_face).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace

import numpy as np
import structlog

from image_grouping.errors import BadInputError
from image_grouping.handlers.ports import (
    Analyzer,
    ImageFiles,
    Outcome,
    Thumbnails,
    UnitOfWork,
    UnitOfWorkFactory,
)
from image_grouping.models.face_identity import match_boxes
from image_grouping.models.faces import Box, HandBox, ImageAnalysis
from image_grouping.models.messages import FacesDetected, ImageUploaded
from image_grouping.models.records import ImageRecord, ImageResult

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class StoredImage:
    """An image whose faces a batch stored: its row, its face ids (in face order) and the analysis."""

    image: ImageRecord
    face_ids: list[int]
    analysis: ImageAnalysis


# A step run inside the transaction that stores a batch's faces, before its commit.
AfterStore = Callable[[UnitOfWork, Sequence[StoredImage]], Awaitable[None]]


@dataclass(frozen=True)
class DetectionDeps:
    analyzer: Analyzer
    unit_of_work: UnitOfWorkFactory
    thumbnails: Thumbnails
    files: ImageFiles
    # The local scan: bytes this pack already analysed (or refused) under any path are not analysed again.
    skip_known_content: bool = False
    # Repack: an image that cannot be read keeps its old result instead of being marked failed.
    record_failures: bool = True
    after_store: AfterStore | None = None
    # Images read and not yet analysed, at most: each holds its file's bytes, so this bounds that memory
    # however many images are in flight (None: no bound).
    read_ahead: asyncio.Semaphore | None = None


async def handle_images_uploaded(events: Sequence[ImageUploaded], deps: DetectionDeps) -> list[Outcome]:
    """Analyse the images side by side and commit their faces in one transaction; idempotent, so a
    redelivered message stores its faces once.

    One outcome per event, in their order: its `faces.detected` (none for content skipped as known), or
    the BadInputError that refused it (a path outside the images root, a missing, unreadable or oversized
    image), that image marked failed. The others are stored all the same. Anything else is transient:
    raised, with nothing stored, and the caller retries the batch.

    Each image is of its event's library (same path in two libraries: two images, analysed apart); a
    batch of several libraries is handled a library at a time.
    """
    libraries = list(dict.fromkeys(event.library_id for event in events))
    if len(libraries) <= 1:
        return await _handle_library(events, deps)
    outcomes: dict[int, Outcome] = {}
    for library_id in libraries:
        rows = [row for row, event in enumerate(events) if event.library_id == library_id]
        handled = await _handle_library([events[row] for row in rows], deps)
        outcomes.update(zip(rows, handled, strict=True))
    return [outcomes[row] for row in range(len(events))]


async def _handle_library(events: Sequence[ImageUploaded], deps: DetectionDeps) -> list[Outcome]:
    """`handle_images_uploaded` of the events of one library."""
    hand = await _hand_boxes(events, deps)
    loaded = await asyncio.gather(
        *(_load(event, deps, hand.get(event.path, [])) for event in events), return_exceptions=True
    )
    for item in loaded:
        if isinstance(item, BaseException) and not isinstance(item, BadInputError):
            raise item
    good = [(event, item) for event, item in zip(events, loaded, strict=True) if isinstance(item, _Loaded)]
    detected = iter(await _store(good, deps) if good else [])
    return [
        item if isinstance(item, BadInputError) else [] if item is None else [next(detected)]
        for item in loaded
    ]


async def _store(loaded: Sequence[tuple[ImageUploaded, _Loaded]], deps: DetectionDeps) -> list[FacesDetected]:
    """Register the analysed images, write their thumbnails, store their faces in one transaction;
    their `faces.detected`."""
    # Two commits for the whole batch rather than a few per image: round trips are where the service
    # spends its time.
    library_id = loaded[0][0].library_id
    async with deps.unit_of_work(library_id) as uow:
        images = await uow.images.get_or_create_many([(event.image_id, event.path) for event, _ in loaded])
        # Registered for good first: a retry after a failed commit below finds the same image ids, so it
        # overwrites the same thumbnail files instead of leaving them orphaned.
        await uow.commit()
        # Faces of forgotten persons are found again but never stored, nor their thumbnails written.
        forgotten = await uow.images.forgotten_boxes([image.id for image in images])
        by_hand = (
            await uow.images.hand_boxes([image.source_path for image in images if image.id in forgotten])
            if forgotten
            else {}
        )
        loaded = [
            (
                event,
                replace(
                    item,
                    analysis=without_forgotten(
                        item.analysis, forgotten.get(image.id), by_hand.get(image.source_path, [])
                    ),
                ),
            )
            for image, (event, item) in zip(images, loaded, strict=True)
        ]
        # Written before the commit that records their paths, so a committed face always has its file.
        thumbnail_paths = await asyncio.to_thread(
            lambda: [
                deps.thumbnails.save_faces(image.id, item.analysis)
                for image, (_, item) in zip(images, loaded, strict=True)
            ]
        )
        face_ids = await uow.images.save_analyses(
            [
                ImageResult(image.id, item.content_hash, item.size_bytes, item.analysis, paths)
                for image, (_, item), paths in zip(images, loaded, thumbnail_paths, strict=True)
            ]
        )
        if deps.after_store is not None:
            await deps.after_store(
                uow,
                [
                    StoredImage(image, ids, item.analysis)
                    for image, (_, item), ids in zip(images, loaded, face_ids, strict=True)
                ],
            )
        await uow.commit()
    log.debug("faces stored", images=len(loaded), faces=sum(len(ids) for ids in face_ids))
    return [
        FacesDetected(
            library_id=library_id,
            image_id=event.image_id,
            face_ids=ids,
            face_count=len(ids),
            model_pack=item.analysis.model_pack,
        )
        for (event, item), ids in zip(loaded, face_ids, strict=True)
    ]


@dataclass(frozen=True, slots=True)
class _Loaded:
    content_hash: str
    size_bytes: int
    analysis: ImageAnalysis


def without_forgotten(
    analysis: ImageAnalysis, forgotten: np.ndarray | None, stored_by_hand: Sequence[Box] = ()
) -> ImageAnalysis:
    """The analysis without the faces where a forgotten face was (box IoU >= 0.5 with its tombstone),
    except faces added by hand that are stored now (`stored_by_hand`, read in the writing transaction):
    those a person put there after the erasure. One that the erasure took is dropped like the others."""
    if forgotten is None or not analysis.faces:
        return analysis
    boxes = np.array([face.box for face in analysis.faces], np.float64)
    kept = match_boxes(np.array(stored_by_hand, np.float64).reshape(-1, 4), boxes)
    by_hand = {index for index, face in enumerate(analysis.faces) if face.added_by_hand and index in kept}
    again = set(match_boxes(forgotten, boxes)) - by_hand
    if not again:
        return analysis
    log.info("faces of forgotten persons not stored again", faces=len(again))
    return replace(analysis, faces=[face for index, face in enumerate(analysis.faces) if index not in again])


async def _hand_boxes(events: Sequence[ImageUploaded], deps: DetectionDeps) -> dict[str, list[Box]]:
    """The boxes of the faces added by hand to the images at the events' paths (most have none)."""
    async with deps.unit_of_work(events[0].library_id) as uow:
        return await uow.images.hand_boxes([event.path for event in events])


async def _load(event: ImageUploaded, deps: DetectionDeps, hand: Sequence[Box] = ()) -> _Loaded | None:
    """Read and analyse one image, with the faces added by hand at `hand` (None: content already known,
    skipped); bad input is recorded and raised."""
    async with deps.read_ahead or nullcontext():
        return await _read_and_analyse(event, deps, hand)


async def _read_and_analyse(event: ImageUploaded, deps: DetectionDeps, hand: Sequence[Box]) -> _Loaded | None:
    try:
        data, content_hash = await asyncio.to_thread(deps.files.read, event.path)
    except BadInputError as error:
        # Recorded, so MODE=oneshot does not take it up again.
        await _register_failed(deps, event, error)
        raise
    pack = deps.analyzer.model_pack
    if deps.skip_known_content:
        async with deps.unit_of_work(event.library_id) as uow:  # never another library's analysis
            if await uow.images.find_processed(content_hash, pack) is not None:
                return None
    try:
        analysis = await (
            deps.analyzer.analyze_async(data, [HandBox(box) for box in hand])
            if hand
            else deps.analyzer.analyze_async(data)
        )
    except BadInputError as error:
        # With the hash, the same bytes under another path are known bad too.
        await _register_failed(deps, event, error, content_hash, pack)
        raise
    return _Loaded(content_hash, len(data), analysis)


async def _register_failed(
    deps: DetectionDeps,
    event: ImageUploaded,
    error: BadInputError,
    content_hash: str | None = None,
    model_pack: str | None = None,
) -> None:
    if not deps.record_failures:
        return
    async with deps.unit_of_work(event.library_id) as uow:
        image = await uow.images.get_or_create(event.image_id, event.path)
        await uow.images.mark_failed(image.id, error.reason, content_hash, model_pack)
        await uow.commit()
