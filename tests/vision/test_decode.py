"""Image loading: every supported format, EXIF orientation, and a typed error for each kind of bad input."""

from __future__ import annotations

import io
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from image_grouping.errors import (
    CorruptImageError,
    EmptyImageError,
    ImageTooLargeError,
    UnsupportedImageError,
)
from image_grouping.vision import decode_image

MAX_PIXELS = 100_000_000


@pytest.fixture(scope="module")
def photo(eval_dir: Path) -> Image.Image:
    return Image.open(eval_dir / "groups" / "face_recognition__kit_with_rose.jpg").convert("RGB")


def encoded(image: Image.Image, format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares a size in its header and holds a few rows: a decompression bomb's opening."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * 4096)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("format", "options"),
    [
        ("PNG", {}),
        ("WEBP", {"quality": 90}),
        ("BMP", {}),
        ("TIFF", {}),
        ("GIF", {}),
        ("HEIF", {"quality": 90}),
    ],
)
def test_each_supported_format_loads(photo: Image.Image, format: str, options: dict) -> None:
    decoded = decode_image(encoded(photo, format, **options), max_pixels=MAX_PIXELS)

    assert decoded.pixels.shape == (photo.height, photo.width, 3)
    assert decoded.pixels.dtype == np.uint8
    # Lossy formats and GIF's palette change pixels a little, never the picture.
    difference = np.abs(decoded.pixels.astype(np.int16) - np.asarray(photo, dtype=np.int16)).mean()
    assert difference < 12


def test_gif_gives_its_first_frame(photo: Image.Image) -> None:
    second = Image.new("RGB", photo.size, (255, 0, 0))
    data = encoded(photo, "GIF", save_all=True, append_images=[second])

    decoded = decode_image(data, max_pixels=MAX_PIXELS)

    assert decoded.pixels[..., 0].mean() < 200  # not the all-red second frame


@pytest.mark.parametrize(
    ("orientation", "stored_rotation"), [(6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270)]
)
def test_exif_orientation_is_applied(
    photo: Image.Image, orientation: int, stored_rotation: Image.Transpose
) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encoded(photo.transpose(stored_rotation), "JPEG", quality=95, exif=exif.tobytes())

    decoded = decode_image(data, max_pixels=MAX_PIXELS)

    assert (decoded.width, decoded.height) == photo.size
    assert decoded.pixels.shape == (photo.height, photo.width, 3)
    assert np.abs(decoded.pixels.astype(np.int16) - np.asarray(photo, dtype=np.int16)).mean() < 6


def test_jpeg_decodes_reduced_when_asked(photo: Image.Image) -> None:
    big = photo.resize((photo.width * 4, photo.height * 4))
    data = encoded(big, "JPEG", quality=90)

    decoded = decode_image(data, max_pixels=MAX_PIXELS, min_scale=0.0, min_long_side=big.height // 4)

    assert (decoded.width, decoded.height) == big.size
    assert decoded.pixels.shape[:2] == (big.height // 4, big.width // 4)
    assert decoded.scale == pytest.approx(0.25)


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_jpeg_gives_the_pixels_pil_gives(photo: Image.Image, mode: str, orientation: int) -> None:
    """JPEGs are decoded by OpenCV (it releases the GIL): PIL's exact pixels, oriented as PIL orients them,
    at every DCT reduction the callers ask for."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encoded(photo.convert(mode), "JPEG", quality=90, exif=exif.tobytes())
    for scale in (1.0, 0.5, 0.25, 0.125):
        expected = Image.open(io.BytesIO(data))
        if scale < 1:
            expected.draft("RGB", (math.ceil(photo.width * scale), math.ceil(photo.height * scale)))
        expected = ImageOps.exif_transpose(expected.convert("RGB"))

        decoded = decode_image(data, max_pixels=MAX_PIXELS, min_scale=scale)

        np.testing.assert_array_equal(decoded.pixels, np.asarray(expected), err_msg=f"scale {scale}")
        assert decoded.pixels.flags.c_contiguous


def test_empty_input_is_refused() -> None:
    with pytest.raises(EmptyImageError):
        decode_image(b"", max_pixels=MAX_PIXELS)


def test_truncated_jpeg_is_corrupt(photo: Image.Image) -> None:
    data = encoded(photo, "JPEG", quality=90)

    with pytest.raises(CorruptImageError):
        decode_image(data[: len(data) // 2], max_pixels=MAX_PIXELS)


def test_damaged_header_is_corrupt() -> None:
    with pytest.raises(CorruptImageError):
        decode_image(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8, max_pixels=MAX_PIXELS)


@pytest.mark.parametrize("data", [b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", b"just some text, not an image"])
def test_other_files_are_unsupported(data: bytes) -> None:
    with pytest.raises(UnsupportedImageError):
        decode_image(data, max_pixels=MAX_PIXELS)


def test_an_image_format_outside_the_list_is_unsupported(photo: Image.Image) -> None:
    with pytest.raises(UnsupportedImageError):
        decode_image(encoded(photo, "PPM"), max_pixels=MAX_PIXELS)


@pytest.mark.parametrize("side", [50_000, 12_000])  # beyond PIL's own limit, and only beyond ours
def test_decompression_bomb_is_refused_from_its_header(side: int) -> None:
    with pytest.raises(ImageTooLargeError):
        decode_image(png_header(side, side), max_pixels=MAX_PIXELS)


def test_pixel_cap_comes_from_the_caller(photo: Image.Image) -> None:
    data = encoded(photo, "PNG")

    with pytest.raises(ImageTooLargeError):
        decode_image(data, max_pixels=photo.width * photo.height - 1)
    assert decode_image(data, max_pixels=photo.width * photo.height).pixels.size > 0


def test_byte_cap(photo: Image.Image) -> None:
    data = encoded(photo, "JPEG")

    with pytest.raises(ImageTooLargeError):
        decode_image(data, max_pixels=MAX_PIXELS, max_bytes=len(data) - 1)
