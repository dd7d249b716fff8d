"""The messages on the bus: a small CloudEvents envelope around one pydantic model per event type.

Every message is JSON: the CloudEvents 1.0 attributes `specversion`, `id`, `type`, `source`, `time`,
`datacontenttype`, the extension attribute `dataversion` (the version of `data`'s schema) and `data`.
The event type is also the routing key. docs/asyncapi.yaml documents each message.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from image_grouping.errors import InvalidMessageError

SPEC_VERSION = "1.0"
DATA_VERSION = 1
SOURCE = "urn:image-grouping"


class UnsupportedVersionError(InvalidMessageError):
    """The envelope or its data has a schema version this service does not speak."""

    reason = "unsupported_schema_version"


# A library is one owner's (a user's, a family's, a tenant's) photos, faces and persons: grouping, queries
# and edits never cross libraries. Messages without `library_id` are of the default library, so uploaders
# and clients written before libraries keep working.
DEFAULT_LIBRARY = "default"
LIBRARY_ID_MAX_LENGTH = 255


def _library_id(value: str) -> str:
    """The id as given; blank ones (which would be a library nobody can name) are refused."""
    if not value.strip():
        raise ValueError("a library id cannot be blank")
    return value


LibraryId = Annotated[
    str,
    Field(min_length=1, max_length=LIBRARY_ID_MAX_LENGTH, description="The library (owner) of the data."),
    AfterValidator(_library_id),
]


class EventData(BaseModel):
    """The payload of one event type; `event_type` is both the CloudEvents type and the routing key.
    Every event is of one library (`library_id`, default DEFAULT_LIBRARY), which also routes it to its
    grouping shard."""

    model_config = ConfigDict(frozen=True, extra="ignore", coerce_numbers_to_str=True)
    event_type: ClassVar[str]
    library_id: LibraryId = DEFAULT_LIBRARY


class ImageUploaded(EventData):
    """The uploader stored an image: find its faces."""

    event_type: ClassVar[str] = "image.uploaded"
    image_id: str = Field(min_length=1, max_length=255, description="The uploader's id of the image.")
    path: str = Field(min_length=1, max_length=2000, description="Path as stored, starting with DB_PREFIX.")


class FacesDetected(EventData):
    """An image's faces are committed; grouping may assign them to persons."""

    event_type: ClassVar[str] = "faces.detected"
    image_id: str = Field(description="The uploader's id of the image.")
    face_ids: list[int] = Field(description="Ids of the committed faces, in detection order.")
    face_count: int = Field(ge=0)
    model_pack: str = Field(description="The pack whose embeddings were stored, e.g. buffalo_sc.")


PERIODIC = "interval"  # the reason of the requests each replica publishes every INTERVAL_SECONDS


class ReclusterRequested(EventData):
    """Regroup all faces of a model pack (periodic or manual); one consumer at a time runs it."""

    event_type: ClassVar[str] = "recluster.requested"
    model_pack: str | None = Field(default=None, description="Default: the service's MODEL_PACK.")
    reason: str = Field(default="manual", description="Why: interval, manual, oneshot.")


class PersonsUpdated(EventData):
    """Persons were created, changed or merged by grouping; `changes` is the grouping's own summary."""

    model_config = ConfigDict(frozen=True, extra="allow")
    event_type: ClassVar[str] = "persons.updated"
    model_pack: str
    changes: dict[str, Any] = Field(default_factory=dict)


# --- the people: edits and deletions (image_grouping.handlers.people), on the recluster queue ---------


class RenamePerson(EventData):
    """Name a person, or clear its name (None); a blank name is refused."""

    event_type: ClassVar[str] = "person.rename.requested"
    person_id: int
    name: str | None = Field(max_length=255, description="The new name; null clears it.")


class SetPersonHidden(EventData):
    """Hide a person from the People view (or show it again); grouping goes on as before."""

    event_type: ClassVar[str] = "person.hide.requested"
    person_id: int
    hidden: bool


class ChooseCover(EventData):
    """Make one of the person's faces its cover."""

    event_type: ClassVar[str] = "person.cover.requested"
    person_id: int
    face_id: int


class MergePersons(EventData):
    """Move every face of the sources into the target and delete the sources. The target keeps its
    name, or takes the first named source's."""

    event_type: ClassVar[str] = "persons.merge.requested"
    target_id: int
    source_ids: list[int] = Field(min_length=1, max_length=1000)


class AssignFace(EventData):
    """Put a face into a person by hand (person_id null: into a new person of its own)."""

    event_type: ClassVar[str] = "face.assign.requested"
    face_id: int
    person_id: int | None = None


class RejectFace(EventData):
    """ "Not this person": the face leaves the person (default: its current one) and grouping never puts
    it back (a cannot-link). For an unassigned face, it records that the face is not that person."""

    event_type: ClassVar[str] = "face.reject.requested"
    face_id: int
    person_id: int | None = None


class ForgetPerson(EventData):
    """Erase a person's biometric data: its faces' embeddings, thumbnails and its name. What is kept is a
    tombstone per face (photo id and box), so re-analysis does not learn the faces again."""

    event_type: ClassVar[str] = "person.forget.requested"
    person_id: int


class ImageDeleted(EventData):
    """The uploader deleted a photo (by its id or its stored path): its faces, embeddings and thumbnails
    go, and persons left without faces go unless named."""

    event_type: ClassVar[str] = "image.deleted"
    image_id: str | None = Field(default=None, min_length=1, max_length=255)
    path: str | None = Field(default=None, min_length=1, max_length=2000)


