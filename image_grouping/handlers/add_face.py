"""`face.add.requested`: add a face where the detector found none (PhotoPrism #1548, Nextcloud Recognize
#611 ask for it): a box a person drew on a stored photo, optionally with the person it is.

The photo is read and analysed again with that box among its faces added by hand: the detector looks
again around the box for the landmarks (image_grouping.vision.analyzer), so the face is aligned, embedded
and thumbnailed like a detected one, and stored at the detector's box of it when it finds one. The whole
analysis goes through the same idempotent write as a re-upload (`save_analyses`), the new face marked
`added_by_hand`; with a person, it is that person's by hand. Every later analysis of the photo (a
re-upload, a repack) is told where its faces added by hand are, so it keeps them, and a detection at
their place is the same face, not a second one.

Refused, each with its reason: a box that is not one (not finite, a side under MIN_FACE_SIDE pixels) or
not inside the photo, an unknown photo, a photo whose file is gone or unreadable, a photo analysed by
another model pack (repack it first), an unknown person or one whose faces are of another pack, a box
where the photo already has a detected face (assign that face instead) or where a forgotten person's
face was. Idempotent: a face added by hand already at the place is the command's work done.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import structlog

from image_grouping.errors import (
    BadInputError,
    InvalidCommandError,
    ModelPackMismatchError,
)
from image_grouping.handlers.detection import without_forgotten
from image_grouping.handlers.people import unknown_image, unknown_person
from image_grouping.handlers.ports import (
    Analyzer,
    ImageFiles,
    Outcome,
    Thumbnails,
    UnitOfWork,
    UnitOfWorkFactory,
)
from image_grouping.models.face_identity import HandFaceNotAnalysedError, match_boxes
from image_grouping.models.faces import Box, HandBox
from image_grouping.models.messages import AddFace, EventData, FaceAdded, FacesDetected, PersonsUpdated
from image_grouping.models.persons import PersonChanges
from image_grouping.models.records import FaceEdit, ImageRecord, ImageResult

log = structlog.get_logger(__name__)

MIN_FACE_SIDE = 8.0  # pixels: a smaller box holds no face a recogniser can tell apart
ATTEMPTS = 3  # an analysis overtaken by another face added to the photo meanwhile is made again


@dataclass(frozen=True)
class AddFaceDeps:
    model_pack: str  # the analyzer's
    # Loads the analyzer (or gives the one loaded): a command refused before its photo is read never
    # loads the models. Called off the event loop.
    analyzer: Callable[[], Analyzer]
    unit_of_work: UnitOfWorkFactory
    thumbnails: Thumbnails
    files: ImageFiles


async def handle_add_face(commands: Sequence[AddFace], deps: AddFaceDeps) -> list[Outcome]:
    """Each command on its own: `face.added`, `faces.detected` (grouping may take up a face without a
    person) and, with a person, `persons.updated`; nothing when the face is already there; or the
    refusal."""
    outcomes: list[Outcome] = []
    for command in commands:
        try:
            outcomes.append(await _add_face(command, deps))
        except BadInputError as error:
            log.debug("add face refused", image_id=command.image_id, reason=error.reason, error=str(error))
            outcomes.append(error)
    return outcomes


async def _add_face(command: AddFace, deps: AddFaceDeps) -> list[EventData]:
    box = _checked_box(command.box)
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return await _attempt(command, box, deps)
        except HandFaceNotAnalysedError:
            if attempt == ATTEMPTS:
                raise
            log.info("a face was added to the photo meanwhile: analysing it again", image_id=command.image_id)
    raise AssertionError("unreachable")


async def _attempt(command: AddFace, box: Box, deps: AddFaceDeps) -> list[EventData]:
    pack = deps.model_pack
    async with deps.unit_of_work(command.library_id) as uow:
        image = await _checked(uow, command, box, pack)
        if await _already_added(uow, image, box, pack):
            return []
        hand = (await uow.images.hand_boxes([image.source_path])).get(image.source_path, [])
    # Outside any transaction: reading and analysing the photo takes a while.
    data, content_hash = await asyncio.to_thread(deps.files.read, image.source_path)
    analyzer = await asyncio.to_thread(deps.analyzer)
    if analyzer.model_pack != pack:
        raise RuntimeError(f"the analyzer is of pack {analyzer.model_pack}, not {pack}")
    analysis = await analyzer.analyze_async(data, [*(HandBox(each) for each in hand), HandBox(box, True)])
    _inside(box, analysis.width, analysis.height)
    added = analysis.faces[-1]  # the hand faces come last, the drawn one last of them
    async with deps.unit_of_work(command.library_id) as uow:
        # Checked again where it is written: the photo, the person or the faces may have changed.
        image = await _checked(uow, command, box, pack)
        if await _already_added(uow, image, added.box, pack):
            return []
        forgotten = (await uow.images.forgotten_boxes([image.id])).get(image.id)
        if forgotten is not None and match_boxes(forgotten, np.array([added.box])):
            raise InvalidCommandError(
                f"a forgotten person's face was at {_text(added.box)} on photo {image.id}: "
                "it is not added again"
            )
        if forgotten is not None:  # the new face is not at a forgotten one's place: it stays, and last
            stored_by_hand = await uow.images.hand_boxes([image.source_path])
            analysis = without_forgotten(analysis, forgotten, stored_by_hand.get(image.source_path, []))
        paths = await asyncio.to_thread(deps.thumbnails.save_faces, image.id, analysis)
        (face_ids,) = await uow.images.save_analyses(
            [ImageResult(image.id, content_hash, len(data), analysis, paths)]
        )
        face_id = face_ids[-1]
        changes = PersonChanges(model_pack=pack, kind="edit")
        if command.person_id is not None:
            await uow.faces.assign_by_hand(face_id, command.person_id)
            changes.face_moved(face_id, None, command.person_id)
        await uow.faces.record_edits([FaceEdit(face_id, None, command.person_id, "add")])
        await uow.commit()
    log.info("face added by hand", db_image_id=image.id, face_id=face_id, found=added.quality.det_score > 0)
    events: list[EventData] = [
        FaceAdded(
            library_id=command.library_id,
            face_id=face_id,
            image_id=image.id,
            box=added.box,
            person_id=command.person_id,
            model_pack=pack,
        ),
        FacesDetected(
            library_id=command.library_id,
            image_id=image.source_id or str(image.id),
            face_ids=face_ids,
            face_count=len(face_ids),
            model_pack=pack,
        ),
    ]
    if changes.changed:
        events.append(
            PersonsUpdated(library_id=command.library_id, model_pack=pack, changes=changes.to_event_data())
        )
    return events


def _checked_box(box: Sequence[float]) -> Box:
    x1, y1, x2, y2 = (float(value) for value in box)
    if not all(math.isfinite(value) for value in (x1, y1, x2, y2)):
        raise InvalidCommandError(f"not a box: {box}")
    if x2 - x1 < MIN_FACE_SIDE or y2 - y1 < MIN_FACE_SIDE:
        raise InvalidCommandError(
            f"not a face's box: {_text((x1, y1, x2, y2))} (x1 < x2 and y1 < y2, each side at least "
            f"{MIN_FACE_SIDE:.0f} pixels)"
        )
    return x1, y1, x2, y2


def _inside(box: Box, width: int | None, height: int | None) -> None:
    if width is None or height is None:
        return
    x1, y1, x2, y2 = box
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
        raise InvalidCommandError(f"box {_text(box)} is not inside the photo ({width}x{height} pixels)")


def _text(box: Sequence[float]) -> str:
    return " ".join(f"{value:g}" for value in box)


async def _checked(uow: UnitOfWork, command: AddFace, box: Box, pack: str) -> ImageRecord:
    """The photo, once the command is known to be possible on it; else the refusal."""
    image = await uow.images.get(command.image_id)
    if image is None:
        raise await unknown_image(uow, command.image_id)
    _inside(box, image.width, image.height)
    if image.model_pack is not None and image.model_pack != pack:
        raise ModelPackMismatchError(
            f"photo {image.id} was analysed by model pack {image.model_pack}, this service uses {pack}: "
            "repack it first"
        )
    if command.person_id is not None:
        if not await uow.persons.get([command.person_id]):
            raise await unknown_person(uow, command.person_id)
        packs = await uow.persons.model_packs(command.person_id)
        if packs and pack not in packs:
            raise ModelPackMismatchError(
                f"a face of model pack {pack} cannot join person {command.person_id}, whose faces are of "
                f"{', '.join(sorted(packs))}"
            )
    return image


async def _already_added(uow: UnitOfWork, image: ImageRecord, box: Box, pack: str) -> bool:
    """Whether a face added by hand is at the place (box IoU >= 0.5): the command was carried out. A
    detected face there is a refusal: that face is to be assigned, not added."""
    ids, boxes = await uow.faces.boxes_of_image(image.id, pack)
    pairs = match_boxes(boxes, np.array([box]))
    if not pairs:
        return False
    face_id = ids[pairs[0]]
    if (await uow.faces.get([face_id]))[face_id].added_by_hand:
        return True
    raise InvalidCommandError(
        f"photo {image.id} has a face there already: face {face_id} (assign it instead)"
    )
