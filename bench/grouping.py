"""Grouping: quality on real LFW embeddings and speed/memory on synthetic ones, against Immich's algorithm.

    .venv/bin/python bench/grouping.py [--sizes 10000,100000,1000000] [--reference-sizes 10000,100000]

1. LFW (../shared/eval/identity, analysed by the production pipeline, cached in .bench/): BCubed and
   pairwise scores of our full recluster and of Immich's algorithm on the same embeddings, side by side.
2. Synthetic: identities sized like LFW's; identity centres drawn with the between-identity covariance
   measured on LFW, faces around them with the measured within-identity covariance (real face embeddings
   are far from isotropic); the genuine/impostor cosines of both are printed side by side. Each size runs
   in its own process so the peak memory (RSS, data included) is its own; our full grouping is timed at
   every size, Immich's at the reference sizes.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from image_grouping.bootstrap import grouping_params
from image_grouping.config import load_settings
from image_grouping.evaluation.grouping import clustering_scores, immich_reference, load_labelled_faces
from image_grouping.grouping import GroupingInput, GroupingParams, group_faces

EVAL = Path(__file__).resolve().parents[1].parent / "shared" / "eval"
SPREAD_FILE = Path(".bench/grouping-spread.npz")


def real_spread(labels: np.ndarray, embeddings: np.ndarray) -> dict[str, np.ndarray]:
    """The real data's shape: mean, between- and within-identity covariance factors, identity sizes."""
    _, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    sums = np.zeros((len(sizes), embeddings.shape[1]))
    np.add.at(sums, inverse, embeddings)
    means = sums / sizes[:, None]
    several = sizes[inverse] >= 2
    # Residuals from a mean that includes the face shrink by sqrt((n-1)/n): undo that.
    correction = np.sqrt(sizes[inverse] / np.maximum(sizes[inverse] - 1, 1))
    residuals = ((embeddings - means[inverse]) * correction[:, None])[several]
    return {
        "mean": embeddings.mean(axis=0),
        "between": _factor(np.cov(means[sizes >= 2], rowvar=False)),
        "within": _factor(np.cov(residuals, rowvar=False)),
        "sizes": sizes,
    }


def _factor(covariance: np.ndarray) -> np.ndarray:
    """A square root F of a covariance (F @ F.T = C), for drawing correlated Gaussian vectors."""
    values, vectors = np.linalg.eigh(covariance)
    return (vectors * np.sqrt(values.clip(0))).astype(np.float32)


