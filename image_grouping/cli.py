"""The `image-grouping` command line: thin wrappers that read settings and call the real work.

Each command imports its implementation lazily, so `--help` is instant and a command only loads the
libraries it needs.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import traceback
from collections.abc import Callable
from enum import Enum
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, get_args

import typer

from image_grouping.cli_people import checked_library, faces_app, images_app, persons_app
from image_grouping.config import Settings, SettingsError, load_settings
from image_grouping.errors import DatabaseUnreachableError
from image_grouping.handlers.ports import in_library
from image_grouping.models.messages import DEFAULT_LIBRARY

if TYPE_CHECKING:
    from tqdm import tqdm

    from image_grouping.bootstrap import Adapters

app = typer.Typer(
    name="image-grouping",
    help="Finds the faces in photos and groups them into persons.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
eval_app = typer.Typer(help="Measure detection and grouping on labelled photos.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
app.add_typer(persons_app, name="persons")
app.add_typer(faces_app, name="faces")
app.add_typer(images_app, name="images")

DryRun = Annotated[bool, typer.Option("--dry-run", help="Compute everything, write and publish nothing.")]
LibraryName = Annotated[
    str,
    typer.Option(
        "--library",
        help="The library (owner) to work in; default: the default library.",
        callback=checked_library,
    ),
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option("--db", help="SQLAlchemy URL; default DATABASE_URL, SQL_CONNECTION_STRING or local SQLite."),
]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")]


def _choices(setting: str) -> type[Enum]:
    """The values a setting allows, as an Enum: --help lists them and the command line refuses others."""
    values = get_args(Settings.model_fields[setting].annotation)
    return Enum(setting.title(), {value: value for value in values}, type=str)  # type: ignore[return-value]


Service = _choices("service")
Mode = _choices("mode")


def main() -> None:
    """The console script. A setting the commands cannot run with (a malformed DATABASE_URL, an
    unsupported database) or a database they cannot connect to is one line on stderr, naming the setting
    and the problem, and exit status 2; LOG_LEVEL=DEBUG adds the traceback."""
    try:
        app()
    except (SettingsError, DatabaseUnreachableError) as error:
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            traceback.print_exc()
        typer.echo(str(error), err=True)
        sys.exit(2)


def _show_version(show: bool) -> None:
    if show:
        typer.echo(f"image-grouping {version('image-grouping')}")
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Finds the faces in photos and groups them into persons."""


def _service_event_loop() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop where it exists (not on Windows): the service's event loop spends less CPU per message on
    the broker and database sockets, CPU that the face analysis threads need."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def _settings(*, configure_logging: bool = True, **overrides: object) -> Settings:
    """The settings with the command line's overrides; logs then go to stderr (and the log files), so
    stdout carries only a command's result (a path, a summary, JSON)."""
    try:
        settings = load_settings(**{key: value for key, value in overrides.items() if value is not None})
    except SettingsError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None
    if configure_logging:
        from image_grouping.observability import configure_logging as configure

        configure(settings)
    return settings


@app.command()
def consume(
    service: Annotated[Service | None, typer.Option(help="Which consumers run (default: SERVICE).")] = None,
    mode: Annotated[
        Mode | None, typer.Option(help="Repeat or process what is pending (default: MODE).")
    ] = None,
    recluster: Annotated[
        bool | None,
        typer.Option("--recluster/--no-recluster", help="Regroup all faces (default: RECOGNIZER_ARGS)."),
    ] = None,
    dry_run: DryRun = False,
) -> None:
    """Run the service: consume RabbitMQ messages (MODE=loop) or process what is pending (MODE=oneshot)."""
    settings = _settings(service=service and service.value, mode=mode and mode.value, dry_run=dry_run or None)
    from image_grouping.consumer.app import run_service

    if recluster is not None:
        settings = settings.model_copy(update={"recognizer_args": "--recluster" if recluster else ""})
    with asyncio.Runner(loop_factory=_service_event_loop()) as runner:
        sys.exit(runner.run(run_service(settings)))


