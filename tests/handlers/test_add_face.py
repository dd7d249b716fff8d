"""Adding a face by hand (image_grouping.handlers.add_face) with fake adapters: what is stored, the
events, the same command twice, a re-upload keeping the face, and each refusal with its reason, nothing
written. tests/grouping/test_faces_added_by_hand.py does it with the real models, photos and databases."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from fakes import BY_HAND, FakeAnalyzer, FakeDatabase, FakeFiles, FakeThumbnails, is_refusal

from image_grouping.handlers.add_face import AddFaceDeps, handle_add_face
from image_grouping.handlers.detection import DetectionDeps, handle_images_uploaded
from image_grouping.models.faces import DetectedFace, FaceQuality, HandBox, ImageAnalysis
from image_grouping.models.messages import AddFace, FaceAdded, FacesDetected, ImageUploaded, PersonsUpdated
from image_grouping.models.records import FaceEdit

PACK = FakeAnalyzer.model_pack
DETECTED = [(0.0, 0.0, 80.0, 80.0), (100.0, 0.0, 180.0, 80.0)]
DRAWN = (300.0, 100.0, 380.0, 200.0)


def face(box: tuple[float, float, float, float], seed: int) -> DetectedFace:
    embedding = np.random.default_rng(seed).standard_normal(16)
    return DetectedFace(
        box=box,
        landmarks=np.zeros((5, 2), np.float32),
        quality=FaceQuality(det_score=0.9, size_px=80.0, sharpness=100.0, yaw=0.0, pose="frontal"),
        embedding=(embedding / np.linalg.norm(embedding)).astype(np.float32),
        thumbnail_jpeg=b"jpeg",
    )


class Photos:
    """One stored photo (`a.jpg`, 640x480, two detected faces) and the adapters both handlers take."""

    def __init__(self, database: FakeDatabase, snapped: dict | None = None) -> None:
        self.database = database
        self.files = FakeFiles({"a.jpg": b"bytes of a"})
        self.analyzer = FakeAnalyzer(
            {b"bytes of a": ImageAnalysis(640, 480, PACK, [face(box, i) for i, box in enumerate(DETECTED)])},
            snapped,
        )
        self.thumbnails = FakeThumbnails()
        self.deps = AddFaceDeps(
            PACK, lambda: self.analyzer, database.unit_of_work, self.thumbnails, self.files
        )
        self.detection = DetectionDeps(self.analyzer, database.unit_of_work, self.thumbnails, self.files)

    async def upload(self) -> int:
        (outcome,) = await handle_images_uploaded([ImageUploaded(image_id="a", path="a.jpg")], self.detection)
        assert isinstance(outcome, list)
        return next(iter(self.database.committed.images))

    def faces(self) -> dict:
        return self.database.committed.faces

    async def person_with_a_face(self, pack: str = PACK) -> int:
        """A person holding a face of `pack` (of another photo)."""
        async with self.database.unit_of_work() as uow:
            image = await uow.images.get_or_create("b", "b.jpg")
            person = await uow.persons.create()
            row_id = uow.state.new_id()
            uow.state.faces[row_id] = replace(
                next(iter(uow.state.faces.values())), id=row_id, image_id=image.id, model_pack=pack
            )
            await uow.faces.assign_by_hand(row_id, person)
            await uow.commit()
        return person


@pytest.fixture
def photos() -> Photos:
    return Photos(FakeDatabase())


async def test_a_face_added_by_hand_is_analysed_at_its_box_stored_marked_and_joins_its_person(
    photos: Photos,
) -> None:
    image_id = await photos.upload()
    person = await photos.person_with_a_face()

    (outcome,) = await handle_add_face([AddFace(image_id=image_id, box=DRAWN, person_id=person)], photos.deps)

    assert isinstance(outcome, list)
    added, detected, updated = outcome
    assert isinstance(added, FaceAdded)
    assert (added.image_id, added.box, added.person_id, added.model_pack) == (image_id, DRAWN, person, PACK)
    assert isinstance(detected, FacesDetected)
    assert detected.face_ids[-1] == added.face_id
    assert detected.face_count == 3
    assert isinstance(updated, PersonsUpdated)
    assert updated.changes["faces"] == [
        {"face_id": added.face_id, "before": None, "after": person, "by": "hand"}
    ]
    row = photos.faces()[added.face_id]
    assert (row.added_by_hand, row.person_id, row.assigned_by, row.box) == (True, person, BY_HAND, DRAWN)
    assert row.thumbnail_path in photos.thumbnails.saved
    assert photos.analyzer.hand_calls[-1] == [HandBox(DRAWN, drawn=True)]
    assert sum(1 for each in photos.faces().values() if each.image_id == image_id) == 3
    assert photos.database.committed.edits[-1] == FaceEdit(added.face_id, None, person, "add")


async def test_without_a_person_the_face_is_left_to_grouping(photos: Photos) -> None:
    image_id = await photos.upload()

    (outcome,) = await handle_add_face([AddFace(image_id=image_id, box=DRAWN)], photos.deps)

    assert isinstance(outcome, list)
    assert [type(event) for event in outcome] == [FaceAdded, FacesDetected]
    row = photos.faces()[outcome[0].face_id]
    assert (row.added_by_hand, row.person_id, row.assigned_by) == (True, None, "grouping")


async def test_the_same_command_twice_adds_one_face() -> None:
    # The drawn box is sloppy: the detector's box of the face in it (where the face is stored) overlaps it
    # too little to be recognised as the same place, so the second command is analysed again to know.
    snapped = (310.0, 150.0, 350.0, 200.0)
    photos = Photos(FakeDatabase(), snapped={DRAWN: snapped})
    image_id = await photos.upload()
    command = AddFace(image_id=image_id, box=DRAWN)

    first, second = await handle_add_face([command, command], photos.deps)

    assert isinstance(first, list)
    assert first[0].box == snapped
    assert second == []
    assert len(photos.faces()) == 3
    assert [face.box for face in photos.faces().values() if face.added_by_hand] == [snapped]


async def test_analysing_the_photo_again_keeps_the_face_added_by_hand(photos: Photos) -> None:
    image_id = await photos.upload()
    person = await photos.person_with_a_face()
    (outcome,) = await handle_add_face([AddFace(image_id=image_id, box=DRAWN, person_id=person)], photos.deps)
    assert isinstance(outcome, list)
    face_id = outcome[0].face_id

    await photos.upload()  # a redelivered upload: the detector alone would not find that face

    assert photos.analyzer.hand_calls[-1] == [HandBox(DRAWN)]
    row = photos.faces()[face_id]
    assert (row.added_by_hand, row.person_id, row.assigned_by, row.box) == (True, person, BY_HAND, DRAWN)
    assert sum(1 for each in photos.faces().values() if each.image_id == image_id) == 3


@pytest.mark.parametrize(
    ("change", "box", "reason"),
    [
        ("unknown image", DRAWN, "unknown_image"),
        ("none", (300.0, 100.0, 305.0, 200.0), "invalid_command"),  # too narrow
        ("none", (380.0, 100.0, 300.0, 200.0), "invalid_command"),  # x2 < x1
        ("none", (math.nan, 100.0, 380.0, 200.0), "invalid_command"),
        ("none", (600.0, 400.0, 700.0, 500.0), "invalid_command"),  # past the photo's edge
        ("none", (5.0, 5.0, 85.0, 85.0), "invalid_command"),  # a detected face is there
        ("file gone", DRAWN, "image_not_found"),
        ("file unreadable", DRAWN, "image_corrupt"),
        ("unknown person", DRAWN, "unknown_person"),
        ("person of another pack", DRAWN, "model_pack_mismatch"),
        ("photo of another pack", DRAWN, "model_pack_mismatch"),
        ("forgotten face there", DRAWN, "invalid_command"),
    ],
)
async def test_refusals_have_their_reason_and_write_nothing(
    photos: Photos, change: str, box: tuple[float, float, float, float], reason: str
) -> None:
    image_id = await photos.upload()
    person = None
    if change == "unknown image":
        image_id = 10**6
    elif change == "file gone":
        del photos.files.files["a.jpg"]
    elif change == "file unreadable":
        photos.files.files["a.jpg"] = b"not a photo"
    elif change == "unknown person":
        person = 10**6
    elif change == "person of another pack":
        person = await photos.person_with_a_face("other_pack")
    elif change == "photo of another pack":
        photos.analyzer.model_pack = "other_pack"
        photos.deps = replace(photos.deps, model_pack="other_pack")
    elif change == "forgotten face there":
        photos.database.committed.tombstones.append((image_id, DRAWN))
    before = dict(photos.faces())

    (outcome,) = await handle_add_face([AddFace(image_id=image_id, box=box, person_id=person)], photos.deps)

    assert is_refusal(outcome, reason), outcome
    assert photos.faces().keys() == before.keys()
    assert not any(each.added_by_hand for each in photos.faces().values())
