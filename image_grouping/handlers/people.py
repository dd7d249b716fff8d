"""The write side of the people: edits a person makes (rename, hide, cover, merge, move a face, "not this
person") and deletions (forget a person, a photo deleted), reached alike from RabbitMQ, the CLI and HTTP.

Each handler takes a batch of commands and handles each in its own transaction: one outcome per command,
the events to publish or the BadInputError that refuses it (an unknown id, a blank name, merging a person
into itself, a face of another model pack). Every command is idempotent: delivered again it finds its work
done, changes nothing and publishes nothing. A `persons.updated` says which face went where (by hand), and
which persons were created, renamed, hidden, merged, emptied or deleted; deletions are announced as
`person.forgotten` and `faces.deleted`. Thumbnail files go after the commit, so a failed commit never
loses the file of a face that stays.

Edits mark faces as set by hand, which grouping never changes; a recluster computing meanwhile checks
that again when it writes (FaceRepository.regroup), so an edit committed during it is kept.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import structlog

from image_grouping.errors import (
    BadInputError,
    InvalidCommandError,
    ModelPackMismatchError,
    OtherLibraryError,
    UnknownFaceError,
    UnknownImageError,
    UnknownPersonError,
)
from image_grouping.handlers.ports import Outcome, Thumbnails, UnitOfWork, UnitOfWorkFactory
from image_grouping.models.messages import (
    AssignFace,
    ChooseCover,
    EventData,
    FacesDeleted,
    ForgetPerson,
    ImageDeleted,
    LibraryDeleted,
    LibraryErased,
    MergePersons,
    PersonForgotten,
    PersonsUpdated,
    RejectFace,
    RenamePerson,
    SetPersonHidden,
)
from image_grouping.models.persons import PersonChanges
from image_grouping.models.records import FaceEdit, FaceRecord, PersonRecord

log = structlog.get_logger(__name__)

CommandT = TypeVar("CommandT", bound=EventData)


@dataclass(frozen=True)
class PeopleDeps:
    unit_of_work: UnitOfWorkFactory
    thumbnails: Thumbnails
    model_pack: str  # the pack named by the `persons.updated` of an edit of a person as a whole


@dataclass
class _Done:
    """What one command did: the events to publish, and the thumbnail files to remove once committed."""

    events: list[EventData]
    thumbnails: list[str]


async def _each(
    commands: Sequence[CommandT],
    deps: PeopleDeps,
    carry_out: Callable[[CommandT, UnitOfWork, PeopleDeps], Awaitable[_Done]],
) -> list[Outcome]:
    """Each command in its own transaction; a refusal rolls back only its own."""
    outcomes: list[Outcome] = []
    for command in commands:
        try:
            async with deps.unit_of_work(command.library_id) as uow:
                done = await carry_out(command, uow, deps)
                await uow.commit()
        except BadInputError as error:
            # Debug: the consumer logs the dead-lettering, the CLI prints the one line.
            log.debug(
                "people command refused", command=command.event_type, reason=error.reason, error=str(error)
            )
            outcomes.append(error)
            continue
        if done.thumbnails:
            deps.thumbnails.remove(done.thumbnails)
        outcomes.append(done.events)
    return outcomes


def _updated(changes: PersonChanges, library_id: str) -> list[EventData]:
    """`persons.updated` of the library when something changed, else nothing."""
    return (
        [
            PersonsUpdated(
                library_id=library_id, model_pack=changes.model_pack, changes=changes.to_event_data()
            )
        ]
        if changes.changed
        else []
    )


def _edit(model_pack: str) -> PersonChanges:
    return PersonChanges(model_pack=model_pack, kind="edit")


async def _person(uow: UnitOfWork, person_id: int) -> PersonRecord:
    found = (await uow.persons.get([person_id])).get(person_id)
    if found is None:
        raise await unknown_person(uow, person_id)
    return found


async def unknown_person(uow: UnitOfWork, person_id: int) -> BadInputError:
    """The refusal of a person id the unit of work's library does not have: of another library (which is
    all it says of it), or unknown."""
    if await uow.persons.in_other_library(person_id):
        return OtherLibraryError(f"person {person_id} is of another library")
    return UnknownPersonError(f"no person with id {person_id}")


async def unknown_face(uow: UnitOfWork, face_id: int) -> BadInputError:
    """As `unknown_person`, for a face."""
    if await uow.faces.in_other_library(face_id):
        return OtherLibraryError(f"face {face_id} is of another library")
    return UnknownFaceError(f"no face with id {face_id}")


async def unknown_image(uow: UnitOfWork, image_id: int) -> BadInputError:
    """As `unknown_person`, for a photo (by its database id)."""
    if await uow.images.in_other_library(image_id):
        return OtherLibraryError(f"photo {image_id} is of another library")
    return UnknownImageError(f"no photo with id {image_id}")


async def _face(uow: UnitOfWork, face_id: int) -> FaceRecord:
    found = (await uow.faces.get([face_id])).get(face_id)
    if found is None:
        raise await unknown_face(uow, face_id)
    return found


async def _face_to_edit(uow: UnitOfWork, face_id: int) -> FaceRecord:
    """The face, locked until the commit: two edits of one face at once go one after the other, each
    deciding on (and recording) what the one before committed; the last committed wins."""
    found = await uow.faces.get_for_edit(face_id)
    if found is None:
        raise await unknown_face(uow, face_id)
    return found


async def _tidy(uow: UnitOfWork, person_ids: set[int], changes: PersonChanges) -> None:
    """Persons that lost faces: unnamed ones left empty are deleted, the others get a cover of their own."""
    if not person_ids:
        return
    deleted = await uow.persons.delete_empty(person_ids)
    changes.emptied += deleted
    changes.deleted += deleted
    await uow.persons.choose_cover(person_ids - set(deleted))


# --- persons ---------------------------------------------------------------------------------------------


async def handle_rename_person(commands: Sequence[RenamePerson], deps: PeopleDeps) -> list[Outcome]:
    """Name a person or clear its name; a blank name is refused (clearing is a null name)."""
    return await _each(commands, deps, _rename)


async def _rename(command: RenamePerson, uow: UnitOfWork, deps: PeopleDeps) -> _Done:
    name = command.name.strip() if command.name is not None else None
    if name == "":
        raise InvalidCommandError("a name cannot be blank (clear it with no name instead)")
    person = await _person(uow, command.person_id)
    changes = _edit(deps.model_pack)
    if person.name != name:
        await uow.persons.rename(person.id, name)
        changes.renamed.append(person.id)
    return _Done(_updated(changes, command.library_id), [])


async def handle_set_person_hidden(commands: Sequence[SetPersonHidden], deps: PeopleDeps) -> list[Outcome]:
    """Hide a person from the People view, or show it again."""
    return await _each(commands, deps, _set_hidden)


async def _set_hidden(command: SetPersonHidden, uow: UnitOfWork, deps: PeopleDeps) -> _Done:
    person = await _person(uow, command.person_id)
    changes = _edit(deps.model_pack)
    if person.hidden != command.hidden:
        await uow.persons.set_hidden(person.id, command.hidden)
        (changes.hidden if command.hidden else changes.shown).append(person.id)
    return _Done(_updated(changes, command.library_id), [])


async def handle_choose_cover(commands: Sequence[ChooseCover], deps: PeopleDeps) -> list[Outcome]:
    """Make one of the person's own faces its cover."""
    return await _each(commands, deps, _choose_cover)


