"""Re-detected faces are paired with the stored ones by box overlap, one to one, best first."""

from __future__ import annotations

import numpy as np
import pytest

from image_grouping.models.face_identity import (
    HandFaceNotAnalysedError,
    ReanalysisPlan,
    StoredFace,
    distinct_boxes,
    match_boxes,
    plan_reanalysis,
)


def test_each_new_box_takes_the_best_overlapping_old_box_once() -> None:
    old = np.array([[0, 0, 100, 100], [200, 0, 300, 100], [400, 0, 500, 100]], float)
    new = np.array([[205, 5, 305, 105], [0, 0, 100, 100], [10, 10, 110, 110], [900, 900, 950, 950]], float)

    assert match_boxes(old, new) == {0: 1, 1: 0}  # new 2 overlaps old 0 less than new 1 does


def test_boxes_overlapping_less_than_half_are_different_faces() -> None:
    old = np.array([[0, 0, 100, 100]], float)
    assert match_boxes(old, np.array([[50, 0, 150, 100]], float)) == {}  # IoU 1/3
    assert match_boxes(old, np.empty((0, 4))) == {}
    assert match_boxes(np.empty((0, 4)), old) == {}


def test_a_reanalysis_keeps_faces_found_again_adds_new_ones_and_removes_the_rest() -> None:
    stored = [
        StoredFace(7, (0, 0, 100, 100)),
        StoredFace(8, (200, 0, 300, 100)),
        StoredFace(9, (400, 0, 450, 50)),
    ]
    found = [(205, 2, 302, 98), (600, 0, 700, 100), (1, 1, 99, 101)]

    plan = plan_reanalysis(stored, found)

    assert plan.kept == {0: 8, 2: 7}  # same places, whatever the order the detector gives them in
    assert plan.added == [1]
    assert plan.removed == [9]


def test_a_first_analysis_adds_every_face_and_an_empty_one_removes_every_face() -> None:
    stored = [StoredFace(1, (0, 0, 10, 10))]
    assert plan_reanalysis([], [(0, 0, 10, 10), (20, 0, 30, 10)]) == ReanalysisPlan({}, [0, 1], [])
    assert plan_reanalysis(stored, []) == ReanalysisPlan({}, [], [1])


def test_a_face_added_by_hand_is_never_removed_an_analysis_without_it_is_made_again() -> None:
    stored = [StoredFace(1, (0, 0, 100, 100)), StoredFace(2, (200, 0, 300, 100), added_by_hand=True)]

    assert plan_reanalysis(stored, [(0, 0, 100, 100), (200, 0, 300, 100)]).kept == {0: 1, 1: 2}
    assert plan_reanalysis(stored, [(200, 0, 300, 100)]).removed == [1]  # a detected face may go
    with pytest.raises(HandFaceNotAnalysedError, match=r"faces \[2\] were added by hand"):
        plan_reanalysis(stored, [(0, 0, 100, 100)])


def test_distinct_boxes_keep_one_box_per_place_the_first() -> None:
    boxes = [(0, 0, 100, 100), (5, 5, 105, 105), (200, 0, 300, 100)]
    assert distinct_boxes(boxes) == [(0, 0, 100, 100), (200, 0, 300, 100)]
    assert distinct_boxes([]) == []
