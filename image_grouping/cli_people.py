"""`image-grouping persons | faces | images ...`: the people commands and queries, thin wrappers over
image_grouping.handlers (registered on the app in image_grouping.cli).

Bad input (an unknown id, an invalid command) is one line on stderr and exit status 2. `--json` prints one
JSON document: an array for a listing, an object for one person or photo. An edit prints what it changed,
one line per event (`--dry-run`: what it would change, nothing written).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from image_grouping.handlers.ports import in_library
from image_grouping.models.messages import DEFAULT_LIBRARY, LIBRARY_ID_MAX_LENGTH

if TYPE_CHECKING:
    from image_grouping.bootstrap import Adapters
    from image_grouping.handlers.people import PeopleDeps
    from image_grouping.handlers.ports import Outcome
    from image_grouping.models.messages import EventData

persons_app = typer.Typer(
    help="Persons: list, show, suggest merges; rename, merge, hide, unhide, forget.", no_args_is_help=True
)
faces_app = typer.Typer(
    help="Faces: those without a person (with the person each probably is); assign, reject, add by hand.",
    no_args_is_help=True,
)
images_app = typer.Typer(help="Photos: those showing given persons; delete one.", no_args_is_help=True)

T = TypeVar("T")

DatabaseUrl = Annotated[
    str | None,
    typer.Option("--db", help="SQLAlchemy URL; default DATABASE_URL, SQL_CONNECTION_STRING or local SQLite."),
]


def checked_library(name: str) -> str:
    """A library id as messages take it: not blank, at most LIBRARY_ID_MAX_LENGTH characters."""
    if not name.strip() or len(name) > LIBRARY_ID_MAX_LENGTH:
        raise typer.BadParameter(f"not a library id (1-{LIBRARY_ID_MAX_LENGTH} characters, not blank)")
    return name


LibraryName = Annotated[
    str,
    typer.Option(
        "--library",
        help="The library (owner) to work in; ids of another library are refused.",
        callback=checked_library,
    ),
]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of a table.")]
Offset = Annotated[int, typer.Option(min=0, help="Skip this many first.")]
Limit = Annotated[int | None, typer.Option(min=1, help="At most this many (default: all).")]
# A query writes nothing anyway; with --dry-run it does not even bring the schema up to date first.
ReadOnly = Annotated[bool, typer.Option("--dry-run", help="Read only: leave the schema as it is.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Say what would change; write nothing.")]
PersonId = Annotated[int, typer.Argument(help="The person's id.")]


def run_people_command(
    db: str | None,
    work: Callable[[Adapters], Awaitable[T]],
    *,
    dry_run: bool = False,
    local_files: bool = False,
) -> T:
    """Bootstrap the adapters for `--db`, run `work` with them; a refusal (BadInputError) is one line on
    stderr and exit status 2. `local_files`: photos stored by `scan` (absolute local paths) can be read."""
    from image_grouping.bootstrap import bootstrap
    from image_grouping.cli import _settings
    from image_grouping.errors import BadInputError

    settings = _settings(database_url=db, dry_run=dry_run or None)

    async def run() -> T:
        async with bootstrap(settings, local_files=local_files) as adapters:
            return await work(adapters)

    try:
        return asyncio.run(run())
    except BadInputError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None


def run_edit(
    db: str | None,
    dry_run: bool,
    command: Callable[[Adapters], Awaitable[EventData]],
    handle: Callable[[list[Any], PeopleDeps], Awaitable[list[Outcome]]],
) -> None:
    """Build the command (it may look ids up), run its handler, print what changed; a refusal is one line
    on stderr and exit status 2."""

    async def work(adapters: Adapters) -> list[EventData]:
        (outcome,) = await handle([await command(adapters)], adapters.people_deps())
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    events = run_people_command(db, work, dry_run=dry_run)
    prefix = "dry run, nothing written: " if dry_run else ""
    for line in _describe(events) or ["nothing changed"]:
        typer.echo(prefix + line)


def _describe(events: list[EventData]) -> list[str]:
    """One line per change the events announce."""
    from image_grouping.models.messages import FaceAdded, FacesDeleted, PersonForgotten, PersonsUpdated

    lines: list[str] = []
    for event in events:
        if isinstance(event, FaceAdded):
            box = " ".join(f"{value:.0f}" for value in event.box)
            lines.append(f"face {event.face_id} added to photo {event.image_id} at {box}")
        if isinstance(event, PersonsUpdated):
            changes = event.changes
            lines += [f"person {person} created" for person in changes.get("created", [])]
            lines += [f"person {source} merged into {target}" for source, target in changes.get("merged", [])]
            lines += [f"person {person} renamed" for person in changes.get("renamed", [])]
            lines += [f"person {person} hidden" for person in changes.get("hidden", [])]
            lines += [f"person {person} shown" for person in changes.get("shown", [])]
            lines += [f"person {person} has a new cover" for person in changes.get("cover_changed", [])]
            moved = changes.get("faces", [])
            if changes.get("merged"):  # every face of the sources: counted, not listed
                lines.append(f"{len(moved)} faces moved")
            else:
                lines += [
                    f"face {face['face_id']}: person {face['before']} -> {face['after']}" for face in moved
                ]
            lines += [
                f"face {each['face_id']} is not person {each['person_id']}"
                for each in changes.get("refused", [])
            ]
            lines += [f"person {person} deleted" for person in changes.get("deleted", [])]
        elif isinstance(event, PersonForgotten):
            lines.append(f"person {event.person_id} forgotten: {len(event.face_ids)} faces erased")
        elif isinstance(event, FacesDeleted):
            lines.append(f"photo deleted: {len(event.face_ids)} faces removed")
    return lines


def _print_json(views: Any) -> None:
    from image_grouping.models.views import as_json

    typer.echo(json.dumps(as_json(views), ensure_ascii=False, indent=2))


def _name(name: str | None) -> str:
    return name if name is not None else "(unnamed)"


# --- persons ---------------------------------------------------------------------------------------------


@persons_app.command("list")
def persons_list(
    db: DatabaseUrl = None,
    library: LibraryName = DEFAULT_LIBRARY,
    dry_run: ReadOnly = False,
    hidden: Annotated[bool, typer.Option("--hidden/--no-hidden", help="Include hidden persons.")] = True,
    offset: Offset = 0,
    limit: Limit = None,
    json_output: JsonOutput = False,
) -> None:
    """List the persons: named first (by name), then by face count, then by id."""
    from image_grouping.handlers.queries import list_persons

    persons = run_people_command(
        db,
        lambda adapters: list_persons(
            in_library(adapters.unit_of_work, library), include_hidden=hidden, offset=offset, limit=limit
        ),
        dry_run=dry_run,
    )
    if json_output:
        _print_json(persons)
        return
    typer.echo(f"{'id':>8} {'faces':>6} {'hidden':>6}  name")
    for person in persons:
        typer.echo(
            f"{person.id:>8} {person.face_count:>6} {'yes' if person.hidden else '':>6}  {_name(person.name)}"
        )


@persons_app.command("show")
def persons_show(
    person_id: Annotated[int, typer.Argument(help="The person's id.")],
    db: DatabaseUrl = None,
    library: LibraryName = DEFAULT_LIBRARY,
    dry_run: ReadOnly = False,
    offset: Offset = 0,
    limit: Limit = None,
    json_output: JsonOutput = False,
) -> None:
    """Show a person and its faces (clearest first): face id, photo id, box, how assigned, photo path."""
    from image_grouping.handlers.queries import show_person

    person = run_people_command(
        db,
        lambda adapters: show_person(
            in_library(adapters.unit_of_work, library), person_id, offset=offset, limit=limit
        ),
        dry_run=dry_run,
    )
    if json_output:
        _print_json(person)
        return
    hidden = ", hidden" if person.hidden else ""
    typer.echo(f"person {person.id}: {_name(person.name)}, {person.face_count} faces{hidden}")
    typer.echo(f"{'face':>8} {'photo':>8} {'box':>25} {'by':>6}  path")
    for face in person.faces:
        box = " ".join(f"{value:.0f}" for value in face.box)
        typer.echo(f"{face.id:>8} {face.image_id:>8} {box:>25} {face.assigned_by:>6}  {face.path}")


@persons_app.command("suggest-merges")
def persons_suggest_merges(
    db: DatabaseUrl = None,
    library: LibraryName = DEFAULT_LIBRARY,
    dry_run: ReadOnly = False,
    limit: Annotated[int, typer.Option(min=1, help="At most this many pairs.")] = 100,
    json_output: JsonOutput = False,
) -> None:
    """Pairs of persons that are probably one, most similar first (accept one with `persons merge`)."""
    from image_grouping.bootstrap import suggestion_params
    from image_grouping.handlers.queries import merge_suggestions

    pairs = run_people_command(
        db,
        lambda adapters: merge_suggestions(
            in_library(adapters.unit_of_work, library), suggestion_params(adapters.settings), limit=limit
        ),
        dry_run=dry_run,
    )
    if json_output:
        _print_json(pairs)
        return
    typer.echo(f"{'similarity':>10} {'person':>8} {'person':>8}  names")
    for pair in pairs:
        names = " / ".join(_name(name) for name in pair.names)
        typer.echo(f"{pair.similarity:>10.3f} {pair.person_a:>8} {pair.person_b:>8}  {names}")


@persons_app.command("rename")
def persons_rename(
    person_id: PersonId,
    name: Annotated[str | None, typer.Argument(help="The new name.")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Clear the name instead.")] = False,
    db: DatabaseUrl = None,
    library: LibraryName = DEFAULT_LIBRARY,
    dry_run: DryRun = False,
) -> None:
    """Name a person (or clear its name with --clear)."""
    from image_grouping.handlers.people import handle_rename_person
    from image_grouping.models.messages import RenamePerson

    if (name is None) != clear:
        typer.echo("give a NAME, or --clear to clear the name", err=True)
        raise typer.Exit(2)
    run_edit(
        db,
        dry_run,
        _given(RenamePerson(library_id=library, person_id=person_id, name=name)),
        handle_rename_person,
    )


@persons_app.command("merge")
def persons_merge(
    target_id: Annotated[int, typer.Argument(help="The person that stays.")],
    source_ids: Annotated[list[int], typer.Argument(help="Persons whose faces join it; they are deleted.")],
    db: DatabaseUrl = None,
    library: LibraryName = DEFAULT_LIBRARY,
    dry_run: DryRun = False,
) -> None:
    """Merge persons into TARGET (its name wins, else the first named source's)."""
    from image_grouping.handlers.people import handle_merge_persons
    from image_grouping.models.messages import MergePersons

    run_edit(
        db,
        dry_run,
        _given(MergePersons(library_id=library, target_id=target_id, source_ids=source_ids)),
        handle_merge_persons,
    )


@persons_app.command("hide")
def persons_hide(
    person_id: PersonId,
    db: DatabaseUrl = None,
    library: LibraryName = DEFAULT_LIBRARY,
    dry_run: DryRun = False,
) -> None:
    """Hide a person from the People view (grouping goes on)."""
    _set_hidden(person_id, True, db, library, dry_run)


@persons_app.command("unhide")
def persons_unhide(
    person_id: PersonId,
    db: DatabaseUrl = None,
    library: LibraryName = DEFAULT_LIBRARY,
    dry_run: DryRun = False,
) -> None:
    """Show a hidden person again."""
    _set_hidden(person_id, False, db, library, dry_run)


def _set_hidden(person_id: int, hidden: bool, db: str | None, library: str, dry_run: bool) -> None:
    from image_grouping.handlers.people import handle_set_person_hidden
    from image_grouping.models.messages import SetPersonHidden

    command = SetPersonHidden(library_id=library, person_id=person_id, hidden=hidden)
    run_edit(db, dry_run, _given(command), handle_set_person_hidden)


@persons_app.command("cover")
def persons_cover(
    person_id: PersonId,
    face_id: Annotated[int, typer.Argument(help="One of the person's faces.")],
    db: DatabaseUrl = None,
    library: LibraryName = DEFAULT_LIBRARY,
    dry_run: DryRun = False,
) -> None:
    """Make one of the person's faces its cover."""
    from image_grouping.handlers.people import handle_choose_cover
    from image_grouping.models.messages import ChooseCover

    run_edit(
        db,
        dry_run,
        _given(ChooseCover(library_id=library, person_id=person_id, face_id=face_id)),
        handle_choose_cover,
    )


@persons_app.command("forget")
def persons_forget(
    person_id: PersonId,
    db: DatabaseUrl = None,
    library: LibraryName = DEFAULT_LIBRARY,
    dry_run: DryRun = False,
) -> None:
    """Erase a person: its faces' embeddings and thumbnails, and its name (a tombstone per face keeps
    re-analysis from learning them again)."""
    from image_grouping.handlers.people import handle_forget_person
    from image_grouping.models.messages import ForgetPerson

    run_edit(db, dry_run, _given(ForgetPerson(library_id=library, person_id=person_id)), handle_forget_person)


def _given(command: EventData) -> Callable[[Adapters], Awaitable[EventData]]:
    async def given(_adapters: Adapters) -> EventData:
        return command

    return given


# --- faces -----------------------------------------------------------------------------------------------


@faces_app.command("assign")
def faces_assign(
    face_id: Annotated[int, typer.Argument(help="The face's id.")],
    person: Annotated[str, typer.Argument(help="A person's id, or `new` for a new person.")],
    db: DatabaseUrl = None,
    library: LibraryName = DEFAULT_LIBRARY,
    dry_run: DryRun = False,
) -> None:
    """Put a face into a person (or a new one) for good: grouping never moves it again."""
    from image_grouping.handlers.people import handle_assign_face
    from image_grouping.models.messages import AssignFace

    if person != "new" and not person.isdigit():
        typer.echo(f"not a person id nor `new`: {person!r}", err=True)
        raise typer.Exit(2)
    command = AssignFace(
        library_id=library, face_id=face_id, person_id=None if person == "new" else int(person)
    )
    run_edit(db, dry_run, _given(command), handle_assign_face)


@faces_app.command("reject")
def faces_reject(
    face_id: Annotated[int, typer.Argument(help="The face's id.")],
    person: Annotated[
        int | None, typer.Option("--person", help="The person it is not (default: its own).")
    ] = None,
    db: DatabaseUrl = None,
    library: LibraryName = DEFAULT_LIBRARY,
    dry_run: DryRun = False,
) -> None:
    """ "Not this person": the face leaves its person and never goes back."""
    from image_grouping.handlers.people import handle_reject_face
    from image_grouping.models.messages import RejectFace

    run_edit(
        db,
        dry_run,
        _given(RejectFace(library_id=library, face_id=face_id, person_id=person)),
        handle_reject_face,
    )


@faces_app.command("add")
def faces_add(
    image_id: Annotated[int, typer.Argument(help="The photo's id (as the listings show it).")],
    x1: Annotated[float, typer.Argument(help="Left edge of the face's box, in pixels of the photo.")],
    y1: Annotated[float, typer.Argument(help="Top edge.")],
    x2: Annotated[float, typer.Argument(help="Right edge.")],
    y2: Annotated[float, typer.Argument(help="Bottom edge.")],
    person: Annotated[
        int | None, typer.Option("--person", help="The person it is (default: grouping decides).")
    ] = None,
    db: DatabaseUrl = None,
    library: LibraryName = DEFAULT_LIBRARY,
    dry_run: DryRun = False,
) -> None:
    """Add a face the detector missed: a box on a stored photo (pixels of the photo as shown, full size).
    It is analysed there like a detected face, and analysing the photo again keeps it."""
    from image_grouping.handlers.add_face import handle_add_face
    from image_grouping.models.messages import AddFace

    command = AddFace(library_id=library, image_id=image_id, box=(x1, y1, x2, y2), person_id=person)

    async def work(adapters: Adapters) -> list[EventData]:
        (outcome,) = await handle_add_face([command], adapters.add_face_deps())
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    events = run_people_command(db, work, dry_run=dry_run, local_files=True)
    prefix = "dry run, nothing written: " if dry_run else ""
    for line in _describe(events) or ["nothing changed: a face added by hand is there already"]:
        typer.echo(prefix + line)


@faces_app.command("unassigned")
def faces_unassigned(
    db: DatabaseUrl = None,
    library: LibraryName = DEFAULT_LIBRARY,
    dry_run: ReadOnly = False,
    offset: Offset = 0,
    limit: Limit = None,
    json_output: JsonOutput = False,
) -> None:
    """Faces without a person (clearest first), each with the person it probably is, if any (accept one
    with `faces assign`)."""
    from image_grouping.bootstrap import suggestion_params
    from image_grouping.handlers.queries import unassigned_faces

    faces = run_people_command(
        db,
        lambda adapters: unassigned_faces(
            in_library(adapters.unit_of_work, library),
            suggestion_params(adapters.settings),
            offset=offset,
            limit=limit,
        ),
        dry_run=dry_run,
    )
    if json_output:
        _print_json(faces)
        return
    typer.echo(f"{'face':>8} {'photo':>8} {'suggested person':>28}  path")
    for face in faces:
        suggestion = face.suggestion
        suggested = (
            f"{suggestion.person_id} {_name(suggestion.name)[:12]} ({suggestion.similarity:.2f})"
            if suggestion
            else "-"
        )
        typer.echo(f"{face.id:>8} {face.image_id:>8} {suggested:>28}  {face.path}")


# --- images ----------------------------------------------------------------------------------------------


@images_app.command("with")
def images_with_persons(
    person_ids: Annotated[list[int], typer.Argument(help="Persons who must all be in the photo.")],
    db: DatabaseUrl = None,
    library: LibraryName = DEFAULT_LIBRARY,
    dry_run: ReadOnly = False,
    offset: Offset = 0,
    limit: Limit = None,
    json_output: JsonOutput = False,
) -> None:
    """Photos showing all of the given persons."""
    from image_grouping.handlers.queries import images_with

    photos = run_people_command(
        db,
        lambda adapters: images_with(
            in_library(adapters.unit_of_work, library), person_ids, offset=offset, limit=limit
        ),
        dry_run=dry_run,
    )
    if json_output:
        _print_json(photos)
        return
    for photo in photos:
        size = f"{photo.width}x{photo.height}" if photo.width else "-"
        typer.echo(f"{photo.id:>8} {size:>11}  {photo.path}")


@images_app.command("delete")
def images_delete(
    image: Annotated[str, typer.Argument(help="The photo's id (as listed), the uploader's id, or its path.")],
    db: DatabaseUrl = None,
    library: LibraryName = DEFAULT_LIBRARY,
    dry_run: DryRun = False,
) -> None:
    """Delete a photo's faces, embeddings and thumbnails (persons left without faces go unless named)."""
    from image_grouping.errors import UnknownImageError
    from image_grouping.handlers.people import handle_image_deleted
    from image_grouping.models.messages import ImageDeleted

    async def command(adapters: Adapters) -> ImageDeleted:
        """The database id the listings show first, then the uploader's id, then a stored path."""
        async with adapters.unit_of_work(library) as uow:
            if image.isdigit() and (found := await uow.views.image(int(image))) is not None:
                return ImageDeleted(library_id=library, path=found.path)
            if await uow.images.find(image, None):
                return ImageDeleted(library_id=library, image_id=image)
            if await uow.images.find(None, image):
                return ImageDeleted(library_id=library, path=image)
        raise UnknownImageError(f"no photo with id or path {image}")

    run_edit(db, dry_run, command, handle_image_deleted)
