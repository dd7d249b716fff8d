"""dlib's ResNet face recogniser (`dlib_face_recognition_resnet_model_v1`, CC0): 150x150 chips to 128-d
unit embeddings.

The network was trained on chips cut by dlib's `get_face_chip` from its 5-point shape predictor's
landmarks (the eye corners and the base of the nose, CC0 too), so the detector's box goes through that
predictor first and the chip is cut with dlib's template and padding; the detector's own landmarks only
size the decode. dlib's calls hold the GIL and its network keeps state between layers, so calls are
serialised by a lock.
"""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np

from image_grouping.vision.align import similarity_transform

CHIP_SIZE = 150
CHIP_PADDING = 0.25  # dlib's face recognition example, which the network was trained with
EMBEDDING_SIZE = 128
# dlib's 5-point template on the unit square (`get_face_chip_details`), in the shape predictor's order:
# the subject's left eye outer and inner corners, right eye outer and inner corners, base of the nose.
_UNIT_TEMPLATE = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ]
)
CHIP_TEMPLATE = (CHIP_PADDING + _UNIT_TEMPLATE) / (2 * CHIP_PADDING + 1) * CHIP_SIZE
# Where the detector's eye centres fall in that chip (the mean of each eye's two corners): enough to
# size the decode from the detector's landmarks before the shape predictor has run.
_EYE_CENTRES = np.array([CHIP_TEMPLATE[2:4].mean(axis=0), CHIP_TEMPLATE[0:2].mean(axis=0)])


class DlibResNet:
    """The shape predictor and the recogniser; `align` and `embed` are thread-safe."""

    crop_size = CHIP_SIZE
    embedding_dim = EMBEDDING_SIZE

    def __init__(self, shape_predictor_path: Path, recogniser_path: Path) -> None:
        import dlib  # only processes that run this pack load dlib

        self._dlib = dlib
        self._shape_predictor = dlib.shape_predictor(str(shape_predictor_path))
        self._recogniser = dlib.face_recognition_model_v1(str(recogniser_path))
        self._lock = threading.Lock()

    def alignment_matrix(self, landmarks: np.ndarray) -> np.ndarray:
        """Image pixels to chip pixels from the detector's landmarks (eyes first): the eyes alone."""
        return similarity_transform(np.asarray(landmarks, np.float64)[:2], _EYE_CENTRES)

    def align(
        self, pixels: np.ndarray, matrix: np.ndarray, box: np.ndarray, landmarks: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The 150x150 RGB chip of the face in `box` (pixels' coordinates) and its pixels-to-chip matrix."""
        del matrix, landmarks  # the shape predictor finds the points the network was trained with
        # A box past the image's edge stays as it is: the predictor reads outside pixels as black.
        left, top, right, bottom = (round(float(value)) for value in box)
        rect = self._dlib.rectangle(left, top, max(right, left + 1), max(bottom, top + 1))
        with self._lock:
            shape = self._shape_predictor(pixels, rect)
        points = np.array([[part.x, part.y] for part in shape.parts()], dtype=np.float64)
        chip_matrix = similarity_transform(points, CHIP_TEMPLATE)
        chip = cv2.warpAffine(pixels, chip_matrix, (CHIP_SIZE, CHIP_SIZE), flags=cv2.INTER_LINEAR)
        return chip, chip_matrix

    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        """L2-normalised float32 embeddings (n, 128) of 150x150 RGB chips."""
        if not crops:
            return np.empty((0, EMBEDDING_SIZE), dtype=np.float32)
        chips = [np.ascontiguousarray(crop, dtype=np.uint8) for crop in crops]
        with self._lock:
            descriptors = self._recogniser.compute_face_descriptor(chips)
        embeddings = np.array([np.asarray(d) for d in descriptors], dtype=np.float32)
        return embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
