"""Face identity across re-analysis: when an image is analysed again (a redelivered upload, a new
detector setting, another pack's faces carried over), which new face is which stored face.

A face found again at the same place (box IoU >= 0.5, best overlap first) is the same face: it keeps its
id, its person and whatever was decided about it by hand. A face added by hand is never dropped: every
analysis is told where such faces are (the analyzer analyses them there), so an analysis without one was
made before it was added and must be made again. Pure: numpy in, a plan out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SAME_FACE_IOU = 0.5  # a re-detected face overlapping an old one this much is the same face


class HandFaceNotAnalysedError(RuntimeError):
    """An analysis lacks a face added by hand: it was made before the face was added (a race between
    the two). Transient: analysing the photo again includes it."""


def box_iou(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """IoU of every box (x1, y1, x2, y2) of `first` with every box of `second`: (len(first), len(second))."""
    first = np.asarray(first, np.float64).reshape(-1, 4)[:, None, :]
    second = np.asarray(second, np.float64).reshape(-1, 4)[None, :, :]
    width = np.clip(
        np.minimum(first[..., 2], second[..., 2]) - np.maximum(first[..., 0], second[..., 0]), 0, None
    )
    height = np.clip(
        np.minimum(first[..., 3], second[..., 3]) - np.maximum(first[..., 1], second[..., 1]), 0, None
    )
    overlap = width * height

    def area(box: np.ndarray) -> np.ndarray:
        return (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])

    return overlap / np.maximum(area(first) + area(second) - overlap, 1e-9)


def match_boxes(old: np.ndarray, new: np.ndarray, threshold: float = SAME_FACE_IOU) -> dict[int, int]:
    """Pairs each new box (x1, y1, x2, y2) with at most one old box, best IoU first: {new: old index}."""
    if len(old) == 0 or len(new) == 0:
        return {}
    iou = box_iou(old, new)  # (old, new)
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


def distinct_boxes(
    boxes: Sequence[tuple[float, float, float, float]],
) -> list[tuple[float, float, float, float]]:
    """The boxes without those at the place of an earlier one (IoU >= 0.5): one per face."""
    kept: list[tuple[float, float, float, float]] = []
    for box in boxes:
        if not kept or box_iou(np.array(kept), np.array(box)).max() < SAME_FACE_IOU:
            kept.append(box)
    return kept


@dataclass(frozen=True, slots=True)
class StoredFace:
    id: int
    box: tuple[float, float, float, float]
    added_by_hand: bool = False


@dataclass(frozen=True, slots=True)
class ReanalysisPlan:
    """How one image's stored faces become the faces of its new analysis."""

    kept: dict[int, int]  # new face index -> id of the stored face found again there (id and person stay)
    added: list[int]  # new face indexes with no stored face at their place
    removed: list[int]  # ids of stored faces no longer found


def plan_reanalysis(
    stored: Sequence[StoredFace], found: Sequence[tuple[float, float, float, float]]
) -> ReanalysisPlan:
    """Which of the faces `found` (boxes, in face order) are stored faces found again.

    Raises HandFaceNotAnalysedError when a face added by hand is not among them."""
    old_boxes = np.array([face.box for face in stored], np.float64).reshape(-1, 4)
    pairs = match_boxes(old_boxes, np.array(found, np.float64).reshape(-1, 4))
    kept = {new: stored[old].id for new, old in pairs.items()}
    found_again = set(kept.values())
    if lost := [face.id for face in stored if face.added_by_hand and face.id not in found_again]:
        raise HandFaceNotAnalysedError(f"faces {lost} were added by hand after this analysis was made")
    return ReanalysisPlan(
        kept=kept,
        added=[index for index in range(len(found)) if index not in kept],
        removed=[face.id for face in stored if face.id not in found_again],
    )
