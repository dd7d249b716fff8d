"""Suggestions a person reviews: pairs of persons that are probably one, and the person an unassigned face
probably is. Pure logic: arrays in, ranked suggestions out. Accepting one is an ordinary merge or move.

A person is represented by the normalised mean of its faces' embeddings (its centroid): one vector per
person, so a suggestion costs a product with the persons rather than with every face, and a stray face
moves it little. On LFW (bench/suggestions.py) it ranks merges at least as well as the nearest faces do,
and at the same floor offers a stranger's face (nobody's in the library) a person a third as often as
the nearest face does.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np

from image_grouping.grouping.clustering import add_by_group
from image_grouping.grouping.neighbours import search

# Cosine similarities of buffalo_sc's unit embeddings. On LFW (bench/suggestions.py) a face of a
# stranger (nobody's in the library) reaches 0.35 with its nearest centroid once in 200, 0.30 once in 16;
# two persons of different people reach 0.40 between their centroids about never, while nearly all the
# persons split from one identity are above it.
FACE_SUGGESTION_SIMILARITY = 0.35
MERGE_SUGGESTION_SIMILARITY = 0.4
# A person's centroid is the mean of its clearest faces, at most this many: as good a centroid on LFW,
# and what a suggestion reads grows with the persons, not with the faces.
CENTROID_FACES = 32
_QUERY_CHUNK = 1024  # faces compared with every centroid at once


@dataclass(frozen=True, slots=True)
class Centroids:
    person_ids: np.ndarray  # (p,) int64, ascending
    vectors: np.ndarray  # (p, d) float32, unit rows


def centroids(person_ids: np.ndarray, embeddings: np.ndarray) -> Centroids:
    """Each person's normalised mean embedding, from its faces (rows of `embeddings`, any order)."""
    persons, inverse = np.unique(person_ids, return_inverse=True)
    if len(persons) == 0:
        return Centroids(persons.astype(np.int64), np.empty((0, 0), np.float32))
    embeddings = np.asarray(embeddings, np.float32)
    sums = np.zeros((len(persons), embeddings.shape[1]), np.float32)
    add_by_group(sums, inverse, embeddings, np.arange(len(embeddings)))
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return Centroids(persons.astype(np.int64), sums / np.maximum(norms, 1e-12))


def suggest_persons(
    queries: np.ndarray,
    persons: Centroids,
    refused: Mapping[int, Collection[int]],
    *,
    excluded: Collection[int] = (),
    min_similarity: float = FACE_SUGGESTION_SIMILARITY,
) -> list[tuple[int, float] | None]:
    """For each query face (row), the person it most resembles and the similarity, or None below
    `min_similarity`. `refused[row]`: persons that face was said not to be (cannot-links), never
    suggested. When the best match is a person in `excluded` (hidden persons), nothing is suggested:
    the face is probably theirs, so no other person is put forward in their place."""
    suggestions: list[tuple[int, float] | None] = []
    if len(persons.person_ids) == 0:
        return [None] * len(queries)
    column_of = {int(person): column for column, person in enumerate(persons.person_ids.tolist())}
    excluded = set(excluded)
    for start in range(0, len(queries), _QUERY_CHUNK):
        similarities = np.asarray(queries[start : start + _QUERY_CHUNK], np.float32) @ persons.vectors.T
        for offset, row in enumerate(similarities):
            for person in refused.get(start + offset, ()):
                if person in column_of:
                    row[column_of[person]] = -np.inf
            best = int(np.argmax(row))
            person, similarity = int(persons.person_ids[best]), float(row[best])
            if similarity < min_similarity or person in excluded:
                suggestions.append(None)
            else:
                suggestions.append((person, similarity))
    return suggestions


def suggest_merges(
    persons: Centroids,
    blocked: Collection[tuple[int, int]],
    *,
    excluded: Collection[int] = (),
    limit: int = 100,
    min_similarity: float = MERGE_SUGGESTION_SIMILARITY,
    candidates: int = 16,
) -> list[tuple[int, int, float]]:
    """Pairs of persons (a < b) probably the same, most similar first, at most `limit`.

    Never suggested: a pair in `blocked`, in either order (a face of one was refused from the other, or
    the two were seen in one photo), or a person in `excluded` (hidden). Each person's `candidates`
    nearest centroids are the pairs considered.
    """
    if len(persons.person_ids) < 2 or limit <= 0:
        return []
    near = search(persons.vectors, persons.vectors, min(candidates + 1, len(persons.person_ids)))
    blocked = {(min(a, b), max(a, b)) for a, b in blocked}
    excluded = set(excluded)
    ids = persons.person_ids.tolist()
    best: dict[tuple[int, int], float] = {}
    rows, columns = np.nonzero((near.indices >= 0) & (near.similarities >= min_similarity))
    for row, column in zip(rows.tolist(), columns.tolist(), strict=True):
        other = int(near.indices[row, column])
        if other == row:
            continue
        pair = (min(ids[row], ids[other]), max(ids[row], ids[other]))
        if pair in blocked or pair[0] in excluded or pair[1] in excluded:
            continue
        best[pair] = float(near.similarities[row, column])
    ranked = sorted(best.items(), key=lambda item: (-item[1], item[0]))
    return [(a, b, similarity) for (a, b), similarity in ranked[:limit]]
