"""Two SQLite databases scanned on one machine, into one SYSTEM_STORAGE, through the real command line.

Image and face ids start at 1 in each database, so thumbnails named by image id alone were shared: the
second scan overwrote the first database's files and its gallery showed the other database's people.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

# Different people in each folder; each folder's first photo gets image id 1 in its database.
FOLDERS = {
    "family": ["groups/deepface__couple.jpg", "groups/compreface__010_2.jpg"],
    "work": ["groups/compreface__017_0.jpg", "groups/compreface__000_5.jpg"],
}


def _run(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "SQL_CONNECTION_STRING", "THUMBNAIL_SAVE_PATH"}
    }
    environment |= {"SYSTEM_STORAGE": str(tmp_path / "storage"), "LOG_ROOT": str(tmp_path / "logs")}
    result = subprocess.run(
        [sys.executable, "-m", "image_grouping.cli", *arguments],
        env=environment,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result


def _thumbnails(database: Path, storage: Path) -> dict[Path, str]:
    """Each face's thumbnail file (absolute) and the sha256 of its bytes."""
    with sqlite3.connect(database) as connection:
        stored = [row[0] for row in connection.execute("SELECT thumbnail_path FROM faces")]
    files = [(storage / path).resolve() for path in stored]
    return {file: hashlib.sha256(file.read_bytes()).hexdigest() for file in files}


def _gallery_images(page: Path) -> set[Path]:
    links = re.findall(r'<img[^>]* src="([^"]+)"', page.read_text(encoding="utf-8"))
    return {(page.parent / unquote(link)).resolve() for link in links}


@pytest.mark.slow
def test_each_database_keeps_its_own_thumbnails_and_gallery(eval_dir: Path, tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    databases, thumbnails = {}, {}
    for folder, photos in FOLDERS.items():
        (tmp_path / folder).mkdir()
        for photo in photos:
            shutil.copy(eval_dir / photo, tmp_path / folder / Path(photo).name)
        databases[folder] = database = tmp_path / f"{folder}.sqlite3"
        _run(tmp_path, "scan", str(tmp_path / folder), "--db", f"sqlite:///{database}", "--no-report")
        # What this database's faces look like right after its own scan.
        thumbnails[folder] = _thumbnails(databases[folder], storage)
        assert thumbnails[folder], f"no faces found in {folder}"

    family, work = thumbnails["family"], thumbnails["work"]
    assert not family.keys() & work.keys(), "a thumbnail file is referenced by both databases"
    for folder, before in thumbnails.items():
        # The other scan overwrote none of this database's files.
        assert _thumbnails(databases[folder], storage) == before
        # The thumbnails sit under SYSTEM_STORAGE, where THUMBNAIL_SAVE_PATH follows it by default.
        assert all(file.is_relative_to(storage.resolve() / "thumbnails") for file in before)

        out = tmp_path / f"report-{folder}"
        result = _run(tmp_path, "report", "--db", f"sqlite:///{databases[folder]}", "--out", str(out))
        shown = _gallery_images(Path(result.stdout.strip().splitlines()[-1]))
        assert shown, f"the gallery of {folder} shows no face"
        assert shown <= before.keys(), f"the gallery of {folder} shows another database's faces"
