"""`image-grouping persons | faces | images ...`: the people commands and queries, thin wrappers over
image_grouping.handlers (registered on the app in image_grouping.cli).

Bad input (an unknown id, an invalid command) is one line on stderr and exit status 2. `--json` prints one
JSON document: an array for a listing, an object for one person or photo.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

if TYPE_CHECKING:
    from image_grouping.bootstrap import Adapters

persons_app = typer.Typer(help="Persons: list, show, suggest merges.", no_args_is_help=True)
faces_app = typer.Typer(
    help="Faces: those without a person, with the person each probably is.", no_args_is_help=True
)
images_app = typer.Typer(help="Photos: those showing given persons.", no_args_is_help=True)

T = TypeVar("T")

DatabaseUrl = Annotated[
    str | None,
    typer.Option("--db", help="SQLAlchemy URL; default DATABASE_URL, SQL_CONNECTION_STRING or local SQLite."),
]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of a table.")]
Offset = Annotated[int, typer.Option(min=0, help="Skip this many first.")]
Limit = Annotated[int | None, typer.Option(min=1, help="At most this many (default: all).")]
# A query writes nothing anyway; with --dry-run it does not even bring the schema up to date first.
ReadOnly = Annotated[bool, typer.Option("--dry-run", help="Read only: leave the schema as it is.")]


def run_people_command(
    db: str | None, work: Callable[[Adapters], Awaitable[T]], *, dry_run: bool = False
) -> T:
    """Bootstrap the adapters for `--db`, run `work` with them; a refusal (BadInputError) is one line on
    stderr and exit status 2."""
    from image_grouping.bootstrap import bootstrap
    from image_grouping.cli import _settings
    from image_grouping.errors import BadInputError

    settings = _settings(database_url=db, dry_run=dry_run or None)

    async def run() -> T:
        async with bootstrap(settings) as adapters:
            return await work(adapters)

    try:
        return asyncio.run(run())
    except BadInputError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None


def _print_json(views: Any) -> None:
    from image_grouping.models.views import as_json

    typer.echo(json.dumps(as_json(views), ensure_ascii=False, indent=2))


def _name(name: str | None) -> str:
    return name if name is not None else "(unnamed)"


# --- persons ---------------------------------------------------------------------------------------------


@persons_app.command("list")
def persons_list(
    db: DatabaseUrl = None,
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
            adapters.unit_of_work, include_hidden=hidden, offset=offset, limit=limit
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
    dry_run: ReadOnly = False,
    offset: Offset = 0,
    limit: Limit = None,
    json_output: JsonOutput = False,
) -> None:
    """Show a person and its faces (clearest first): face id, photo id, box, how assigned, photo path."""
    from image_grouping.handlers.queries import show_person

    person = run_people_command(
        db,
        lambda adapters: show_person(adapters.unit_of_work, person_id, offset=offset, limit=limit),
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
            adapters.unit_of_work, suggestion_params(adapters.settings), limit=limit
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


# --- faces -----------------------------------------------------------------------------------------------


@faces_app.command("unassigned")
def faces_unassigned(
    db: DatabaseUrl = None,
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
            adapters.unit_of_work, suggestion_params(adapters.settings), offset=offset, limit=limit
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
    dry_run: ReadOnly = False,
    offset: Offset = 0,
    limit: Limit = None,
    json_output: JsonOutput = False,
) -> None:
    """Photos showing all of the given persons."""
    from image_grouping.handlers.queries import images_with

    photos = run_people_command(
        db,
        lambda adapters: images_with(adapters.unit_of_work, person_ids, offset=offset, limit=limit),
        dry_run=dry_run,
    )
    if json_output:
        _print_json(photos)
        return
    for photo in photos:
        size = f"{photo.width}x{photo.height}" if photo.width else "-"
        typer.echo(f"{photo.id:>8} {size:>11}  {photo.path}")
