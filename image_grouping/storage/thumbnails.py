"""Writes face thumbnails to disk; the database keeps their path relative to SYSTEM_STORAGE.

Each database has its own folder, `THUMBNAIL_SAVE_PATH/<database id>/`: image ids repeat between two
databases on one machine (a second `--db`), and their files must never overwrite each other. Paths stored
before the folders existed stay valid; they are read as stored.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

from image_grouping.models.faces import ImageAnalysis

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
# Python's descriptors are not inherited anyway (PEP 446); O_BINARY exists on Windows alone.
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)


class ThumbnailStore:
    def __init__(self, thumbnail_dir: Path, system_storage: Path, database_id: str) -> None:
        if not database_id or _UNSAFE.search(database_id) or database_id.startswith("."):
            raise ValueError(f"not a database id: {database_id!r}")
        self._dir = (thumbnail_dir / database_id).resolve()
        self._storage = system_storage.resolve()

    def save(self, image_key: str, face_index: int, jpeg: bytes) -> str:
        """Write the file so that no reader sees half of it and return the posix path relative to
        SYSTEM_STORAGE, or the absolute one when the thumbnails live elsewhere."""
        target = self._file(image_key, face_index)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            # A new file is written in place: no row names it before the commit that follows.
            handle, written = os.open(target, _NEW_FILE, 0o644), target
        except FileExistsError:
            # The face analysed again: a committed row names this file, so it is replaced whole.
            handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".jpg")
            written = Path(temporary)
        try:
            os.fchmod(handle, 0o644)  # whatever the umask or mkstemp's 0o600: the gallery and web read it
            with os.fdopen(handle, "wb") as file:
                file.write(jpeg)
            if written != target:
                os.replace(written, target)
        except BaseException:
            written.unlink(missing_ok=True)
            raise
        if target.is_relative_to(self._storage):
            return target.relative_to(self._storage).as_posix()
        return target.as_posix()

    def save_faces(self, image_id: int, analysis: ImageAnalysis) -> list[str]:
        """Every face's thumbnail of one analysed image, in face order. The names derive from the image
        and the face index, so analysing the same image again overwrites the same files and removes
        those of faces it no longer finds."""
        key = f"{image_id}_{analysis.model_pack}"
        saved = [self.save(key, index, face.thumbnail_jpeg) for index, face in enumerate(analysis.faces)]
        # An earlier analysis that found more faces left files past the last index; their rows go with
        # the same commit. Indexes run without gaps, so the first missing file ends the search.
        stale = len(saved)
        while (file := self._file(key, stale)).exists():
            file.unlink(missing_ok=True)
            stale += 1
        return saved

    def _file(self, image_key: str, face_index: int) -> Path:
        key = _UNSAFE.sub("_", image_key).lstrip(".") or "_"
        # Spread over subfolders: one folder with millions of files is slow.
        return self._dir / key[:2] / f"{key}_{face_index}.jpg"

    def path_of(self, stored: str) -> Path:
        """The file of a path as `save` returned it."""
        return self._storage / stored

    def remove(self, stored_paths: Iterable[str]) -> None:
        """Delete the files of these paths (as `save` returned them); those already gone are no error."""
        for stored in stored_paths:
            self.path_of(stored).unlink(missing_ok=True)


class DryRunThumbnailStore(ThumbnailStore):
    """--dry-run: the paths the thumbnails would have, and no file written or removed."""

    def save(self, image_key: str, face_index: int, jpeg: bytes) -> str:
        target = self._file(image_key, face_index)
        return (
            target.relative_to(self._storage).as_posix()
            if target.is_relative_to(self._storage)
            else str(target)
        )

    def save_faces(self, image_id: int, analysis: ImageAnalysis) -> list[str]:
        key = f"{image_id}_{analysis.model_pack}"
        return [self.save(key, index, face.thumbnail_jpeg) for index, face in enumerate(analysis.faces)]

    def remove(self, stored_paths: Iterable[str]) -> None:
        return None
