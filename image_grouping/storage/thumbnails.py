"""Writes face thumbnails to disk; the database keeps their path relative to SYSTEM_STORAGE."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from image_grouping.models.faces import ImageAnalysis

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class ThumbnailStore:
    def __init__(self, thumbnail_dir: Path, system_storage: Path) -> None:
        self._dir = thumbnail_dir.resolve()
        self._storage = system_storage.resolve()

    def save(self, image_key: str, face_index: int, jpeg: bytes) -> str:
        """Write atomically (a reader never sees half a file) and return the posix path relative to
        SYSTEM_STORAGE, or the absolute one when the thumbnails live elsewhere."""
        key = _UNSAFE.sub("_", image_key).lstrip(".") or "_"
        folder = self._dir / key[:2]  # spread files over subfolders; one folder with millions is slow
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{key}_{face_index}.jpg"
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".jpg")
        try:
            os.fchmod(handle, 0o644)  # mkstemp makes it private; the gallery and web servers read it
            with os.fdopen(handle, "wb") as file:
                file.write(jpeg)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        if target.is_relative_to(self._storage):
            return target.relative_to(self._storage).as_posix()
        return target.as_posix()

    def save_faces(self, image_id: int, analysis: ImageAnalysis) -> list[str]:
        """Every face's thumbnail of one analysed image, in face order. The names derive from the image
        and the face index, so analysing the same image again overwrites the same files."""
        image_key = f"{image_id}_{analysis.model_pack}"
        return [self.save(image_key, index, face.thumbnail_jpeg) for index, face in enumerate(analysis.faces)]

    def path_of(self, stored: str) -> Path:
        """The file of a path as `save` returned it."""
        return self._storage / stored