async def _choose_cover(command: ChooseCover, uow: UnitOfWork, deps: PeopleDeps) -> _Done:
    person = await _person(uow, command.person_id)
    face = await _face_to_edit(uow, command.face_id)
    if face.person_id != person.id:
        raise InvalidCommandError(f"face {face.id} is not one of person {person.id}'s faces")
    changes = _edit(face.model_pack)
    if person.cover_face_id != face.id:
        await uow.persons.set_cover(person.id, face.id)
        changes.cover_changed.append(person.id)
    if not face.manual:  # the person's cover is the person's for good: grouping never moves it away
        await uow.faces.assign_by_hand(face.id, person.id)
    if changes.cover_changed or not face.manual:
        await uow.faces.record_edits([FaceEdit(face.id, person.id, person.id, "cover")])
    return _Done(_updated(changes, command.library_id), [])


async def handle_merge_persons(commands: Sequence[MergePersons], deps: PeopleDeps) -> list[Outcome]:
    """Move every face of the sources into the target, by hand, and delete the sources. The target keeps
    its name, or takes the first named source's. Sources already merged into the target are skipped."""
    return await _each(commands, deps, _merge)


async def _merge(command: MergePersons, uow: UnitOfWork, deps: PeopleDeps) -> _Done:
    sources = list(dict.fromkeys(command.source_ids))  # in order, once each
    if command.target_id in sources:
        raise InvalidCommandError(f"person {command.target_id} cannot be merged into itself")
    target = await _person(uow, command.target_id)
    found = await uow.persons.get(sources)
    merged_before = await uow.persons.merged_into(set(sources) - set(found))
    for source in sources:
        if source not in found and merged_before.get(source) != target.id:
            raise await unknown_person(uow, source)
    to_merge = [found[source] for source in sources if source in found]
    changes = _edit(deps.model_pack)
    faces = await uow.faces.of_persons([source.id for source in to_merge])
    for face in faces:
        changes.face_moved(face.id, face.person_id, target.id)
    await uow.faces.record_edits([FaceEdit(face.id, face.person_id, target.id, "merge") for face in faces])
    if target.name is None and (named := next((source for source in to_merge if source.name), None)):
        await uow.persons.rename(target.id, named.name)
        changes.renamed.append(target.id)
    for source in to_merge:
        await uow.persons.merge_by_hand(target.id, source.id)
        changes.merged.append((source.id, target.id))
        changes.deleted.append(source.id)
    return _Done(_updated(changes, command.library_id), [])


