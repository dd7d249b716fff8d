"""Faces added by hand: how close the embedding of a face added by its box comes to the detector's own.

    nice -n 10 .venv/bin/python bench/hand_faces.py [--groups 8] [--fddb 40] [--search-only]
    nice -n 10 .venv/bin/python bench/hand_faces.py --groups 0 --fddb 400 --misses-only
    MODEL_PACK=yunet_dlib nice -n 10 .venv/bin/python bench/hand_faces.py

Each face the detector finds in the first `--groups` group photos and `--fddb` FDDB photos of
../shared/eval is dropped and added back by hand: the photo is analysed again with a box at its place
(`HandBox`, drawn), as `image-grouping faces add` does, and the hand face's embedding is compared with the
detected face's (cosine). Boxes a person might draw:
- `detector`: the detector's own box;
- `grown`: that box 30 % larger, and taller (the head, not the face);
- `shifted`: moved by 10 % of its size right and down;
- `fddb`: FDDB's hand-drawn annotation of that face (its head ellipse's bounding box).
Each with the search around the box (what the service does) and with the landmarks from the box alone
(`box only`: what it falls back to when the search finds nothing). Also printed: the mean place of the
landmarks in the detector's box (the fallback's constants), and of FDDB's annotated faces that the
detector misses, how many the search around their annotated box finds.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from image_grouping.bootstrap import load_analyzer
from image_grouping.config import load_settings
from image_grouping.models.face_identity import box_iou
from image_grouping.models.faces import HandBox
from image_grouping.vision import analyzer as analyzer_module

EVAL = Path(__file__).resolve().parents[1].parent / "shared" / "eval"
Box = tuple[float, float, float, float]


def grown(box: Box) -> Box:
    x1, y1, x2, y2 = box
    width, height = x2 - x1, y2 - y1
    return (x1 - 0.1 * width, y1 - 0.25 * height, x2 + 0.1 * width, y2 + 0.05 * height)


def shifted(box: Box) -> Box:
    x1, y1, x2, y2 = box
    dx, dy = 0.1 * (x2 - x1), 0.1 * (y2 - y1)
    return (x1 + dx, y1 + dy, x2 + dx, y2 + dy)


def fddb_annotations(limit: int) -> list[tuple[Path, list[Box]]]:
    lines = (EVAL / "detection" / "annotations.txt").read_text().split("\n")
    found: list[tuple[Path, list[Box]]] = []
    at = 0
    while at < len(lines) and len(found) < limit:
        path, count = lines[at].strip(), int(lines[at + 1])
        boxes = []
        for line in lines[at + 2 : at + 2 + count]:
            x, y, w, h = (float(value) for value in line.split()[:4])
            boxes.append((x, y, x + w, y + h))
        at += 2 + count
        if path.startswith("fddb/"):
            found.append((EVAL / "detection" / "images" / path, boxes))
    return found


def summary(values: list[float]) -> str:
    if not values:
        return "no faces"
    array = np.array(values)
    return (
        f"{len(array):4d} faces  median {np.median(array):.4f}  10th pct {np.percentile(array, 10):.4f}  "
        f"min {array.min():.4f}  >= 0.9: {np.mean(array >= 0.9):.0%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--groups", type=int, default=8)
    parser.add_argument("--fddb", type=int, default=40)
    parser.add_argument("--margin", type=float, default=analyzer_module.HAND_SEARCH_MARGIN)
    parser.add_argument("--search-only", action="store_true", help="skip the box-only fallback")
    parser.add_argument("--misses-only", action="store_true", help="only the faces the detector misses")
    arguments = parser.parse_args()
    analyzer_module.HAND_SEARCH_MARGIN = arguments.margin
    analyzer = load_analyzer(load_settings(intra_op_threads=1))
    photos: list[tuple[Path, list[Box] | None]] = [
        (path, None) for path in sorted((EVAL / "groups").glob("*.jpg"))[: arguments.groups]
    ]
    photos += fddb_annotations(arguments.fddb)
    variants: dict[str, Callable[[Box], Box]] = {
        "detector": lambda box: box,
        "grown": grown,
        "shifted": shifted,
    }
    cosines: dict[tuple[str, str], list[float]] = {}
    relative: list[np.ndarray] = []
    missed = found_again = 0
    started = time.perf_counter()
    search_min_iou = analyzer_module.HAND_MIN_IOU
    for path, annotated in photos:
        data = path.read_bytes()
        detected = analyzer.analyze(data)
        if not detected.faces:
            continue
        boxes = np.array([face.box for face in detected.faces])
        for face in detected.faces:
            x1, y1, x2, y2 = face.box
            relative.append((face.landmarks - [x1, y1]) / [x2 - x1, y2 - y1])
        drawn: dict[str, tuple[list[int], list[Box]]] = {
            name: (list(range(len(boxes))), [change(tuple(box)) for box in boxes])
            for name, change in variants.items()
        }
        if annotated:
            iou = box_iou(np.array(annotated), boxes)  # FDDB's boxes are taller: IoU >= 0.4 is a match
            matched = [
                (int(np.argmax(row)), gt) for row, gt in zip(iou, annotated, strict=True) if row.max() >= 0.4
            ]
            drawn["fddb"] = ([index for index, _ in matched], [gt for _, gt in matched])
            misses = [gt for row, gt in zip(iou, annotated, strict=True) if row.max() < 0.4]
            if misses:
                again = analyzer.analyze(data, [HandBox(box, drawn=True) for box in misses])
                hand = [face for face in again.faces if face.added_by_hand]
                missed += len(hand)
                found_again += sum(1 for face in hand if face.quality.det_score > 0)
        modes = [("search", search_min_iou)] + ([] if arguments.search_only else [("box only", 2.0)])
        if arguments.misses_only:
            modes = []
        for mode, min_iou in modes:
            analyzer_module.HAND_MIN_IOU = min_iou  # above 1: no detection is ever taken
            for name, (indexes, hand_boxes) in drawn.items():
                if not indexes:
                    continue
                again = analyzer.analyze(data, [HandBox(box, drawn=True) for box in hand_boxes])
                hand = [face for face in again.faces if face.added_by_hand]
                for index, face in zip(indexes, hand, strict=True):
                    reference = detected.faces[index].embedding
                    cosines.setdefault((name, mode), []).append(float(reference @ face.embedding))
        analyzer_module.HAND_MIN_IOU = search_min_iou
    elapsed = time.perf_counter() - started
    print(
        f"{len(photos)} photos ({arguments.groups} group photos, {arguments.fddb} FDDB), search margin "
        f"{arguments.margin}, {elapsed:.0f} s"
    )
    print("cosine of the hand-added face's embedding to the detected face's:")
    for (name, mode), values in sorted(cosines.items()):
        print(f"  {name:9s} {mode:9s} {summary(values)}")
    mean = np.mean(relative, axis=0)
    print("landmarks in the detector's box (x, y shares), mean over", len(relative), "faces:")
    print("  " + ", ".join(f"[{x:.2f}, {y:.2f}]" for x, y in mean))
    print(
        f"FDDB faces the detector misses: {missed}; the search around their annotated box finds {found_again}"
    )
    analyzer.close()


if __name__ == "__main__":
    main()
