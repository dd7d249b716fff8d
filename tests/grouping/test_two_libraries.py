"""Libraries with the real models on real photos, over SQLite and PostgreSQL: the same LFW people uploaded
into two libraries (the very same files) are grouped apart. No person holds faces of both, each library
has persons of its own, an edit by hand in one (and a refused edit across) changes nothing in the other,
and deleting one library erases all of it and leaves the other as it was.

Small: six people, five photos each, into each library (of ../shared/eval/identity, read in place).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from image_grouping.bootstrap import Adapters, bootstrap, grouping_params, load_analyzer
from image_grouping.config import Settings, load_settings
from image_grouping.handlers import people
from image_grouping.handlers.detection import handle_images_uploaded
from image_grouping.handlers.ports import in_library
from image_grouping.handlers.queries import list_persons
from image_grouping.handlers.recognition import (
    GroupingDeps,
    handle_faces_detected,
    handle_recluster_requested,
    libraries_to_recluster,
)
from image_grouping.models.faces import DetectedFace, FaceQuality, ImageAnalysis
from image_grouping.models.messages import (
    PERIODIC,
    AssignFace,
    FacesDetected,
    ForgetPerson,
    ImageUploaded,
    LibraryDeleted,
    LibraryErased,
    MergePersons,
    ReclusterRequested,
    RejectFace,
    RenamePerson,
)
from image_grouping.models.records import ImageResult
from image_grouping.storage import SqlUnitOfWork
from image_grouping.storage.schema import (
    cannot_links,
    face_edits,
    face_tombstones,
    faces,
    images,
    person_merges,
    persons,
    recluster_runs,
)
from image_grouping.vision import FaceAnalyzer

pytestmark = pytest.mark.slow

PEOPLE = 6
PHOTOS_EACH = 5
ALICE, BOB = "alice@example.org", "family 42"  # any text is a library id


@pytest.fixture(scope="module")
def analyzer() -> Iterator[FaceAnalyzer]:
    analyzer = load_analyzer(load_settings(intra_op_threads=1))
    yield analyzer
    analyzer.close()


def _photos(eval_dir: Path) -> list[Path]:
    """PHOTOS_EACH photos of each of PEOPLE people with many, spread over the alphabet."""
    by_person: defaultdict[str, list[str]] = defaultdict(list)
    with (eval_dir / "identity_labels.csv").open(newline="") as file:
        for row in csv.DictReader(file):
            by_person[row["label"]].append(row["path"])
    many = sorted(label for label, paths in by_person.items() if len(paths) >= 10)
    chosen = many[:: len(many) // PEOPLE][:PEOPLE]
    return [eval_dir / path for label in chosen for path in sorted(by_person[label])[:PHOTOS_EACH]]


async def _upload(adapters: Adapters, library: str, photos: list[Path]) -> list[FacesDetected]:
    """Every photo into the library, eight at a time as the service takes them, then grouped as it
    arrives (incremental assignment)."""
    detection = adapters.detection_deps(skip_known_content=True)  # as a scan: known bytes are skipped
    detected: list[FacesDetected] = []
    for start in range(0, len(photos), 8):
        batch = [
            ImageUploaded(library_id=library, image_id=f"{library}/{photo.name}", path=str(photo))
            for photo in photos[start : start + 8]
        ]
        for outcome in await handle_images_uploaded(batch, detection):
            assert isinstance(outcome, list), outcome
            detected += [event for event in outcome if isinstance(event, FacesDetected)]
    for outcome in await handle_faces_detected(detected, adapters.grouping_deps()):
        assert isinstance(outcome, list), outcome
    return detected


async def _state(engine: AsyncEngine, library: str) -> dict[str, Any]:
    """Everything of a library that an edit or a grouping could change."""
    async with engine.connect() as connection:
        face_rows = (
            await connection.execute(
                select(faces.c.id, faces.c.person_id, faces.c.assigned_by, faces.c.thumbnail_path)
                .where(faces.c.library_id == library)
                .order_by(faces.c.id)
            )
        ).all()
        person_rows = (
            await connection.execute(
                select(
                    persons.c.id,
                    persons.c.name,
                    persons.c.hidden,
                    persons.c.cover_face_id,
                    persons.c.updated_at,
                )
                .where(persons.c.library_id == library)
                .order_by(persons.c.id)
            )
        ).all()
        edits = await connection.scalar(
            select(func.count())
            .select_from(face_edits.join(faces, faces.c.id == face_edits.c.face_id))
            .where(faces.c.library_id == library)
        )
    return {
        "faces": [tuple(row) for row in face_rows],
        "persons": [tuple(row) for row in person_rows],
        "edits": edits,
    }


async def _persons_of_faces(engine: AsyncEngine) -> dict[int, set[str]]:
    """Each person: the libraries of its faces and its own."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(persons.c.id, persons.c.library_id, faces.c.library_id.label("face_library")).select_from(
                persons.join(faces, faces.c.person_id == persons.c.id)
            )
        )
        found: defaultdict[int, set[str]] = defaultdict(set)
        for row in rows:
            found[row.id] |= {row.library_id, row.face_library}
    return found


