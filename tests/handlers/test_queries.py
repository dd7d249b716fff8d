"""The people queries on the fake unit of work: order, paging, refusals and what the suggestions leave
out. tests/grouping/test_people_queries.py runs the same queries on real faces in SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
from fakes import BY_HAND, FakeDatabase, FakeUnitOfWork

from image_grouping.errors import InvalidCommandError, UnknownImageError, UnknownPersonError
from image_grouping.handlers.queries import (
    SuggestionParams,
    count_persons,
    image_detail,
    images_with,
    list_persons,
    merge_suggestions,
    show_person,
    unassigned_faces,
)
from image_grouping.models.faces import DetectedFace, FaceQuality, ImageAnalysis
from image_grouping.models.records import ImageResult

PACK = "fake_pack"
PARAMS = SuggestionParams(model_pack=PACK)
DIM = 64


def unit(vector: np.ndarray) -> np.ndarray:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def near(centre: np.ndarray, rng: np.random.Generator, spread: float = 0.3) -> np.ndarray:
    return unit(centre + spread * unit(rng.normal(size=DIM)))


@dataclass
class Library:
    """A fake database and the ids of what was put in it."""

    database: FakeDatabase = field(default_factory=FakeDatabase)
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(7))
    photos: dict[str, int] = field(default_factory=dict)

    async def photo(
        self, path: str, embeddings: list[np.ndarray], *, scores: list[float] | None = None, pack: str = PACK
    ) -> list[int]:
        """A photo with one face per embedding (left to right); returns the face ids."""
        scores = scores or [0.9] * len(embeddings)
        faces = [
            DetectedFace(
                box=(100.0 * index, 10.0, 100.0 * index + 80.0, 90.0),
                landmarks=np.zeros((5, 2), np.float32),
                quality=FaceQuality(det_score=score, size_px=80.0, sharpness=50.0, yaw=0.0, pose="frontal"),
                embedding=embedding,
                thumbnail_jpeg=b"",
            )
            for index, (embedding, score) in enumerate(zip(embeddings, scores, strict=True))
        ]
        async with self.database.unit_of_work() as uow:
            image = await uow.images.get_or_create(f"upload-{path}", path)
            thumbnails = [f"thumbnails/{path}-{index}.jpg" for index in range(len(faces))]
            analysis = ImageAnalysis(640, 480, pack, faces)
            (ids,) = await uow.images.save_analyses([ImageResult(image.id, path, 1, analysis, thumbnails)])
            await uow.commit()
        self.photos[path] = image.id
        return ids

    async def person(self, face_ids: list[int], name: str | None = None, *, hidden: bool = False) -> int:
        async with self.database.unit_of_work() as uow:
            person = await uow.persons.create(cover_face_id=face_ids[0] if face_ids else None, name=name)
            uow.state.persons[person]["hidden"] = hidden
            await uow.faces.set_persons(dict.fromkeys(face_ids, person))
            await uow.commit()
        return person

    def refuse(self, face_id: int, person_id: int) -> None:
        self.database.committed.cannot_links.add((face_id, person_id))

    @property
    def unit_of_work(self) -> Callable[[], FakeUnitOfWork]:
        return self.database.unit_of_work


@pytest.fixture
def library() -> Library:
    return Library()


async def test_persons_are_listed_named_first_by_name_then_by_face_count(library: Library) -> None:
    centre = unit(library.rng.normal(size=DIM))
    faces = [await library.photo(f"{n}.jpg", [near(centre, library.rng)]) for n in range(10)]
    small = await library.person(faces[0])
    large = await library.person([*faces[1], *faces[2], *faces[3]])
    zoe = await library.person(faces[4], "Zoe")
    bob = await library.person([*faces[5], *faces[6]], "bob")
    hidden = await library.person(faces[7], "Alice", hidden=True)
    empty = await library.person([])

    persons = await list_persons(library.unit_of_work)

    assert [person.id for person in persons] == [hidden, bob, zoe, large, small, empty]
    assert [person.face_count for person in persons] == [1, 2, 1, 3, 1, 0]
    assert persons[1].cover_face_id == faces[5][0]
    assert persons[1].cover_thumbnail == "thumbnails/5.jpg-0.jpg"
    assert persons[-1].cover_thumbnail is None
    assert hidden not in [
        person.id for person in await list_persons(library.unit_of_work, include_hidden=False)
    ]
    page = await list_persons(library.unit_of_work, offset=2, limit=2)
    assert [person.id for person in page] == [zoe, large]
    assert await count_persons(library.unit_of_work) == 6
    assert await count_persons(library.unit_of_work, include_hidden=False) == 5


async def test_a_person_shows_its_faces_clearest_first_with_a_page(library: Library) -> None:
    centre = unit(library.rng.normal(size=DIM))
    blurry, sharp, middling = [
        await library.photo(f"{n}.jpg", [near(centre, library.rng)], scores=[score])
        for n, score in enumerate((0.61, 0.99, 0.8))
    ]
    person = await library.person([*blurry, *sharp, *middling], "Dana")
    async with library.database.unit_of_work() as uow:
        uow.state.faces[middling[0]].assigned_by = BY_HAND
        await uow.commit()

    shown = await show_person(library.unit_of_work, person)
    page = await show_person(library.unit_of_work, person, offset=1, limit=1)

    assert (shown.id, shown.name, shown.face_count) == (person, "Dana", 3)
    assert [face.id for face in shown.faces] == [sharp[0], middling[0], blurry[0]]
    first = shown.faces[0]
    assert (first.image_id, first.path, first.person_id) == (library.photos["1.jpg"], "1.jpg", person)
    assert first.box == (0.0, 10.0, 80.0, 90.0)
    assert first.thumbnail == "thumbnails/1.jpg-0.jpg"
    assert [face.assigned_by for face in shown.faces] == ["auto", "manual", "auto"]
    assert [face.id for face in page.faces] == [middling[0]]
    assert page.face_count == 3


async def test_unknown_ids_and_bad_pages_are_refused(library: Library) -> None:
    with pytest.raises(UnknownPersonError):
        await show_person(library.unit_of_work, 404)
    with pytest.raises(UnknownPersonError):
        await images_with(library.unit_of_work, [404])
    with pytest.raises(UnknownImageError):
        await image_detail(library.unit_of_work, 404)
    with pytest.raises(InvalidCommandError):
        await images_with(library.unit_of_work, [])
    with pytest.raises(InvalidCommandError):
        await list_persons(library.unit_of_work, offset=-1)
    with pytest.raises(InvalidCommandError):
        await show_person(library.unit_of_work, 1, limit=0)


async def test_a_photo_analysed_again_by_another_pack_shows_only_its_current_faces(library: Library) -> None:
    centre = unit(library.rng.normal(size=DIM))
    (old,) = await library.photo("a.jpg", [near(centre, library.rng)], pack="old_pack")
    (new,) = await library.photo("a.jpg", [near(centre, library.rng)])  # the repack: same photo, new pack
    person = await library.person([old, new], "Eve")

    detail = await image_detail(library.unit_of_work, library.photos["a.jpg"])
    shown = await show_person(library.unit_of_work, person)

    assert [face.id for face in detail.faces] == [new]
    assert [face.id for face in shown.faces] == [new]
    assert shown.face_count == 1


async def test_photos_with_all_of_the_given_persons(library: Library) -> None:
    alice, bob = (unit(library.rng.normal(size=DIM)) for _ in range(2))
    together = await library.photo("together.jpg", [near(alice, library.rng), near(bob, library.rng)])
    alone = await library.photo("alone.jpg", [near(alice, library.rng)])
    again = await library.photo("again.jpg", [near(bob, library.rng), near(alice, library.rng)])
    alice_id = await library.person([together[0], *alone, again[1]])
    bob_id = await library.person([together[1], again[0]])

    both = await images_with(library.unit_of_work, [bob_id, alice_id])
    only_alice = await images_with(library.unit_of_work, [alice_id], offset=1, limit=1)
    detail = await image_detail(library.unit_of_work, library.photos["again.jpg"])

    assert [photo.path for photo in both] == ["together.jpg", "again.jpg"]
    assert (both[0].source_id, both[0].width, both[0].height) == ("upload-together.jpg", 640, 480)
    assert [photo.path for photo in only_alice] == ["alone.jpg"]
    assert [(face.id, face.person_id) for face in detail.faces] == [(again[0], bob_id), (again[1], alice_id)]
    assert detail.faces[1].box == (100.0, 10.0, 180.0, 90.0)


async def test_an_unassigned_face_is_offered_the_person_it_resembles(library: Library) -> None:
    alice, bob, stranger = (unit(library.rng.normal(size=DIM)) for _ in range(3))
    alice_faces = [
        face for n in range(4) for face in await library.photo(f"a{n}.jpg", [near(alice, library.rng)])
    ]
    bob_faces = [
        face for n in range(4) for face in await library.photo(f"b{n}.jpg", [near(bob, library.rng)])
    ]
    alice_id = await library.person(alice_faces, "Alice")
    await library.person(bob_faces)
    (alice_new,) = await library.photo("new.jpg", [near(alice, library.rng)], scores=[0.95])
    (unknown,) = await library.photo("stranger.jpg", [stranger], scores=[0.7])

    faces = await unassigned_faces(library.unit_of_work, PARAMS)

    assert [face.id for face in faces] == [alice_new, unknown]  # clearest first
    suggestion = faces[0].suggestion
    assert suggestion is not None
    assert (suggestion.person_id, suggestion.name) == (alice_id, "Alice")
    assert 0.5 < suggestion.similarity <= 1.0
    assert faces[1].suggestion is None  # resembles nobody
    assert (faces[0].person_id, faces[0].path, faces[0].thumbnail) == (
        None,
        "new.jpg",
        "thumbnails/new.jpg-0.jpg",
    )
    assert [face.id for face in await unassigned_faces(library.unit_of_work, PARAMS, offset=1)] == [unknown]


async def test_no_suggestion_of_a_refused_or_hidden_person_or_across_packs(library: Library) -> None:
    alice, bob = (unit(library.rng.normal(size=DIM)) for _ in range(2))
    alice_faces = [
        face for n in range(4) for face in await library.photo(f"a{n}.jpg", [near(alice, library.rng)])
    ]
    bob_faces = [
        face for n in range(4) for face in await library.photo(f"b{n}.jpg", [near(bob, library.rng)])
    ]
    alice_id = await library.person(alice_faces, "Alice")
    await library.person(bob_faces, "Bob", hidden=True)
    (refused,) = await library.photo("refused.jpg", [near(alice, library.rng)])
    (of_bob,) = await library.photo("bob.jpg", [near(bob, library.rng)])
    (other_pack,) = await library.photo("other.jpg", [near(alice, library.rng)], pack="other_pack")
    library.refuse(refused, alice_id)

    faces = {face.id: face for face in await unassigned_faces(library.unit_of_work, PARAMS)}

    assert faces[refused].suggestion is None  # said not to be Alice; Bob is too far
    assert faces[of_bob].suggestion is None  # hidden Bob is not offered, nor anyone in his place
    assert faces[other_pack].suggestion is None  # embeddings of two packs are never compared
    assert (await unassigned_faces(library.unit_of_work, SuggestionParams("other_pack")))[
        0
    ].suggestion is None


async def test_persons_probably_one_are_suggested_most_similar_first(library: Library) -> None:
    alice, bob, carol = (unit(library.rng.normal(size=DIM)) for _ in range(3))

    async def faces_of(centre: np.ndarray, prefix: str, count: int, spread: float = 0.3) -> list[int]:
        return [
            face
            for n in range(count)
            for face in await library.photo(f"{prefix}{n}.jpg", [near(centre, library.rng, spread)])
        ]

    alice_one = await library.person(await faces_of(alice, "a", 4, 0.2), "Alice")
    alice_two = await library.person(await faces_of(alice, "A", 3, 0.2))
    bob_one = await library.person(await faces_of(bob, "b", 3, 0.45))
    bob_two = await library.person(await faces_of(bob, "B", 3, 0.45))
    await library.person(await faces_of(carol, "c", 3))

    pairs = await merge_suggestions(library.unit_of_work, PARAMS)

    assert [(pair.person_a, pair.person_b) for pair in pairs] == [(alice_one, alice_two), (bob_one, bob_two)]
    assert pairs[0].names == ("Alice", None)
    assert pairs[0].similarity > pairs[1].similarity > PARAMS.merge_similarity
    assert len(await merge_suggestions(library.unit_of_work, PARAMS, limit=1)) == 1


async def test_no_merge_of_persons_kept_apart_sharing_a_photo_or_hidden(library: Library) -> None:
    alice, bob, carol = (unit(library.rng.normal(size=DIM)) for _ in range(3))
    alice_faces = [await library.photo(f"a{n}.jpg", [near(alice, library.rng, 0.2)]) for n in range(6)]
    alice_one = await library.person([face for faces in alice_faces[:3] for face in faces])
    alice_two = await library.person([face for faces in alice_faces[3:] for face in faces])
    # Bob's two persons were seen side by side in one photo: two people, however alike.
    side_by_side = await library.photo("two.jpg", [near(bob, library.rng, 0.2), near(bob, library.rng, 0.2)])
    await library.person([side_by_side[0], *(await library.photo("b.jpg", [near(bob, library.rng, 0.2)]))])
    await library.person([side_by_side[1]])
    carol_faces = [
        face for n in range(4) for face in await library.photo(f"c{n}.jpg", [near(carol, library.rng, 0.2)])
    ]
    await library.person(carol_faces[:2])
    await library.person(carol_faces[2:], hidden=True)
    assert [
        (pair.person_a, pair.person_b) for pair in await merge_suggestions(library.unit_of_work, PARAMS)
    ] == [(alice_one, alice_two)]

    library.refuse(alice_faces[4][0], alice_one)  # a face of the second was said not to be the first

    assert await merge_suggestions(library.unit_of_work, PARAMS) == []
