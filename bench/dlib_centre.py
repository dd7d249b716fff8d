#!/usr/bin/env python3
"""Would centring dlib's descriptors help the licence-clean pack? Measured, and the answer was no.

dlib's unit descriptors share a large common component (their mean has norm 0.92; two strangers' cosine
is near 0.83, a same-person pair's near 0.95), so grouping's thresholds for yunet_dlib sit in a narrow
band (0.90-0.96). The idea: subtract a fixed mean descriptor, and possibly whiten, then normalise again,
to spread the cosines as ArcFace's are spread. This script takes the mean (and a PCA whitening) from
faces outside the identity eval: every face YuNet finds in the FDDB and PASCAL photos of
../shared/eval/detection and the group photos of ../shared/eval/groups. It then compares, on the LFW
faces that `image-grouping eval grouping` cached in .bench/, how many same-person pairs each variant keeps
above the cosine that lets through 1 in 10,000 / 1,000 / 100 stranger pairs. A transform that ranks
pairs better keeps more; a mere spreading of the cosines keeps the same.

    MODEL_PACK=yunet_dlib image-grouping eval grouping --labels ../shared/eval/identity_labels.csv \
        --images ../shared/eval      # first: caches the LFW faces
    MODEL_PACK=yunet_dlib nice -n 10 bench/dlib_centre.py [--eval ../shared/eval]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np

from image_grouping.bootstrap import load_analyzer
from image_grouping.config import Settings
from image_grouping.errors import BadInputError

STRANGER_RATES = (1e-4, 1e-3, 1e-2)


def reference_descriptors(settings: Settings, eval_folder: Path, cache: Path) -> np.ndarray:
    """The unit descriptors of every face in the detection and group photos (cached in `cache`)."""
    if cache.exists():
        return np.load(cache)["descriptors"].astype(np.float64)
    photos = sorted((eval_folder / "detection" / "images").rglob("*.jpg"))
    photos += sorted((eval_folder / "groups").glob("*.jpg"))
    analyzer = load_analyzer(settings)
    descriptors = []
    try:
        for path in photos:
            try:
                descriptors += [face.embedding for face in analyzer.analyze(path.read_bytes()).faces]
            except BadInputError:
                continue
    finally:
        analyzer.close()
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, descriptors=np.stack(descriptors))
    print(f"{len(descriptors)} faces in {len(photos)} detection and group photos")
    return np.stack(descriptors).astype(np.float64)


def variants(reference: np.ndarray) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """The unit descriptors as stored, less the reference mean, and that whitened (PCA of the reference),
    each normalised again."""
    mean = reference.mean(axis=0)
    values, vectors = np.linalg.eigh(np.cov((reference - mean).T))
    # Floored eigenvalues: the smallest directions of 2,600 faces are mostly noise.
    whitening = vectors @ np.diag(1 / np.sqrt(values + 1e-4 * values.max())) @ vectors.T

    def unit(vectors: np.ndarray) -> np.ndarray:
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    return {
        "as stored": unit,
        "centred": lambda embeddings: unit(embeddings - mean),
        "centred+whitened": lambda embeddings: unit((embeddings - mean) @ whitening),
    }


def pair_rates(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Same-person cosines, and for each stranger rate: its cosine and the same-person pairs above it."""
    similarities = embeddings @ embeddings.T
    upper = np.triu_indices(len(embeddings), 1)
    same = (labels[:, None] == labels[None, :])[upper]
    cosines = similarities[upper]
    genuine, strangers = cosines[same], cosines[~same]
    cut = [float(np.quantile(strangers, 1 - rate)) for rate in STRANGER_RATES]
    return genuine, [(value, float(np.mean(genuine > value))) for value in cut]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval", type=Path, default=Path("../shared/eval"))
    parser.add_argument("--reference-cache", type=Path, default=Path(".bench/dlib_reference_faces.npz"))
    args = parser.parse_args()
    settings = Settings()
    if settings.model_pack != "yunet_dlib":
        raise SystemExit("set MODEL_PACK=yunet_dlib")
    reference = reference_descriptors(settings, args.eval, args.reference_cache)
    (lfw_cache,) = sorted(Path(".bench").glob("grouping-yunet_dlib-*.npz"))[-1:] or [None]
    if lfw_cache is None:
        raise SystemExit("no .bench/grouping-yunet_dlib-*.npz: run `image-grouping eval grouping` first")
    with np.load(lfw_cache) as stored:
        embeddings, labels = stored["embeddings"].astype(np.float64), stored["labels"]
    mean_norm = np.linalg.norm(reference.mean(axis=0))
    print(f"reference: {len(reference)} faces, |mean| {mean_norm:.3f}; LFW: {len(labels)} faces")
    for name, transform in variants(reference).items():
        genuine, rates = pair_rates(transform(embeddings), labels)
        kept = "; ".join(
            f"1/{round(1 / rate)} strangers above {value:.4f}: {share:.4f} same-person"
            for rate, (value, share) in zip(STRANGER_RATES, rates, strict=True)
        )
        print(f"{name:17} same-person median {np.median(genuine):.4f}; {kept}")


if __name__ == "__main__":
    main()
