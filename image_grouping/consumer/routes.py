"""Which handler each queue's events go to, bound to the adapters they need."""

from __future__ import annotations

from functools import partial

from aio_pika.abc import AbstractQueue

from image_grouping.bootstrap import Adapters
from image_grouping.consumer.worker import Route
from image_grouping.handlers.detection import handle_image_uploaded
from image_grouping.models.messages import FacesDetected, ImageUploaded, PersonsUpdated, ReclusterRequested
from image_grouping.observability import DETECTION, FACES_FOUND, RECOGNITION


def detection_route(queue: AbstractQueue, adapters: Adapters) -> Route:
    deps = adapters.detection_deps()

    async def on_image_uploaded(event: ImageUploaded) -> list[FacesDetected]:
        detected = await handle_image_uploaded(event, deps)
        FACES_FOUND.inc(sum(item.face_count for item in detected))
        return detected

    return Route(
        queue, DETECTION, {ImageUploaded: on_image_uploaded}, max_in_flight=adapters.settings.max_in_flight
    )


def recognition_route(queue: AbstractQueue, adapters: Adapters) -> Route:
    # One message at a time: two groupings side by side could each found a person for the same face.
    return Route(
        queue,
        RECOGNITION,
        {
            FacesDetected: partial(handle_faces_detected, adapters=adapters),
            ReclusterRequested: partial(handle_recluster_requested, adapters=adapters),
        },
    )


async def handle_faces_detected(event: FacesDetected, adapters: Adapters) -> list[PersonsUpdated]:
    """Assign the new faces to persons (or new persons) incrementally."""
    from image_grouping.handlers.recognition import assign_new_faces

    if not event.face_ids:
        return []
    async with adapters.unit_of_work() as uow:
        changes = await assign_new_faces(event.face_ids, event.model_pack, uow, adapters.settings)
        if not adapters.settings.dry_run:
            await uow.commit()
    return [PersonsUpdated(model_pack=event.model_pack, changes=changes.to_event_data())]


async def handle_recluster_requested(event: ReclusterRequested, adapters: Adapters) -> list[PersonsUpdated]:
    """Regroup every face of the pack; the recluster queue's single active consumer runs one at a time."""
    from image_grouping.handlers.recognition import recluster_all

    model_pack = event.model_pack or adapters.settings.model_pack
    async with adapters.unit_of_work() as uow:
        changes = await recluster_all(model_pack, uow, adapters.settings, dry_run=adapters.settings.dry_run)
        if not adapters.settings.dry_run:
            await uow.commit()
    return [PersonsUpdated(model_pack=model_pack, changes=changes.to_event_data())]