@app.command()
def scan(
    folder: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Folder of photos.")],
    db: DatabaseUrl = None,
    library: LibraryName = DEFAULT_LIBRARY,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write the HTML gallery.")] = True,
    dry_run: DryRun = False,
) -> None:
    """Analyse every photo of a folder into a library of the local database, group the library's faces and
    write its gallery."""
    settings = _settings(database_url=db, dry_run=dry_run or None)
    from image_grouping.bootstrap import bootstrap
    from image_grouping.local_scan import find_images, scan_files
    from image_grouping.report.gallery import write_gallery
    from image_grouping.storage import database_url, redact

    async def run() -> None:
        files = await asyncio.to_thread(find_images, folder)
        async with bootstrap(settings, local_files=True, load_models=True) as adapters:
            if not settings.dry_run:
                typer.echo(f"database: {redact(database_url(settings))}")
            with _progress(len(files), "analysing") as progress:

                def on_batch(summary: object, problems: list[str]) -> None:
                    for line in problems:
                        progress.write(line)
                    progress.n = getattr(summary, "images", 0)
                    progress.refresh()

                deps = adapters.detection_deps(skip_known_content=True)
                summary = await scan_files(
                    files, deps, settings.detection_batch_size, on_batch, library_id=library
                )
            typer.echo(str(summary))
            typer.echo(await _recluster(adapters, reason="scan", library=library))
            if settings.dry_run:
                typer.echo("dry run: nothing written")
            elif report:
                typer.echo(
                    str(
                        await write_gallery(
                            in_library(adapters.unit_of_work, library),
                            settings.system_storage,
                            _gallery_folder(settings.system_storage, library),
                        )
                    )
                )

    asyncio.run(run())


@app.command()
def recluster(
    db: DatabaseUrl = None, library: LibraryName = DEFAULT_LIBRARY, dry_run: DryRun = False
) -> None:
    """Regroup all faces of the library and the current model pack into persons, keeping manual edits."""
    settings = _settings(database_url=db, dry_run=dry_run or None)
    from image_grouping.bootstrap import bootstrap

    async def run() -> str:
        async with bootstrap(settings) as adapters:
            return await _recluster(adapters, reason="manual", library=library)

    typer.echo(asyncio.run(run()))


async def _recluster(adapters: Adapters, *, reason: str, library: str | None) -> str:
    """One recluster of the current pack in the library (None: in every library, one after the other)
    through its handler; a summary line each."""
    from image_grouping.handlers.recognition import handle_recluster_requested
    from image_grouping.models.messages import PersonsUpdated, ReclusterRequested
    from image_grouping.models.persons import PersonChanges

    if library is None:
        async with adapters.unit_of_work() as uow:
            libraries = await uow.images.libraries()
    else:
        libraries = [library]
    requests = [
        ReclusterRequested(library_id=each, model_pack=adapters.settings.model_pack, reason=reason)
        for each in libraries
    ]
    outcomes = await handle_recluster_requested(requests, adapters.grouping_deps())
    lines = [
        PersonChanges.from_event_data(event.changes).summary()
        + (f" in library {event.library_id}" if len(libraries) > 1 else "")
        for outcome in outcomes
        if isinstance(outcome, list)
        for event in outcome
        if isinstance(event, PersonsUpdated)
    ]
    suffix = " (dry run: nothing written)" if adapters.dry_run else ""
    return "\n".join(line + suffix for line in lines)