async def test_the_same_people_in_two_libraries_are_grouped_and_edited_apart(
    unit_of_work: Callable[[], SqlUnitOfWork],
    grouping_engine: AsyncEngine,
    grouping_settings: Settings,
    analyzer: FaceAnalyzer,
    eval_dir: Path,
    tmp_path: Path,
) -> None:
    photos = _photos(eval_dir)
    assert len(photos) == PEOPLE * PHOTOS_EACH
    settings = grouping_settings.model_copy(
        update={"system_storage": tmp_path, "thumbnail_save_path": tmp_path / "thumbnails"}
    )
    engine = grouping_engine
    async with bootstrap(settings, analyzer=analyzer, engine=engine, local_files=True) as adapters:
        detected_a = await _upload(adapters, ALICE, photos)
        # The same files again, into the other library: analysed again (another library's analysis of the
        # same bytes is never reused), two images per path.
        detected_b = await _upload(adapters, BOB, photos)
        assert sum(e.face_count for e in detected_b) == sum(e.face_count for e in detected_a) >= len(photos)
        assert all(event.library_id == BOB for event in detected_b)
        async with engine.connect() as connection:
            per_library = dict(
                (
                    await connection.execute(
                        select(images.c.library_id, func.count()).group_by(images.c.library_id)
                    )
                ).all()
            )
        assert per_library == {ALICE: len(photos), BOB: len(photos)}
        grouping = adapters.grouping_deps()
        for library in (ALICE, BOB):
            (outcome,) = await handle_recluster_requested([ReclusterRequested(library_id=library)], grouping)
            assert isinstance(outcome, list)
            assert outcome[0].library_id == library

        # 1. No person holds faces of two libraries; 2. each library has persons of its own, about one per
        # person photographed, and its listing shows only those.
        libraries_of = await _persons_of_faces(engine)
        assert libraries_of
        assert all(len(libraries) == 1 for libraries in libraries_of.values())
        own = {library: {p for p, ls in libraries_of.items() if ls == {library}} for library in (ALICE, BOB)}
        assert PEOPLE - 2 <= len(own[ALICE]) <= PEOPLE + 2
        assert PEOPLE - 2 <= len(own[BOB]) <= PEOPLE + 2
        listed = {p.id for p in await list_persons(in_library(adapters.unit_of_work, ALICE))}
        assert own[ALICE] <= listed
        assert not listed & own[BOB]

        # 3. Edits by hand in one library change nothing in the other.
        before_b = await _state(engine, BOB)
        people_deps = adapters.people_deps()
        first, second = sorted(own[ALICE])[:2]
        async with unit_of_work(ALICE) as uow:
            face_a = (await uow.faces.of_persons([first]))[0]
        async with unit_of_work(BOB) as uow:
            person_b = sorted(own[BOB])[0]
            face_b = (await uow.faces.of_persons([person_b]))[0]
        edits = [
            (people.handle_rename_person, RenamePerson(library_id=ALICE, person_id=first, name="Ann")),
            (people.handle_reject_face, RejectFace(library_id=ALICE, face_id=face_a.id)),
            (
                people.handle_merge_persons,
                MergePersons(library_id=ALICE, target_id=first, source_ids=[second]),
            ),
        ]
        for handle, command in edits:
            (outcome,) = await handle([command], people_deps)
            assert isinstance(outcome, list), outcome
            assert outcome
            assert all(event.library_id == ALICE for event in outcome)
        # Across libraries: refused, whichever library the command says it is of, and nothing said of the
        # other library's face or person.
        refused = [
            (people.handle_assign_face, AssignFace(library_id=ALICE, face_id=face_a.id, person_id=person_b)),
            (people.handle_assign_face, AssignFace(library_id=BOB, face_id=face_a.id, person_id=person_b)),
            (people.handle_reject_face, RejectFace(library_id=ALICE, face_id=face_b.id)),
            (
                people.handle_merge_persons,
                MergePersons(library_id=ALICE, target_id=first, source_ids=[person_b]),
            ),
            (people.handle_rename_person, RenamePerson(library_id=ALICE, person_id=person_b, name="Bob")),
        ]
        for handle, command in refused:
            (outcome,) = await handle([command], people_deps)
            assert getattr(outcome, "reason", None) == "other_library", outcome
            assert "another library" in str(outcome)
            assert BOB not in str(outcome)
            assert ALICE not in str(outcome)
        (outcome,) = await handle_recluster_requested([ReclusterRequested(library_id=ALICE)], grouping)
        assert isinstance(outcome, list)
        assert await _state(engine, BOB) == before_b
        libraries_of = await _persons_of_faces(engine)
        assert all(len(libraries) == 1 for libraries in libraries_of.values())

        # Deleting a library erases all of it; the other stays as it was. First a person forgotten (its
        # faces leave tombstones), beside the refusal, the edits and the merge above.
        forget = ForgetPerson(library_id=ALICE, person_id=sorted(own[ALICE])[2])
        (outcome,) = await people.handle_forget_person([forget], people_deps)
        assert isinstance(outcome, list), outcome
        before_b = await _state(engine, BOB)
        kept_apart = (cannot_links, face_edits, person_merges, face_tombstones)  # only alice's so far
        async with engine.connect() as connection:
            thumbnails = (
                await connection.scalars(select(faces.c.thumbnail_path).where(faces.c.library_id == ALICE))
            ).all()
            face_count = await connection.scalar(select(func.count()).where(faces.c.library_id == ALICE))
            for table in kept_apart:
                assert await connection.scalar(select(func.count()).select_from(table)) > 0, table.name
        erase = LibraryDeleted(library_id=ALICE)
        (outcome,) = await people.handle_library_deleted([erase], people_deps)
        assert isinstance(outcome, list)
        (erased,) = outcome
        assert isinstance(erased, LibraryErased)
        assert (erased.image_count, erased.face_count) == (len(photos), face_count)
        assert erased.person_count >= len(own[ALICE]) - 2  # one was merged away, one forgotten
        async with engine.connect() as connection:
            for table in (images, faces, persons, recluster_runs):
                left = await connection.scalar(
                    select(func.count()).select_from(table).where(table.c.library_id == ALICE)
                )
                assert left == 0, table.name
            for table in kept_apart:
                assert await connection.scalar(select(func.count()).select_from(table)) == 0, table.name
            names = (await connection.execute(select(persons.c.name).where(persons.c.name == "Ann"))).all()
        assert names == []
        assert thumbnails
        assert not any((tmp_path / path).exists() for path in thumbnails if path)
        assert await _state(engine, BOB) == before_b
        assert all((tmp_path / row[3]).is_file() for row in before_b["faces"] if row[3])
        # Delivered again: nothing left to erase, nothing else touched.
        (again,) = await people.handle_library_deleted([erase], people_deps)
        assert isinstance(again, list)
        assert (again[0].image_count, again[0].face_count) == (0, 0)
        assert await _state(engine, BOB) == before_b


