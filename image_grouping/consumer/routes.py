"""Which handler each queue's event types go to, bound to the dependencies bootstrap built."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from aio_pika.abc import AbstractQueue

from image_grouping.bootstrap import Adapters
from image_grouping.consumer.shards import ShardBalance
from image_grouping.consumer.worker import Handling, Route
from image_grouping.handlers import people
from image_grouping.handlers.add_face import handle_add_face
from image_grouping.handlers.detection import handle_images_uploaded
from image_grouping.handlers.ports import Outcome
from image_grouping.handlers.recognition import handle_faces_detected, handle_recluster_requested
from image_grouping.models.messages import (
    AddFace,
    AssignFace,
    ChooseCover,
    FacesDetected,
    ForgetPerson,
    ImageDeleted,
    ImageUploaded,
    LibraryDeleted,
    MergePersons,
    ReclusterRequested,
    RejectFace,
    RenamePerson,
    SetPersonHidden,
)
from image_grouping.observability import DETECTION, FACES_FOUND, RECOGNITION

# Under load the prefetched messages fill a batch at once; a message alone waits no longer than this.
DETECTION_BATCH_WAIT_SECONDS = 0.005
GROUPING_SLOTS = "grouping"  # the slot the grouping shards share in a process


def detection_route(queue: AbstractQueue, adapters: Adapters) -> Route:
    # Images in batches: one transaction and one acknowledgement round per batch instead of per image.
    # MAX_IN_FLIGHT still counts images: that many, in batches, are analysed or stored at once.
    deps = adapters.detection_deps()
    settings = adapters.settings

    async def on_images_uploaded(events: Sequence[ImageUploaded]) -> list[Outcome]:
        outcomes = await handle_images_uploaded(events, deps)
        FACES_FOUND.inc(
            sum(
                event.face_count
                for outcome in outcomes
                if isinstance(outcome, list)
                for event in outcome
                if isinstance(event, FacesDetected)
            )
        )
        return outcomes

    batch_size = min(settings.detection_batch_size, settings.max_in_flight)
    return Route(
        queue,
        DETECTION,
        {ImageUploaded: Handling(on_images_uploaded, batch_size, DETECTION_BATCH_WAIT_SECONDS)},
        max_in_flight=max(1, settings.max_in_flight // batch_size),
    )


def recognition_route(queue: AbstractQueue, adapters: Adapters, balance: ShardBalance | None = None) -> Route:
    # A grouping shard: its libraries' batches, reclusters and edits one at a time (two groupings of one
    # library side by side could each found a person for the same face), and one at a time in the process
    # whichever shard they come from (a process groups with one core, and holds one library's faces at a
    # time). Batches because each assignment reads the library; the people's commands one by one (each
    # its own transaction).
    deps = adapters.grouping_deps()
    people_deps = adapters.people_deps()
    settings = adapters.settings
    edits = {
        RenamePerson: people.handle_rename_person,
        SetPersonHidden: people.handle_set_person_hidden,
        ChooseCover: people.handle_choose_cover,
        MergePersons: people.handle_merge_persons,
        AssignFace: people.handle_assign_face,
        RejectFace: people.handle_reject_face,
        ForgetPerson: people.handle_forget_person,
        ImageDeleted: people.handle_image_deleted,
        # On the library's shard: an erasure never runs beside a grouping of the library it erases.
        LibraryDeleted: people.handle_library_deleted,
    }

    return Route(
        queue,
        RECOGNITION,
        {
            FacesDetected: Handling(
                partial(handle_faces_detected, deps=deps),
                settings.grouping_batch_size,
                settings.grouping_batch_wait_seconds,
            ),
            ReclusterRequested: Handling(partial(handle_recluster_requested, deps=deps)),
            **{command: Handling(partial(handler, deps=people_deps)) for command, handler in edits.items()},
            # The analyzer is loaded by the first face added by hand, not when the service starts.
            AddFace: Handling(partial(handle_add_face, deps=adapters.add_face_deps())),
        },
        slot_key=GROUPING_SLOTS,
        balance=balance,
    )
