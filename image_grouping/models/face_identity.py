"""Face identity across re-analysis: when an image is analysed again (a redelivered upload, a new
detector setting, another pack's faces carried over), which new face is which stored face.

A face found again at the same place (box IoU >= 0.5, best overlap first) is the same face: it keeps its
id, its person and whatever was decided about it by hand. Pure: numpy in, a plan out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SAME_FACE_IOU = 0.5  # a re-detected face overlapping an old one this much is the same face


def match_boxes(old: np.ndarray, new: np.ndarray, threshold: float = SAME_FACE_IOU) -> dict[int, int]:
    """Pairs each new box (x1, y1, x2, y2) with at most one old box, best IoU first: {new: old index}."""
    if len(old) == 0 or len(new) == 0:
        return {}
    old, new = np.asarray(old, np.float64)[:, None, :], np.asarray(new, np.float64)[None, :, :]
    width = np.clip(np.minimum(old[..., 2], new[..., 2]) - np.maximum(old[..., 0], new[..., 0]), 0, None)
    height = np.clip(np.minimum(old[..., 3], new[..., 3]) - np.maximum(old[..., 1], new[..., 1]), 0, None)
    overlap = width * height

    def area(box: np.ndarray) -> np.ndarray:
        return (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])

    iou = overlap / np.maximum(area(old) + area(new) - overlap, 1e-9)  # (old, new)
    pairs: dict[int, int] = {}
    used_old: set[int] = set()
    for flat in np.argsort(-iou, axis=None):
        old_index, new_index = np.unravel_index(flat, iou.shape)
        if iou[old_index, new_index] < threshold:
            break
        if old_index not in used_old and new_index not in pairs:
            pairs[int(new_index)] = int(old_index)
            used_old.add(int(old_index))
    return pairs


@dataclass(frozen=True, slots=True)
class StoredFace:
    id: int
    box: tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class ReanalysisPlan:
    """How one image's stored faces become the faces of its new analysis."""

    kept: dict[int, int]  # new face index -> id of the stored face found again there (id and person stay)
    added: list[int]  # new face indexes with no stored face at their place
    removed: list[int]  # ids of stored faces no longer found


def plan_reanalysis(
    stored: Sequence[StoredFace], found: Sequence[tuple[float, float, float, float]]
) -> ReanalysisPlan:
    """Which of the faces `found` (boxes, in face order) are stored faces found again."""
    old_boxes = np.array([face.box for face in stored], np.float64).reshape(-1, 4)
    pairs = match_boxes(old_boxes, np.array(found, np.float64).reshape(-1, 4))
    kept = {new: stored[old].id for new, old in pairs.items()}
    found_again = set(kept.values())
    return ReanalysisPlan(
        kept=kept,
        added=[index for index in range(len(found)) if index not in kept],
        removed=[face.id for face in stored if face.id not in found_again],
    )
