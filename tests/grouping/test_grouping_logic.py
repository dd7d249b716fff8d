"""Pure grouping logic on small hand-made embeddings: each constraint, the linkage and the identity map.

Fakes are fine here (pure logic); the real-photo checks live in test_grouping_lfw.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from image_grouping.grouping import (
    NEW_PERSON,
    GroupingInput,
    GroupingParams,
    group_faces,
    map_groups_to_persons,
    nearest_neighbours,
)
from image_grouping.grouping.incremental import assign_incrementally

PARAMS = GroupingParams()


def identities(
    sizes: list[int], *, spread: float = 0.5, dim: int = 64, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Unit embeddings scattered around one random centre per identity; labels 0..len(sizes)-1."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(sizes), dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    noise = rng.standard_normal((len(labels), dim)) / np.sqrt(dim)
    embeddings = centres[labels] + spread * noise
    return (embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)).astype(np.float32), labels


def faces_of(embeddings: np.ndarray, **overrides: object) -> GroupingInput:
    count = len(embeddings)
    values: dict[str, object] = {"image_ids": np.arange(count), "reliable": np.ones(count, bool)}
    values.update(overrides)
    return GroupingInput(embeddings=embeddings, **values)  # type: ignore[arg-type]


def same_partition(found: np.ndarray, truth: np.ndarray) -> bool:
    pairs_found = found[:, None] == found[None, :]
    pairs_true = truth[:, None] == truth[None, :]
    return bool((found >= 0).all() and (pairs_found == pairs_true).all())


def test_separate_identities_become_separate_groups() -> None:
    embeddings, truth = identities([6, 5, 4, 3])
    assert same_partition(group_faces(faces_of(embeddings), PARAMS).labels, truth)


def test_two_faces_of_one_photo_are_never_grouped() -> None:
    embeddings, _ = identities([6])
    image_ids = np.array([0, 1, 2, 3, 4, 0])  # the first and last face share a photo
    labels = group_faces(faces_of(embeddings, image_ids=image_ids), PARAMS).labels
    assert labels[0] != labels[5] or labels[0] < 0
    assert labels[0] >= 0
    assert (labels[1:5] == labels[0]).sum() >= 3  # the rest still groups


def test_anchored_to_two_persons_never_merge() -> None:
    embeddings, _ = identities([8])
    anchors = np.array([7, 7, 7, 7, 9, 9, 9, 9])  # one look-alike cluster, named as two persons
    labels = group_faces(faces_of(embeddings, anchors=anchors), PARAMS).labels
    assert set(labels[:4]).isdisjoint(labels[4:])


def test_cannot_link_keeps_a_face_out_of_the_refused_person() -> None:
    embeddings, _ = identities([6])
    anchors = np.array([5, 5, 5, -1, -1, -1])
    forbidden = {4: frozenset({5})}
    labels = group_faces(faces_of(embeddings, anchors=anchors, forbidden=forbidden), PARAMS).labels
    assert labels[4] != labels[0]
    assert labels[3] == labels[0]


def test_hand_assigned_faces_stay_together_however_unlike() -> None:
    embeddings, _ = identities([4, 4])
    pinned = np.zeros(8, bool)
    pinned[[0, 4]] = True  # the user put one face of each identity into person 3
    anchors = np.where(pinned, 3, -1)
    labels = group_faces(faces_of(embeddings, anchors=anchors, pinned=pinned), PARAMS).labels
    assert labels[0] == labels[4] >= 0


def test_unreliable_faces_alone_found_no_person() -> None:
    embeddings, _ = identities([5, 5])
    reliable = np.array([True] * 5 + [False] * 5)
    labels = group_faces(faces_of(embeddings, reliable=reliable), PARAMS).labels
    assert labels[0] >= 0
    assert (labels[:5] == labels[0]).all()
    assert (labels[5:] < 0).all()


def test_average_linkage_does_not_chain_two_people_through_one_look_alike() -> None:
    embeddings, _ = identities([10, 10], spread=0.4, seed=3)
    # A face halfway between the two identities links to both.
    bridge = embeddings[0] + embeddings[10]
    embeddings = np.vstack([embeddings, bridge / np.linalg.norm(bridge)]).astype(np.float32)
    labels = group_faces(faces_of(embeddings), PARAMS).labels
    assert set(labels[:10]).isdisjoint(labels[10:20])


def test_approximate_neighbours_find_nearly_all_exact_ones() -> None:
    embeddings, _ = identities([20] * 300, spread=0.6, dim=128, seed=1)
    exact = nearest_neighbours(embeddings, 10)
    approximate = nearest_neighbours(embeddings, 10, exact_limit=100)
    found = np.mean(
        [len(set(a) & set(e)) / 10 for a, e in zip(approximate.indices, exact.indices, strict=True)]
    )
    assert found >= 0.95
    assert not (approximate.indices == np.arange(len(embeddings))[:, None]).any()


def test_recluster_keeps_the_person_with_the_largest_overlap() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 1, -1])
    current = np.array([10, 10, 10, 11, 11, 11, -1, 10])
    plan = map_groups_to_persons(
        labels, current, np.zeros(8, bool), np.full(8, -1), {}, [10, 11, 12], min_faces=2
    )
    assert plan.person_ids.tolist() == [10, 10, 10, 10, 11, 11, 11, -1]
    assert (plan.new_persons, plan.merged, plan.emptied) == ([], [], [])


def test_recluster_reports_merges_new_and_emptied_persons() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, -1])
    current = np.array([10, 10, 11, 11, -1, -1, 12])
    plan = map_groups_to_persons(
        labels, current, np.zeros(7, bool), np.full(7, -1), {}, [10, 11, 12], min_faces=2
    )
    assert plan.person_ids.tolist() == [10, 10, 10, 10, NEW_PERSON, NEW_PERSON, -1]
    assert plan.merged == [(11, 10)]
    assert plan.emptied == [12]


def test_hand_assigned_face_decides_its_groups_person() -> None:
    labels = np.array([0, 0, 0, 0])
    current = np.array([10, 10, 10, 11])
    pinned = np.array([False, False, False, True])
    plan = map_groups_to_persons(labels, current, pinned, np.where(pinned, 11, -1), {}, [10, 11], min_faces=2)
    assert plan.person_ids.tolist() == [11, 11, 11, 11]


def test_refused_face_is_left_out_of_its_groups_person() -> None:
    labels = np.array([0, 0, 0])
    current = np.array([10, 10, -1])
    plan = map_groups_to_persons(
        labels, current, np.zeros(3, bool), np.full(3, -1), {2: frozenset({10})}, [10], min_faces=2
    )
    assert plan.person_ids.tolist() == [10, 10, -1]


@pytest.mark.parametrize("votes_needed", [2, 3])
def test_new_face_needs_several_close_neighbours_of_a_person(votes_needed: int) -> None:
    embeddings, _ = identities([6, 1], seed=5)
    person_ids = np.array([4, 4, 4, 4, 4, -1, -1])
    params = GroupingParams(min_votes=votes_needed)
    decision = assign_incrementally(faces_of(embeddings), person_ids, np.array([5, 6]), params)
    assert decision.joined == {5: 4}
    assert decision.founded == []


def test_one_lucky_match_is_not_enough() -> None:
    embeddings, _ = identities([4, 1], seed=2)
    embeddings[4] = embeddings[0]  # as close as can be to one face of person 4, unlike the others
    embeddings[1:4] = -embeddings[0]
    person_ids = np.array([4, 4, 4, 4, -1])
    decision = assign_incrementally(faces_of(embeddings), person_ids, np.array([4]), PARAMS)
    assert decision.joined == {}


def test_a_tight_group_of_waiting_faces_founds_a_person() -> None:
    embeddings, _ = identities([4, 3], seed=4)
    person_ids = np.array([1, 1, 1, 1, -1, -1, -1])
    decision = assign_incrementally(faces_of(embeddings), person_ids, np.array([6]), PARAMS)
    assert decision.joined == {}
    assert [sorted(group.tolist()) for group in decision.founded] == [[4, 5, 6]]


def test_scores_count_unassigned_faces_as_singletons() -> None:
    from image_grouping.evaluation.grouping import clustering_scores

    truth = np.array(["a", "a", "b", "b"])
    perfect = clustering_scores(truth, np.array([0, 0, 1, 1]))
    assert perfect["bcubed_f1"] == 1.0
    assert perfect["pairwise_f1"] == 1.0
    merged = clustering_scores(truth, np.array([0, 0, 0, 0]))
    assert merged["bcubed_precision"] == 0.5
    assert merged["bcubed_recall"] == 1.0
    loose = clustering_scores(truth, np.array([0, 0, -1, -1]))
    assert loose["bcubed_recall"] == 0.75
    assert loose["assigned"] == 0.5
    assert loose["persons"] == 1


def test_immich_reference_founds_persons_from_core_faces() -> None:
    from image_grouping.evaluation.grouping import immich_reference

    embeddings, truth = identities([5, 5, 1], spread=0.3, seed=6)
    labels = immich_reference(embeddings)
    assert same_partition(labels[:10], truth[:10])
    assert labels[10] == -1  # a lone face is never a core face and has nobody near


def test_a_reliable_face_and_an_unreliable_one_found_a_person_together() -> None:
    embeddings, _ = identities([2, 2], spread=0.3, seed=6)
    reliable = np.array([True, False, False, False])  # a sharp face and a blurred one; two blurred ones
    labels = group_faces(faces_of(embeddings, reliable=reliable), PARAMS).labels
    assert labels[0] == labels[1] >= 0
    assert (labels[2:] < 0).all()
    strict = GroupingParams(min_reliable_faces=2)  # the former rule: two reliable faces to found a person
    assert (group_faces(faces_of(embeddings, reliable=reliable), strict).labels < 0).all()


def poor_face_near(embeddings: np.ndarray, members: slice, weight: float, seed: int = 0) -> np.ndarray:
    """A unit face `weight` of the way towards the members' mean, the rest noise unlike every face."""
    mean = embeddings[members].sum(axis=0)
    mean /= np.linalg.norm(mean)
    noise = np.random.default_rng(seed).standard_normal(len(mean))
    basis, _ = np.linalg.qr(embeddings.T.astype(np.float64))
    noise -= basis @ (basis.T @ noise)  # orthogonal to every face, so to every mean
    noise /= np.linalg.norm(noise)
    return (weight * mean + np.sqrt(1 - weight**2) * noise).astype(np.float32)