# --- faces -----------------------------------------------------------------------------------------------


async def handle_assign_face(commands: Sequence[AssignFace], deps: PeopleDeps) -> list[Outcome]:
    """Put a face into a person by hand, or (no person) into a new person of its own; grouping never moves
    it again. A face cannot join a person whose faces are all of another model pack."""
    return await _each(commands, deps, _assign)


async def _assign(command: AssignFace, uow: UnitOfWork, deps: PeopleDeps) -> _Done:
    face = await _face_to_edit(uow, command.face_id)
    changes = _edit(face.model_pack)
    if command.person_id is None:
        alone = face.person_id is not None and len(await uow.faces.of_persons([face.person_id])) == 1
        if alone and face.person_id is not None:  # already a person of its own: keep it, pinned by hand
            if not face.manual:
                await uow.faces.assign_by_hand(face.id, face.person_id)
                await uow.faces.record_edits([FaceEdit(face.id, face.person_id, face.person_id, "assign")])
            return _Done([], [])
        person_id = await uow.persons.create(cover_face_id=face.id)
        changes.created.append(person_id)
    else:
        person = await _person(uow, command.person_id)
        packs = await uow.persons.model_packs(person.id)
        if packs and face.model_pack not in packs:
            raise ModelPackMismatchError(
                f"face {face.id} is of model pack {face.model_pack}; person {person.id}'s faces are of "
                f"{', '.join(sorted(packs))}"
            )
        if face.person_id == person.id and face.manual:
            return _Done([], [])
        person_id = person.id
    await uow.faces.assign_by_hand(face.id, person_id)
    await uow.faces.record_edits([FaceEdit(face.id, face.person_id, person_id, "assign")])
    changes.face_moved(face.id, face.person_id, person_id)
    if face.person_id is not None and face.person_id != person_id:
        await _tidy(uow, {face.person_id}, changes)
    return _Done(_updated(changes, command.library_id), [])


async def handle_reject_face(commands: Sequence[RejectFace], deps: PeopleDeps) -> list[Outcome]:
    """ "Not this person": the face leaves the person (default: its own) and grouping never puts it back.
    For a face not in that person (a suggestion declined), only the refusal is recorded."""
    return await _each(commands, deps, _reject)


async def _reject(command: RejectFace, uow: UnitOfWork, deps: PeopleDeps) -> _Done:
    face = await _face_to_edit(uow, command.face_id)
    person_id = command.person_id if command.person_id is not None else face.person_id
    if person_id is None:
        raise InvalidCommandError(f"face {face.id} has no person; say which person it is not")
    await _person(uow, person_id)
    changes = _edit(face.model_pack)
    if face.person_id != person_id and await uow.faces.is_refused(face.id, person_id):
        return _Done([], [])
    await uow.faces.refuse(face.id, person_id)
    after = None if face.person_id == person_id else face.person_id
    await uow.faces.record_edits([FaceEdit(face.id, face.person_id, after, "reject")])
    changes.refused.append({"face_id": face.id, "person_id": person_id})
    if face.person_id == person_id:
        changes.face_moved(face.id, person_id, None)
        await _tidy(uow, {person_id}, changes)
    return _Done(_updated(changes, command.library_id), [])


