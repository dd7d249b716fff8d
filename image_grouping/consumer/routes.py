"""Which handler each queue's events go to, bound to the adapters they need."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import structlog
from aio_pika.abc import AbstractQueue

from image_grouping.bootstrap import Adapters
from image_grouping.consumer.worker import BatchPolicy, BatchResult, Route
from image_grouping.errors import BadInputError
from image_grouping.handlers.detection import handle_images_uploaded
from image_grouping.models.messages import (
    PERIODIC,
    FacesDetected,
    ImageUploaded,
    PersonsUpdated,
    ReclusterRequested,
)
from image_grouping.observability import DETECTION, FACES_FOUND, RECOGNITION

log = structlog.get_logger(__name__)


# Under load the prefetched messages fill a batch at once; a message alone waits no longer than this.
DETECTION_BATCH_WAIT_SECONDS = 0.005


def detection_route(queue: AbstractQueue, adapters: Adapters) -> Route:
    # Images in batches: one transaction and one acknowledgement round per batch instead of per image.
    # MAX_IN_FLIGHT still counts images: that many, in batches, are analysed or stored at once.
    deps = adapters.detection_deps()
    settings = adapters.settings

    async def on_images_uploaded(events: Sequence[ImageUploaded]) -> BatchResult:
        outcomes = await handle_images_uploaded(events, deps)
        detected = [outcome for outcome in outcomes if isinstance(outcome, FacesDetected)]
        FACES_FOUND.inc(sum(item.face_count for item in detected))
        refused = {
            index: outcome for index, outcome in enumerate(outcomes) if isinstance(outcome, BadInputError)
        }
        return BatchResult(detected, refused)

    batch_size = min(settings.detection_batch_size, settings.max_in_flight)
    return Route(
        queue,
        DETECTION,
        {},
        max_in_flight=max(1, settings.max_in_flight // batch_size),
        batch=BatchPolicy(ImageUploaded, on_images_uploaded, batch_size, DETECTION_BATCH_WAIT_SECONDS),
    )


def recognition_route(queue: AbstractQueue, adapters: Adapters) -> Route:
    # One batch or recluster at a time: two groupings side by side could each found a person for the
    # same face. Batches because each assignment loads every face of the pack.
    settings = adapters.settings
    return Route(
        queue,
        RECOGNITION,
        {ReclusterRequested: partial(handle_recluster_requested, adapters=adapters)},
        batch=BatchPolicy(
            FacesDetected,
            partial(handle_faces_detected, adapters=adapters),
            size=settings.grouping_batch_size,
            wait_seconds=settings.grouping_batch_wait_seconds,
        ),
    )


async def handle_faces_detected(events: Sequence[FacesDetected], adapters: Adapters) -> BatchResult:
    """Assign the new faces of several images to persons (or new persons) incrementally, in one commit."""
    from image_grouping.handlers.recognition import assign_new_faces

    face_ids_by_pack: dict[str, list[int]] = {}
    for event in events:
        if event.face_ids:
            face_ids_by_pack.setdefault(event.model_pack, []).extend(event.face_ids)
    if not face_ids_by_pack:
        return BatchResult([])
    updates = []
    async with adapters.unit_of_work() as uow:
        for model_pack, face_ids in face_ids_by_pack.items():
            changes = await assign_new_faces(face_ids, model_pack, uow, adapters.settings)
            updates.append(PersonsUpdated(model_pack=model_pack, changes=changes.to_event_data()))
        if not adapters.settings.dry_run:
            await uow.commit()
    return BatchResult(updates)


async def handle_recluster_requested(event: ReclusterRequested, adapters: Adapters) -> list[PersonsUpdated]:
    """Regroup every face of the pack; the recluster queue's single active consumer runs one at a time.
    A periodic request that another replica's request of the same interval already served is skipped."""
    from image_grouping.handlers.recognition import periodic_recluster_due, recluster_all

    settings = adapters.settings
    model_pack = event.model_pack or settings.model_pack
    async with adapters.unit_of_work() as uow:
        if event.reason == PERIODIC and not await periodic_recluster_due(
            model_pack, uow, settings.interval_seconds
        ):
            log.info("periodic recluster skipped: one ran within this interval", model_pack=model_pack)
            return []
        changes = await recluster_all(model_pack, uow, settings, dry_run=settings.dry_run)
        if not settings.dry_run:
            await uow.commit()
    return [PersonsUpdated(model_pack=model_pack, changes=changes.to_event_data())]