def synthetic(count: int, spread: dict[str, np.ndarray], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, labels): `count` unit faces of identities sized like LFW's; centres drawn with the real
    between-identity covariance, faces around them with the real within-identity covariance."""
    rng = np.random.default_rng(seed)
    dim = len(spread["mean"])
    identity_sizes = rng.choice(spread["sizes"], size=count)  # more than enough identities
    labels = np.repeat(np.arange(len(identity_sizes)), identity_sizes)[:count]
    rng.shuffle(labels)
    identities = int(labels.max()) + 1
    centres = (
        spread["mean"].astype(np.float32)
        + rng.standard_normal((identities, dim), np.float32) @ spread["between"].T
    )
    embeddings = np.empty((count, dim), np.float32)
    for start in range(0, count, 100_000):
        part = slice(start, min(start + 100_000, count))
        noise = rng.standard_normal((part.stop - start, dim), np.float32) @ spread["within"].T
        block = centres[labels[part]] + noise
        embeddings[part] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return embeddings, labels


def describe(embeddings: np.ndarray, labels: np.ndarray, sample: int = 3000) -> str:
    """Genuine and impostor pair cosines of a sample, to compare the synthetic data with the real."""
    rng = np.random.default_rng(1)
    rows = rng.choice(len(labels), min(sample, len(labels)), replace=False)
    similarity = embeddings[rows] @ embeddings[rows].T
    upper = np.triu_indices(len(rows), 1)
    same = (labels[rows][:, None] == labels[rows][None, :])[upper]
    genuine, impostor = similarity[upper][same], similarity[upper][~same]
    return (
        f"genuine pairs mean {genuine.mean():.3f} (5th pct {np.percentile(genuine, 5):.3f}), "
        f"impostor pairs mean {impostor.mean():.3f} (99.9th pct {np.percentile(impostor, 99.9):.3f})"
    )


def run_one(count: int, reference: bool) -> dict[str, float]:
    """One size, in this process: generate, group (timed), optionally Immich (timed); peak RSS."""
    with np.load(SPREAD_FILE) as stored:
        embeddings, labels = synthetic(count, dict(stored))
    faces = GroupingInput(embeddings, np.arange(count), np.ones(count, bool))
    started = time.perf_counter()
    found = group_faces(faces, GroupingParams()).labels
    result = {"faces": count, "seconds": time.perf_counter() - started}
    result.update({f"ours_{key}": value for key, value in clustering_scores(labels, found).items()})
    if reference:
        started = time.perf_counter()
        immich = immich_reference(embeddings)
        result["immich_seconds"] = time.perf_counter() - started
        result.update({f"immich_{key}": value for key, value in clustering_scores(labels, immich).items()})
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return result


def lfw_section() -> None:
    settings = load_settings()
    faces = load_labelled_faces(settings, EVAL / "identity_labels.csv", EVAL)
    spread = real_spread(faces.labels, faces.embeddings)
    SPREAD_FILE.parent.mkdir(exist_ok=True)
    np.savez(SPREAD_FILE, **spread)
    fake, fake_labels = synthetic(len(faces), spread)
    print(f"LFW: {len(faces)} faces, {len(spread['sizes'])} identities")
    print(f"  real:      {describe(faces.embeddings, faces.labels)}")
    print(f"  synthetic: {describe(fake, fake_labels)}")
    order = np.random.default_rng(0).permutation(len(faces))  # arrival order matters to Immich
    embeddings, labels = faces.embeddings[order], faces.labels[order]
    from image_grouping.grouping import reliable_faces

    params = grouping_params(settings)
    reliable = reliable_faces(faces.det_score, faces.size_px, faces.sharpness, faces.yaw, params)[order]
    started = time.perf_counter()
    ours = group_faces(GroupingInput(embeddings, np.arange(len(faces)), reliable), params).labels
    ours_seconds = time.perf_counter() - started
    started = time.perf_counter()
    immich = immich_reference(embeddings)
    immich_seconds = time.perf_counter() - started
    keys = ["bcubed_precision", "bcubed_recall", "bcubed_f1", "pairwise_precision", "pairwise_recall"]
    keys += ["pairwise_f1", "assigned", "persons"]
    print(f"{'':18}" + "".join(f"{key:>19}" for key in keys) + f"{'seconds':>9}")
    for name, found, seconds in (
        ("ours (recluster)", ours, ours_seconds),
        ("immich", immich, immich_seconds),
    ):
        scores = clustering_scores(labels, found)
        print(f"{name:18}" + "".join(f"{scores[key]:>19.4f}" for key in keys) + f"{seconds:>9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--reference-sizes", default="10000,100000")
    parser.add_argument("--skip-lfw", action="store_true", help="Reuse the spread measured last time.")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child process: one size
    parser.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.reference)))
        return
    if not args.skip_lfw:
        lfw_section()
    references = {int(size) for size in args.reference_sizes.split(",") if size}
    print(
        f"\n{'faces':>9}{'ours s':>9}{'peak GB':>9}{'BCubed F1':>11}"
        f"{'immich s':>10}{'immich F1':>11}{'speed-up':>10}"
    )
    for size in (int(size) for size in args.sizes.split(",")):
        command = [sys.executable, __file__, "--one", str(size)] + (
            ["--reference"] if size in references else []
        )
        result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        immich = (
            f"{result['immich_seconds']:>10.1f}{result['immich_bcubed_f1']:>11.4f}"
            f"{result['immich_seconds'] / result['seconds']:>9.1f}x"
            if "immich_seconds" in result
            else f"{'-':>10}{'-':>11}{'-':>10}"
        )
        print(
            f"{size:>9}{result['seconds']:>9.1f}{result['peak_rss_gb']:>9.2f}{result['ours_bcubed_f1']:>11.4f}{immich}",
            flush=True,
        )


if __name__ == "__main__":
    main()
