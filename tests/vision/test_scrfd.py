"""SCRFD's input: 640 on the long side, the short side rounded up to the strides, same faces as a square;
the close-up view finds the face that fills the frame, and adds only faces the plain view did not find."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from image_grouping.evaluation.detection import box_iou
from image_grouping.vision import FaceAnalyzer, decode_image


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [
        (3024, 4032, (640, 480)),
        (4032, 3024, (480, 640)),
        (1080, 1920, (640, 384)),
        (338, 450, (640, 512)),  # an FDDB photo, enlarged 1.42x
        (250, 250, (640, 640)),  # an LFW crop
    ],
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


def test_closeup_view_finds_the_face_that_fills_the_frame(analyzer: FaceAnalyzer, eval_dir: Path) -> None:
    # FDDB's face of this photo is 0.88 of its height: too big for the plain view at 640 px.
    data = (
        eval_dir / "detection" / "images" / "fddb" / "2002" / "08" / "14" / "big" / "img_335.jpg"
    ).read_bytes()
    pixels = decode_image(data, max_pixels=10**8).pixels

    plain = analyzer.detector.detect(pixels)
    both = analyzer.detector.detect(pixels, closeup=True)

    assert len(plain) == 0
    assert len(both) == 1
    x1, y1, x2, y2 = both.boxes[0]
    assert min(x2 - x1, y2 - y1) > 0.5 * min(pixels.shape[:2])


def test_closeup_view_adds_only_faces_the_plain_view_missed(analyzer: FaceAnalyzer, eval_dir: Path) -> None:
    # A face both views find keeps the plain view's box and landmarks, from twice the pixels.
    path = sorted((eval_dir / "identity").glob("*/*_0001.jpg"))[0]
    pixels = decode_image(path.read_bytes(), max_pixels=10**8).pixels

    plain = analyzer.detector.detect(pixels)
    closeup = analyzer.detector.detect_closeup(pixels)
    both = analyzer.detector.detect(pixels, closeup=True)

    assert len(plain) > 0
    assert box_iou(closeup.boxes, plain.boxes).max() > 0.5  # the close-up view sees the same face
    for box, landmarks in zip(plain.boxes, plain.landmarks, strict=True):
        twin = int(np.argmax(box_iou(box[None], both.boxes)[0]))
        assert np.array_equal(both.boxes[twin], box)
        assert np.array_equal(both.landmarks[twin], landmarks)
    assert len(both) <= len(plain) + len(closeup)
