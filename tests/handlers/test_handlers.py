"""The handlers with fake adapters: fast checks of what each does with a batch, without a database,
a broker or the models. The integration tests beside the storage, grouping and service tests run the
same handlers on the real adapters."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from fakes import FakeAnalyzer, FakeDatabase, FakeFiles, FakeThumbnails, is_refusal

from image_grouping.grouping import GroupingParams
from image_grouping.handlers.detection import DetectionDeps, handle_images_uploaded
from image_grouping.handlers.recognition import (
    GroupingDeps,
    handle_faces_detected,
    handle_recluster_requested,
)
from image_grouping.models.faces import DetectedFace, FaceQuality, HandBox, ImageAnalysis
from image_grouping.models.messages import (
    PERIODIC,
    FacesDetected,
    ImageUploaded,
    PersonsUpdated,
    ReclusterRequested,
)

PACK = FakeAnalyzer.model_pack


def face(x: float, embedding: np.ndarray) -> DetectedFace:
    return DetectedFace(
        box=(x, 0.0, x + 80.0, 80.0),
        landmarks=np.zeros((5, 2), np.float32),
        quality=FaceQuality(det_score=0.9, size_px=80.0, sharpness=100.0, yaw=0.0, pose="frontal"),
        embedding=embedding,
        thumbnail_jpeg=b"jpeg",
    )


def unit(vector: np.ndarray) -> np.ndarray:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def people(count: int, faces_each: int, seed: int = 0) -> list[list[np.ndarray]]:
    """Embeddings of `count` people: each person's faces near their own random direction."""
    rng = np.random.default_rng(seed)
    centres = [unit(rng.normal(size=64)) for _ in range(count)]
    return [
        [unit(centre + 0.25 * unit(rng.normal(size=64))) for _ in range(faces_each)] for centre in centres
    ]


@pytest.fixture
def database() -> FakeDatabase:
    return FakeDatabase()


def detection(database: FakeDatabase, photos: dict[str, list[DetectedFace]]) -> DetectionDeps:
    """Photos by path, each its own bytes; `missing.jpg` is named by no file."""
    files = {path: f"bytes of {path}".encode() for path in photos}
    analyses = {data: ImageAnalysis(640, 480, PACK, photos[path]) for path, data in files.items()}
    return DetectionDeps(FakeAnalyzer(analyses), database.unit_of_work, FakeThumbnails(), FakeFiles(files))


async def test_a_batch_gives_one_outcome_per_message_and_refuses_only_the_bad_one(
    database: FakeDatabase,
) -> None:
    alice, bob = (faces[0] for faces in people(2, 1))
    deps = detection(database, {"a.jpg": [face(0, alice), face(100, bob)], "b.jpg": []})
    events = [
        ImageUploaded(image_id="1", path="a.jpg"),
        ImageUploaded(image_id="2", path="missing.jpg"),
        ImageUploaded(image_id="3", path="b.jpg"),
    ]

    first, missing, empty = await handle_images_uploaded(events, deps)

    assert is_refusal(missing, "image_not_found")
    assert isinstance(first, list)
    assert isinstance(empty, list)
    ((detected_a,), (detected_b,)) = first, empty
    assert isinstance(detected_a, FacesDetected)
    assert isinstance(detected_b, FacesDetected)
    assert (detected_a.image_id, detected_a.face_count, detected_b.face_count) == ("1", 2, 0)
    stored = database.committed
    assert sorted(stored.faces) == sorted(detected_a.face_ids)
    statuses = {image.source_path: image.status for image in stored.images.values()}
    assert statuses == {"a.jpg": "done", "missing.jpg": "failed", "b.jpg": "done"}
    assert all(row.thumbnail_path in deps.thumbnails.saved for row in stored.faces.values())


async def test_a_redelivered_batch_stores_its_faces_once(database: FakeDatabase) -> None:
    ((one, two),) = people(1, 2)
    deps = detection(database, {"a.jpg": [face(0, one), face(100, two)]})
    event = ImageUploaded(image_id="1", path="a.jpg")

    ((first,),) = await handle_images_uploaded([event], deps)
    ((again,),) = await handle_images_uploaded([event], deps)

    assert isinstance(first, FacesDetected)
    assert isinstance(again, FacesDetected)
    assert first.face_ids == again.face_ids
    assert len(database.committed.faces) == 2


async def test_the_scan_skips_content_it_already_analysed_under_any_path(database: FakeDatabase) -> None:
    ((one,),) = people(1, 1)
    deps = detection(database, {"a.jpg": [face(0, one)]})
    deps.files.files["copy of a.jpg"] = deps.files.files["a.jpg"]
    await handle_images_uploaded([ImageUploaded(image_id="1", path="a.jpg")], deps)
    analysed = len(deps.analyzer.calls)

    scan = replace(deps, skip_known_content=True)
    (skipped,) = await handle_images_uploaded([ImageUploaded(image_id="2", path="copy of a.jpg")], scan)
    (announced,) = await handle_images_uploaded([ImageUploaded(image_id="3", path="copy of a.jpg")], deps)

    assert skipped == []
    assert len(deps.analyzer.calls) == analysed + 1  # only the one without the skip analysed again
    assert isinstance(announced, list)
    assert len(announced) == 1


async def test_a_transient_failure_stores_nothing_of_the_batch_and_is_raised(database: FakeDatabase) -> None:
    ((one,),) = people(1, 1)
    deps = detection(database, {"a.jpg": [face(0, one)]})

    async def broken(uow: object, stored: object) -> None:
        raise ConnectionResetError("the database went away")

    with pytest.raises(ConnectionResetError):
        await handle_images_uploaded(
            [ImageUploaded(image_id="1", path="a.jpg")], replace(deps, after_store=broken)
        )

    assert database.committed.faces == {}  # the faces' transaction rolled back; the image stays registered
    assert [image.status for image in database.committed.images.values()] == ["pending"]


