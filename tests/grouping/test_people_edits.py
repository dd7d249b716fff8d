"""The people's edits and deletions (image_grouping.handlers.people) on SQLite and PostgreSQL: what each
command writes, the events it returns, its refusals, a second delivery changing nothing, and erasure that
leaves no embedding, thumbnail file or name behind, nor lets re-analysis learn the faces again."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from image_grouping.errors import BadInputError
from image_grouping.handlers.detection import DetectionDeps, handle_images_uploaded
from image_grouping.handlers.people import (
    PeopleDeps,
    handle_assign_face,
    handle_choose_cover,
    handle_forget_person,
    handle_image_deleted,
    handle_merge_persons,
    handle_reject_face,
    handle_rename_person,
    handle_set_person_hidden,
)
from image_grouping.handlers.ports import Outcome
from image_grouping.handlers.repack import repack_images
from image_grouping.models.faces import DetectedFace, FaceQuality, ImageAnalysis
from image_grouping.models.messages import (
    AssignFace,
    ChooseCover,
    EventData,
    FacesDeleted,
    ForgetPerson,
    ImageDeleted,
    ImageUploaded,
    MergePersons,
    PersonForgotten,
    PersonsUpdated,
    RejectFace,
    RenamePerson,
    SetPersonHidden,
)
from image_grouping.storage import SqlUnitOfWork, ThumbnailStore, read_database_id
from image_grouping.storage.schema import cannot_links, face_tombstones, faces, images, metadata, persons

PACK = "pack_a"
OTHER_PACK = "pack_b"
BOXES = [(10.0, 10.0, 110.0, 130.0), (300.0, 40.0, 380.0, 140.0), (600.0, 200.0, 660.0, 270.0)]


def face_with(box: tuple[float, float, float, float], seed: int) -> DetectedFace:
    embedding = np.random.default_rng(seed).standard_normal(64).astype(np.float32)
    return DetectedFace(
        box=box,
        landmarks=np.zeros((5, 2), np.float32),
        quality=FaceQuality(
            det_score=0.9 - seed / 1000, size_px=80.0, sharpness=50.0, yaw=0.0, pose="frontal"
        ),
        embedding=embedding / np.linalg.norm(embedding),
        thumbnail_jpeg=b"\xff\xd8 jpeg of face %d" % seed,
    )


def analysis(seed: int, pack: str = PACK, boxes: Sequence[tuple[float, ...]] = BOXES) -> ImageAnalysis:
    return ImageAnalysis(1000, 800, pack, [face_with(box, seed * 10 + i) for i, box in enumerate(boxes)])  # type: ignore[arg-type]


@dataclass
class Library:
    """Three photos of three faces each; persons 0..2 hold the faces of each position in the photos."""

    deps: PeopleDeps
    engine: AsyncEngine
    thumbnails: ThumbnailStore
    images: list[int]
    faces: list[list[int]]  # [photo][position]
    persons: list[int]

    async def count(self, table: Any, *where: Any) -> int:
        async with self.engine.connect() as connection:
            return int(await connection.scalar(select(func.count()).select_from(table).where(*where)))

    async def person_of(self, face_id: int) -> tuple[int | None, str]:
        async with self.engine.connect() as connection:
            row = (
                await connection.execute(
                    select(faces.c.person_id, faces.c.assigned_by).where(faces.c.id == face_id)
                )
            ).one()
        return row.person_id, row.assigned_by

    async def person(self, person_id: int) -> Any:
        async with self.engine.connect() as connection:
            return (await connection.execute(select(persons).where(persons.c.id == person_id))).first()


@pytest.fixture
async def library(
    unit_of_work: Callable[[], SqlUnitOfWork], grouping_engine: AsyncEngine, tmp_path: Path
) -> Library:
    store = ThumbnailStore(tmp_path / "thumbnails", tmp_path, await read_database_id(grouping_engine))
    image_ids, face_ids = [], []
    async with unit_of_work() as uow:
        for n in range(3):
            image = await uow.images.get_or_create(f"upload-{n}", f"//nas/photos/{n}.jpg")
            result = analysis(n)
            paths = store.save_faces(image.id, result)
            face_ids.append(
                await uow.save_analysis(image.id, hashlib.sha256(b"%d" % n).hexdigest(), 1, result, paths)
            )
            image_ids.append(image.id)
        person_ids = [await uow.persons.create(cover_face_id=face_ids[0][i]) for i in range(3)]
        await uow.faces.set_persons({face_ids[n][i]: person_ids[i] for n in range(3) for i in range(3)})
        await uow.commit()
    deps = PeopleDeps(unit_of_work=unit_of_work, thumbnails=store, model_pack=PACK)
    return Library(deps, grouping_engine, store, image_ids, face_ids, person_ids)


def events(outcomes: list[Outcome]) -> list[EventData]:
    (outcome,) = outcomes
    assert isinstance(outcome, list), outcome
    return outcome


def refusal(outcomes: list[Outcome]) -> str:
    (outcome,) = outcomes
    assert isinstance(outcome, BadInputError), outcome
    return outcome.reason


def changes(outcome: list[EventData]) -> dict[str, Any]:
    (updated,) = [event for event in outcome if isinstance(event, PersonsUpdated)]
    assert updated.changes["kind"] == "edit"
    return updated.changes


async def test_rename_hide_and_cover_each_change_once(library: Library) -> None:
    alice, bob, _ = library.persons
    rename = RenamePerson(person_id=alice, name="  Alice  ")
    assert changes(events(await handle_rename_person([rename], library.deps)))["renamed"] == [alice]
    assert (await library.person(alice)).name == "Alice"
    assert events(await handle_rename_person([rename], library.deps)) == []  # again: nothing
    assert changes(
        events(await handle_rename_person([RenamePerson(person_id=alice, name=None)], library.deps))
    )["renamed"] == [alice]
    assert (await library.person(alice)).name is None
    assert (
        refusal(await handle_rename_person([RenamePerson(person_id=alice, name=" ")], library.deps))
        == "invalid_command"
    )
    assert (
        refusal(await handle_rename_person([RenamePerson(person_id=10**9, name="X")], library.deps))
        == "unknown_person"
    )

    hide = SetPersonHidden(person_id=bob, hidden=True)
    assert changes(events(await handle_set_person_hidden([hide], library.deps)))["hidden"] == [bob]
    assert events(await handle_set_person_hidden([hide], library.deps)) == []
    assert (await library.person(bob)).hidden
    show = SetPersonHidden(person_id=bob, hidden=False)
    assert changes(events(await handle_set_person_hidden([show], library.deps)))["shown"] == [bob]

    cover = ChooseCover(person_id=bob, face_id=library.faces[2][1])
    assert changes(events(await handle_choose_cover([cover], library.deps)))["cover_changed"] == [bob]
    assert events(await handle_choose_cover([cover], library.deps)) == []
    assert (await library.person(bob)).cover_face_id == library.faces[2][1]
    not_bobs = ChooseCover(person_id=bob, face_id=library.faces[2][0])
    assert refusal(await handle_choose_cover([not_bobs], library.deps)) == "invalid_command"
    unknown = ChooseCover(person_id=bob, face_id=10**9)
    assert refusal(await handle_choose_cover([unknown], library.deps)) == "unknown_face"


async def test_merge_moves_every_face_by_hand_and_the_first_named_source_names_it(library: Library) -> None:
    alice, bob, carol = library.persons
    await handle_rename_person([RenamePerson(person_id=carol, name="Carol")], library.deps)
    merge = MergePersons(target_id=alice, source_ids=[bob, carol, bob])
    done = changes(events(await handle_merge_persons([merge], library.deps)))
    assert done["merged"] == [[bob, alice], [carol, alice]]
    assert done["renamed"] == [alice]
    assert sorted(done["deleted"]) == [bob, carol]
    moved = {(face["face_id"], face["before"], face["after"], face["by"]) for face in done["faces"]}
    assert moved == {
        (library.faces[n][i], p, alice, "hand") for n in range(3) for i, p in ((1, bob), (2, carol))
    }
    assert (await library.person(alice)).name == "Carol"
    # All nine are pinned, Alice's own three too: a recluster must not split the merged person again.
    assert await library.count(faces, faces.c.person_id == alice, faces.c.assigned_by == "manual") == 9
    assert await library.person(bob) is None

    assert events(await handle_merge_persons([merge], library.deps)) == []  # redelivered: done already
    assert await library.count(faces, faces.c.person_id == alice) == 9
    into_itself = MergePersons(target_id=alice, source_ids=[alice])
    assert refusal(await handle_merge_persons([into_itself], library.deps)) == "invalid_command"
    unknown = MergePersons(target_id=alice, source_ids=[10**9])
    assert refusal(await handle_merge_persons([unknown], library.deps)) == "unknown_person"
    unknown_target = MergePersons(target_id=10**9, source_ids=[alice])
    assert refusal(await handle_merge_persons([unknown_target], library.deps)) == "unknown_person"


async def test_assign_moves_a_face_by_hand_or_into_a_new_person(library: Library) -> None:
    alice, bob, _ = library.persons
    face = library.faces[1][0]
    assign = AssignFace(face_id=face, person_id=bob)
    done = changes(events(await handle_assign_face([assign], library.deps)))
    assert done["faces"] == [{"face_id": face, "before": alice, "after": bob, "by": "hand"}]
    assert await library.person_of(face) == (bob, "manual")
    assert events(await handle_assign_face([assign], library.deps)) == []

    new = AssignFace(face_id=face, person_id=None)
    done = changes(events(await handle_assign_face([new], library.deps)))
    (created,) = done["created"]
    assert await library.person_of(face) == (created, "manual")
    assert (await library.person(created)).cover_face_id == face
    assert events(await handle_assign_face([new], library.deps)) == []  # a person of its own already

    # The person's last face leaves: an unnamed person left empty is deleted.
    back = changes(
        events(await handle_assign_face([AssignFace(face_id=face, person_id=alice)], library.deps))
    )
    assert back["emptied"] == [created]
    assert back["deleted"] == [created]
    assert await library.person(created) is None

    assert (
        refusal(await handle_assign_face([AssignFace(face_id=10**9, person_id=alice)], library.deps))
        == "unknown_face"
    )
    assert (
        refusal(await handle_assign_face([AssignFace(face_id=face, person_id=10**9)], library.deps))
        == "unknown_person"
    )


async def test_a_face_of_another_model_pack_cannot_join_a_person(
    library: Library, unit_of_work: Callable[[], SqlUnitOfWork]
) -> None:
    async with unit_of_work() as uow:
        image = await uow.images.get_or_create("other", "//nas/photos/other.jpg")
        (other,) = await uow.save_analysis(image.id, "h", 1, analysis(7, OTHER_PACK, BOXES[:1]), [None])
        await uow.commit()
    outcome = await handle_assign_face(
        [AssignFace(face_id=other, person_id=library.persons[0])], library.deps
    )
    assert refusal(outcome) == "model_pack_mismatch"
    assert await library.person_of(other) == (None, "auto")


async def test_reject_takes_the_face_out_for_good(library: Library) -> None:
    alice, bob, _ = library.persons
    face = library.faces[0][0]  # alice's cover
    reject = RejectFace(face_id=face)
    done = changes(events(await handle_reject_face([reject], library.deps)))
    assert done["faces"] == [{"face_id": face, "before": alice, "after": None, "by": "hand"}]
    assert done["refused"] == [{"face_id": face, "person_id": alice}]
    assert await library.person_of(face) == (None, "manual")
    assert await library.count(cannot_links, cannot_links.c.face_id == face) == 1
    assert (await library.person(alice)).cover_face_id in library.faces[1] + library.faces[2]  # a new cover
    assert refusal(await handle_reject_face([reject], library.deps)) == "invalid_command"  # no person now
    again = RejectFace(face_id=face, person_id=alice)
    assert events(await handle_reject_face([again], library.deps)) == []

    # "Is this Bob?" "No": recorded for a face that is not Bob's, which stays where it is.
    declined = RejectFace(face_id=library.faces[0][2], person_id=bob)
    assert changes(events(await handle_reject_face([declined], library.deps)))["faces"] == []
    assert await library.count(cannot_links, cannot_links.c.person_id == bob) == 1
    assert events(await handle_reject_face([declined], library.deps)) == []
    assert (
        refusal(await handle_reject_face([RejectFace(face_id=face, person_id=10**9)], library.deps))
        == "unknown_person"
    )


async def _leftovers(library: Library, face_ids: Sequence[int], thumbnails: Sequence[str]) -> list[str]:
    """What is left of the faces: rows (with their embeddings), cannot-links, thumbnail files."""
    left = []
    if await library.count(faces, faces.c.id.in_(face_ids)):
        left.append("face rows")
    if await library.count(cannot_links, cannot_links.c.face_id.in_(face_ids)):
        left.append("cannot-links")
    left += [path for path in thumbnails if library.thumbnails.path_of(path).exists()]
    return left


async def _thumbnail_paths(library: Library, face_ids: Sequence[int]) -> list[str]:
    async with library.engine.connect() as connection:
        return list(await connection.scalars(select(faces.c.thumbnail_path).where(faces.c.id.in_(face_ids))))


@dataclass
class Secrets:
    """What must not outlive an erasure of faces: read before it."""

    embeddings: list[bytes]
    thumbnail_paths: list[str]
    thumbnail_contents: list[bytes]
    names: list[str]


async def _secrets(library: Library, face_ids: Sequence[int], names: Sequence[str] = ()) -> Secrets:
    async with library.engine.connect() as connection:
        rows = (
            await connection.execute(
                select(faces.c.embedding, faces.c.thumbnail_path).where(faces.c.id.in_(face_ids))
            )
        ).all()
    assert len(rows) == len(face_ids)
    paths = [row.thumbnail_path for row in rows]
    contents = [library.thumbnails.path_of(path).read_bytes() for path in paths]
    return Secrets([row.embedding for row in rows], paths, contents, list(names))


async def _traces(library: Library, secrets: Secrets) -> list[str]:
    """Where any of the secrets is left: in any column of any table the schema declares (every row
    scanned: an embedding in a blob, a path or a name in a text, either in a JSON document), and in the
    thumbnails folder (a file at one of the paths, or with one of the contents)."""
    found: list[str] = []
    async with library.engine.connect() as connection:
        for table in metadata.sorted_tables:
            for row in await connection.execute(select(table)):
                for column, value in row._mapping.items():
                    if isinstance(value, dict | list):
                        value = json.dumps(value)
                    if isinstance(value, bytes) and any(blob in value for blob in secrets.embeddings):
                        found.append(f"embedding in {table.name}.{column}")
                    if isinstance(value, str) and any(
                        text in value for text in secrets.thumbnail_paths + secrets.names
                    ):
                        found.append(f"{value!r} in {table.name}.{column}")
    for file in library.thumbnails.path_of("thumbnails").rglob("*"):
        stored = file.relative_to(library.thumbnails.path_of(".")).as_posix()
        if file.is_file() and (
            stored in secrets.thumbnail_paths or file.read_bytes() in secrets.thumbnail_contents
        ):
            found.append(f"thumbnail file {stored}")
    return found


class AnalysedAgain:
    """The photos of the library analysed again (a re-upload, or a repack with another pack): the same
    faces, their boxes shifted a little."""

    def __init__(self, model_pack: str) -> None:
        self.model_pack = model_pack

    async def analyze_async(self, data: bytes) -> ImageAnalysis:
        return analysis(int(data), self.model_pack, [(box[0] + 2, *box[1:]) for box in BOXES])


class PhotoFiles:
    def read(self, stored_path: str) -> tuple[bytes, str]:
        return stored_path[-5:-4].encode(), hashlib.sha256(stored_path.encode()).hexdigest()


async def test_forget_erases_a_person_and_reanalysis_does_not_learn_it_again(library: Library) -> None:
    alice, bob, _ = library.persons
    await handle_rename_person([RenamePerson(person_id=alice, name="Alice")], library.deps)
    await handle_reject_face([RejectFace(face_id=library.faces[0][1], person_id=alice)], library.deps)
    hers = [library.faces[n][0] for n in range(3)]
    thumbnails = await _thumbnail_paths(library, hers)
    assert await _leftovers(library, hers, thumbnails) == ["face rows", *thumbnails]  # before: all there
    secrets = await _secrets(library, hers, ["Alice"])
    assert len(await _traces(library, secrets)) == 3 + 3 + 3 + 1  # before: embeddings, paths, files, name

    forget = ForgetPerson(person_id=alice)
    done = events(await handle_forget_person([forget], library.deps))
    (forgotten,) = [event for event in done if isinstance(event, PersonForgotten)]
    assert forgotten.face_ids == hers
    assert forgotten.image_ids == sorted(library.images)
    assert changes(done)["deleted"] == [alice]
    assert await _leftovers(library, hers, thumbnails) == []
    assert await _traces(library, secrets) == []
    assert await library.person(alice) is None
    assert await library.count(cannot_links, cannot_links.c.person_id == alice) == 0
    async with library.engine.connect() as connection:
        names = list(await connection.scalars(select(persons.c.name)))
        kept = (await connection.execute(select(face_tombstones))).all()
    assert "Alice" not in names
    assert sorted(row.image_id for row in kept) == sorted(library.images)
    assert {row.person_id for row in kept} == {alice}
    assert await library.count(faces, faces.c.person_id == bob) == 3  # the others' faces stay

    assert events(await handle_forget_person([forget], library.deps)) == []  # redelivered: done
    assert (
        refusal(await handle_forget_person([ForgetPerson(person_id=10**9)], library.deps)) == "unknown_person"
    )

    # The photos uploaded again: the forgotten face is found and not stored.
    deps = DetectionDeps(AnalysedAgain(PACK), library.deps.unit_of_work, library.thumbnails, PhotoFiles())
    uploads = [ImageUploaded(image_id=f"upload-{n}", path=f"//nas/photos/{n}.jpg") for n in range(3)]
    detected = await handle_images_uploaded(uploads, deps)
    # Thumbnails are named by photo and position: the paths are now the other faces'; their contents count.
    secrets = dataclasses.replace(secrets, thumbnail_paths=[])
    assert await _traces(library, secrets) == []
    assert all(isinstance(outcome, list) and outcome[0].face_count == 2 for outcome in detected)
    assert await library.count(faces, faces.c.image_id.in_(library.images)) == 6
    assert await library.count(faces, faces.c.box_x1 < 20) == 0
    # Thumbnail files are named by photo and position: the forgotten face's is in none of them.
    written = {path.read_bytes() for path in library.thumbnails.path_of("thumbnails").rglob("*.jpg")}
    assert len(written) == 6
    assert not written & {face_with(BOXES[0], n * 10).thumbnail_jpeg for n in range(3)}

    # A repack of the photos with another model pack: not learnt again either.
    repack = DetectionDeps(
        AnalysedAgain(OTHER_PACK), library.deps.unit_of_work, library.thumbnails, PhotoFiles()
    )
    summary = await repack_images(repack, from_pack=None, limit=None)
    assert (summary.repacked, summary.faces) == (3, 6)
    assert await library.count(faces, faces.c.model_pack == OTHER_PACK) == 6
    assert await library.count(faces, faces.c.box_x1 < 20) == 0
    assert await _traces(library, secrets) == []


async def test_a_deleted_photo_leaves_nothing_and_empty_unnamed_persons_go(library: Library) -> None:
    alice, bob, carol = library.persons
    await handle_rename_person([RenamePerson(person_id=carol, name="Carol")], library.deps)
    # Alice and Carol are only in photo 0 after these moves; Bob is in all three.
    for n in (1, 2):
        for i in (0, 2):
            await handle_assign_face([AssignFace(face_id=library.faces[n][i], person_id=bob)], library.deps)
    photo = library.faces[0]
    thumbnails = await _thumbnail_paths(library, photo)
    await handle_reject_face([RejectFace(face_id=photo[1], person_id=alice)], library.deps)
    secrets = await _secrets(library, photo)

    deleted = ImageDeleted(image_id="upload-0")
    done = events(await handle_image_deleted([deleted], library.deps))
    (gone,) = [event for event in done if isinstance(event, FacesDeleted)]
    assert gone.face_ids == photo
    assert gone.person_ids == [alice]
    assert changes(done)["deleted"] == [alice]
    assert await _leftovers(library, photo, thumbnails) == []
    assert await _traces(library, secrets) == []
    assert await library.count(images, images.c.id == library.images[0]) == 0
    assert await library.person(alice) is None
    assert (await library.person(carol)).name == "Carol"  # named: kept, though without faces
    assert (await library.person(bob)).cover_face_id in library.faces[1] + library.faces[2]

    assert events(await handle_image_deleted([deleted], library.deps)) == []  # redelivered: nothing
    by_path = ImageDeleted(path="//nas/photos/1.jpg")
    assert (
        next(type(event) for event in events(await handle_image_deleted([by_path], library.deps)))
        is FacesDeleted
    )
    assert await library.count(images) == 1
    assert refusal(await handle_image_deleted([ImageDeleted()], library.deps)) == "invalid_command"
    # A repack of the photos left: nothing of the deleted one comes back.
    repack = DetectionDeps(
        AnalysedAgain(OTHER_PACK), library.deps.unit_of_work, library.thumbnails, PhotoFiles()
    )
    assert (await repack_images(repack, from_pack=None, limit=None)).repacked == 1
    assert await _traces(library, secrets) == []