async def _store_faces(
    unit_of_work: Callable[..., SqlUnitOfWork], library: str, path: str, count: int
) -> list[int]:
    """A photo of `count` look-alike faces in the library (stored as the detector's results)."""
    rng = np.random.default_rng(len(path))
    centre = rng.normal(size=512)
    found = []
    for index in range(count):
        embedding = centre + 0.1 * rng.normal(size=512)
        found.append(
            DetectedFace(
                box=(100.0 * index, 0.0, 100.0 * index + 80.0, 80.0),
                landmarks=np.zeros((5, 2), np.float32),
                quality=FaceQuality(det_score=0.9, size_px=80.0, sharpness=100.0, yaw=0.0, pose="frontal"),
                embedding=(embedding / np.linalg.norm(embedding)).astype(np.float32),
                thumbnail_jpeg=b"",
            )
        )
    async with unit_of_work(library) as uow:
        image = await uow.images.get_or_create(None, path)
        analysis = ImageAnalysis(640, 480, "buffalo_sc", found)
        (ids,) = await uow.images.save_analyses([ImageResult(image.id, path, 1, analysis, [None] * count)])
        await uow.commit()
    return ids


async def test_the_periodic_recluster_regroups_only_the_libraries_that_changed(
    unit_of_work: Callable[..., SqlUnitOfWork], grouping_settings: Settings
) -> None:
    pack = "buffalo_sc"
    deps = GroupingDeps(unit_of_work, grouping_params(grouping_settings, pack), pack, interval_seconds=900)
    assert await libraries_to_recluster(unit_of_work, pack) == []
    x_faces = await _store_faces(unit_of_work, "x", "/p/1.jpg", 3)
    await _store_faces(unit_of_work, "y", "/p/1.jpg", 3)
    assert await libraries_to_recluster(unit_of_work, pack) == ["x", "y"]

    periodic = [ReclusterRequested(library_id=library, model_pack=pack, reason=PERIODIC) for library in "xy"]
    outcomes = await handle_recluster_requested(periodic, deps)
    assert [[event.library_id for event in outcome] for outcome in outcomes] == [["x"], ["y"]]  # type: ignore[union-attr]
    assert await libraries_to_recluster(unit_of_work, pack) == []  # their own writes are no change
    # Another replica's requests of the same interval: skipped, each library by its own last run.
    assert await handle_recluster_requested(periodic, deps) == [[], []]

    await _store_faces(unit_of_work, "y", "/p/2.jpg", 2)  # a new photo in y
    assert await libraries_to_recluster(unit_of_work, pack) == ["y"]
    await handle_recluster_requested([ReclusterRequested(library_id="y", model_pack=pack)], deps)
    assert await libraries_to_recluster(unit_of_work, pack) == []

    # An edit by hand in x: x changed, y did not.
    (edited,) = await people.handle_assign_face(
        [AssignFace(library_id="x", face_id=x_faces[0])],
        people.PeopleDeps(unit_of_work, FakeThumbnailStore(), pack),
    )
    assert isinstance(edited, list)
    assert await libraries_to_recluster(unit_of_work, pack) == ["x"]


class FakeThumbnailStore:
    def remove(self, stored_paths: Any) -> None:
        pass
