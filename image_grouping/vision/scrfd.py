"""SCRFD face detector (decoding ported from insightface `model_zoo/scrfd.py`).

The image is resized to `input_size` on its long side and its short side padded up to a multiple of the
largest stride: 640x480 for a 4:3 photo, a quarter less work than insightface's padded square (SCRFD takes
any input the strides divide; a model with a fixed input gets its square). Anchor-free outputs at strides
8/16/32 (or 8..128) are decoded into boxes and 5 landmarks with `distance2bbox` / `distance2kps`,
thresholded and NMS-merged.

A face that fills the frame is too large for single-scale SCRFD, so a "close-up" view also shows the image
`closeup_padding` times smaller, with a border of `CLOSEUP_BORDER` of its size around it: the context a
face at the frame's edge needs, without the cost of an empty full-size input. It runs on its own (an input
of 640 and one of 416 cost less apart than a batch of two 640s) and adds only the faces the plain view did
not find.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
import onnxruntime as ort

_INPUT_MEAN = 127.5
_INPUT_STD = 128.0
# Empty border around the close-up view's image, as a share of its size on each side: 48 px around the
# 320 px view of a small photo. Borders of 48, 64 and 96 px found the same faces of FDDB and LFW.
CLOSEUP_BORDER = 0.15


@dataclass(frozen=True, slots=True)
class Detections:
    """Faces found in one image, in its pixel coordinates, best score first."""

    boxes: np.ndarray  # (n, 4) float32 x1, y1, x2, y2
    scores: np.ndarray  # (n,) float32
    landmarks: np.ndarray  # (n, 5, 2) float32

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, keep: np.ndarray) -> Detections:
        return Detections(self.boxes[keep], self.scores[keep], self.landmarks[keep])


@dataclass(frozen=True, slots=True)
class _View:
    """Where an image was placed on the network input."""

    scale_x: float
    scale_y: float
    offset_x: int
    offset_y: int


@lru_cache(maxsize=32)
def _anchor_centers(rows: int, columns: int, stride: int, anchors: int) -> np.ndarray:
    centers = np.stack(np.mgrid[:rows, :columns][::-1], axis=-1).astype(np.float32).reshape(-1, 2) * stride
    return np.repeat(centers, anchors, axis=0) if anchors > 1 else centers


def distance2bbox(points: np.ndarray, distance: np.ndarray) -> np.ndarray:
    return np.concatenate([points - distance[:, :2], points + distance[:, 2:4]], axis=1)


def distance2kps(points: np.ndarray, distance: np.ndarray) -> np.ndarray:
    return points[:, None, :] + distance.reshape(len(distance), -1, 2)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best score first (insightface's +1 box areas)."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        width = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        height = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        overlap = width * height / (areas[best] + areas[rest] - width * height)
        order = rest[overlap <= threshold]
    return np.array(keep, dtype=np.int64)


def _iou(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU matrix (len(boxes), len(others)), with the +1 box areas of `nms`."""
    top_left = np.maximum(boxes[:, None, :2], others[None, :, :2])
    bottom_right = np.minimum(boxes[:, None, 2:], others[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left + 1, 0, None), axis=2)
    area = lambda b: np.prod(b[:, 2:] - b[:, :2] + 1, axis=1)  # noqa: E731
    return inter / (area(boxes)[:, None] + area(others)[None, :] - inter)


