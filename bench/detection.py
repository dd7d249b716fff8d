"""Detection on ../shared/eval/detection: this project's detector and plain InsightFace, side by side.

    .venv/bin/python bench/detection.py [--limit N] [--min-sizes 1,14,20]

Both use buffalo_sc's SCRFD with threshold 0.5 at 640: insightface as a user would write it (`cv2.imread`,
`det_model.detect`, a padded 640x640 square), ours through `FaceAnalyzer.detect` with the default
settings (640 on the long side, the close-up view). Ours runs once without a minimum face size; each
`--min-sizes` value is then scored on the same detections (the size filter is the detector's last step),
and the default MIN_FACE_SIZE is marked. Prints recall at IoU >= 0.4, false positives per image, AP and
images/s.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from image_grouping.bootstrap import load_analyzer
from image_grouping.config import load_settings
from image_grouping.evaluation.detection import (
    DetectionResult,
    Detector,
    evaluate_detector,
    format_detection_report,
)
from image_grouping.vision import FaceAnalyzer

DETECTION = Path(__file__).resolve().parents[1].parent / "shared" / "eval" / "detection"


def insightface_detector() -> Detector:
    import cv2
    from reference import insightface_app

    app = insightface_app(["detection"])

    def detect(path: Path) -> tuple[np.ndarray, np.ndarray]:
        found, _ = app.det_model.detect(cv2.imread(str(path)))
        return found[:, :4], found[:, 4]

    return detect


def recording_detector(analyzer: FaceAnalyzer, seen: dict[Path, tuple[np.ndarray, np.ndarray]]) -> Detector:
    def detect(path: Path) -> tuple[np.ndarray, np.ndarray]:
        found = analyzer.detect(path.read_bytes())
        seen[path] = (found.boxes, found.scores)
        return seen[path]

    return detect


def replayed_detector(seen: dict[Path, tuple[np.ndarray, np.ndarray]], min_size: int) -> Detector:
    """The recorded detections, without the faces whose shorter box side is below `min_size`."""

    def detect(path: Path) -> tuple[np.ndarray, np.ndarray]:
        boxes, scores = seen[path]
        keep = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= min_size
        return boxes[keep], scores[keep]

    return detect


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=None, help="Only the first N images.")
    parser.add_argument("--min-sizes", default="1,10,12,14,16,20", help="Minimum face sizes to score.")
    args = parser.parse_args()
    annotations, images = DETECTION / "annotations.txt", DETECTION / "images"
    settings = load_settings()
    min_sizes = sorted({int(value) for value in args.min_sizes.split(",")} | {settings.min_face_size})

    reference = evaluate_detector(insightface_detector(), annotations, images, limit=args.limit)
    print(f"--- insightface\n{format_detection_report(reference)}")
    seen: dict[Path, tuple[np.ndarray, np.ndarray]] = {}
    analyzer = load_analyzer(settings.model_copy(update={"min_face_size": 1}))
    try:
        unfiltered = evaluate_detector(
            recording_detector(analyzer, seen), annotations, images, limit=args.limit
        )
    finally:
        analyzer.close()
    results: dict[int, DetectionResult] = {}
    for min_size in min_sizes:
        results[min_size] = evaluate_detector(
            replayed_detector(seen, min_size), annotations, images, limit=args.limit
        )
    # Scores of the default size, speed of the real run.
    ours = replace(results[settings.min_face_size], images_per_s=unfiltered.images_per_s)
    print(f"--- ours (default MIN_FACE_SIZE={settings.min_face_size})")
    print(format_detection_report(ours))
    print("--- ours by minimum face size")
    for min_size, result in results.items():
        mark = "  <- default" if min_size == settings.min_face_size else ""
        print(
            f"min {min_size:3d}px  recall {result.recall:.4f}  FP/image {result.fp_per_image:.4f}  "
            f"AP {result.ap:.4f}{mark}"
        )
    print(
        f"recall difference (ours - insightface): {100 * (ours.recall - reference.recall):+.2f} points; "
        f"FP/image {ours.fp_per_image:.4f} vs {reference.fp_per_image:.4f}"
    )


if __name__ == "__main__":
    main()