async def test_no_more_images_wait_read_for_analysis_than_the_read_ahead(database: FakeDatabase) -> None:
    photos = {f"{index}.jpg": [] for index in range(8)}
    events = [ImageUploaded(image_id=str(index), path=path) for index, path in enumerate(photos)]

    async def most_waiting(read_ahead: asyncio.Semaphore | None) -> int:
        """The most images read and not yet analysed at any moment while the batch is handled."""
        deps = replace(detection(database, photos), read_ahead=read_ahead)
        lock, counts = threading.Lock(), {"read": 0, "analysed": 0, "most": 0}
        read, analyse = deps.files.read, deps.analyzer.analyze_async

        def counting_read(path: str) -> tuple[bytes, str]:
            with lock:
                counts["read"] += 1
                counts["most"] = max(counts["most"], counts["read"] - counts["analysed"])
            return read(path)

        async def slow_analyse(data: bytes, hand: Sequence[HandBox] = ()) -> ImageAnalysis:
            await asyncio.sleep(0.01)  # long enough for unbounded reads to run ahead
            with lock:
                counts["analysed"] += 1
            return await analyse(data, hand)

        deps.files.read = counting_read  # type: ignore[method-assign]
        deps.analyzer.analyze_async = slow_analyse  # type: ignore[method-assign]
        outcomes = await handle_images_uploaded(events, deps)
        assert all(isinstance(outcome, list) and len(outcome) == 1 for outcome in outcomes)
        return counts["most"]

    assert await most_waiting(asyncio.Semaphore(2)) == 2
    assert await most_waiting(None) > 2  # without the bound the whole batch is read at once


def grouping(database: FakeDatabase, now: datetime | None = None, interval: float = 900.0) -> GroupingDeps:
    clock = (lambda: now) if now is not None else (lambda: datetime.now(UTC))
    return GroupingDeps(database.unit_of_work, GroupingParams(), PACK, interval, clock=clock)


async def test_detected_faces_found_persons_and_the_event_goes_with_the_last_message_of_its_pack(
    database: FakeDatabase,
) -> None:
    embeddings = people(3, 6)
    photos = {
        f"{person}-{n}.jpg": [face(0, vector)]
        for person, faces in enumerate(embeddings)
        for n, vector in enumerate(faces)
    }
    detections = await handle_images_uploaded(
        [ImageUploaded(image_id=path, path=path) for path in photos], detection(database, photos)
    )
    events = [event for outcome in detections if isinstance(outcome, list) for event in outcome]
    assert len(events) == len(photos)

    outcomes = await handle_faces_detected(events, grouping(database))

    assert outcomes[:-1] == [[]] * (len(events) - 1)
    (updated,) = outcomes[-1]
    assert isinstance(updated, PersonsUpdated)
    assert updated.changes["kind"] == "incremental"
    assert len(updated.changes["created"]) == 3
    person_of = {row.id: row.person_id for row in database.committed.faces.values()}
    for person_faces in np.array_split(np.arange(len(events)), 3):
        assert len({person_of[events[row].face_ids[0]] for row in person_faces}) == 1


async def test_a_periodic_recluster_is_skipped_within_the_interval_and_a_manual_one_runs(
    database: FakeDatabase,
) -> None:
    now = datetime.now(UTC)
    periodic, manual = ReclusterRequested(reason=PERIODIC), ReclusterRequested(reason="manual")

    ran, skipped, forced = await handle_recluster_requested(
        [periodic, periodic, manual], grouping(database, now)
    )
    (later,) = await handle_recluster_requested([periodic], grouping(database, now + timedelta(seconds=900)))

    assert isinstance(ran, list)
    assert len(ran) == 1
    assert skipped == []
    assert isinstance(forced, list)
    assert len(forced) == 1
    assert isinstance(later, list)
    assert len(later) == 1
    assert [run["status"] for run in database.committed.runs] == ["done"] * 3


async def test_each_pack_is_grouped_with_its_own_thresholds(database: FakeDatabase) -> None:
    photos = {
        f"{person}-{n}.jpg": [face(0, vector)]
        for person, faces in enumerate(people(3, 6))
        for n, vector in enumerate(faces)
    }
    await handle_images_uploaded(
        [ImageUploaded(image_id=path, path=path) for path in photos], detection(database, photos)
    )
    # The faces' pack is not the deps' current pack: its own thresholds apply. These are stricter than
    # any two of the faces are similar (about 0.94 within a person), so nobody is grouped.
    strict = GroupingParams(
        link_similarity=0.99,
        merge_similarity=0.99,
        cohesion_similarity=0.99,
        member_similarity=0.98,
        vote_similarity=0.99,
    )
    other_current = replace(grouping(database), model_pack="another_pack")
    deps = replace(other_current, params_of_pack=lambda pack: strict if pack == PACK else GroupingParams())

    ((own,),) = await handle_recluster_requested([ReclusterRequested(model_pack=PACK)], deps)
    ((shared,),) = await handle_recluster_requested([ReclusterRequested(model_pack=PACK)], other_current)

    assert isinstance(own, PersonsUpdated)
    assert isinstance(shared, PersonsUpdated)
    assert own.changes["created"] == []
    assert len(shared.changes["created"]) == 3  # the deps' params for every pack: three persons
