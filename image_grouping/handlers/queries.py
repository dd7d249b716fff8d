"""The read side of the people: what a photo library's People view asks (persons, a person's faces, the
unassigned faces with the person each probably is, persons probably one, photos showing some persons, one
photo with its faces, and the stored paths of a face's thumbnail and of a photo, which the web app serves).
Plain functions over a unit of work; the CLI and the web app call them alike.

Each opens its own read transaction, commits nothing, and refuses an unknown id with the refusal the
commands use (UnknownPersonError, UnknownImageError; OtherLibraryError for an id of another library): one
line and exit 2 on the CLI, a 4xx over HTTP. They see the unit of work's library only (`in_library`).
Listings page in the database (`offset`, `limit`); only the suggestions read embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from image_grouping.errors import InvalidCommandError
from image_grouping.grouping.suggestions import (
    CENTROID_FACES,
    FACE_SUGGESTION_SIMILARITY,
    MERGE_SUGGESTION_SIMILARITY,
    Centroids,
    centroids,
    suggest_merges,
    suggest_persons,
)
from image_grouping.handlers.people import unknown_face, unknown_image, unknown_person
from image_grouping.handlers.ports import UnitOfWork, UnitOfWorkFactory
from image_grouping.models.views import (
    ImageDetail,
    ImageView,
    MergeSuggestion,
    PersonDetail,
    PersonSummary,
    Suggestion,
    UnassignedFace,
)

MAX_PERSONS_PER_QUERY = 1000  # `images_with`: photos showing all of at most this many persons


@dataclass(frozen=True, slots=True)
class SuggestionParams:
    """Suggestions compare faces of one model pack (`bootstrap.suggestion_params`: the current one)."""

    model_pack: str
    face_similarity: float = FACE_SUGGESTION_SIMILARITY
    merge_similarity: float = MERGE_SUGGESTION_SIMILARITY
    centroid_faces: int = CENTROID_FACES


def _check_page(offset: int, limit: int | None) -> None:
    if offset < 0 or (limit is not None and limit < 1):
        raise InvalidCommandError(f"a page needs offset >= 0 and limit >= 1 (got {offset}, {limit})")


async def list_persons(
    unit_of_work: UnitOfWorkFactory, *, include_hidden: bool = True, offset: int = 0, limit: int | None = None
) -> list[PersonSummary]:
    """Persons, named first (by name), then by face count (most first), then by id."""
    _check_page(offset, limit)
    async with unit_of_work() as uow:
        return await uow.views.person_summaries(include_hidden=include_hidden, offset=offset, limit=limit)


async def count_persons(unit_of_work: UnitOfWorkFactory, *, include_hidden: bool = True) -> int:
    """How many persons `list_persons` pages through."""
    async with unit_of_work() as uow:
        return await uow.views.count_persons(include_hidden=include_hidden)


async def show_person(
    unit_of_work: UnitOfWorkFactory, person_id: int, *, offset: int = 0, limit: int | None = None
) -> PersonDetail:
    """A person and a page of its faces, clearest first (`face_count` is the total)."""
    _check_page(offset, limit)
    async with unit_of_work() as uow:
        person = await _person(uow, person_id)
        faces = await uow.views.faces_of_person(person_id, offset=offset, limit=limit)
    return PersonDetail(**asdict(person), faces=faces)


async def unassigned_faces(
    unit_of_work: UnitOfWorkFactory, params: SuggestionParams, *, offset: int = 0, limit: int | None = None
) -> list[UnassignedFace]:
    """A page of the faces without a person, clearest first, each with the person it most probably is
    (None when no person is similar enough, when the face was refused from that person, or when that
    person is hidden). Faces of another model pack than `params.model_pack` get no suggestion."""
    _check_page(offset, limit)
    async with unit_of_work() as uow:
        page = await uow.views.unassigned_faces(offset=offset, limit=limit)
        if not page:
            return []
        embeddings = await uow.views.embeddings([face.id for face in page], params.model_pack)
        person_centroids = await _centroids(uow, params)
        persons = {person.id: person for person in await uow.persons.list()}
        links = await uow.faces.cannot_links()
    comparable = [face for face in page if face.id in embeddings]
    row_of = {face.id: row for row, face in enumerate(comparable)}
    refused: dict[int, set[int]] = {}
    for face_id, person_id in links:
        if face_id in row_of:
            refused.setdefault(row_of[face_id], set()).add(person_id)
    found = suggest_persons(
        np.stack([embeddings[face.id] for face in comparable]) if comparable else np.empty((0, 0)),
        person_centroids,
        refused,
        excluded={person.id for person in persons.values() if person.hidden},
        min_similarity=params.face_similarity,
    )
    suggestion_of = {
        face.id: Suggestion(person_id=each[0], name=persons[each[0]].name, similarity=round(each[1], 4))
        for face, each in zip(comparable, found, strict=True)
        if each is not None and each[0] in persons
    }
    return [UnassignedFace(**asdict(face), suggestion=suggestion_of.get(face.id)) for face in page]


async def merge_suggestions(
    unit_of_work: UnitOfWorkFactory, params: SuggestionParams, *, limit: int = 100
) -> list[MergeSuggestion]:
    """Pairs of persons that are probably one, most similar first: never two persons a "not this person"
    keeps apart, two persons in one photo, or a hidden person."""
    _check_page(0, limit)
    async with unit_of_work() as uow:
        person_centroids = await _centroids(uow, params)
        persons = {person.id: person for person in await uow.persons.list()}
        blocked = await uow.views.refused_pairs() | await uow.views.persons_seen_together(params.model_pack)
    pairs = suggest_merges(
        person_centroids,
        blocked,
        excluded={person.id for person in persons.values() if person.hidden},
        limit=limit,
        min_similarity=params.merge_similarity,
    )
    return [
        MergeSuggestion(
            person_a=a, person_b=b, similarity=round(similarity, 4), names=(persons[a].name, persons[b].name)
        )
        for a, b, similarity in pairs
        if a in persons and b in persons
    ]


async def images_with(
    unit_of_work: UnitOfWorkFactory, person_ids: Sequence[int], *, offset: int = 0, limit: int | None = None
) -> list[ImageView]:
    """Photos showing every one of the persons, in the order they were registered."""
    _check_page(offset, limit)
    wanted = sorted(set(person_ids))
    if not wanted:
        raise InvalidCommandError("name at least one person")
    if len(wanted) > MAX_PERSONS_PER_QUERY:
        raise InvalidCommandError(f"at most {MAX_PERSONS_PER_QUERY} persons at once")
    async with unit_of_work() as uow:
        known = await uow.views.existing_persons(wanted)
        if missing := [person_id for person_id in wanted if person_id not in known]:
            raise await unknown_person(uow, missing[0])
        return await uow.views.images_with(wanted, offset=offset, limit=limit)


async def image_detail(unit_of_work: UnitOfWorkFactory, image_id: int) -> ImageDetail:
    """A photo and every face of its current analysis, with its box and person."""
    async with unit_of_work() as uow:
        image = await uow.views.image(image_id)
        if image is None:
            raise await unknown_image(uow, image_id)
        faces = await uow.views.faces_of_image(image_id)
    return ImageDetail(**asdict(image), faces=faces)


async def _person(uow: UnitOfWork, person_id: int) -> PersonSummary:
    person = await uow.views.person(person_id)
    if person is None:
        raise await unknown_person(uow, person_id)
    return person


async def _centroids(uow: UnitOfWork, params: SuggestionParams) -> Centroids:
    person_ids, embeddings = await uow.views.person_samples(params.model_pack, params.centroid_faces)
    return centroids(person_ids, embeddings)


async def face_thumbnail(unit_of_work: UnitOfWorkFactory, face_id: int) -> str | None:
    """The stored path of a face's thumbnail (relative to SYSTEM_STORAGE), None when it has none."""
    async with unit_of_work() as uow:
        face = (await uow.faces.get([face_id])).get(face_id)
        if face is None:
            raise await unknown_face(uow, face_id)
    return face.thumbnail_path


async def photo_path(unit_of_work: UnitOfWorkFactory, image_id: int) -> str:
    """A photo's path as stored (the uploader's, or the local path a scan read)."""
    async with unit_of_work() as uow:
        image = await uow.views.image(image_id)
        if image is None:
            raise await unknown_image(uow, image_id)
    return image.path
