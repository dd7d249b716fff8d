"""The people's edits and deletions through the CLI, on SQLite and PostgreSQL: each command changes what
it says and prints it, `--dry-run` writes nothing, bad input is one line and exit 2. In process (typer's
runner): a console script's start-up costs seconds each on a loaded machine; tests/test_cli.py runs it."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select, true
from typer.testing import CliRunner

from image_grouping.bootstrap import bootstrap
from image_grouping.cli import app
from image_grouping.config import load_settings
from image_grouping.models.faces import DetectedFace, FaceQuality, ImageAnalysis
from image_grouping.storage.database import async_url, engine_for_url
from image_grouping.storage.schema import cannot_links, faces, images, persons

BOXES = [(10.0, 10.0, 110.0, 130.0), (300.0, 40.0, 380.0, 140.0), (600.0, 200.0, 660.0, 270.0)]


def _face(box: tuple[float, float, float, float], seed: int) -> DetectedFace:
    embedding = np.random.default_rng(seed).standard_normal(64).astype(np.float32)
    return DetectedFace(
        box=box,
        landmarks=np.zeros((5, 2), np.float32),
        quality=FaceQuality(det_score=0.9, size_px=80.0, sharpness=50.0, yaw=0.0, pose="frontal"),
        embedding=embedding / np.linalg.norm(embedding),
        thumbnail_jpeg=b"jpeg %d" % seed,
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'people.sqlite3'}"
    return str(request.getfixturevalue("fresh_postgres_url"))


def _environment(tmp_path: Path) -> dict[str, str]:
    return {"SYSTEM_STORAGE": str(tmp_path / "data"), "LOG_ROOT": str(tmp_path / "logs")}


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run_cli(tmp_path: Path, *arguments: str) -> Result:
    environment: dict[str, str | None] = {"DATABASE_URL": None, "SQL_CONNECTION_STRING": None}
    result = CliRunner().invoke(app, list(arguments), env=environment | _environment(tmp_path))
    return Result(result.exit_code, result.stdout, result.stderr)


def _library(database: str, tmp_path: Path) -> tuple[list[list[int]], list[int]]:
    """Three photos of three faces, with thumbnail files; person i holds the faces at position i."""
    settings = load_settings(
        database_url=database, system_storage=tmp_path / "data", log_root=tmp_path / "logs"
    )

    async def store() -> tuple[list[list[int]], list[int]]:
        async with bootstrap(settings) as adapters, adapters.unit_of_work() as uow:
            face_ids = []
            for n in range(3):
                image = await uow.images.get_or_create(f"upload-{n}", f"//nas/photos/{n}.jpg")
                analysis = ImageAnalysis(
                    1000, 800, settings.model_pack, [_face(box, 10 * n + i) for i, box in enumerate(BOXES)]
                )
                paths = adapters.thumbnails.save_faces(image.id, analysis)
                face_ids.append(
                    await uow.save_analysis(
                        image.id, hashlib.sha256(b"%d" % n).hexdigest(), 1, analysis, paths
                    )
                )
            person_ids = [await uow.persons.create(cover_face_id=face_ids[0][i]) for i in range(3)]
            await uow.faces.set_persons({face_ids[n][i]: person_ids[i] for n in range(3) for i in range(3)})
            await uow.commit()
            return face_ids, person_ids

    return asyncio.run(store())


def _rows(database: str, query: Any) -> list[Any]:
    async def read() -> list[Any]:
        engine = engine_for_url(async_url(database))
        try:
            async with engine.connect() as connection:
                return list((await connection.execute(query)).all())
        finally:
            await engine.dispose()

    return asyncio.run(read())


def test_every_edit_through_the_cli(database: str, tmp_path: Path) -> None:
    face_ids, (alice, bob, carol) = _library(database, tmp_path)

    def edit(*arguments: str) -> str:
        result = run_cli(tmp_path, *arguments, "--db", database)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def name_of(person: int) -> Any:
        return _rows(database, select(persons.c.name, persons.c.hidden).where(persons.c.id == person))

    dry = edit("persons", "rename", str(alice), "Alice", "--dry-run")
    assert dry == f"dry run, nothing written: person {alice} renamed"
    assert name_of(alice)[0].name is None
    assert edit("persons", "rename", str(alice), "Alice") == f"person {alice} renamed"
    assert edit("persons", "rename", str(alice), "Alice") == "nothing changed"
    assert name_of(alice)[0].name == "Alice"
    assert edit("persons", "hide", str(bob)) == f"person {bob} hidden"
    assert name_of(bob)[0].hidden
    assert edit("persons", "unhide", str(bob)) == f"person {bob} shown"
    moved = face_ids[1][2]
    assert edit("faces", "assign", str(moved), str(bob)) == f"face {moved}: person {carol} -> {bob}"
    assert _rows(database, select(faces.c.person_id, faces.c.assigned_by).where(faces.c.id == moved)) == [
        (bob, "manual")
    ]
    alone = edit("faces", "assign", str(face_ids[2][2]), "new").splitlines()
    assert alone[0].startswith("person ")
    assert alone[0].endswith(" created")
    rejected = face_ids[1][1]
    assert edit("faces", "reject", str(rejected)).splitlines() == [
        f"face {rejected}: person {bob} -> None",
        f"face {rejected} is not person {bob}",
    ]
    assert _rows(database, select(cannot_links.c.person_id).where(cannot_links.c.face_id == rejected)) == [
        (bob,)
    ]
    assert edit("persons", "merge", str(alice), str(carol)).splitlines() == [
        f"person {carol} merged into {alice}",
        "1 faces moved",
        f"person {carol} deleted",
    ]
    assert edit("persons", "cover", str(alice), str(face_ids[0][2])) == f"person {alice} has a new cover"

    assert edit("persons", "forget", str(alice), "--dry-run").startswith("dry run, nothing written: ")
    assert name_of(alice)
    thumbnails = sorted((tmp_path / "data").rglob("*.jpg"))
    assert len(thumbnails) == 9
    forgotten = edit("persons", "forget", str(alice)).splitlines()
    assert forgotten == [f"person {alice} deleted", f"person {alice} forgotten: 4 faces erased"]
    assert name_of(alice) == []
    assert len(sorted((tmp_path / "data").rglob("*.jpg"))) == 5

    image_ids = [row.id for row in _rows(database, select(images.c.id).order_by(images.c.id))]
    assert edit("images", "delete", str(image_ids[2])).splitlines()[0] == "photo deleted: 2 faces removed"
    assert edit("images", "delete", "upload-1").splitlines()[0] == "photo deleted: 2 faces removed"
    assert edit("images", "delete", "//nas/photos/0.jpg").splitlines()[0] == "photo deleted: 1 faces removed"
    assert _rows(database, select(faces.c.id)) == []
    assert sorted((tmp_path / "data").rglob("*.jpg")) == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["persons", "rename", "999999", "X"], "no person with id 999999"),
        (["persons", "rename", "{alice}", " "], "a name cannot be blank (clear it with no name instead)"),
        (["persons", "rename", "{alice}"], "give a NAME, or --clear to clear the name"),
        (["persons", "merge", "{alice}", "{alice}"], "person {alice} cannot be merged into itself"),
        (["persons", "merge", "{alice}", "999999"], "no person with id 999999"),
        (["persons", "hide", "999999"], "no person with id 999999"),
        (["persons", "forget", "999999"], "no person with id 999999"),
        (
            ["persons", "cover", "{alice}", "{bobs_face}"],
            "face {bobs_face} is not one of person {alice}'s faces",
        ),
        (["faces", "assign", "999999", "new"], "no face with id 999999"),
        (["faces", "assign", "{bobs_face}", "someone"], "not a person id nor `new`: 'someone'"),
        (["faces", "reject", "{bobs_face}", "--person", "999999"], "no person with id 999999"),
        (["images", "delete", "//nas/photos/none.jpg"], "no photo with id or path //nas/photos/none.jpg"),
        (["faces", "add", "999999", "10", "10", "90", "90"], "no photo with id 999999"),
        (
            ["faces", "add", "{photo}", "10", "10", "12", "90"],
            "not a face's box: 10 10 12 90 (x1 < x2 and y1 < y2, each side at least 8 pixels)",
        ),
        (
            ["faces", "add", "{photo}", "900", "700", "1100", "900"],
            "box 900 700 1100 900 is not inside the photo (1000x800 pixels)",
        ),
        (
            ["faces", "add", "{photo}", "500", "500", "600", "600", "--person", "999999"],
            "no person with id 999999",
        ),
        (
            ["faces", "add", "{photo}", "300", "40", "380", "140"],
            "photo {photo} has a face there already: face {bobs_face} (assign it instead)",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(arguments: list[str], message: str, tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'people.sqlite3'}"
    face_ids, (alice, _, _) = _library(database, tmp_path)
    photo = _rows(database, select(images.c.id).where(images.c.source_path == "//nas/photos/0.jpg"))[0].id
    values = {"alice": alice, "bobs_face": face_ids[0][1], "photo": photo}
    result = run_cli(tmp_path, *(argument.format(**values) for argument in arguments), "--db", database)
    assert result.returncode == 2
    assert result.stderr.strip() == message.format(**values)
    assert _rows(database, select(persons.c.name).where(persons.c.name.is_not(None))) == []


def _photo_without_faces(database: str, tmp_path: Path, photo: Path) -> int:
    """A photo stored at its local path (as `scan` stores it), as if the detector had found no face."""
    settings = load_settings(
        database_url=database, system_storage=tmp_path / "data", log_root=tmp_path / "logs"
    )

    async def store() -> int:
        async with bootstrap(settings) as adapters, adapters.unit_of_work() as uow:
            image = await uow.images.get_or_create(None, str(photo))
            analysis = ImageAnalysis(250, 250, settings.model_pack, [])
            await uow.save_analysis(image.id, "h", 1, analysis, [])
            await uow.commit()
            return image.id

    return asyncio.run(store())


@pytest.mark.slow
def test_adding_a_face_by_hand_through_the_cli(database: str, tmp_path: Path, eval_dir: Path) -> None:
    _, (alice, _, _) = _library(database, tmp_path)
    image_id = _photo_without_faces(
        database, tmp_path, eval_dir / "identity" / "Al_Gore" / "Al_Gore_0001.jpg"
    )
    box = ["80", "40", "190", "200"]  # drawn around the face, loosely

    def add(*arguments: str) -> str:
        result = run_cli(tmp_path, "faces", "add", str(image_id), *box, *arguments, "--db", database)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def hand_faces() -> list[Any]:
        query = select(faces.c.id, faces.c.person_id, faces.c.assigned_by, faces.c.thumbnail_path).where(
            faces.c.added_by_hand == true()
        )
        return _rows(database, query)

    thumbnails = sorted((tmp_path / "data").rglob("*.jpg"))
    dry = add("--person", str(alice), "--dry-run").splitlines()
    assert dry[0].startswith("dry run, nothing written: face ")
    assert hand_faces() == []
    assert sorted((tmp_path / "data").rglob("*.jpg")) == thumbnails

    lines = add("--person", str(alice)).splitlines()
    ((face_id, person, assigned_by, thumbnail),) = hand_faces()
    # The detector's box of the face inside the drawn one.
    assert lines == [
        f"face {face_id} added to photo {image_id} at 91 55 186 195",
        f"face {face_id}: person None -> {alice}",
    ]
    assert (person, assigned_by) == (alice, "manual")
    assert (tmp_path / "data" / thumbnail).is_file()
    assert add("--person", str(alice)) == "nothing changed: a face added by hand is there already"
    assert len(hand_faces()) == 1


def test_every_people_command_works_in_its_library_and_refuses_another_librarys_ids(
    database: str, tmp_path: Path
) -> None:
    face_ids, (alice, bob, _carol) = _library(database, tmp_path)  # the default library's

    def cli(*arguments: str) -> Result:
        return run_cli(tmp_path, *arguments, "--db", database, "--library", "family 2")

    refused = [
        cli("persons", "show", str(alice)),
        cli("persons", "rename", str(alice), "Alice"),
        cli("persons", "merge", str(alice), str(bob)),
        cli("persons", "hide", str(bob)),
        cli("persons", "cover", str(alice), str(face_ids[0][0])),
        cli("persons", "forget", str(alice)),
        cli("faces", "assign", str(face_ids[0][0]), "new"),
        cli("faces", "reject", str(face_ids[0][0])),
        cli("images", "with", str(alice)),
    ]
    for result in refused:
        assert result.returncode == 2, result.stdout
        assert result.stderr.strip().endswith("is of another library")
        assert len(result.stderr.strip().splitlines()) == 1
    listed = cli("persons", "list", "--json")
    assert listed.returncode == 0
    assert listed.stdout.strip() == "[]"
    assert cli("faces", "unassigned", "--json").stdout.strip() == "[]"
    assert cli("persons", "suggest-merges", "--json").stdout.strip() == "[]"
    # Nothing changed in the default library, where the same commands work.
    assert _rows(
        database, select(persons.c.name, persons.c.hidden).where(persons.c.id.in_([alice, bob]))
    ) == [
        (None, False),
        (None, False),
    ]
    shown = run_cli(tmp_path, "persons", "show", str(alice), "--db", database, "--library", "default")
    assert shown.returncode == 0
    assert f"person {alice}:" in shown.stdout
    blank = run_cli(tmp_path, "persons", "list", "--db", database, "--library", " ")
    assert blank.returncode == 2