@app.command()
def repack(
    db: DatabaseUrl = None,
    from_pack: Annotated[
        str | None,
        typer.Option("--from-pack", help="Only images analysed by this pack (default: any other pack)."),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most N images this run.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Analyse and match faces, write nothing.")
    ] = False,
) -> None:
    """After switching MODEL_PACK / MODEL_DIR: analyse the stored images again with the current pack and
    carry each face's person, manual choice and cannot-links over to the new face at the same place;
    names and hidden persons stay. Old faces are kept (switching back is another repack). Images already
    done are skipped, so it can be stopped and run again. Then regroups the current pack's faces."""
    settings = _settings(database_url=db, dry_run=dry_run or None)
    if from_pack == settings.model_pack:
        typer.echo(f"--from-pack {from_pack} is the current model pack: nothing to do", err=True)
        raise typer.Exit(2)
    from image_grouping.bootstrap import bootstrap
    from image_grouping.handlers.repack import RepackSummary, count_images_to_repack, repack_images

    async def run() -> None:
        async with bootstrap(settings, local_files=True, load_models=True) as adapters:
            deps = adapters.detection_deps()
            total = await count_images_to_repack(deps, from_pack)
            total = total if limit is None else min(total, limit)
            with _progress(total, f"repacking to {settings.model_pack}") as progress:

                def on_page(summary: RepackSummary, problems: list[str]) -> None:
                    for line in problems:
                        progress.write(line)
                    progress.n = summary.images
                    progress.set_postfix(faces=summary.faces, carried=summary.carried, failed=summary.failed)

                summary = await repack_images(deps, from_pack=from_pack, limit=limit, on_page=on_page)
            dry = " (dry run, nothing written)" if settings.dry_run else ""
            typer.echo(f"{summary}{dry}")
            if summary.repacked:
                typer.echo(await _recluster(adapters, reason="repack", library=None))

    asyncio.run(run())


@app.command()
def migrate(
    db: DatabaseUrl = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the SQL, change nothing.")] = False,
) -> None:
    """Create or upgrade the database schema to the latest revision."""
    settings = _settings(database_url=db, dry_run=dry_run or None)
    if dry_run:
        from image_grouping.storage import database_url
        from image_grouping.storage.migrations import render_upgrade_sql

        render_upgrade_sql(database_url(settings))
        return
    from image_grouping.bootstrap import bootstrap

    async def run() -> None:
        async with bootstrap(settings):  # brings the schema up to date
            pass

    asyncio.run(run())
    typer.echo("database schema is up to date")


@app.command()
def report(
    out: Annotated[Path | None, typer.Option(help="Folder to write the gallery into.")] = None,
    db: DatabaseUrl = None,
    library: LibraryName = DEFAULT_LIBRARY,
) -> None:
    """Write a static HTML gallery of the library's persons and print its path."""
    settings = _settings(database_url=db)
    from image_grouping.bootstrap import bootstrap
    from image_grouping.report.gallery import write_gallery

    async def run() -> Path:
        async with bootstrap(settings) as adapters:
            return await write_gallery(
                in_library(adapters.unit_of_work, library),
                settings.system_storage,
                out or _gallery_folder(settings.system_storage, library),
            )

    typer.echo(str(asyncio.run(run())))


