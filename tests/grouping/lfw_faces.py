"""LFW faces of the subset as the detector's results, for tests that store them without the models."""

from __future__ import annotations

import numpy as np

from image_grouping.evaluation.grouping import LabelledFaces
from image_grouping.models.faces import DetectedFace, FaceQuality


def detected(faces: LabelledFaces, row: int) -> DetectedFace:
    size = float(faces.size_px[row])
    return DetectedFace(
        box=(10.0 * row, 0.0, 10.0 * row + size, size),  # distinct boxes: several faces may share a photo
        landmarks=np.zeros((5, 2), np.float32),
        quality=FaceQuality(
            det_score=float(faces.det_score[row]),
            size_px=size,
            sharpness=float(faces.sharpness[row]),
            yaw=float(faces.yaw[row]),
            pose="frontal",
        ),
        embedding=faces.embeddings[row],
        thumbnail_jpeg=b"",
    )
