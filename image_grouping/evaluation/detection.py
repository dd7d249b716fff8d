"""Detection quality on a WIDER-FACE-style annotation file: recall, false positives, AP and speed.

The file lists an image path (relative to the images folder), its face count N, then N lines `x y w h`.
A detection matches an unmatched ground-truth face at IoU >= 0.4 (FDDB's boxes are ellipse bounds, taller
than a detector's box), taking detections best score first.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from image_grouping.config import Settings

MATCH_IOU = 0.4

# path -> (boxes (n, 4) x1 y1 x2 y2, scores (n,)) in the image's pixels.
Detector = Callable[[Path], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True, slots=True)
class DetectionResult:
    images: int
    faces: int  # ground-truth faces
    detections: int
    recall: float
    fp_per_image: float
    ap: float
    images_per_s: float

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def read_annotations(path: Path, limit: int | None = None) -> list[tuple[str, np.ndarray]]:
    """(relative image path, boxes (n, 4) as x1 y1 x2 y2) per image."""
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    images, index = [], 0
    while index < len(lines) and (limit is None or len(images) < limit):
        name, count = lines[index], int(lines[index + 1])
        rows = [[float(value) for value in line.split()[:4]] for line in lines[index + 2 : index + 2 + count]]
        boxes = np.array(rows, dtype=np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        images.append((name, boxes))
        index += 2 + count
    return images


def box_iou(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU matrix (len(boxes), len(others))."""
    top_left = np.maximum(boxes[:, None, :2], others[None, :, :2])
    bottom_right = np.minimum(boxes[:, None, 2:], others[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area = lambda b: np.prod(b[:, 2:] - b[:, :2], axis=1)  # noqa: E731
    return inter / (area(boxes)[:, None] + area(others)[None, :] - inter)


def match(truth: np.ndarray, boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per detection (best score first): whether it matched a ground-truth face not matched before."""
    order = np.argsort(-scores, kind="stable")
    overlaps = box_iou(boxes[order], truth) if len(truth) and len(boxes) else np.zeros((len(boxes), 0))
    taken = np.zeros(len(truth), dtype=bool)
    hits = np.zeros(len(boxes), dtype=bool)
    for rank, row in enumerate(overlaps):
        candidates = np.where(taken, -1.0, row)
        best = int(np.argmax(candidates)) if len(candidates) else -1
        if best >= 0 and candidates[best] >= MATCH_IOU:
            taken[best] = hits[rank] = True
    return hits


def average_precision(scores: np.ndarray, hits: np.ndarray, faces: int) -> float:
    """Area under the precision-recall curve (all points, VOC 2010+ interpolation)."""
    order = np.argsort(-scores, kind="stable")
    true_positives = np.cumsum(hits[order])
    recall = np.concatenate([[0.0], true_positives / max(faces, 1), [1.0]])
    precision = np.concatenate([[1.0], true_positives / np.arange(1, len(order) + 1), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum((recall[1:] - recall[:-1]) * precision[1:]))


def evaluate_detector(
    detector: Detector, annotations: Path, images: Path, *, limit: int | None = None
) -> DetectionResult:
    entries = read_annotations(annotations, limit)
    all_scores, all_hits, faces = [], [], 0
    started = time.perf_counter()
    for name, truth in tqdm(entries, desc="detection", unit="image", leave=False, disable=None):
        boxes, scores = detector(images / name)
        hits = match(truth, boxes, scores)
        all_scores.append(np.sort(scores)[::-1])
        all_hits.append(hits)
        faces += len(truth)
    seconds = time.perf_counter() - started
    scores, hits = np.concatenate(all_scores), np.concatenate(all_hits)
    return DetectionResult(
        images=len(entries),
        faces=faces,
        detections=len(scores),
        recall=float(hits.sum() / max(faces, 1)),
        fp_per_image=float((~hits).sum() / max(len(entries), 1)),
        ap=average_precision(scores, hits, faces),
        images_per_s=len(entries) / seconds,
    )


def evaluate_detection(
    settings: Settings, annotations: Path, images: Path, *, limit: int | None = None
) -> DetectionResult:
    """The production detector (decode, SCRFD, close-up view, minimum size) over an annotation file."""
    from image_grouping.bootstrap import load_analyzer

    analyzer = load_analyzer(settings)
    try:

        def detect(path: Path) -> tuple[np.ndarray, np.ndarray]:
            found = analyzer.detect(path.read_bytes())
            return found.boxes, found.scores

        return evaluate_detector(detect, annotations, images, limit=limit)
    finally:
        analyzer.close()


def format_detection_report(result: DetectionResult) -> str:
    return "\n".join(
        [
            f"images        {result.images}",
            f"faces         {result.faces}",
            f"detections    {result.detections}",
            f"recall@{MATCH_IOU}    {result.recall:.4f}",
            f"FP / image    {result.fp_per_image:.4f}",
            f"AP            {result.ap:.4f}",
            f"images / s    {result.images_per_s:.2f}",
        ]
    )