class PersonForgotten(EventData):
    """Announced after `person.forget.requested` was carried out: drop every cached face of the person."""

    event_type: ClassVar[str] = "person.forgotten"
    person_id: int
    face_ids: list[int] = Field(description="The faces erased (their ids are never used again).")
    image_ids: list[int] = Field(description="Database ids of the photos those faces were in.")


class FacesDeleted(EventData):
    """Announced after `image.deleted` was carried out: the photo's faces are gone."""

    event_type: ClassVar[str] = "faces.deleted"
    image_id: str | None = Field(description="The uploader's id of the photo, as the command gave it.")
    path: str | None = Field(description="The stored path, as the command gave it.")
    face_ids: list[int]
    person_ids: list[int] = Field(description="Persons deleted because they were left without faces.")


class AddFace(EventData):
    """Add a face where the detector found none: a box on a stored photo (and, optionally, its person).
    The face is analysed there like a detected one, marked as added by hand, and every later analysis
    of the photo keeps it."""

    event_type: ClassVar[str] = "face.add.requested"
    image_id: int = Field(description="The photo's database id (a face's `image_id` in the queries).")
    box: tuple[float, float, float, float] = Field(
        description="x1, y1, x2, y2 in pixels of the photo as shown (EXIF orientation applied), full size."
    )
    person_id: int | None = Field(
        default=None, description="The person the face is, by hand; null: grouping decides."
    )


class FaceAdded(EventData):
    """Announced after `face.add.requested` was carried out: the new face, where the detector put it."""

    event_type: ClassVar[str] = "face.added"
    face_id: int
    image_id: int = Field(description="The photo's database id.")
    box: tuple[float, float, float, float] = Field(
        description="As stored: the detector's box of the face it found in the drawn box, else the drawn box."
    )
    person_id: int | None
    model_pack: str


class LibraryDeleted(EventData):
    """The photo backend deleted a library (a user, a family): erase all of it, images, faces, embeddings,
    thumbnails, persons, tombstones and edits."""

    event_type: ClassVar[str] = "library.deleted"


class LibraryErased(EventData):
    """Announced after `library.deleted` was carried out (also when there was nothing left to erase)."""

    event_type: ClassVar[str] = "library.erased"
    image_count: int = Field(ge=0, description="Photos erased.")
    face_count: int = Field(ge=0, description="Faces erased, every model pack.")
    person_count: int = Field(ge=0, description="Persons erased.")


PEOPLE_COMMANDS: tuple[type[EventData], ...] = (
    RenamePerson,
    SetPersonHidden,
    ChooseCover,
    MergePersons,
    AssignFace,
    RejectFace,
    ForgetPerson,
    ImageDeleted,
    AddFace,
    LibraryDeleted,
)

EVENT_TYPES: dict[str, type[EventData]] = {
    data_type.event_type: data_type
    for data_type in (
        ImageUploaded,
        FacesDetected,
        ReclusterRequested,
        PersonsUpdated,
        *PEOPLE_COMMANDS,
        PersonForgotten,
        FacesDeleted,
        FaceAdded,
        LibraryErased,
    )
}

DataT = TypeVar("DataT", bound=EventData)


class Envelope(BaseModel, Generic[DataT]):
    """CloudEvents 1.0 attributes around the data."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    specversion: str
    id: str = Field(min_length=1, max_length=255)
    type: str
    source: str = Field(min_length=1)
    time: datetime
    datacontenttype: Literal["application/json"] = "application/json"
    dataversion: int = DATA_VERSION
    data: DataT

    @property
    def routing_key(self) -> str:
        return self.type

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


def new_event(data: DataT, *, source: str = SOURCE) -> Envelope[DataT]:
    return Envelope[type(data)](  # type: ignore[misc]
        specversion=SPEC_VERSION,
        id=str(uuid.uuid4()),
        type=data.event_type,
        source=source,
        time=datetime.now(UTC),
        data=data,
    )


def parse_event(body: bytes, *data_types: type[EventData]) -> Envelope[Any]:
    """Validate a message body as an event of one of `data_types`; anything else is an InvalidMessageError."""
    try:
        header = _Header.model_validate_json(body)
    except ValidationError as error:
        raise InvalidMessageError(f"not a CloudEvents message: {_first_problem(error)}") from None
    if header.specversion != SPEC_VERSION or header.dataversion != DATA_VERSION:
        raise UnsupportedVersionError(
            f"specversion {header.specversion!r} / dataversion {header.dataversion!r} not supported"
        )
    data_type = next((t for t in data_types if t.event_type == header.type), None)
    if data_type is None:
        expected = ", ".join(t.event_type for t in data_types)
        raise InvalidMessageError(f"expected {expected}, got event type {header.type!r}")
    try:
        return Envelope[data_type].model_validate_json(body)  # type: ignore[valid-type]
    except ValidationError as error:
        raise InvalidMessageError(f"invalid {data_type.event_type} event: {_first_problem(error)}") from None


class _Header(BaseModel):
    """The envelope's attributes alone, checked before the data so a wrong version reads as such."""

    specversion: str
    id: str
    type: str
    dataversion: int = DATA_VERSION


def _first_problem(error: ValidationError) -> str:
    item = error.errors()[0]
    where = ".".join(str(part) for part in item["loc"]) or "body"
    return f"{where}: {item['msg']}"