def centroid_case() -> tuple[np.ndarray, np.ndarray]:
    """Two persons of 6 scattered faces, then a poor face of the first: too far from each of its faces
    to be a vote, clearly nearest its mean."""
    embeddings, truth = identities([6, 6], spread=0.9, seed=7)
    poor = poor_face_near(embeddings, slice(0, 6), 0.4)
    embeddings = np.vstack([embeddings, poor])
    assert (embeddings[:6] @ poor < PARAMS.vote_similarity).all()  # the votes leave it out
    return embeddings, np.append(truth, -1)


def test_a_face_the_votes_leave_out_joins_the_group_whose_mean_it_is_clearly_nearest() -> None:
    from image_grouping.grouping import attach_by_centroids

    embeddings, labels = centroid_case()
    poor = np.array([12])
    assert attach_by_centroids(faces_of(embeddings), labels, poor, PARAMS)[12] == 0
    # Not into a group holding a face of its photo, nor a person it was refused from.
    same_photo = np.arange(13)
    same_photo[12] = 3
    assert attach_by_centroids(faces_of(embeddings, image_ids=same_photo), labels, poor, PARAMS)[12] < 0
    refused = faces_of(embeddings, anchors=np.where(labels == 0, 7, -1), forbidden={12: frozenset({7})})
    assert attach_by_centroids(refused, labels, poor, PARAMS)[12] < 0
    # Nor when it is not clearly nearer one mean than the other, nor when the pass is switched off.
    both = embeddings[:12].sum(axis=0)
    embeddings[12] = both / np.linalg.norm(both)
    assert attach_by_centroids(faces_of(embeddings), labels, poor, PARAMS)[12] < 0
    embeddings, _ = centroid_case()
    off = GroupingParams(centroid_similarity=1.01)
    assert attach_by_centroids(faces_of(embeddings), labels, poor, off)[12] < 0


