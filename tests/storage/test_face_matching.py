"""Re-detected faces are paired with the stored ones by box overlap, one to one, best first."""

from __future__ import annotations

import numpy as np

from image_grouping.storage.repositories import match_boxes


def test_each_new_box_takes_the_best_overlapping_old_box_once() -> None:
    old = np.array([[0, 0, 100, 100], [200, 0, 300, 100], [400, 0, 500, 100]], float)
    new = np.array([[205, 5, 305, 105], [0, 0, 100, 100], [10, 10, 110, 110], [900, 900, 950, 950]], float)

    assert match_boxes(old, new) == {0: 1, 1: 0}  # new 2 overlaps old 0 less than new 1 does


def test_boxes_overlapping_less_than_half_are_different_faces() -> None:
    old = np.array([[0, 0, 100, 100]], float)
    assert match_boxes(old, np.array([[50, 0, 150, 100]], float)) == {}  # IoU 1/3
    assert match_boxes(old, np.empty((0, 4))) == {}
    assert match_boxes(np.empty((0, 4)), old) == {}
