"""The suggestion logic on arrays: centroids, the person a face resembles, persons probably one."""

from __future__ import annotations

import numpy as np

from image_grouping.grouping.suggestions import centroids, suggest_merges, suggest_persons


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    return (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)


def faces_of(person_ids: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(person ids, embeddings): faces near a direction of their own per person (persons far apart)."""
    rng = np.random.default_rng(seed)
    centre = {person: rng.normal(size=32) for person in sorted(set(person_ids))}
    if not person_ids:
        return np.empty(0, np.int64), np.empty((0, 32), np.float32)
    rows = [centre[person] + 0.3 * rng.normal(size=32) for person in person_ids]
    return np.array(person_ids, np.int64), unit_rows(np.stack(rows))


def test_centroids_are_each_persons_normalised_mean_whatever_the_order() -> None:
    person_ids, embeddings = faces_of([7, 3, 7, 9, 3, 7])

    found = centroids(person_ids, embeddings)

    assert found.person_ids.tolist() == [3, 7, 9]
    for person, vector in zip(found.person_ids.tolist(), found.vectors, strict=True):
        mean = embeddings[person_ids == person].mean(axis=0)
        np.testing.assert_allclose(vector, mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)
    assert len(centroids(*faces_of([])).person_ids) == 0


def test_a_face_gets_the_nearest_person_not_a_refused_nor_a_hidden_one() -> None:
    person_ids, embeddings = faces_of([1, 1, 1, 2, 2, 2, 3, 3, 3])
    persons = centroids(person_ids, embeddings)
    of_one, of_two, of_three = embeddings[0], embeddings[3], embeddings[6]
    queries = np.stack([of_one, of_one, of_two, -of_three])

    found = suggest_persons(queries, persons, {1: {1}}, excluded={2})

    assert found[0] is not None
    assert found[0][0] == 1
    assert found[0][1] > 0.8
    assert found[1] is None  # refused from 1; 2 and 3 are far
    assert found[2] is None  # most like hidden 2: nobody else in its place
    assert found[3] is None  # like nobody
    assert suggest_persons(queries, centroids(*faces_of([])), {}) == [None] * 4


def test_split_persons_are_paired_unless_blocked_or_hidden() -> None:
    rng = np.random.default_rng(3)
    centre, other = rng.normal(size=32), rng.normal(size=32)
    rows = [centre + 0.3 * rng.normal(size=32) for _ in range(6)]
    rows += [other + 0.3 * rng.normal(size=32) for _ in range(3)]
    persons = centroids(np.array([1, 1, 1, 2, 2, 2, 3, 3, 3]), unit_rows(np.stack(rows)))

    (pair,) = suggest_merges(persons, set())

    assert pair[:2] == (1, 2)
    assert pair[2] > 0.8
    assert suggest_merges(persons, {(2, 1)}) == []
    assert suggest_merges(persons, set(), excluded={1}) == []
    assert suggest_merges(persons, set(), limit=0) == []
    assert suggest_merges(persons, set(), min_similarity=0.999) == []
