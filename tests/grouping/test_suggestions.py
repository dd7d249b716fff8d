"""The suggestion logic on arrays: centroids, the person a face resembles, persons probably one."""

from __future__ import annotations

import numpy as np

from image_grouping.grouping.suggestions import PersonFaces, centroids, suggest_merges, suggest_persons


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    return (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)


def faces_of(person_ids: list[int], image_ids: list[int] | None = None, seed: int = 0) -> PersonFaces:
    """Faces near a direction of their own per person (persons far apart)."""
    rng = np.random.default_rng(seed)
    ids = np.array(person_ids, np.int64)
    if not person_ids:
        return PersonFaces(ids, ids, ids, np.empty((0, 32), np.float32))
    centre = {person: rng.normal(size=32) for person in sorted(set(person_ids))}
    embeddings = unit_rows(np.stack([centre[p] + 0.3 * rng.normal(size=32) for p in person_ids]))
    images = np.array(image_ids if image_ids is not None else range(len(person_ids)), np.int64)
    return PersonFaces(np.arange(len(ids), dtype=np.int64) + 100, ids, images, embeddings)


def test_centroids_are_each_persons_normalised_mean_whatever_the_order() -> None:
    faces = faces_of([7, 3, 7, 9, 3, 7])

    found = centroids(faces)

    assert found.person_ids.tolist() == [3, 7, 9]
    assert found.sizes.tolist() == [2, 3, 1]
    for person, vector in zip(found.person_ids.tolist(), found.vectors, strict=True):
        mean = faces.embeddings[faces.person_ids == person].mean(axis=0)
        np.testing.assert_allclose(vector, mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)
    assert len(centroids(faces_of([])).person_ids) == 0


def test_a_face_gets_the_nearest_person_not_a_refused_nor_a_hidden_one() -> None:
    faces = faces_of([1, 1, 1, 2, 2, 2, 3, 3, 3])
    persons = centroids(faces)
    of_one, of_two, of_three = faces.embeddings[0], faces.embeddings[3], faces.embeddings[6]
    queries = np.stack([of_one, of_one, of_two, -of_three])

    found = suggest_persons(queries, persons, {1: {1}}, excluded={2})

    assert found[0] is not None
    assert found[0][0] == 1
    assert found[0][1] > 0.8
    assert found[1] is None  # refused from 1; 2 and 3 are far
    assert found[2] is None  # most like hidden 2: nobody else in its place
    assert found[3] is None  # like nobody
    assert suggest_persons(queries, centroids(faces_of([])), {}) == [None] * 4


def test_split_persons_are_paired_unless_forbidden_seen_together_or_hidden() -> None:
    rng = np.random.default_rng(3)
    centre = rng.normal(size=32)
    other = rng.normal(size=32)
    rows = [centre + 0.3 * rng.normal(size=32) for _ in range(6)] + [
        other + 0.3 * rng.normal(size=32) for _ in range(3)
    ]
    faces = PersonFaces(
        face_ids=np.arange(9, dtype=np.int64),
        person_ids=np.array([1, 1, 1, 2, 2, 2, 3, 3, 3], np.int64),
        image_ids=np.arange(9, dtype=np.int64),
        embeddings=unit_rows(np.stack(rows)),
    )

    (pair,) = suggest_merges(faces, set())

    assert pair[:2] == (1, 2)
    assert pair[2] > 0.8
    assert suggest_merges(faces, {(2, 1)}) == []
    assert suggest_merges(faces, set(), excluded={1}) == []
    assert suggest_merges(faces, set(), limit=0) == []
    together = PersonFaces(
        faces.face_ids, faces.person_ids, np.array([0, 1, 2, 0, 4, 5, 6, 7, 8]), faces.embeddings
    )
    assert suggest_merges(together, set()) == []
    assert suggest_merges(faces, set(), min_similarity=0.999) == []
