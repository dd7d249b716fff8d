"""Image bytes to an oriented RGB array, decoded no larger than the caller needs.

JPEGs can be decoded at 1/2, 1/4 or 1/8 of their size straight from the DCT coefficients, which is
several times faster than a full decode of a 12-megapixel photo. Callers ask for the smallest scale they
can use (`min_scale`) and get coordinates back in full-resolution pixels through `scale_x/y`.

PIL reads every header (format, size, orientation: a bomb is refused before any pixel is decoded) and
decodes every format but the common JPEG (RGB or grey), which OpenCV decodes, to the same pixels: PIL
holds the GIL while it copies its pixels out (about a millisecond a photo) and the service's other
threads wait for it; OpenCV releases it for the whole decode and writes the array itself.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import pillow_heif
from PIL import Image, ImageOps, UnidentifiedImageError

from image_grouping.errors import (
    CorruptImageError,
    EmptyImageError,
    ImageTooLargeError,
    UnsupportedImageError,
)

pillow_heif.register_heif_opener()

# PIL format names this service accepts (a JPEG with several pictures, as phones write, opens as "MPO").
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "HEIF")

# Leading bytes of the supported formats: input that starts like one of them but does not decode is
# corrupt rather than unsupported.
_SIGNATURES = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF, little-endian
    b"MM\x00*",  # TIFF, big-endian
)
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}
# Each EXIF orientation's transpose of a (rows, columns, channels) array, as PIL's `exif_transpose` does.
_ORIENT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda pixels: pixels[:, ::-1],
    3: lambda pixels: pixels[::-1, ::-1],
    4: lambda pixels: pixels[::-1],
    5: lambda pixels: pixels.transpose(1, 0, 2),
    6: lambda pixels: pixels.transpose(1, 0, 2)[:, ::-1],
    7: lambda pixels: pixels.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda pixels: pixels.transpose(1, 0, 2)[::-1],
}
_REDUCED_JPEG = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """RGB pixels of the oriented image, possibly reduced; `width`/`height` are the full oriented size."""

    pixels: np.ndarray  # (h, w, 3) uint8 RGB
    width: int
    height: int

    @property
    def scale_x(self) -> float:
        """Decoded pixels per full-resolution pixel, horizontally."""
        return self.pixels.shape[1] / self.width

    @property
    def scale_y(self) -> float:
        return self.pixels.shape[0] / self.height

    @property
    def scale(self) -> float:
        return min(self.scale_x, self.scale_y)


def _looks_like_image(data: bytes) -> bool:
    if data.startswith(_SIGNATURES):
        return True
    # RIFF....WEBP and ....ftypheic: the container says what it holds.
    webp = data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    return webp or (data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Read only the header: format and size, so a bomb is refused before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageTooLargeError(str(error)) from None
    except UnidentifiedImageError:
        if _looks_like_image(data):
            raise CorruptImageError("the image header cannot be read") from None
        raise UnsupportedImageError(
            f"not one of the supported formats {', '.join(SUPPORTED_FORMATS)}"
        ) from None
    except (OSError, ValueError, SyntaxError) as error:
        raise CorruptImageError(f"unreadable image: {error}") from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise CorruptImageError(f"image header declares {width}x{height} pixels")
    if width * height > max_pixels:
        raise ImageTooLargeError(f"{width}x{height} pixels is more than the {max_pixels} allowed")
    return image


def image_size(data: bytes, *, max_pixels: int) -> tuple[int, int]:
    """Full oriented (width, height) from the header alone."""
    image = _open(data, max_pixels)
    width, height = image.size
    if image.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSED_ORIENTATIONS:
        return height, width
    return width, height


def decode_image(
    data: bytes,
    *,
    max_pixels: int,
    max_bytes: int | None = None,
    min_scale: float = 1.0,
    min_long_side: int = 0,
) -> DecodedImage:
    """Decode `data` to RGB with its EXIF orientation applied.

    A JPEG may decode at a reduced DCT scale (1/2, 1/4, 1/8) as long as the result stays at least
    `min_scale` of the full size and at least `min_long_side` pixels on its long side; other formats,
    and the defaults, decode at full size.
    Raises EmptyImageError, ImageTooLargeError, UnsupportedImageError or CorruptImageError.
    """
    if not data:
        raise EmptyImageError("the image file is empty")
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageTooLargeError(f"{len(data)} bytes is more than the {max_bytes} allowed")
    image = _open(data, max_pixels)
    stored_width, stored_height = image.size
    try:
        scale = max(min_scale, min_long_side / max(stored_width, stored_height))
        wanted = (max(1, math.ceil(stored_width * scale)), max(1, math.ceil(stored_height * scale)))
        if image.format == "JPEG" and image.mode in ("RGB", "L"):
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)  # a JPEG's EXIF precedes its pixels
            pixels = _decode_jpeg(data, _jpeg_reduction(image.size, wanted) if scale < 1.0 else 1)
            pixels = np.ascontiguousarray(_ORIENT[orientation](pixels)) if orientation in _ORIENT else pixels
        else:
            if image.format in ("JPEG", "MPO") and scale < 1.0:
                image.draft("RGB", wanted)
            image.load()
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
            if image.mode != "RGB":
                image = image.convert("RGB")
            if orientation != 1:
                ImageOps.exif_transpose(image, in_place=True)
            pixels = np.asarray(image)
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise CorruptImageError(f"the image data is truncated or damaged: {error}") from None
    if orientation in _TRANSPOSED_ORIENTATIONS:
        stored_width, stored_height = stored_height, stored_width
    return DecodedImage(pixels=pixels, width=stored_width, height=stored_height)


def _jpeg_reduction(size: tuple[int, int], wanted: tuple[int, int]) -> int:
    """The DCT reduction (1, 2, 4 or 8) that PIL's `draft` picks: the largest that keeps `wanted`."""
    most = min(size[0] // wanted[0], size[1] // wanted[1])
    return next(reduction for reduction in (8, 4, 2, 1) if most >= reduction)


def _decode_jpeg(data: bytes, reduction: int) -> np.ndarray:
    """RGB pixels of a JPEG as stored (not oriented), reduced 1, 2, 4 or 8 times, decoded by OpenCV."""
    flags = _REDUCED_JPEG[reduction] | cv2.IMREAD_IGNORE_ORIENTATION
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if pixels is None:
        raise CorruptImageError("the image data is truncated or damaged")
    return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
