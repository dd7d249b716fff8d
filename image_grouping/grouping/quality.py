"""Which faces are reliable enough to found a person.

Choice: quality never changes a face's embedding or the similarity thresholds, it changes what a face may
*found*. Tiny, blurry, low-confidence and profile faces give embeddings whose similarities are noisy (a
profile is often closer to another person's profile than to the same person's frontal face), so:

- an edge between two unreliable faces is ignored: unreliable faces can join a group through reliable
  faces, never build one among themselves;
- a new person needs `min_reliable_faces` reliable faces. One is enough (measured): a sharp face and a
  blurred one of the same person, each the other's nearest, found a person, while two blurred faces,
  which look alike whoever they are, never do. With two, LFW's recluster kept 1.2% more of its faces
  unassigned (recall 0.9858 against 0.9945, same precision 0.9981), and degraded photos (bench/degraded.py)
  4% more. The sharpness bar is what keeps two blurred faces from founding one: for buffalo_sc it is 40
  (was 15), above motion-blurred faces (about 33), which look alike whoever they are (degraded set:
  precision 0.9978 -> 0.9982, recall a little higher; LFW unchanged);
- an unreliable face still joins an existing person by votes, like any face: leaving every profile or
  small background face unassigned would lose recall for no precision gain.
"""

from __future__ import annotations

import numpy as np

from image_grouping.grouping.params import GroupingParams


def reliable_faces(
    det_score: np.ndarray, size_px: np.ndarray, sharpness: np.ndarray, yaw: np.ndarray, params: GroupingParams
) -> np.ndarray:
    """(n,) bool: faces good enough to found a person."""
    return (
        (det_score >= params.min_det_score)
        & (size_px >= params.min_face_px)
        & (sharpness >= params.min_sharpness)
        & (np.abs(yaw) <= params.max_abs_yaw)
    )