@app.command()
def serve(
    db: DatabaseUrl = None,
    library: Annotated[
        str,
        typer.Option(
            "--library",
            help="The library a request that names none (?library=) is of: the pages serve this one.",
            callback=checked_library,
        ),
    ] = DEFAULT_LIBRARY,
    host: Annotated[
        str, typer.Option(help="Address to listen on; beyond 127.0.0.1 it needs API_TOKEN.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
) -> None:
    """Serve the People web app and its HTTP API (OpenAPI at /docs): see and correct the persons."""
    settings = _settings(database_url=db)
    from image_grouping.web.app import is_loopback

    if not is_loopback(host) and settings.api_token is None:
        typer.echo(
            f"API_TOKEN: required to listen on {host} (anyone who reaches it could read and change the "
            "persons); set it, or listen on 127.0.0.1",
            err=True,
        )
        raise typer.Exit(2)
    import uvicorn

    from image_grouping.bootstrap import bootstrap
    from image_grouping.web import create_app

    async def check() -> None:  # a database that cannot be used is one line here, not a server's traceback
        async with bootstrap(settings):
            pass

    asyncio.run(check())

    shown = f"[{host}]" if ":" in host else host
    typer.echo(f"People web app: http://{shown}:{port}/  (API: http://{shown}:{port}/docs; Ctrl-C stops it)")
    uvicorn.run(
        create_app(settings, host=host, library=library),
        host=host,
        port=port,
        log_config=None,
        access_log=False,
    )


def _gallery_folder(storage: Path, library: str) -> Path | None:
    """Where a library's gallery goes by default: SYSTEM_STORAGE/report for the default library (as
    before libraries), report-<sha256 of the name, 16 hex> for another (any name makes a folder name)."""
    if library == DEFAULT_LIBRARY:
        return None
    import hashlib

    return storage / f"report-{hashlib.sha256(library.encode()).hexdigest()[:16]}"


def _progress(total: int, description: str) -> tqdm:
    """A progress bar on a terminal; nothing when stderr is a file or a pipe (logs, JSON output)."""
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc=description, disable=None)


@app.command()
def healthcheck() -> None:
    """Exit 0 when the service's liveness file is fresh, 1 otherwise (for Docker's HEALTHCHECK)."""
    settings = _settings(configure_logging=False)  # a probe: it writes no log files
    from image_grouping.consumer.liveness import check_liveness

    healthy, reason = check_liveness(settings.liveness_file, settings.liveness_max_age_seconds)
    typer.echo(reason)
    raise typer.Exit(0 if healthy else 1)


@app.command()
def packs(json_output: JsonOutput = False) -> None:
    """The model packs this installation can load (their files present and matching their sha256), with
    their licence, whether it allows commercial use and their embedding size; MODEL_PACK chooses one."""
    import json

    from image_grouping.bootstrap import vision_params
    from image_grouping.vision.model_pack import installed_packs

    settings = _settings()
    found = installed_packs(vision_params(settings))
    if json_output:
        keys = ("id", "licence", "commercial_use", "embedding_size")
        typer.echo(json.dumps([{key: pack.to_json()[key] for key in keys} for pack in found], indent=2))
        return
    for pack in found:
        current = " (MODEL_PACK)" if pack.id == settings.model_pack else ""
        use = "commercial use allowed" if pack.commercial_use else "NO commercial use"
        typer.echo(f"{pack.id}{current}: {pack.embedding_size}-d embeddings, {use}")
        typer.echo(f"  licence: {pack.licence}")
        typer.echo(f"  {pack.detector}; {pack.recogniser}")


@eval_app.command("detection")
def eval_detection(
    annotations: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="WIDER-style file.")],
    images: Annotated[Path, typer.Option(exists=True, file_okay=False, help="Folder the paths start in.")],
    limit: Annotated[int | None, typer.Option(help="Only the first N images.")] = None,
    json_output: JsonOutput = False,
) -> None:
    """Run the production detector over annotated images: recall at IoU>=0.4, FP/image, AP, images/s."""
    from image_grouping.evaluation.detection import evaluate_detection, format_detection_report

    result = evaluate_detection(_settings(), annotations, images, limit=limit)
    typer.echo(result.to_json() if json_output else format_detection_report(result))


@eval_app.command("grouping")
def eval_grouping(
    labels: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="CSV of path,label.")],
    images: Annotated[Path, typer.Option(exists=True, file_okay=False, help="Folder the paths start in.")],
    limit: Annotated[int | None, typer.Option(help="Only the first N labelled images.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the shuffled arrival order.")] = 0,
    json_output: JsonOutput = False,
) -> None:
    """Group labelled faces as the service would; print BCubed and pairwise scores."""
    from image_grouping.evaluation.grouping import evaluate_grouping, format_grouping_report

    result = evaluate_grouping(_settings(), labels, images, limit=limit, seed=seed)
    typer.echo(result.to_json() if json_output else format_grouping_report(result))


if __name__ == "__main__":
    main()
