"""The files the web app serves: a face's thumbnail and a photo, found by id, never by a path in the URL.

A thumbnail is served only from inside THUMBNAIL_SAVE_PATH, once `..` and symlinks are resolved. A photo is
read as detection reads it: an uploader's path maps through DB_PREFIX into the images root and nothing
outside that root is served; an absolute local path (what `image-grouping scan` stored) is served only
without `..` in it and only if it names an image file.
"""

from __future__ import annotations

from pathlib import Path

from image_grouping.config import Settings
from image_grouping.errors import ImageNotFoundError, ImagePathError
from image_grouping.local_scan import IMAGE_SUFFIXES
from image_grouping.storage.files import ImageFiles


class WebFiles:
    def __init__(self, settings: Settings, photos: ImageFiles) -> None:
        self._storage = settings.system_storage.resolve()
        self._thumbnails = settings.thumbnail_save_path.resolve()
        self._photos = photos

    def thumbnail(self, stored: str | None) -> Path:
        """The thumbnail file of a stored path (relative to SYSTEM_STORAGE, or absolute)."""
        if not stored or "\x00" in stored:
            raise ImageNotFoundError("this face has no thumbnail")
        resolved = (self._storage / stored).resolve()
        if not resolved.is_relative_to(self._thumbnails):
            raise ImagePathError("the thumbnail is outside the thumbnail folder")
        if not resolved.is_file():
            raise ImageNotFoundError("the thumbnail file is missing")
        return resolved

    def photo(self, stored: str) -> Path:
        """The photo's file, inside the images root or exactly where a local scan found it."""
        resolved = self._photos.resolve(stored)
        if resolved.suffix.lower() not in IMAGE_SUFFIXES:
            raise ImagePathError("not an image file")
        if ".." in resolved.parts:  # a local path is served only where it points
            raise ImagePathError("a photo's path may not climb with '..'")
        return resolved
