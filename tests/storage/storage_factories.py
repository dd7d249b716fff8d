"""Analysis results built by hand, for tests of the data layer that need no model."""

from __future__ import annotations

import numpy as np

from image_grouping.models.faces import DetectedFace, FaceQuality, ImageAnalysis

PACK = "test_pack"


def make_face(box: tuple[float, float, float, float], seed: int, dim: int = 512) -> DetectedFace:
    rng = np.random.default_rng(seed)
    embedding = rng.standard_normal(dim).astype(np.float32)
    x1, y1, x2, y2 = box
    landmarks = np.array(
        [[x1 + 0.3 * (x2 - x1), y1 + 0.4 * (y2 - y1)], [x1 + 0.7 * (x2 - x1), y1 + 0.4 * (y2 - y1)],
         [x1 + 0.5 * (x2 - x1), y1 + 0.6 * (y2 - y1)], [x1 + 0.35 * (x2 - x1), y1 + 0.8 * (y2 - y1)],
         [x1 + 0.65 * (x2 - x1), y1 + 0.8 * (y2 - y1)]], np.float32,
    )  # fmt: skip
    quality = FaceQuality(
        det_score=0.5 + 0.4 * rng.random(),
        size_px=min(x2 - x1, y2 - y1),
        sharpness=float(100 * rng.random()),
        yaw=float(rng.uniform(-0.3, 0.3)),
        pose="frontal",
    )
    return DetectedFace(
        box=box,
        landmarks=landmarks,
        quality=quality,
        embedding=embedding / np.linalg.norm(embedding),
        thumbnail_jpeg=b"\xff\xd8 not a real jpeg",
    )


def make_analysis(
    boxes: list[tuple[float, float, float, float]], seed: int = 0, pack: str = PACK
) -> ImageAnalysis:
    return ImageAnalysis(
        width=1000,
        height=800,
        model_pack=pack,
        faces=[make_face(box, seed * 1000 + index) for index, box in enumerate(boxes)],
    )


BOXES = [(10.0, 10.0, 110.0, 130.0), (300.0, 40.0, 380.0, 140.0), (600.0, 200.0, 660.0, 270.0)]
