"""Errors that decide what happens to a message.

`BadInputError` and its subclasses are permanent: the input can never be processed, so the message goes
to the dead-letter queue at once with `reason` in its headers. Anything else is treated as transient
(database down, broker hiccup) and retried with backoff.
"""

from __future__ import annotations


class BadInputError(Exception):
    """The message or the image it points to can never be processed."""

    reason: str = "bad_input"


class InvalidMessageError(BadInputError):
    """Malformed JSON, a wrong schema version or missing fields."""

    reason = "invalid_message"


class ImagePathError(BadInputError):
    """The stored path does not map into the images root (`..`, another prefix, a symlink out)."""

    reason = "path_outside_images_root"


class ImageNotFoundError(BadInputError):
    """No image file at the path (missing, or a folder)."""

    reason = "image_not_found"


class ImageError(BadInputError):
    """The bytes are not an image this service can decode."""

    reason = "image_unreadable"


class ImageUnreadableError(ImageError):
    """The file is there but may not be read (permission denied)."""

    reason = "image_unreadable"


class EmptyImageError(ImageError):
    reason = "image_empty"


class CorruptImageError(ImageError):
    """Truncated or damaged data."""

    reason = "image_corrupt"


class UnsupportedImageError(ImageError):
    reason = "image_unsupported_format"


class ImageTooLargeError(ImageError):
    """More pixels (or bytes) than allowed: a decompression bomb or an absurd upload."""

    reason = "image_too_large"


class UnknownPersonError(BadInputError):
    """A command or query names a person that does not exist (or no longer does)."""

    reason = "unknown_person"


class UnknownFaceError(BadInputError):
    reason = "unknown_face"


class UnknownImageError(BadInputError):
    reason = "unknown_image"


class OtherLibraryError(BadInputError):
    """A command or query names a face, person or photo of another library than its own: refused, and
    nothing of that library is told (not its name, person or photo)."""

    reason = "other_library"


class InvalidCommandError(BadInputError):
    """A well-formed command that cannot be carried out as asked: merging a person into itself, an
    empty name, a box outside its photo."""

    reason = "invalid_command"


class ModelPackMismatchError(InvalidCommandError):
    """Faces of different model packs are never compared, so a face cannot join a person of another's."""

    reason = "model_pack_mismatch"


class DatabaseUnreachableError(ConnectionError):
    """No connection to the database could be opened: refused, unknown host, missing database, bad login.

    Transient for the service, which waits for its database at start (a ConnectionError, as a socket's);
    a command prints it (it names the setting and the problem in one line) and exits 2."""
