"""Reads the image files that messages and stored rows name."""

from __future__ import annotations

from pathlib import Path

from image_grouping.errors import ImageNotFoundError, ImagePathError
from image_grouping.storage.paths import ImagePathResolver, read_image_file


class ImageFiles:
    """`read(stored_path)`: the bytes and sha256 of the file a stored path names.

    The uploader's paths map through DB_PREFIX into the images root, and nothing outside that root is
    read. With `local_paths` (the local scan and repack, which read what `image-grouping scan` stored),
    an absolute local path is read as it is.
    """

    def __init__(self, resolver: ImagePathResolver, max_bytes: int, *, local_paths: bool = False) -> None:
        self._resolver = resolver
        self._max_bytes = max_bytes
        self._local_paths = local_paths

    def read(self, stored_path: str) -> tuple[bytes, str]:
        return read_image_file(self.resolve(stored_path), self._max_bytes)

    def resolve(self, stored_path: str) -> Path:
        try:
            return self._resolver.resolve(stored_path)
        except ImagePathError:
            local = Path(stored_path)
            if not self._local_paths or stored_path.startswith("//") or not local.is_absolute():
                raise
        if not local.is_file():
            raise ImageNotFoundError(f"image not found: {stored_path!r}")
        return local
