"""SCRFD's input: 640 on the long side, the short side rounded up to the strides, same faces as a square."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from image_grouping.evaluation.detection import box_iou
from image_grouping.vision import FaceAnalyzer, decode_image


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [(3024, 4032, (640, 480)), (4032, 3024, (480, 640)), (1080, 1920, (640, 384)), (250, 250, (640, 640))],
)
def test_input_keeps_the_aspect_ratio(
    analyzer: FaceAnalyzer, height: int, width: int, expected: tuple[int, int]
) -> None:
    assert analyzer.detector.input_shape(height, width) == expected


@pytest.mark.parametrize("name", ["insightface__t1.jpg", "dlib__bald_guys.jpg", "compreface__016_8.jpg"])
def test_non_square_input_finds_the_faces_of_the_padded_square(
    analyzer: FaceAnalyzer, groups_dir: Path, name: str
) -> None:
    pixels = decode_image((groups_dir / name).read_bytes(), max_pixels=10**8).pixels
    height, width = pixels.shape[:2]
    assert height != width
    # Padding the image to a square by hand gives insightface's padded 640x640 input.
    square = np.zeros((max(height, width), max(height, width), 3), dtype=np.uint8)
    square[:height, :width] = pixels

    found = analyzer.detector.detect(pixels)
    reference = analyzer.detector.detect(square)

    assert len(found) == len(reference) > 0
    overlaps = box_iou(found.boxes, reference.boxes)
    assert overlaps.max(axis=1).min() > 0.9
    assert np.abs(found.scores - reference.scores[overlaps.argmax(axis=1)]).max() < 0.05
