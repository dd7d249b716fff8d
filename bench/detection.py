"""Detection on ../shared/eval/detection: this project's detector and plain InsightFace, side by side.

    .venv/bin/python bench/detection.py [--limit N] [--threads 1]

Both use buffalo_sc's SCRFD with threshold 0.5 and a 640 input; ours adds the close-up view and the
minimum face size of the settings. Prints recall at IoU >= 0.4, false positives per image, AP, images/s.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np

from image_grouping.config import load_settings
from image_grouping.evaluation.detection import (
    Detector,
    evaluate_detection,
    evaluate_detector,
    format_detection_report,
)
from image_grouping.vision.model_pack import BUNDLED_MODEL_FOLDER, BUNDLED_PACKS

DETECTION = Path(__file__).resolve().parents[1].parent / "shared" / "eval" / "detection"


def insightface_detector(threads: int) -> Detector:
    import cv2
    import onnxruntime as ort
    from insightface.app import FaceAnalysis

    pack = Path(tempfile.mkdtemp(prefix="buffalo_sc_"))
    for name in BUNDLED_PACKS["buffalo_sc"]:
        shutil.copy(BUNDLED_MODEL_FOLDER / name, pack / name)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    app = FaceAnalysis(
        name=str(pack),
        allowed_modules=["detection"],
        providers=["CPUExecutionProvider"],
        sess_options=options,
    )
    app.prepare(ctx_id=-1, det_size=(640, 640))

    def detect(path: Path) -> tuple[np.ndarray, np.ndarray]:
        found, _ = app.det_model.detect(cv2.imread(str(path)))
        return found[:, :4], found[:, 4]

    return detect


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=None, help="Only the first N images.")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads, both sides.")
    args = parser.parse_args()
    annotations, images = DETECTION / "annotations.txt", DETECTION / "images"

    reference = evaluate_detector(insightface_detector(args.threads), annotations, images, limit=args.limit)
    ours = evaluate_detection(
        load_settings(intra_op_threads=args.threads), annotations, images, limit=args.limit
    )
    for name, result in (("insightface", reference), ("ours", ours)):
        print(f"--- {name}\n{format_detection_report(result)}")
    print(
        f"recall difference (ours - insightface): {100 * (ours.recall - reference.recall):+.2f} points; "
        f"FP/image {ours.fp_per_image:.4f} vs {reference.fp_per_image:.4f}"
    )


if __name__ == "__main__":
    main()