# --- deletions -------------------------------------------------------------------------------------------


async def handle_forget_person(commands: Sequence[ForgetPerson], deps: PeopleDeps) -> list[Outcome]:
    """Erase a person (GDPR Art. 9 and 17): its faces' rows (embedding, landmarks, quality, box) and
    thumbnail files, its cannot-links and the person with its name. Kept: a tombstone per face (the photo's
    database id, the box and the person's id), so that analysing the photo again skips that face, and a
    second delivery of the command is known as done."""
    return await _each(commands, deps, _forget)


async def _forget(command: ForgetPerson, uow: UnitOfWork, deps: PeopleDeps) -> _Done:
    person = (await uow.persons.get([command.person_id])).get(command.person_id)
    if person is None:
        if await uow.persons.in_other_library(command.person_id):
            raise await unknown_person(uow, command.person_id)
        if await uow.persons.forgotten(command.person_id):
            return _Done([], [])
        raise UnknownPersonError(f"no person with id {command.person_id}")
    faces = await uow.faces.of_persons([person.id])
    await uow.faces.forget([face.id for face in faces], person.id)
    await uow.persons.delete([person.id])
    changes = _edit(deps.model_pack)
    changes.deleted.append(person.id)
    forgotten = PersonForgotten(
        library_id=command.library_id,
        person_id=person.id,
        face_ids=[face.id for face in faces],
        image_ids=sorted({face.image_id for face in faces}),
    )
    return _Done(
        [*_updated(changes, command.library_id), forgotten],
        [face.thumbnail_path for face in faces if face.thumbnail_path],
    )


async def handle_image_deleted(events: Sequence[ImageDeleted], deps: PeopleDeps) -> list[Outcome]:
    """The uploader deleted a photo: its faces (rows, embeddings, thumbnail files) go, persons left without
    faces go unless named. A photo this service does not know (or no longer) is nothing to do."""
    return await _each(events, deps, _delete_image)


async def _delete_image(event: ImageDeleted, uow: UnitOfWork, deps: PeopleDeps) -> _Done:
    if event.image_id is None and event.path is None:
        raise InvalidCommandError("image.deleted needs the image's id or its path")
    images = await uow.images.find(event.image_id, event.path)
    if not images:
        return _Done([], [])
    faces = await uow.faces.of_images([image.id for image in images])
    await uow.images.delete([image.id for image in images])
    changes = _edit(deps.model_pack)
    await _tidy(uow, {face.person_id for face in faces if face.person_id is not None}, changes)
    deleted = FacesDeleted(
        library_id=event.library_id,
        image_id=event.image_id,
        path=event.path,
        face_ids=[face.id for face in faces],
        person_ids=changes.deleted,
    )
    return _Done(
        [deleted, *_updated(changes, event.library_id)],
        [face.thumbnail_path for face in faces if face.thumbnail_path],
    )


async def handle_library_deleted(events: Sequence[LibraryDeleted], deps: PeopleDeps) -> list[Outcome]:
    """The photo backend deleted a library: every image of it goes, with every face (of every pack), its
    embedding, landmarks, thumbnail file, edits and cannot-links, the tombstones of its forgotten faces,
    every person with its name and merge records, and its recluster runs. Announced by `library.erased`
    with the counts; a redelivery (or a library never seen) erases nothing and announces zeros. Consumed
    on the library's grouping shard, so it never runs beside a grouping of that library."""
    return await _each(events, deps, _erase_library)


async def _erase_library(event: LibraryDeleted, uow: UnitOfWork, deps: PeopleDeps) -> _Done:
    face_count = await uow.faces.count_in_library()
    image_ids, thumbnails = await uow.images.erase_library()
    person_ids = await uow.persons.erase_library()
    await uow.runs.erase_library()
    log.info(
        "library erased",
        library_id=event.library_id,
        images=len(image_ids),
        faces=face_count,
        persons=len(person_ids),
    )
    erased = LibraryErased(
        library_id=event.library_id,
        image_count=len(image_ids),
        face_count=face_count,
        person_count=len(person_ids),
    )
    return _Done([erased], thumbnails)