def test_recluster_and_incremental_assignment_give_a_poor_face_its_person() -> None:
    embeddings, _ = centroid_case()
    labels = group_faces(faces_of(embeddings), PARAMS).labels
    assert labels[0] >= 0
    assert (labels[:6] == labels[0]).all()
    assert labels[12] == labels[0]
    person_ids = np.array([3] * 6 + [5] * 6 + [-1])
    decision = assign_incrementally(faces_of(embeddings), person_ids, np.array([12]), PARAMS)
    assert decision.joined == {12: 3}


@pytest.mark.parametrize(("similarity", "founds"), [(0.45, True), (0.38, False)])
def test_two_waiting_faces_found_a_person_between_reclusters_only_when_clearly_alike(
    similarity: float, founds: bool
) -> None:
    embeddings, _ = identities([4, 2], seed=8)
    other = poor_face_near(embeddings, slice(0, 6), 0.0, seed=1)  # unlike every face here
    embeddings[5] = similarity * embeddings[4] + np.sqrt(1 - similarity**2) * other
    assert embeddings[4] @ embeddings[5] >= PARAMS.link_similarity  # linked, so a recluster would pair them
    person_ids = np.array([1, 1, 1, 1, -1, -1])
    decision = assign_incrementally(faces_of(embeddings), person_ids, np.array([5]), PARAMS)
    assert decision.joined == {}
    assert [sorted(group.tolist()) for group in decision.founded] == ([[4, 5]] if founds else [])


