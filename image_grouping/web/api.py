"""The JSON API under /api: each endpoint calls one handler of image_grouping.handlers (people.py for the
edits, add_face.py to add a face by hand, queries.py for the reads) and says what it returned, as the CLI
and the RabbitMQ commands do; the photo and thumbnails by id.

An edit answers with the events its handler returned (`changes`: what changed, empty when nothing did).
Wrong types and out-of-range values are refused by validation (422); a refusal of a handler keeps its
status (app.status_of).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from image_grouping.bootstrap import Adapters, suggestion_params
from image_grouping.config import Settings
from image_grouping.errors import InvalidCommandError
from image_grouping.handlers import people, queries
from image_grouping.handlers.add_face import AddFaceDeps, handle_add_face
from image_grouping.handlers.people import PeopleDeps
from image_grouping.handlers.ports import Outcome, UnitOfWorkFactory, in_library
from image_grouping.models import views
from image_grouping.models.messages import (
    LIBRARY_ID_MAX_LENGTH,
    AddFace,
    AssignFace,
    ChooseCover,
    EventData,
    ForgetPerson,
    ImageDeleted,
    MergePersons,
    RejectFace,
    RenamePerson,
    SetPersonHidden,
)
from image_grouping.models.views import FaceView, ImageView, PersonSummary
from image_grouping.web.app import require_token
from image_grouping.web.files import WebFiles

MAX_ID = 2**63 - 1  # the ids are 64-bit: a larger one is refused before it reaches the database
MAX_PAGE = 1000

router = APIRouter(prefix="/api", dependencies=[Depends(require_token)])

Id = Annotated[int, Path(ge=1, le=MAX_ID)]
Offset = Annotated[int, Query(ge=0, le=MAX_ID, description="Skip this many first.")]


@dataclass(frozen=True)
class LibraryAdapters:
    """The adapters as one request sees them: its library's units of work (`unit_of_work` reads and
    writes that library only), and the library its commands name."""

    adapters: Adapters
    library: str

    @property
    def unit_of_work(self) -> UnitOfWorkFactory:
        return in_library(self.adapters.unit_of_work, self.library)

    @property
    def settings(self) -> Settings:
        return self.adapters.settings

    def people_deps(self) -> PeopleDeps:
        return self.adapters.people_deps()

    def add_face_deps(self) -> AddFaceDeps:
        return self.adapters.add_face_deps()


def adapters(
    request: Request,
    library: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=LIBRARY_ID_MAX_LENGTH,
            description="The library (owner) the request reads and edits; default: serve's --library.",
        ),
    ] = None,
) -> LibraryAdapters:
    if library is not None and not library.strip():
        raise InvalidCommandError("a library id cannot be blank")
    return LibraryAdapters(request.app.state.adapters, library or request.app.state.library)


def web_files(request: Request) -> WebFiles:
    return request.app.state.files


Deps = Annotated[LibraryAdapters, Depends(adapters)]


# --- what the API returns ------------------------------------------------------------------------------


class Person(BaseModel):
    id: int
    name: str | None
    hidden: bool
    face_count: int
    cover_face_id: int | None
    cover_thumbnail_url: str | None
    url: str = Field(description="This person, with its faces.")
    page_url: str = Field(description="The person's page in the browser.")


class Face(BaseModel):
    id: int
    image_id: int
    person_id: int | None
    box: tuple[float, float, float, float] = Field(description="x1, y1, x2, y2 in the photo's pixels.")
    assigned_by: str = Field(
        description='"manual" when set by hand (grouping never changes it), else "auto".'
    )
    added_by_hand: bool = Field(description="A person drew its box where the detector had found none.")
    path: str = Field(description="The photo's path as stored.")
    thumbnail_url: str | None
    photo_url: str = Field(description="The photo's file.")
    photo_page_url: str = Field(description="The photo with every face drawn, in the browser.")


class PersonPage(BaseModel):
    total: int
    offset: int
    limit: int
    persons: list[Person]


class PersonWithFaces(Person):
    offset: int
    limit: int
    faces: list[Face] = Field(description="A page of its faces, clearest first; face_count is the total.")


class Suggestion(BaseModel):
    person_id: int
    name: str | None
    similarity: float


class UnassignedFace(Face):
    suggestion: Suggestion | None = Field(description="The person it probably is ('Is this X?'), if any.")


class MergeSuggestion(BaseModel):
    person_a: int
    person_b: int
    names: tuple[str | None, str | None]
    similarity: float


class PhotoSummary(BaseModel):
    id: int
    path: str
    source_id: str | None
    width: int | None
    height: int | None
    url: str = Field(description="The photo's file.")
    detail_url: str = Field(description="This photo, with every face in it.")
    page_url: str = Field(description="The photo with every face drawn, in the browser.")


class Photo(PhotoSummary):
    faces: list[Face]


class PhotoPage(BaseModel):
    offset: int
    limit: int
    images: list[PhotoSummary]


class Change(BaseModel):
    type: str = Field(description="The event's type, as published on RabbitMQ (docs/asyncapi.yaml).")
    data: dict[str, Any]


class Changes(BaseModel):
    changes: list[Change] = Field(description="What the edit changed; empty when it changed nothing.")


# --- what the API takes ----------------------------------------------------------------------------------


class PersonEdit(BaseModel):
    """Any of: a new name (null clears it), hidden or not, a cover face (one of the person's faces)."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, max_length=255)
    hidden: bool | None = None
    cover_face_id: int | None = Field(default=None, ge=1, le=MAX_ID)


class Merge(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source_ids: list[Annotated[int, Field(ge=1, le=MAX_ID)]] = Field(
        min_length=1, max_length=1000, description="Persons whose faces join this one; they are deleted."
    )


class Assignment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    person_id: int | None = Field(ge=1, le=MAX_ID, description="The person it is; null: a new person.")


class Rejection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    person_id: int | None = Field(
        default=None, ge=1, le=MAX_ID, description="The person it is not (default: its own)."
    )


class DrawnFace(BaseModel):
    """A face the detector missed: its box on the photo, and the person it is if known."""

    model_config = ConfigDict(extra="forbid")
    box: tuple[float, float, float, float] = Field(
        description="x1, y1, x2, y2 in pixels of the photo as shown (EXIF orientation applied), full size."
    )
    person_id: int | None = Field(
        default=None, ge=1, le=MAX_ID, description="The person it is, by hand; null: grouping decides."
    )


# --- views to JSON ---------------------------------------------------------------------------------------


def thumbnail_url(face_id: int | None) -> str | None:
    return f"/api/faces/{face_id}/thumbnail" if face_id is not None else None


def person_json(person: PersonSummary) -> dict[str, Any]:
    return {
        "id": person.id,
        "name": person.name,
        "hidden": person.hidden,
        "face_count": person.face_count,
        "cover_face_id": person.cover_face_id,
        "cover_thumbnail_url": thumbnail_url(person.cover_face_id) if person.cover_thumbnail else None,
        "url": f"/api/persons/{person.id}",
        "page_url": f"/persons/{person.id}",
    }


def face_json(face: FaceView) -> dict[str, Any]:
    return {
        "id": face.id,
        "image_id": face.image_id,
        "person_id": face.person_id,
        "box": face.box,
        "assigned_by": face.assigned_by,
        "added_by_hand": face.added_by_hand,
        "path": face.path,
        "thumbnail_url": thumbnail_url(face.id) if face.thumbnail else None,
        "photo_url": f"/api/images/{face.image_id}/file",
        "photo_page_url": f"/photos/{face.image_id}",
    }


async def run_edit(
    handle: Callable[[list[Any], PeopleDeps], Awaitable[list[Outcome]]],
    command: EventData,
    deps: LibraryAdapters,
) -> list[EventData]:
    """One command through its handler, as the CLI runs it; a refusal is raised (and answered 4xx)."""
    (outcome,) = await handle([command], deps.people_deps())
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def photo_json(image: ImageView) -> dict[str, Any]:
    return {
        "id": image.id,
        "path": image.path,
        "source_id": image.source_id,
        "width": image.width,
        "height": image.height,
        "url": f"/api/images/{image.id}/file",
        "detail_url": f"/api/images/{image.id}",
        "page_url": f"/photos/{image.id}",
    }


def changes(events: list[EventData]) -> Changes:
    return Changes(
        changes=[Change(type=event.event_type, data=event.model_dump(mode="json")) for event in events]
    )


# --- persons ---------------------------------------------------------------------------------------------


@router.get("/persons", response_model=PersonPage, summary="The persons, named first, then by face count")
async def list_persons(
    deps: Deps,
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    hidden: Annotated[bool, Query(description="Include hidden persons.")] = True,
) -> dict[str, Any]:
    persons = await queries.list_persons(deps.unit_of_work, include_hidden=hidden, offset=offset, limit=limit)
    total = await queries.count_persons(deps.unit_of_work, include_hidden=hidden)
    return {"total": total, "offset": offset, "limit": limit, "persons": [person_json(p) for p in persons]}


@router.get(
    "/persons/{person_id}", response_model=PersonWithFaces, summary="A person and a page of its faces"
)
async def show_person(
    deps: Deps, person_id: Id, offset: Offset = 0, limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100
) -> dict[str, Any]:
    person = await queries.show_person(deps.unit_of_work, person_id, offset=offset, limit=limit)
    return person_json(person) | {
        "offset": offset,
        "limit": limit,
        "faces": [face_json(face) for face in person.faces],
    }


@router.patch(
    "/persons/{person_id}", response_model=Changes, summary="Rename, hide or show, choose the cover"
)
async def edit_person(deps: Deps, person_id: Id, edit: PersonEdit) -> Changes:
    """Each change given is its own command (rename, hide, cover, in that order), as on RabbitMQ: a
    refused one is answered with its refusal, and those before it stay done."""
    given = edit.model_fields_set
    if not given:
        raise InvalidCommandError("give a name, hidden or cover_face_id")
    for field in ("hidden", "cover_face_id"):
        if field in given and getattr(edit, field) is None:
            raise InvalidCommandError(f"{field} cannot be null")
    events: list[EventData] = []
    if "name" in given:
        rename = RenamePerson(library_id=deps.library, person_id=person_id, name=edit.name)
        events += await run_edit(people.handle_rename_person, rename, deps)
    if edit.hidden is not None:
        hide = SetPersonHidden(library_id=deps.library, person_id=person_id, hidden=edit.hidden)
        events += await run_edit(people.handle_set_person_hidden, hide, deps)
    if edit.cover_face_id is not None:
        cover = ChooseCover(library_id=deps.library, person_id=person_id, face_id=edit.cover_face_id)
        events += await run_edit(people.handle_choose_cover, cover, deps)
    return changes(events)


@router.post("/persons/{person_id}/merge", response_model=Changes, summary="Merge persons into this one")
async def merge_persons(deps: Deps, person_id: Id, merge: Merge) -> Changes:
    command = MergePersons(library_id=deps.library, target_id=person_id, source_ids=merge.source_ids)
    return changes(await run_edit(people.handle_merge_persons, command, deps))


@router.delete("/persons/{person_id}", response_model=Changes, summary="Forget a person (erasure)")
async def forget_person(deps: Deps, person_id: Id) -> Changes:
    """Erases the person's faces (embeddings, thumbnails) and name; see the README's Erasure."""
    return changes(
        await run_edit(
            people.handle_forget_person, ForgetPerson(library_id=deps.library, person_id=person_id), deps
        )
    )


@router.get(
    "/suggestions/merges", response_model=list[MergeSuggestion], summary="Pairs of persons probably one"
)
async def merge_suggestions(
    deps: Deps, limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100
) -> list[dict[str, Any]]:
    pairs = await queries.merge_suggestions(deps.unit_of_work, suggestion_params(deps.settings), limit=limit)
    return [
        {"person_a": p.person_a, "person_b": p.person_b, "names": p.names, "similarity": p.similarity}
        for p in pairs
    ]


# --- faces -----------------------------------------------------------------------------------------------


@router.get(
    "/faces/unassigned", response_model=list[UnassignedFace], summary="Faces without a person, with a guess"
)
async def unassigned_faces(
    deps: Deps, offset: Offset = 0, limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50
) -> list[dict[str, Any]]:
    page = await queries.unassigned_faces(
        deps.unit_of_work, suggestion_params(deps.settings), offset=offset, limit=limit
    )
    return [face_json(face) | {"suggestion": suggestion_json(face.suggestion)} for face in page]


def suggestion_json(suggestion: views.Suggestion | None) -> dict[str, Any] | None:
    if suggestion is None:
        return None
    return {"person_id": suggestion.person_id, "name": suggestion.name, "similarity": suggestion.similarity}


@router.post("/faces/{face_id}/assign", response_model=Changes, summary="Put a face into a person by hand")
async def assign_face(deps: Deps, face_id: Id, assignment: Annotated[Assignment, Body()]) -> Changes:
    command = AssignFace(library_id=deps.library, face_id=face_id, person_id=assignment.person_id)
    return changes(await run_edit(people.handle_assign_face, command, deps))


@router.post("/faces/{face_id}/reject", response_model=Changes, summary='"Not this person"')
async def reject_face(
    deps: Deps, face_id: Id, rejection: Annotated[Rejection | None, Body()] = None
) -> Changes:
    person_id = rejection.person_id if rejection is not None else None
    command = RejectFace(library_id=deps.library, face_id=face_id, person_id=person_id)
    return changes(await run_edit(people.handle_reject_face, command, deps))


@router.get(
    "/faces/{face_id}/thumbnail",
    response_class=FileResponse,
    summary="A face's thumbnail (JPEG)",
    responses={200: {"content": {"image/jpeg": {}}}},
)
async def face_thumbnail(
    deps: Deps, files: Annotated[WebFiles, Depends(web_files)], face_id: Id
) -> FileResponse:
    stored = await queries.face_thumbnail(deps.unit_of_work, face_id)
    return FileResponse(files.thumbnail(stored), media_type="image/jpeg", headers=_PRIVATE)


# --- photos ----------------------------------------------------------------------------------------------


@router.get("/images", response_model=PhotoPage, summary="The photos showing every one of some persons")
async def photos_with(
    deps: Deps,
    person_ids: Annotated[
        list[Annotated[int, Field(ge=1, le=MAX_ID)]],
        Query(
            alias="with",
            min_length=1,
            max_length=queries.MAX_PERSONS_PER_QUERY,
            description="A person's id; repeated: all of them are in each photo.",
        ),
    ],
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> dict[str, Any]:
    """As `image-grouping images with`: in the order the photos were registered."""
    photos = await queries.images_with(deps.unit_of_work, person_ids, offset=offset, limit=limit)
    return {"offset": offset, "limit": limit, "images": [photo_json(image) for image in photos]}


@router.get("/images/{image_id}", response_model=Photo, summary="A photo and every face in it")
async def photo(deps: Deps, image_id: Id) -> dict[str, Any]:
    detail = await queries.image_detail(deps.unit_of_work, image_id)
    return photo_json(detail) | {"faces": [face_json(face) for face in detail.faces]}


@router.delete("/images/{image_id}", response_model=Changes, summary="Delete a photo's faces (erasure)")
async def delete_photo(deps: Deps, image_id: Id) -> Changes:
    """As the uploader's `image.deleted` and `image-grouping images delete`: the photo's faces, embeddings
    and thumbnails go, and persons left without faces go unless named. The file itself is left alone."""
    path = await queries.photo_path(deps.unit_of_work, image_id)
    return changes(
        await run_edit(people.handle_image_deleted, ImageDeleted(library_id=deps.library, path=path), deps)
    )


@router.post("/images/{image_id}/faces", response_model=Changes, summary="Add a face the detector missed")
async def add_face(deps: Deps, image_id: Id, face: DrawnFace) -> Changes:
    """As `face.add.requested` and `image-grouping faces add`: the face is analysed at the box like a
    detected one (the models are loaded by the first one added), and analysing the photo again keeps it.
    Adding it again is no change."""
    command = AddFace(library_id=deps.library, image_id=image_id, box=face.box, person_id=face.person_id)
    (outcome,) = await handle_add_face([command], deps.add_face_deps())
    if isinstance(outcome, BaseException):
        raise outcome
    return changes(outcome)


@router.get(
    "/images/{image_id}/file",
    response_class=FileResponse,
    summary="The photo itself",
    responses={200: {"content": {"image/jpeg": {}}}},
)
async def photo_file(
    deps: Deps, files: Annotated[WebFiles, Depends(web_files)], image_id: Id
) -> FileResponse:
    stored = await queries.photo_path(deps.unit_of_work, image_id)
    return FileResponse(files.photo(stored), headers=_PRIVATE)


# Faces are personal data: browsers may keep them a while, shared caches never.
_PRIVATE = {"Cache-Control": "private, max-age=300"}
