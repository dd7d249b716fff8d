"""The evaluation's own bookkeeping: per-face BCubed (for per-kind figures) and the analysis cache key."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from image_grouping.evaluation.grouping import _cache_key, bcubed_per_face, clustering_scores


def test_per_face_bcubed_averages_to_the_scores_and_splits_by_subset() -> None:
    truth = np.array(["a", "a", "a", "b", "b", "c"])
    predicted = np.array([0, 0, 1, 1, 1, -1])
    precision, recall = bcubed_per_face(truth, predicted)
    scores = clustering_scores(truth, predicted)
    assert np.isclose(precision.mean(), scores["bcubed_precision"])
    assert np.isclose(recall.mean(), scores["bcubed_recall"])
    # The third "a" sits with the two "b"s: a third of its group is its own, a third of its identity.
    assert np.isclose(precision[2], 1 / 3)
    assert np.isclose(recall[2], 1 / 3)
    assert precision[5] == recall[5] == 1.0  # an unassigned face of a one-photo identity: a right singleton


def test_analysis_cache_key_follows_the_files_bytes(tmp_path: Path) -> None:
    photo = tmp_path / "person" / "a.jpg"
    photo.parent.mkdir()
    rows = [("person/a.jpg", "person")]
    photo.write_bytes(b"first pixels")
    first = _cache_key(tmp_path, rows)
    assert _cache_key(tmp_path, rows) == first
    photo.write_bytes(b"other pixels")  # same path and label, rebuilt with other pixels
    assert _cache_key(tmp_path, rows) != first
    photo.write_bytes(b"first pixels")
    assert _cache_key(tmp_path, rows) == first