def test_two_groups_each_the_others_nearest_by_their_means_become_one() -> None:
    from image_grouping.grouping.clustering import _merge_twin_groups

    embeddings, _ = identities([8, 4], spread=0.6, seed=9)
    labels = np.array([0] * 4 + [1] * 4 + [2] * 4)  # one person's faces in two groups, another's in one
    merged = _merge_twin_groups(faces_of(embeddings), labels, PARAMS)
    assert (merged[:8] == merged[0]).all()
    assert (merged[8:] == 2).all()
    # Not when a photo is in both, nor when each is anchored to another person, nor switched off.
    shared = np.arange(12)
    shared[5] = 1
    assert (_merge_twin_groups(faces_of(embeddings, image_ids=shared), labels, PARAMS) == labels).all()
    anchored = faces_of(embeddings, anchors=np.array([3] * 4 + [4] * 4 + [-1] * 4))
    assert (_merge_twin_groups(anchored, labels, PARAMS) == labels).all()
    off = GroupingParams(twin_similarity=1.01)
    assert (_merge_twin_groups(faces_of(embeddings), labels, off) == labels).all()


def test_a_recluster_joins_one_persons_two_groups_that_no_pair_of_faces_could_join() -> None:
    # One person's faces in two styles (say sharp and blurred): alike within a style, less across, so
    # the average linkage keeps two groups; their means, free of the noise, are close.
    rng = np.random.default_rng(10)
    person, sharp, blurred = np.linalg.qr(rng.standard_normal((128, 3)))[0].T

    def styled(style: np.ndarray) -> np.ndarray:
        faces = np.sqrt(0.65) * person + np.sqrt(0.35) * style + rng.standard_normal((12, 128)) * 0.097
        return faces / np.linalg.norm(faces, axis=1, keepdims=True)

    embeddings = np.vstack([styled(sharp), styled(blurred)]).astype(np.float32)
    apart = group_faces(faces_of(embeddings), GroupingParams(twin_similarity=1.01)).labels
    assert (apart[:12] == apart[0]).all()
    assert (apart[12:] == apart[12]).all()
    assert apart[0] != apart[12]
    labels = group_faces(faces_of(embeddings), PARAMS).labels
    assert labels[0] >= 0
    assert (labels == labels[0]).all()


