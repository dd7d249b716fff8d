"""`image-grouping scan` on a few real photos, with the real models, into a temporary SQLite database."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from image_grouping.bootstrap import bootstrap
from image_grouping.config import Settings, load_settings
from image_grouping.local_scan import ScanSummary, find_images, scan_files

PHOTOS = ["compreface__010_2.jpg", "deepface__couple.jpg", "compreface__017_0.jpg"]


def _faces(database: Path) -> list[tuple[int, int, str, int]]:
    with sqlite3.connect(database) as connection:
        return connection.execute(
            "SELECT id, image_id, thumbnail_path, length(embedding) FROM faces ORDER BY id"
        ).fetchall()


async def _scan(settings: Settings, folder: Path) -> ScanSummary:
    """The scan's detection step as the command wires it."""
    async with bootstrap(settings, local_files=True) as adapters:
        return await scan_files(find_images(folder), adapters.detection_deps(skip_known_content=True), 2)


@pytest.mark.slow
def test_scan_stores_every_face_once_and_a_second_scan_skips_all(eval_dir: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    (photos / "nested").mkdir(parents=True)
    for name in PHOTOS[:2]:
        shutil.copy(eval_dir / "groups" / name, photos / name)
    shutil.copy(eval_dir / "groups" / PHOTOS[2], photos / "nested" / PHOTOS[2])
    (photos / "broken.jpg").write_bytes(b"these bytes are no image")
    (photos / "notes.txt").write_text("not an image")
    database = tmp_path / "scan.sqlite3"
    storage = tmp_path / "data"
    settings = load_settings(
        database_url=f"sqlite:///{database}",
        sql_connection_string=None,
        system_storage=storage,
        thumbnail_save_path=storage / "thumbnails",
    )

    first = asyncio.run(_scan(settings, photos))

    assert (first.images, first.analysed, first.skipped, first.failed) == (4, 3, 0, 1)
    stored = _faces(database)
    assert len(stored) == first.faces > 0
    assert len({length for *_, length in stored}) == 1  # one embedding size for the pack
    assert all((storage / thumbnail).is_file() for _, _, thumbnail, _ in stored)
    with sqlite3.connect(database) as connection:
        statuses = dict(connection.execute("SELECT source_path, status FROM images").fetchall())
    assert statuses[(photos / "broken.jpg").as_posix()] == "failed"
    assert sorted(statuses.values()) == ["done", "done", "done", "failed"]

    # The real command, in its own process: its logging setup stays out of this one.
    second = subprocess.run(
        [sys.executable, "-m", "image_grouping.cli", "scan", str(photos), "--db", f"sqlite:///{database}"],
        env=os.environ
        | {
            "SYSTEM_STORAGE": str(storage),
            "THUMBNAIL_SAVE_PATH": str(storage / "thumbnails"),
            "LOG_ROOT": str(tmp_path / "logs"),
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )

    assert second.returncode == 0, second.stderr
    assert "4 images: 0 analysed (0 faces), 4 already done, 0 failed" in second.stdout
    assert _faces(database) == stored
    gallery = Path(second.stdout.strip().splitlines()[-1])
    assert gallery.is_file()

    # The same folder into another library: analysed again (the default library's analyses of the same
    # bytes are not its own), grouped and shown apart, in a gallery of its own.
    third = subprocess.run(
        [
            sys.executable,
            "-m",
            "image_grouping.cli",
            "scan",
            str(photos),
            "--db",
            f"sqlite:///{database}",
            "--library",
            "family 2",
        ],
        env=os.environ
        | {
            "SYSTEM_STORAGE": str(storage),
            "THUMBNAIL_SAVE_PATH": str(storage / "thumbnails"),
            "LOG_ROOT": str(tmp_path / "logs"),
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert third.returncode == 0, third.stderr
    assert f"4 images: 3 analysed ({first.faces} faces), 0 already done, 1 failed" in third.stdout
    other_gallery = Path(third.stdout.strip().splitlines()[-1])
    assert other_gallery.is_file()
    assert other_gallery.parent != gallery.parent
    with sqlite3.connect(database) as connection:
        per_library = dict(connection.execute("SELECT library_id, count(*) FROM faces GROUP BY library_id"))
        persons_of = connection.execute(
            "SELECT DISTINCT faces.library_id, persons.library_id FROM faces JOIN persons"
            " ON persons.id = faces.person_id"
        ).fetchall()
    assert per_library == {"default": first.faces, "family 2": first.faces}
    assert all(face_library == person_library for face_library, person_library in persons_of)


def test_find_images_walks_folders_and_leaves_out_other_and_hidden_files(tmp_path: Path) -> None:
    for name in ["b.JPG", "a/c.png", "a/d.heic", "e.txt", ".hidden/f.jpg", "a/.g.jpg"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert [path.relative_to(tmp_path.resolve()).as_posix() for path in find_images(tmp_path)] == [
        "a/c.png",
        "a/d.heic",
        "b.JPG",
    ]


@pytest.mark.slow
def test_a_photo_that_may_not_be_read_is_reported_unreadable_and_the_scan_goes_on(
    eval_dir: Path,
    tmp_path: Path,
    deny_reading: Callable[[Path], None],
) -> None:
    photos = tmp_path.resolve() / "photos"
    photos.mkdir()
    shutil.copy(eval_dir / "groups" / PHOTOS[0], photos / "readable.jpg")
    shutil.copy(eval_dir / "groups" / PHOTOS[1], photos / "locked.jpg")
    deny_reading(photos / "locked.jpg")
    settings = load_settings(
        database_url=f"sqlite:///{tmp_path / 'scan.sqlite3'}",
        sql_connection_string=None,
        system_storage=tmp_path,
    )

    problems: list[str] = []

    async def scan() -> ScanSummary:
        async with bootstrap(settings, local_files=True) as adapters:
            deps = adapters.detection_deps(skip_known_content=True)
            return await scan_files(find_images(photos), deps, 2, lambda _, lines: problems.extend(lines))

    summary = asyncio.run(scan())

    assert (summary.analysed, summary.failed) == (1, 1)
    assert [line.split(" (")[0] for line in problems] == [
        f"skipped {photos / 'locked.jpg'}: image_unreadable"
    ]
