"""Incremental assignment of newly detected faces, between two full reclusters.

A new face joins an existing person when several of its nearest assigned faces belong to that person
(`attach_by_votes`: min(`min_votes`, person size) votes, no tie, no face of the same photo, no
cannot-link), or failing that when it is clearly nearest that person's mean face (`attach_by_centroids`).
Otherwise it waits, unassigned. The new faces and the unassigned faces close to them are
then grouped like a recluster, but only groups of `found_min_faces` found new persons, and two faces only
when `found_pair_similarity` alike (a tighter bar than a full recluster, which sees all faces at once).
Everything else waits for the next full recluster.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from image_grouping.grouping.clustering import (
    GroupingInput,
    attach_by_centroids,
    attach_by_votes,
    group_faces,
)
from image_grouping.grouping.neighbours import Neighbours, search_among, search_among_reduced
from image_grouping.grouping.params import GroupingParams


@dataclass(frozen=True)
class IncrementalDecision:
    joined: dict[int, int]  # face index -> existing person id
    founded: list[np.ndarray]  # face indices of each new person


def assign_incrementally(
    faces: GroupingInput,
    person_ids: np.ndarray,
    new_faces: np.ndarray,
    params: GroupingParams,
    reduced: np.ndarray | None = None,
) -> IncrementalDecision:
    """Decide which of `new_faces` (indices of unassigned faces) join a person, and which persons to found.

    Every assigned face is treated as anchored to its person, so the cannot-links apply to person ids.
    `reduced`: every face's `SearchProjection` (a large library's warm copy keeps it): the neighbours are
    then searched approximately, re-scored exactly; without it, exactly.
    """
    new_faces = np.asarray(new_faces, np.int64)
    assigned = person_ids >= 0
    anchored = replace(faces, anchors=np.where(assigned, person_ids, faces.anchors))
    # One pass over the faces for both searches: the nearest assigned faces (votes), and the nearest
    # unassigned ones (new persons), enough of them that the new faces that join a person can be left out
    # below and k + 1 remain.
    among, ks = [assigned, ~assigned], [params.neighbours, params.neighbours + 1 + len(new_faces)]
    if reduced is None:
        near, loose = search_among(faces.embeddings, new_faces, among, ks)
    else:
        # The neighbours that count: those at least this alike vote, link, or stay in the pool.
        floor = min(params.link_similarity, params.vote_similarity)
        near, loose = search_among_reduced(faces.embeddings, reduced, new_faces, among, ks, floor)
    labels = attach_by_votes(anchored, person_ids, new_faces, near, params)
    # The persons of the new faces' nearest faces are weighed, not every person of the library.
    nearby = np.unique(person_ids[near.indices[near.indices >= 0]])
    labels = attach_by_centroids(anchored, labels, new_faces[labels[new_faces] < 0], params, nearby)
    joined = {int(face): int(labels[face]) for face in new_faces if labels[face] >= 0}

    waiting = labels[new_faces] < 0
    pool = _close_unassigned(new_faces[waiting], loose.take(waiting), labels, params)
    if len(pool) < params.found_min_faces:
        return IncrementalDecision(joined, [])
    subset = GroupingInput(
        embeddings=faces.embeddings[pool],
        image_ids=faces.image_ids[pool],
        reliable=faces.reliable[pool],
        anchors=faces.anchors[pool],
        pinned=faces.pinned[pool],
        forbidden={
            row: faces.forbidden[face] for row, face in enumerate(pool.tolist()) if face in faces.forbidden
        },
    )
    groups = group_faces(subset, params, min_faces=params.found_min_faces).labels
    founded = [pool[groups == group] for group in range(int(groups.max(initial=-1)) + 1)]
    # A loose face whose group fell under the bar after refinement leaves nothing behind: keep real groups.
    founded = [members for members in founded if len(members) >= params.found_min_faces]
    # Two faces found a person only when clearly alike: less context than a recluster has.
    founded = [
        members
        for members in founded
        if len(members) > 2
        or float(faces.embeddings[members[0]] @ faces.embeddings[members[1]]) >= params.found_pair_similarity
    ]
    return IncrementalDecision(joined, founded)


def _close_unassigned(
    waiting: np.ndarray, loose: Neighbours, labels: np.ndarray, params: GroupingParams
) -> np.ndarray:
    """The waiting faces and the unassigned faces linked to them (among each one's k + 1 nearest faces still
    unassigned; `loose`: its nearest faces unassigned before the batch joined persons): where a new person
    can appear."""
    if len(waiting) == 0:
        return waiting
    still = (loose.indices >= 0) & (labels[np.maximum(loose.indices, 0)] < 0)
    # Each row's first k + 1 faces still unassigned: the nearest of them, in order.
    nearest = still & (np.cumsum(still, axis=1) <= params.neighbours + 1)
    linked = loose.indices[nearest & (loose.similarities >= params.link_similarity)]
    return np.union1d(waiting, linked)