@pytest.mark.parametrize(("count", "k"), [(0, 4), (7, 16), (3_000, 16), (140_000, 17)])
def test_the_search_among_rows_finds_the_neighbours_of_the_brute_force_search(count: int, k: int) -> None:
    """Incremental assignment's search (blocks of the rows as they lie, masks instead of copies) returns
    the same rows, in the same order, as FAISS' brute force over the rows of each mask."""
    from image_grouping.grouping.neighbours import search, search_among

    rng = np.random.default_rng(count)
    embeddings = rng.standard_normal((count, 64)).astype(np.float32)
    embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-6)
    assigned = rng.random(count) < 0.7
    queries = rng.choice(count, min(count, 150), replace=False)
    found = search_among(embeddings, queries, [assigned, ~assigned], [k, 2 * k])
    for mask, width, neighbours in zip([assigned, ~assigned], [k, 2 * k], found, strict=True):
        rows = np.flatnonzero(mask)
        brute = search(embeddings[queries], embeddings[rows], width)
        expected = np.append(rows, -1)[np.where(brute.indices >= 0, brute.indices, len(rows))]
        np.testing.assert_array_equal(neighbours.indices, expected)
        np.testing.assert_allclose(neighbours.similarities, brute.similarities, atol=1e-5)


def test_the_reduced_search_finds_every_neighbour_above_the_link_threshold() -> None:
    """The approximate search of a large library's incremental assignment (candidates in a PCA projection,
    re-scored with the full embeddings) finds every exact neighbour of a new face that is at least
    `link_similarity` alike, with its exact similarity, and the decisions are those of the exact search."""
    from image_grouping.grouping.neighbours import SearchProjection, search_among, search_among_reduced

    rng = np.random.default_rng(3)
    count, dim, batch = 60_000, 512, 200
    # Shaped like LFW's buffalo_sc embeddings: far from isotropic, the leading 128 directions hold 77% of
    # the variance between people and 66% of the variance within a person, which is half as large.
    between = np.exp(-np.arange(dim) / 174)
    within = np.exp(-np.arange(dim) / 236) * np.sqrt(
        0.52 * (between**2).sum() / np.exp(-np.arange(dim) / 118).sum()
    )
    identity = rng.integers(0, count // 3, count)
    centres = rng.standard_normal((count // 3, dim)).astype(np.float32) * between
    embeddings = centres[identity] + rng.standard_normal((count, dim)).astype(np.float32) * within
    embeddings = (embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)).astype(np.float32)
    sizes = np.bincount(identity[:-batch])
    person_ids = np.where(sizes[identity] >= 2, identity, -1)  # as a recluster leaves them
    new = np.arange(count - batch, count)
    person_ids[new] = -1
    assigned = person_ids >= 0
    ks = [PARAMS.neighbours, PARAMS.neighbours + 1 + batch]
    reduced = SearchProjection(embeddings).apply(embeddings)
    exact = search_among(embeddings, new, [assigned, ~assigned], ks)
    floor = min(PARAMS.link_similarity, PARAMS.vote_similarity)
    approximate = search_among_reduced(embeddings, reduced, new, [assigned, ~assigned], ks, floor)
    linked = 0
    for wanted, found in zip(exact, approximate, strict=True):
        for row in range(batch):
            close = wanted.indices[row][wanted.similarities[row] >= PARAMS.link_similarity]
            linked += len(close)
            assert np.isin(close, found.indices[row]).all()
        held = found.indices >= 0
        np.testing.assert_allclose(
            found.similarities[held],
            np.einsum(
                "ij,ij->i",
                embeddings[np.repeat(new, found.indices.shape[1])[held.ravel()]],
                embeddings[found.indices[held]],
            ),
            atol=1e-5,
        )
    assert linked > batch  # most new faces have close neighbours to find
    decided = [
        assign_incrementally(faces_of(embeddings), person_ids, new, PARAMS, reduced=rows)
        for rows in (None, reduced)
    ]
    assert len(decided[0].joined) > batch // 2
    assert decided[0].joined == decided[1].joined
    assert [members.tolist() for members in decided[0].founded] == [
        members.tolist() for members in decided[1].founded
    ]