class SCRFD:
    """One SCRFD ONNX session; `detect` is thread-safe (onnxruntime sessions are)."""

    def __init__(
        self,
        session: ort.InferenceSession,
        *,
        input_size: int = 640,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        closeup_padding: float = 2.0,
    ) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_names = [output.name for output in session.get_outputs()]
        fixed = session.get_inputs()[0].shape[2:4]
        self.fixed_input = all(isinstance(side, int) for side in fixed)
        self.input_size = fixed[0] if self.fixed_input else input_size
        outputs = len(self.output_names)
        if outputs not in (9, 15):
            raise ValueError(f"not an SCRFD detector with landmarks ({outputs} outputs, expected 9 or 15)")
        self.strides = (8, 16, 32) if outputs == 9 else (8, 16, 32, 64, 128)
        self.anchors = 2 if outputs == 9 else 1
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.closeup_padding = closeup_padding

    def detect(
        self, image: np.ndarray, *, closeup: bool = False, score_threshold: float | None = None
    ) -> Detections:
        """Faces in an RGB image. `closeup` also looks for faces that fill the frame (a second run);
        `score_threshold` replaces the detector's own for this call."""
        threshold = self.score_threshold if score_threshold is None else score_threshold
        views = [self._run(image, self.input_scale(*image.shape[:2]), threshold=threshold)]
        if closeup:
            views.append(self._closeup_view(image, threshold))
        return self._merge(views)

    def detect_closeup(self, image: np.ndarray) -> Detections:
        """Only the close-up view's faces."""
        return self._merge([self._closeup_view(image)])

    def input_scale(self, height: int, width: int) -> float:
        """Input pixels per image pixel: the long side fills the input."""
        return self.input_size / max(height, width)

    def input_shape(self, height: int, width: int) -> tuple[int, int]:
        """(width, height) of the network input for an image of this size."""
        scale = self.input_scale(height, width)
        return self._input_shape(width * scale, height * scale)

    def _input_shape(self, width: float, height: float) -> tuple[int, int]:
        """The smallest input the strides divide that holds `width` x `height` (a fixed input: itself)."""
        if self.fixed_input:
            return self.input_size, self.input_size
        stride = self.strides[-1]
        return math.ceil(width / stride - 1e-6) * stride, math.ceil(height / stride - 1e-6) * stride

    def _closeup_view(self, image: np.ndarray, threshold: float | None = None) -> Detections:
        scale = self.input_scale(*image.shape[:2]) / self.closeup_padding
        return self._run(image, scale, border=CLOSEUP_BORDER, threshold=threshold)

    def _run(
        self, image: np.ndarray, scale: float, border: float = 0.0, threshold: float | None = None
    ) -> Detections:
        """One network run on the image resized by `scale`; with a border it sits in the input's middle."""
        height, width = image.shape[:2]
        input_width, input_height = self._input_shape(
            width * scale * (1 + 2 * border), height * scale * (1 + 2 * border)
        )
        fit = min(scale, input_width / width, input_height / height)  # a fixed input may be smaller
        new_width = min(input_width, max(1, round(width * fit)))
        new_height = min(input_height, max(1, round(height * fit)))
        offset_x = (input_width - new_width) // 2 if border else 0
        offset_y = (input_height - new_height) // 2 if border else 0
        canvas = np.zeros((input_height, input_width, 3), dtype=np.uint8)
        canvas[offset_y : offset_y + new_height, offset_x : offset_x + new_width] = cv2.resize(
            image, (new_width, new_height)
        )
        blob = cv2.dnn.blobFromImage(
            canvas, 1.0 / _INPUT_STD, (input_width, input_height), (_INPUT_MEAN,) * 3, swapRB=False
        )
        outputs = self.session.run(self.output_names, {self.input_name: blob})
        view = _View(new_width / width, new_height / height, offset_x, offset_y)
        return self._decode(outputs, 0, view, (input_width, input_height), threshold)

    def _decode(
        self,
        outputs: list[np.ndarray],
        index: int,
        view: _View,
        input_shape: tuple[int, int],
        threshold: float | None = None,
    ) -> Detections:
        input_width, input_height = input_shape
        threshold = self.score_threshold if threshold is None else threshold
        levels = len(self.strides)
        boxes, scores, landmarks = [], [], []
        for level, stride in enumerate(self.strides):
            level_scores = outputs[level][index, :, 0]
            keep = np.flatnonzero(level_scores >= threshold)
            if keep.size == 0:
                continue
            centers = _anchor_centers(input_height // stride, input_width // stride, stride, self.anchors)[
                keep
            ]
            boxes.append(distance2bbox(centers, outputs[level + levels][index, keep] * stride))
            landmarks.append(distance2kps(centers, outputs[level + 2 * levels][index, keep] * stride))
            scores.append(level_scores[keep])
        if not scores:
            return Detections(
                np.empty((0, 4), np.float32), np.empty(0, np.float32), np.empty((0, 5, 2), np.float32)
            )
        offset = np.array([view.offset_x, view.offset_y], dtype=np.float32)
        scale = np.array([view.scale_x, view.scale_y], dtype=np.float32)
        box_points = (np.concatenate(boxes).reshape(-1, 2, 2) - offset) / scale
        points = (np.concatenate(landmarks) - offset) / scale
        return Detections(box_points.reshape(-1, 4), np.concatenate(scores), points.astype(np.float32))

    def _merge(self, views: list[Detections]) -> Detections:
        return merge_views(views, self.nms_threshold)


def merge_views(views: list[Detections], nms_threshold: float) -> Detections:
    """Each view's faces after NMS; a later view adds only faces that no earlier one found.

    A face both views find keeps the box and landmarks of the larger view, which align it better.
    """
    kept: list[Detections] = []
    for found in views:
        found = found.take(nms(found.boxes, found.scores, nms_threshold))
        if kept and len(found):
            earlier = np.concatenate([view.boxes for view in kept])
            overlap = _iou(found.boxes, earlier).max(axis=1, initial=0.0)
            found = found.take(np.flatnonzero(overlap <= nms_threshold))
        kept.append(found)
    merged = Detections(
        np.concatenate([found.boxes for found in kept]).astype(np.float32),
        np.concatenate([found.scores for found in kept]).astype(np.float32),
        np.concatenate([found.landmarks for found in kept]).astype(np.float32),
    )
    return merged.take(np.argsort(-merged.scores, kind="stable"))
