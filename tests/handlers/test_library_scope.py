"""Libraries with fake adapters: the library travels on every message, an upload's image, faces and
persons are its library's, grouping never mixes two libraries, another library's analysis is never
reused, and a query for another library's person, face or photo is refused as such (`other_library`)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from fakes import FakeAnalyzer, FakeDatabase, FakeFiles, FakeThumbnails, is_refusal

from image_grouping.config import load_settings
from image_grouping.consumer.app import _request_reclusters
from image_grouping.errors import BadInputError, InvalidMessageError, OtherLibraryError
from image_grouping.grouping import GroupingParams
from image_grouping.handlers import queries
from image_grouping.handlers.detection import DetectionDeps, handle_images_uploaded
from image_grouping.handlers.ports import in_library
from image_grouping.handlers.recognition import GroupingDeps, handle_faces_detected
from image_grouping.models.faces import DetectedFace, FaceQuality, ImageAnalysis
from image_grouping.models.messages import (
    DEFAULT_LIBRARY,
    EVENT_TYPES,
    PERIODIC,
    Envelope,
    FacesDetected,
    ImageUploaded,
    PersonsUpdated,
    new_event,
    parse_event,
)

PACK = FakeAnalyzer.model_pack


def unit(vector: np.ndarray) -> np.ndarray:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def photo_faces(embeddings: list[np.ndarray]) -> list[DetectedFace]:
    return [
        DetectedFace(
            box=(100.0 * index, 0.0, 100.0 * index + 80.0, 80.0),
            landmarks=np.zeros((5, 2), np.float32),
            quality=FaceQuality(det_score=0.9, size_px=80.0, sharpness=100.0, yaw=0.0, pose="frontal"),
            embedding=embedding,
            thumbnail_jpeg=b"jpeg",
        )
        for index, embedding in enumerate(embeddings)
    ]


@pytest.fixture
def database() -> FakeDatabase:
    return FakeDatabase()


def deps_for(database: FakeDatabase, photos: dict[str, list[DetectedFace]]) -> DetectionDeps:
    files = {path: f"bytes of {path}".encode() for path in photos}
    analyses = {data: ImageAnalysis(640, 480, PACK, photos[path]) for path, data in files.items()}
    return DetectionDeps(
        FakeAnalyzer(analyses),
        database.unit_of_work,
        FakeThumbnails(),
        FakeFiles(files),
        skip_known_content=True,
    )


async def test_the_same_photos_in_two_libraries_are_two_sets_of_images_faces_and_persons(
    database: FakeDatabase,
) -> None:
    rng = np.random.default_rng(3)
    centre = unit(rng.normal(size=64))
    photos = {f"{n}.jpg": photo_faces([unit(centre + 0.2 * unit(rng.normal(size=64)))]) for n in range(6)}
    detection = deps_for(database, photos)
    # One batch holding both libraries' uploads of the same paths, as a detection worker may take them.
    uploads = [
        ImageUploaded(library_id=library, image_id=f"{library}-{path}", path=path)
        for path in photos
        for library in ("a", "b")
    ]
    outcomes = await handle_images_uploaded(uploads, detection)
    detected = [event for outcome in outcomes for event in outcome]  # type: ignore[union-attr]
    # Every upload analysed: the same bytes in the other library are not "known content" there.
    assert [event.library_id for event in detected] == [upload.library_id for upload in uploads]
    assert all(isinstance(event, FacesDetected) and event.face_count == 1 for event in detected)
    state = database.committed
    assert len(state.images) == 12
    for library in ("a", "b"):
        image_ids = {image.id for image in state.images.values() if image.library_id == library}
        assert len(image_ids) == 6
        assert {row.library_id for row in state.faces.values() if row.image_id in image_ids} == {library}

    grouping = GroupingDeps(database.unit_of_work, GroupingParams(), PACK, 900.0)
    updates = await handle_faces_detected(detected, grouping)  # type: ignore[arg-type]
    announced = [event for outcome in updates for event in outcome]  # type: ignore[union-attr]
    assert sorted(event.library_id for event in announced) == ["a", "b"]
    assert all(isinstance(event, PersonsUpdated) for event in announced)
    state = database.committed
    persons_of = {
        library: {row.person_id for row in state.faces.values() if row.library_id == library}
        for library in ("a", "b")
    }
    # One person each (all faces are one person's), never the other library's.
    assert len(persons_of["a"]) == len(persons_of["b"]) == 1
    assert None not in persons_of["a"] | persons_of["b"]
    assert not persons_of["a"] & persons_of["b"]
    for library, found in persons_of.items():
        assert {state.persons[person]["library_id"] for person in found} == {library}

    # The same upload again into library a: known there, skipped; nothing new anywhere.
    again = await handle_images_uploaded([uploads[0]], detection)
    assert again == [[]]

    # Queries of one library refuse the other's ids as another library's, telling nothing of it.
    (person_b,) = persons_of["b"]
    face_b = next(row for row in state.faces.values() if row.library_id == "b")
    of_a = in_library(database.unit_of_work, "a")
    refusals: list[BadInputError] = []
    for query in (
        queries.show_person(of_a, person_b),
        queries.image_detail(of_a, face_b.image_id),
        queries.face_thumbnail(of_a, face_b.id),
        queries.images_with(of_a, [person_b]),
    ):
        with pytest.raises(OtherLibraryError) as refused:
            await query
        refusals.append(refused.value)
    assert all(is_refusal(error, "other_library") for error in refusals)
    assert all("another library" in str(error) and "b" not in str(error).split() for error in refusals)
    assert {p.id for p in await queries.list_persons(of_a)} == persons_of["a"]
    assert (await queries.show_person(in_library(database.unit_of_work, "b"), person_b)).id == person_b


def test_every_message_names_its_library_default_the_default_one() -> None:
    uploaded = parse_event(
        new_event(ImageUploaded(image_id="1", path="/x.jpg")).to_json(), ImageUploaded
    ).data
    assert uploaded.library_id == DEFAULT_LIBRARY
    for data_type in EVENT_TYPES.values():
        assert data_type.model_fields["library_id"].default == DEFAULT_LIBRARY, data_type
    body = new_event(ImageUploaded(library_id="x", image_id="1", path="/x.jpg")).to_json()
    for bad in ('"   "', '""', '"' + "x" * 256 + '"'):
        with pytest.raises(InvalidMessageError):
            parse_event(body.replace(b'"library_id":"x"', b'"library_id":' + bad.encode()), ImageUploaded)
    longest = "é" * 255  # characters, not bytes
    assert ImageUploaded(library_id=longest, image_id="1", path="/x").library_id == longest


async def test_each_interval_a_periodic_recluster_is_asked_for_each_changed_library_on_its_shard(
    database: FakeDatabase,
) -> None:
    rng = np.random.default_rng(5)
    photos = {"1.jpg": photo_faces([unit(rng.normal(size=64))])}
    detection = deps_for(database, photos)
    uploads = [ImageUploaded(library_id=library, image_id=library, path="1.jpg") for library in ("a", "b")]
    await handle_images_uploaded(uploads, detection)
    settings = load_settings().model_copy(update={"model_pack": PACK, "interval_seconds": 0.01})
    published: list[Envelope[Any]] = []

    class Publisher:
        async def publish(self, event: Envelope[Any]) -> None:
            published.append(event)

    timer = asyncio.create_task(_request_reclusters(Publisher(), settings, database.unit_of_work))  # type: ignore[arg-type]
    try:
        async with asyncio.timeout(10):
            while len(published) < 2:  # noqa: ASYNC110 - polls what the fake publisher collected
                await asyncio.sleep(0.01)
    finally:
        timer.cancel()
    first_round = [event.data for event in published[:2]]
    assert [(data.library_id, data.reason, data.model_pack) for data in first_round] == [
        ("a", PERIODIC, PACK),
        ("b", PERIODIC, PACK),
    ]
