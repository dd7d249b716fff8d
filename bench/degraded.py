"""Grouping on degraded photos: faces as ordinary uploads show them, scored per kind and overall.

    nice -n 10 .venv/bin/python bench/degraded.py [--people N] [--limit N] [--seed 0] [--keep DIR]

Builds degraded copies of ../shared/eval/identity (the people with at least two photos) into a temporary
folder, one kind of degradation per photo, then groups them exactly as `image-grouping eval grouping` does
(production analysis, the face nearest the centre, the service's incremental assignment in shuffled
batches, then a recluster) and prints BCubed precision/recall/F1 after each, per kind and overall, with
the share of faces left unassigned and of photos where no face was found.

Every photo's kind and its parameters follow from the seed and the photo's path alone, so a subset
(`--people`, `--limit`) degrades each photo as the full set does, and a rebuilt folder holds the same bytes:
the evaluation's cache (keyed by the files' contents) then skips the analysis. A person's photos take the
kinds in turn from a random start, so most persons must be recognised across kinds.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from image_grouping.config import load_settings
from image_grouping.evaluation.grouping import (
    bcubed_per_face,
    clustering_scores,
    group_as_the_service,
    load_labelled_faces,
)

EVAL = Path(__file__).resolve().parents[1].parent / "shared" / "eval"
LFW_FACE_PX = 92.0  # median shorter side of the centre face's box in LFW's 250x250 crops (measured)
SAVE_QUALITY = 90  # JPEG quality of every kind but "jpeg": what a phone writes


def _small(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The photo shrunk so the face is 36-44 px: a face across the room (kept small, never enlarged)."""
    scale = rng.uniform(36, 44) / LFW_FACE_PX
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _blur(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Out of focus: Gaussian blur of sigma 2-3 px on a ~92 px face."""
    return cv2.GaussianBlur(image, (0, 0), rng.uniform(2.0, 3.0))


def _dark(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A dim room: 15-25% of the light, shadows crushed (gamma 1.3), sensor noise of sigma 4-8 levels."""
    light = (image / 255.0) ** 1.3 * rng.uniform(0.15, 0.25) * 255.0
    noisy = light + rng.normal(0.0, rng.uniform(4.0, 8.0), image.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _grey(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A black-and-white photo, stored as a one-channel JPEG."""
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def _tilt(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A camera held askew: turned 18-25 degrees either way about the centre, edges mirrored (no black
    corners for the detector to use)."""
    angle = rng.uniform(18, 25) * rng.choice([-1, 1])
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
    return cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REFLECT_101)


def _motion(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A moving subject or a shaking hand: a straight streak of 9-15 px in any direction."""
    length = int(rng.integers(9, 16))
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1.0
    rotation = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), rng.uniform(0, 180), 1.0)
    kernel = cv2.warpAffine(kernel, rotation, (length, length))
    return cv2.filter2D(image, -1, kernel / kernel.sum())


def _overexposed(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A flash too close or a bright window: 1.8-2.4 times the light, highlights clipped."""
    return np.clip(image * rng.uniform(1.8, 2.4), 0, 255).astype(np.uint8)


def _unchanged(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return image


# kind: (what it does to the pixels, JPEG quality it is saved at)
KINDS: dict[str, tuple[Callable[[np.ndarray, np.random.Generator], np.ndarray], int]] = {
    "small": (_small, SAVE_QUALITY),
    "jpeg15": (_unchanged, 15),
    "blur": (_blur, SAVE_QUALITY),
    "dark": (_dark, SAVE_QUALITY),
    "grey": (_grey, SAVE_QUALITY),
    "tilt": (_tilt, SAVE_QUALITY),
    "motion": (_motion, SAVE_QUALITY),
    "overexposed": (_overexposed, SAVE_QUALITY),
}


def _photo_rng(seed: int, path: str) -> np.random.Generator:
    return np.random.default_rng([seed, int(hashlib.sha256(path.encode()).hexdigest()[:12], 16)])


def degrade(data: bytes, kind: str, rng: np.random.Generator) -> bytes:
    """JPEG bytes of the photo degraded by `kind`."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    transform, quality = KINDS[kind]
    ok, encoded = cv2.imencode(".jpg", transform(image, rng), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return encoded.tobytes()


def choose_photos(
    labels_csv: Path, people: int | None, limit: int | None, seed: int
) -> list[tuple[str, str]]:
    """(path, person) of the persons with 2+ photos: all, or `people` of them drawn by the seed."""
    with labels_csv.open(newline="") as file:
        rows = [(row["path"], row["label"]) for row in csv.DictReader(file)]
    names, counts = np.unique([label for _, label in rows], return_counts=True)
    several = names[counts >= 2]
    if people is not None:
        several = np.sort(
            np.random.default_rng(seed).choice(several, min(people, len(several)), replace=False)
        )
    kept = set(several.tolist())
    rows = [row for row in rows if row[1] in kept]
    return rows[:limit] if limit is not None else rows


def build_degraded_set(
    rows: list[tuple[str, str]], source: Path, folder: Path, seed: int
) -> tuple[Path, dict[str, str]]:
    """Writes the degraded photos and their labels CSV under `folder`; returns the CSV and path -> kind."""
    kinds = list(KINDS)
    kind_of: dict[str, str] = {}
    by_person: dict[str, list[str]] = {}
    for path, label in rows:
        by_person.setdefault(label, []).append(path)
    for label, paths in by_person.items():
        start = int(_photo_rng(seed, label).integers(len(kinds)))
        for turn, path in enumerate(sorted(paths)):
            kind_of[path] = kinds[(start + turn) % len(kinds)]
    for path, _ in rows:
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(degrade((source / path).read_bytes(), kind_of[path], _photo_rng(seed, path)))
    labels_csv = folder / "labels.csv"
    with labels_csv.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return labels_csv, kind_of


def scores_by_kind(
    truth: np.ndarray, predicted: np.ndarray, kinds: np.ndarray, missed: dict[str, int]
) -> dict[str, dict[str, float]]:
    """BCubed P/R/F1 of each kind's faces within the one grouping of all faces, unassigned share, photos
    without a face; then all faces together."""
    precision, recall = bcubed_per_face(truth, predicted)
    table: dict[str, dict[str, float]] = {}
    for kind in [*KINDS, "all"]:
        mask = np.ones(len(kinds), bool) if kind == "all" else kinds == kind
        if not mask.any():
            continue
        p, r = float(precision[mask].mean()), float(recall[mask].mean())
        table[kind] = {
            "faces": int(mask.sum()),
            "no_face": missed.get(kind, 0) if kind != "all" else sum(missed.values()),
            "bcubed_precision": p,
            "bcubed_recall": r,
            "bcubed_f1": 2 * p * r / (p + r) if p + r else 0.0,
            "unassigned": float((predicted[mask] < 0).mean()),
        }
    return table


def format_table(name: str, table: dict[str, dict[str, float]]) -> str:
    lines = [
        f"{name}",
        f"{'kind':14}{'faces':>7}{'no face':>9}{'BCubed P':>10}{'R':>8}{'F1':>8}{'unassigned':>12}",
    ]
    for kind, row in table.items():
        lines.append(
            f"{kind:14}{row['faces']:>7}{row['no_face']:>9}{row['bcubed_precision']:>10.4f}"
            f"{row['bcubed_recall']:>8.4f}{row['bcubed_f1']:>8.4f}{row['unassigned']:>12.1%}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--eval", type=Path, default=EVAL, help="the shared evaluation folder")
    parser.add_argument("--people", type=int, help="only this many persons (drawn by the seed)")
    parser.add_argument("--limit", type=int, help="only the first N photos of those persons")
    parser.add_argument("--seed", type=int, default=0, help="degradations and arrival order")
    parser.add_argument("--keep", type=Path, help="build the degraded photos here, and leave them")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # quiet: warnings only
    settings = load_settings()
    rows = choose_photos(args.eval / "identity_labels.csv", args.people, args.limit, args.seed)
    with tempfile.TemporaryDirectory() as temporary:
        folder = args.keep or Path(temporary)
        started = time.perf_counter()
        labels_csv, kind_of = build_degraded_set(rows, args.eval, folder, args.seed)
        print(
            f"built {len(rows)} degraded photos of {len({label for _, label in rows})} persons "
            f"in {time.perf_counter() - started:.1f} s"
        )
        faces = load_labelled_faces(settings, labels_csv, folder)
    found = set(faces.paths.tolist())
    missed: dict[str, int] = {}
    for path, _ in rows:
        if path not in found:
            missed[kind_of[path]] = missed.get(kind_of[path], 0) + 1
    kinds = np.array([kind_of[path] for path in faces.paths.tolist()])
    grouped = asyncio.run(group_as_the_service(settings, faces, args.seed))
    figures = {}
    for name, predicted in (("incremental", grouped.incremental), ("recluster", grouped.recluster)):
        figures[name] = scores_by_kind(faces.labels, predicted, kinds, missed)
        overall = clustering_scores(faces.labels, predicted)
        print(
            format_table(
                f"after {name} (persons {overall['persons']}, pairwise F1 {overall['pairwise_f1']:.4f})",
                figures[name],
            )
        )
    print(f"incremental {grouped.incremental_seconds:.1f} s, recluster {grouped.recluster_seconds:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
