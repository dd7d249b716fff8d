"""Maps the paths the uploader stores (`//server/files/location/...`) onto the mounted images root."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path, PurePosixPath

from image_grouping.errors import (
    ImageNotFoundError,
    ImagePathError,
    ImageTooLargeError,
    ImageUnreadableError,
)

_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:/")


class ImagePathResolver:
    """`resolve` returns a readable file inside `images_root`, or raises.

    A stored path is either under `db_prefix` (either slash direction, any case), an absolute path that
    is already inside the images root, or a path relative to the root. Anything that ends up outside the
    root once `..` and symlinks are resolved is refused.
    """

    def __init__(self, db_prefix: str, images_root: Path) -> None:
        self._prefix = db_prefix.replace("\\", "/").rstrip("/")
        self._root = images_root.resolve()

    def resolve(self, stored_path: str) -> Path:
        candidate = self._candidate(stored_path)
        try:
            resolved = candidate.resolve(strict=False)
        except (OSError, RuntimeError) as error:  # symlink loops
            raise ImagePathError(f"cannot resolve image path {stored_path!r}: {error}") from None
        if not resolved.is_relative_to(self._root):
            raise ImagePathError(f"image path {stored_path!r} is outside the images root")
        if not resolved.is_file():
            raise ImageNotFoundError(f"image not found: {stored_path!r}")
        if not os.access(resolved, os.R_OK):
            raise ImageUnreadableError(f"image not readable: {stored_path!r}")
        return resolved

    def _candidate(self, stored_path: str) -> Path:
        if not stored_path.strip() or "\x00" in stored_path:
            raise ImagePathError(f"invalid image path {stored_path!r}")
        path = stored_path.strip().replace("\\", "/")
        if self._prefix and (path.casefold() + "/").startswith(self._prefix.casefold() + "/"):
            return self._root.joinpath(*PurePosixPath(path[len(self._prefix) :].lstrip("/")).parts)
        if path.startswith("//") or _WINDOWS_DRIVE.match(path):
            raise ImagePathError(f"image path {stored_path!r} is not under DB_PREFIX {self._prefix!r}")
        if path.startswith("/"):
            return Path(path)  # absolute: accepted only if it lies inside the root (checked by resolve)
        return self._root.joinpath(*PurePosixPath(path).parts)


def read_image_file(path: Path, max_bytes: int) -> tuple[bytes, str]:
    """The file's bytes and their sha256; a file that vanished, may not be read or is too big is bad input.

    The size is checked before reading, so an absurd file is refused without loading it into memory.
    """
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageTooLargeError(f"{size} bytes is more than the {max_bytes} allowed")
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError) as error:  # no image file (any more) at this path
        raise ImageNotFoundError(f"cannot read {path.name}: {error.strerror}") from None
    except PermissionError as error:  # other OSErrors (a share's hiccup) are transient: retried
        raise ImageUnreadableError(f"cannot read {path.name}: {error.strerror}") from None
    return data, hashlib.sha256(data).hexdigest()
