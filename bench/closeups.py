"""Close-ups: the share of ../shared/eval/identity photos (LFW, 250x250 face crops) with a face found.

    .venv/bin/python bench/closeups.py [--limit N]

A photo counts when a face box contains the image centre (the labelled face is the one nearest it).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tqdm import tqdm

from image_grouping.bootstrap import load_analyzer
from image_grouping.config import load_settings

IDENTITY = Path(__file__).resolve().parents[1].parent / "shared" / "eval" / "identity"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=None, help="Only the first N photos.")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads.")
    args = parser.parse_args()
    paths = sorted(IDENTITY.glob("*/*.jpg"))[: args.limit]
    analyzer = load_analyzer(load_settings(intra_op_threads=args.threads))
    any_face = central_face = 0
    missed = []
    started = time.perf_counter()
    for path in tqdm(paths, unit="photo", leave=False):
        found = analyzer.detect(path.read_bytes())
        any_face += len(found) > 0
        centre_x, centre_y = 125, 125
        if any(x1 < centre_x < x2 and y1 < centre_y < y2 for x1, y1, x2, y2 in found.boxes):
            central_face += 1
        else:
            missed.append(path.relative_to(IDENTITY))
    seconds = time.perf_counter() - started
    total = len(paths)
    print(f"{total} photos, {total / seconds:.1f} photos/s")
    print(f"any face found:          {any_face}/{total} = {100 * any_face / total:.2f}%")
    print(f"face on the image centre: {central_face}/{total} = {100 * central_face / total:.2f}%")
    print("missed:", ", ".join(str(path) for path in missed[:20]))


if __name__ == "__main__":
    main()
