"""Group faces into persons: a constrained agglomeration over the k-nearest-neighbour graph.

1. Neighbour graph: each face's k nearest faces (approximate beyond a size, see neighbours.py); an edge
   is kept when its similarity reaches `link_similarity`, its faces are from different photos and at
   least one of them is reliable.
2. Agglomeration: edges are visited from the most to the least similar; the groups at their ends merge
   when their faces are `merge_similarity` alike on average (average linkage stops single-link chaining:
   one look-alike pair cannot glue two persons together) and no constraint forbids it:
   - two faces of one photo are never in one group;
   - a group holds at most one anchored person (faces assigned by hand, and the faces of a named person,
     are anchored to it): named persons never merge automatically;
   - a face never joins a group anchored to a person it was removed from (cannot-link);
   faces assigned by hand to the same person start in one group (must-link).
3. Refinement: faces far from their group's mean are cut loose; groups too small, too loose (mean
   pairwise similarity) or without enough reliable faces dissolve, unless anchored; then every loose face
   may join a group by votes of its neighbours, exactly as incremental assignment does, and a face still
   loose may join the group whose mean it is clearly nearest (`attach_by_centroids`). Last, two groups
   that are each other's nearest by their means, `twin_similarity` alike, become one.

Everything here is numpy in, numpy out: no I/O.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from image_grouping.grouping.neighbours import Neighbours, nearest_neighbours
from image_grouping.grouping.params import GroupingParams

UNGROUPED = -1


@dataclass(frozen=True)
class GroupingInput:
    """The faces to group, as parallel arrays; indices (not database ids) everywhere."""

    embeddings: np.ndarray  # (n, d) float32, unit rows
    image_ids: np.ndarray  # (n,) int64
    reliable: np.ndarray  # (n,) bool, see quality.py
    anchors: np.ndarray = field(default=None)  # type: ignore[assignment]  # (n,) int64 person or -1
    pinned: np.ndarray = field(default=None)  # type: ignore[assignment]  # (n,) bool: assigned by hand
    forbidden: Mapping[int, frozenset[int]] = field(default_factory=dict)  # face index -> persons refused

    def __post_init__(self) -> None:
        count = len(self.embeddings)
        if self.anchors is None:
            object.__setattr__(self, "anchors", np.full(count, -1, np.int64))
        if self.pinned is None:
            object.__setattr__(self, "pinned", np.zeros(count, bool))

    def __len__(self) -> int:
        return len(self.embeddings)


@dataclass(frozen=True)
class Grouping:
    labels: np.ndarray  # (n,) int64: group 0..g-1, or -1
    neighbours: Neighbours


def group_faces(faces: GroupingInput, params: GroupingParams, *, min_faces: int | None = None) -> Grouping:
    """Group the faces; `min_faces` (default `params.min_faces`) is the smallest unanchored group kept."""
    min_faces = params.min_faces if min_faces is None else min_faces
    neighbours = nearest_neighbours(
        faces.embeddings, params.neighbours, exact_limit=params.exact_search_limit
    )
    merger = _ConstrainedMerger(faces, params.merge_similarity)
    for first, second in _edges(faces, neighbours, params.link_similarity):
        merger.merge(first, second)
    labels = merger.labels()
    labels = _cut_loose_members(faces, labels, merger, params.member_similarity)
    labels = _dissolve_weak_groups(faces, labels, params, min_faces)
    loose = np.flatnonzero(labels < 0)
    loose_neighbours = Neighbours(neighbours.indices[loose], neighbours.similarities[loose])
    labels = attach_by_votes(faces, labels, loose, loose_neighbours, params)
    labels = attach_by_centroids(faces, labels, np.flatnonzero(labels < 0), params)
    labels = _merge_twin_groups(faces, labels, params)
    return Grouping(_compact(labels), neighbours)


def attach_by_votes(
    faces: GroupingInput,
    labels: np.ndarray,
    candidates: np.ndarray,
    neighbours: Neighbours,
    params: GroupingParams,
) -> np.ndarray:
    """Labels where each candidate face joined the group most of its close neighbours belong to.

    `neighbours` has one row per candidate (indices into `faces`); `labels` may be any non-negative ids
    (group numbers, or person ids in incremental assignment). A face joins group g when at least
    min(`min_votes`, size of g) of its neighbours in g are `vote_similarity` alike, no other group has as
    many votes, g holds no face of the same photo and no constraint forbids it: several close neighbours,
    not one lucky match. Every decision is taken against the groups as they were, so the order of the
    candidates does not matter.
    """
    labels = labels.copy()
    proposals: list[tuple[int, int, int]] = []  # face, label, votes
    for row, face in enumerate(candidates.tolist()):
        near = neighbours.indices[row]
        close = near[(neighbours.similarities[row] >= params.vote_similarity) & (near >= 0)]
        votes = Counter(label for label in labels[close].tolist() if label >= 0).most_common(2)
        if votes and (len(votes) == 1 or votes[1][1] < votes[0][1]):
            proposals.append((face, *votes[0]))
    if not proposals:
        return labels
    voted = np.unique([label for _, label, _ in proposals])
    members = np.flatnonzero(np.isin(labels, voted))
    sizes = Counter(labels[members].tolist())
    group_images: defaultdict[int, set[int]] = defaultdict(set)
    group_anchor: dict[int, int] = {}
    for label, image, anchor in zip(
        labels[members].tolist(),
        faces.image_ids[members].tolist(),
        faces.anchors[members].tolist(),
        strict=True,
    ):
        group_images[label].add(image)
        if anchor >= 0:
            group_anchor[label] = anchor
    for face, label, count in proposals:
        image, own_anchor = int(faces.image_ids[face]), int(faces.anchors[face])
        anchor = group_anchor.get(label, -1)
        if (
            count < min(params.min_votes, sizes[label])
            or image in group_images[label]
            or (own_anchor >= 0 and anchor not in (-1, own_anchor))
            or (anchor >= 0 and anchor in faces.forbidden.get(face, ()))
        ):
            continue
        group_images[label].add(image)  # a second face of this photo will not join too
        if own_anchor >= 0:
            group_anchor[label] = own_anchor
        labels[face] = label
    return labels


def attach_by_centroids(
    faces: GroupingInput,
    labels: np.ndarray,
    candidates: np.ndarray,
    params: GroupingParams,
    among: np.ndarray | None = None,
) -> np.ndarray:
    """Labels where each candidate face left over by the votes joined the group whose mean it is clearly
    nearest: `centroid_similarity` to the group's normalised mean and `centroid_margin` more than to any
    other group's, a group of `min_faces` or more, no face of the same photo there, no constraint against it.

    A poor face (blurred, dark, compressed) sits too far from each single face of its person to gather
    `min_votes` votes, yet the mean of several faces averages their noise away and stays nearer to it
    than any other person's mean. It only joins: it founds nothing and links no two groups. Every decision
    is taken against the groups as they were. `among`: only these groups are weighed (say, those of the
    candidates' nearest faces), so that a few new faces do not cost a mean of every person.
    """
    labels = labels.copy()
    if len(candidates) == 0 or params.centroid_similarity > 1:
        return labels
    grouped = np.flatnonzero(labels >= 0 if among is None else np.isin(labels, among) & (labels >= 0))
    ids, inverse, sizes = np.unique(labels[grouped], return_inverse=True, return_counts=True)
    if len(ids) == 0:
        return labels
    sums = np.zeros((len(ids), faces.embeddings.shape[1]), np.float64)
    add_by_group(sums, inverse, faces.embeddings, grouped)
    means = (sums / np.linalg.norm(sums, axis=1, keepdims=True)).astype(np.float32)
    means[sizes < params.min_faces] = 0.0  # too few faces for a mean to mean anything
    proposals: list[tuple[int, int]] = []  # face, row of its group in `ids`
    for start in range(0, len(candidates), 512):  # 512 x 100,000 persons: 200 MB of similarities
        part = candidates[start : start + 512]
        similarity = faces.embeddings[part] @ means.T
        if len(ids) > 1:
            second = np.partition(similarity, len(ids) - 2, axis=1)[:, -2]
        else:
            second = np.full(len(part), -1.0, np.float32)
        best = similarity.argmax(axis=1)
        best_similarity = similarity[np.arange(len(part)), best]
        clear = (best_similarity >= params.centroid_similarity) & (
            best_similarity - second >= params.centroid_margin
        )
        proposals += zip(part[clear].tolist(), best[clear].tolist(), strict=True)
    if not proposals:
        return labels
    # Photos and anchors of the proposed groups only: a million grouped faces are not walked one by one.
    members = np.isin(inverse, [row for _, row in proposals])
    group_images: defaultdict[int, set[int]] = defaultdict(set)
    group_anchor: dict[int, int] = {}
    for row, image, anchor in zip(
        inverse[members].tolist(),
        faces.image_ids[grouped[members]].tolist(),
        faces.anchors[grouped[members]].tolist(),
        strict=True,
    ):
        group_images[row].add(image)
        if anchor >= 0:
            group_anchor[row] = anchor
    for face, row in proposals:
        image, own_anchor = int(faces.image_ids[face]), int(faces.anchors[face])
        anchor = group_anchor.get(row, -1)
        if (
            image in group_images[row]
            or (own_anchor >= 0 and anchor not in (-1, own_anchor))
            or (anchor >= 0 and anchor in faces.forbidden.get(face, ()))
        ):
            continue
        group_images[row].add(image)
        labels[face] = ids[row]
    return labels


def _merge_twin_groups(faces: GroupingInput, labels: np.ndarray, params: GroupingParams) -> np.ndarray:
    """Two groups that are each other's nearest by their mean faces, `twin_similarity` alike, become one
    (no shared photo, not two anchored persons, no refusal between them).

    One person's sharp and blurred photos can gather into two groups with no single pair of faces alike
    enough to link them, while their means, which average each group's noise away, are close.
    """
    grouped = np.flatnonzero(labels >= 0)
    ids, inverse = np.unique(labels[grouped], return_inverse=True)
    if len(ids) < 2 or params.twin_similarity > 1:
        return labels
    sums = np.zeros((len(ids), faces.embeddings.shape[1]), np.float64)
    add_by_group(sums, inverse, faces.embeddings, grouped)
    means = (sums / np.linalg.norm(sums, axis=1, keepdims=True)).astype(np.float32)
    nearest = nearest_neighbours(means, 1, exact_limit=params.exact_search_limit)
    partner, similarity = nearest.indices[:, 0], nearest.similarities[:, 0]
    twins = np.flatnonzero(
        (partner >= 0)
        & (similarity >= params.twin_similarity)
        & (partner[np.maximum(partner, 0)] == np.arange(len(ids)))
    )
    twins = twins[twins < partner[twins]]  # each pair once
    if len(twins) == 0:
        return labels
    images: defaultdict[int, set[int]] = defaultdict(set)
    anchors: defaultdict[int, set[int]] = defaultdict(set)
    refused: defaultdict[int, set[int]] = defaultdict(set)
    members = np.isin(inverse, np.concatenate([twins, partner[twins]]))
    for row, face in zip(inverse[members].tolist(), grouped[members].tolist(), strict=True):
        images[row].add(int(faces.image_ids[face]))
        if faces.anchors[face] >= 0:
            anchors[row].add(int(faces.anchors[face]))
        refused[row].update(faces.forbidden.get(face, ()))
    merged_into = np.arange(len(ids))
    for first, second in zip(twins.tolist(), partner[twins].tolist(), strict=True):
        if (
            images[first] & images[second]
            or (anchors[first] and anchors[second] and anchors[first] != anchors[second])
            or anchors[first] & refused[second]
            or anchors[second] & refused[first]
        ):
            continue
        merged_into[second] = first
    labels = labels.copy()
    labels[grouped] = ids[merged_into[inverse]]
    return labels


def mean_pairwise_similarity(vector_sum: np.ndarray, count: int) -> float:
    """Mean cosine over the pairs of `count` unit vectors, from their sum: |S|^2 = count + sum of pairs."""
    if count < 2:
        return 1.0
    return float((vector_sum @ vector_sum - count) / (count * (count - 1)))


def _edges(faces: GroupingInput, neighbours: Neighbours, link_similarity: float) -> list[tuple[int, int]]:
    """Edges of the graph, each once, most similar first."""
    count, k = neighbours.indices.shape
    sources = np.repeat(np.arange(count, dtype=np.int64), k)
    targets = neighbours.indices.ravel()
    similarities = neighbours.similarities.ravel()
    keep = (targets >= 0) & (similarities >= link_similarity)
    sources, targets, similarities = sources[keep], targets[keep], similarities[keep]
    keep = (faces.image_ids[sources] != faces.image_ids[targets]) & (
        faces.reliable[sources] | faces.reliable[targets]
    )
    sources, targets, similarities = sources[keep], targets[keep], similarities[keep]
    # Each pair once (it may be in both faces' lists), most similar first.
    low, high = np.minimum(sources, targets), np.maximum(sources, targets)
    _, first = np.unique(low * count + high, return_index=True)
    order = first[np.argsort(-similarities[first], kind="stable")]
    return list(zip(low[order].tolist(), high[order].tolist(), strict=True))


class _ConstrainedMerger:
    """Union-find whose roots carry what a merge must respect: embedding sum, photos, anchor, refusals."""

    def __init__(self, faces: GroupingInput, merge_similarity: float) -> None:
        self._embeddings = faces.embeddings
        self._merge_similarity = merge_similarity
        count = len(faces)
        self._parent = list(range(count))
        self._size = [1] * count
        self._anchor = faces.anchors.tolist()
        self.sums: dict[int, np.ndarray] = {}  # roots of groups of 2+ faces; a single face is its embedding
        # Photos are tracked only for faces that share their photo: the others can never conflict.
        shared = _faces_of_shared_photos(faces.image_ids)
        self._images: dict[int, set[int]] = {int(face): {int(faces.image_ids[face])} for face in shared}
        self._forbidden: dict[int, set[int]] = {
            face: set(persons) for face, persons in faces.forbidden.items()
        }
        # Must-link: the faces assigned by hand to one person start as one group.
        first_pinned: dict[int, int] = {}
        for face in np.flatnonzero(faces.pinned & (faces.anchors >= 0)).tolist():
            person = self._anchor[face]
            if person in first_pinned:
                self.merge(first_pinned[person], face, force=True)
            else:
                first_pinned[person] = face

    def find(self, face: int) -> int:
        parent = self._parent
        root = face
        while parent[root] != root:
            root = parent[root]
        while parent[face] != root:
            parent[face], face = root, parent[face]
        return root

    def vector_sum(self, root: int) -> np.ndarray:
        return self.sums.get(root, self._embeddings[root])

    def size(self, root: int) -> int:
        return self._size[root]

    def merge(self, first: int, second: int, *, force: bool = False) -> bool:
        a, b = self.find(first), self.find(second)
        if a == b:
            return True
        if not force and not self._may_merge(a, b):
            return False
        if self._size[a] < self._size[b]:
            a, b = b, a
        self.sums[a] = self.vector_sum(a) + self.vector_sum(b)
        self.sums.pop(b, None)
        self._parent[b] = a
        self._size[a] += self._size[b]
        if self._anchor[a] < 0:
            self._anchor[a] = self._anchor[b]
        for table in (self._images, self._forbidden):
            if b in table:
                table.setdefault(a, set()).update(table.pop(b))
        return True

    def _may_merge(self, a: int, b: int) -> bool:
        anchor_a, anchor_b = self._anchor[a], self._anchor[b]
        if anchor_a >= 0 and anchor_b >= 0 and anchor_a != anchor_b:
            return False
        if anchor_a in self._forbidden.get(b, ()) or anchor_b in self._forbidden.get(a, ()):
            return False
        images_a, images_b = self._images.get(a), self._images.get(b)
        if images_a and images_b and not images_a.isdisjoint(images_b):
            return False
        # Average linkage: the mean similarity over all pairs across the two groups.
        mean_similarity = self.vector_sum(a) @ self.vector_sum(b) / (self._size[a] * self._size[b])
        return bool(mean_similarity >= self._merge_similarity)

    def labels(self) -> np.ndarray:
        return np.array([self.find(face) for face in range(len(self._parent))], np.int64)


def _faces_of_shared_photos(image_ids: np.ndarray) -> np.ndarray:
    _, inverse, counts = np.unique(image_ids, return_inverse=True, return_counts=True)
    return np.flatnonzero(counts[inverse] > 1)


def _cut_loose_members(
    faces: GroupingInput, labels: np.ndarray, merger: _ConstrainedMerger, member_similarity: float
) -> np.ndarray:
    """Faces (not pinned) whose similarity to their group's mean is below `member_similarity` leave it."""
    labels = labels.copy()
    roots = np.array(sorted(merger.sums), np.int64)
    if len(roots) == 0:
        return labels
    means = np.stack([merger.sums[root] for root in roots.tolist()])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    row_of_root = dict(zip(roots.tolist(), range(len(roots)), strict=True))
    grouped = np.flatnonzero(np.isin(labels, roots))
    rows = np.array([row_of_root[root] for root in labels[grouped].tolist()], np.int64)
    similarity = np.empty(len(grouped), np.float32)
    for start in range(0, len(grouped), 65_536):  # chunks: a (n, d) gather of means would double memory
        part = slice(start, start + 65_536)
        similarity[part] = np.einsum("ij,ij->i", faces.embeddings[grouped[part]], means[rows[part]])
    loose = grouped[(similarity < member_similarity) & ~faces.pinned[grouped]]
    labels[loose] = UNGROUPED
    return labels


def _dissolve_weak_groups(
    faces: GroupingInput, labels: np.ndarray, params: GroupingParams, min_faces: int
) -> np.ndarray:
    """Groups too small, too loose (mean pairwise similarity) or short of reliable faces become loose faces.

    Kept whatever they look like: a group with faces assigned by hand, and the largest group anchored to
    a person (so a named person keeps its best group of faces).
    """
    labels = labels.copy()
    grouped = np.flatnonzero(labels >= 0)
    compact, inverse = np.unique(labels[grouped], return_inverse=True)
    sizes = np.bincount(inverse, minlength=len(compact))
    reliable = np.bincount(inverse, weights=faces.reliable[grouped], minlength=len(compact))
    pinned = np.bincount(inverse, weights=faces.pinned[grouped], minlength=len(compact)) > 0
    sums = np.zeros((len(compact), faces.embeddings.shape[1]), np.float64)
    add_by_group(sums, inverse, faces.embeddings, grouped)
    cohesion = (np.einsum("ij,ij->i", sums, sums) - sizes) / np.maximum(sizes * (sizes - 1), 1)
    weak = (
        (sizes < min_faces) | (reliable < params.min_reliable_faces) | (cohesion < params.cohesion_similarity)
    )
    anchor = np.full(len(compact), -1, np.int64)
    np.maximum.at(anchor, inverse, faces.anchors[grouped])
    largest_of_anchor: dict[int, int] = {}
    for group in np.argsort(-sizes, kind="stable").tolist():
        if anchor[group] >= 0:
            largest_of_anchor.setdefault(int(anchor[group]), group)
    kept = pinned.copy()
    kept[list(largest_of_anchor.values())] = True
    labels[grouped[(weak & ~kept)[inverse]]] = UNGROUPED
    return labels


# Groups summed by one matrix product, and rows gathered at most at once (a person of a million faces).
_SUM_GROUPS, _SUM_ROWS = 64, 65_536


def add_by_group(sums: np.ndarray, inverse: np.ndarray, embeddings: np.ndarray, rows: np.ndarray) -> None:
    """sums[inverse] += embeddings[rows], for millions of rows: the rows sorted by group, then each run of
    `_SUM_GROUPS` groups is one product of a 0/1 indicator with their embeddings. np.add.reduceat adds a
    group's rows column by column and np.add.at row by row: both several times slower."""
    order = np.argsort(inverse, kind="stable")
    groups = inverse[order]
    firsts = np.arange(0, len(sums) + _SUM_GROUPS, _SUM_GROUPS)
    bounds = np.searchsorted(groups, firsts)
    for first, begin, end in zip(
        firsts[:-1].tolist(), bounds[:-1].tolist(), bounds[1:].tolist(), strict=True
    ):
        last = min(first + _SUM_GROUPS, len(sums))
        for start in range(begin, end, _SUM_ROWS):
            stop = min(start + _SUM_ROWS, end)
            indicator = np.zeros((last - first, stop - start), embeddings.dtype)
            indicator[groups[start:stop] - first, np.arange(stop - start)] = 1
            sums[first:last] += indicator @ embeddings[rows[order[start:stop]]]


def _compact(labels: np.ndarray) -> np.ndarray:
    """Groups renumbered 0..g-1 in order of their first face; -1 stays."""
    result = np.full(len(labels), UNGROUPED, np.int64)
    grouped = labels >= 0
    _, first, inverse = np.unique(labels[grouped], return_index=True, return_inverse=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    result[grouped] = rank[inverse]
    return result
