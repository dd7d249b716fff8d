"""Map the groups of a recluster onto the existing persons, so a person's id, name and cover survive.

A group anchored to a person (it holds faces assigned to it by hand, or faces of a named person) is that
person's. Every other group takes the existing person it shares the most faces with (greedy, largest
overlap first). Groups left without a person become new persons when
they have `min_faces` faces; persons left without a group were merged (all their faces went to one other
person) or emptied. Pure numpy, no I/O.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

NO_PERSON = -1
# New persons get placeholder ids NEW_PERSON - g (g = 0, 1, ...) until the database gives them real ones.
NEW_PERSON = -2


@dataclass(frozen=True)
class IdentityPlan:
    person_ids: np.ndarray  # (n,) int64: each face's person after the recluster (placeholders for new ones)
    new_persons: list[int]  # placeholder ids, in order
    merged: list[tuple[int, int]]  # (source, target)
    emptied: list[int]  # existing persons left without faces


def map_groups_to_persons(
    labels: np.ndarray,
    current_person_ids: np.ndarray,
    pinned: np.ndarray,
    anchors: np.ndarray,
    forbidden: Mapping[int, frozenset[int]],
    existing_persons: list[int],
    *,
    min_faces: int,
) -> IdentityPlan:
    """Decide every face's person from its group (`labels`, -1 none) and the persons as they are."""
    count = len(labels)
    group_anchor: dict[int, int] = {}
    overlap: Counter[tuple[int, int]] = Counter()
    for face in np.flatnonzero(labels >= 0).tolist():
        group, person = int(labels[face]), int(current_person_ids[face])
        if anchors[face] >= 0:
            group_anchor[group] = int(anchors[face])
        if person >= 0:
            overlap[group, person] += 1

    # An anchored group is its person's, whatever the overlap: several groups may share a named person
    # (the faces merged into it by hand, and its own faces); the others compete by overlap.
    person_of_group = dict(group_anchor)
    taken = set(group_anchor.values())
    for (group, person), _ in sorted(overlap.items(), key=lambda item: (-item[1], item[0])):
        if group in person_of_group or person in taken:
            continue
        person_of_group[group] = person
        taken.add(person)

    sizes = Counter(labels[labels >= 0].tolist())
    new_persons: list[int] = []
    for group in sorted(sizes):
        if group not in person_of_group and sizes[group] >= min_faces:
            person_of_group[group] = NEW_PERSON - len(new_persons)
            new_persons.append(person_of_group[group])

    person_ids = np.full(count, NO_PERSON, np.int64)
    for face, group in enumerate(labels.tolist()):
        if group >= 0:
            person_ids[face] = person_of_group.get(group, NO_PERSON)
    for face, refused in forbidden.items():
        if person_ids[face] in refused:
            person_ids[face] = NO_PERSON
    person_ids[pinned] = current_person_ids[pinned]  # never changed, whatever the groups say

    merged, emptied = _vanished_persons(existing_persons, taken, current_person_ids, person_ids)
    return IdentityPlan(person_ids, new_persons, merged, emptied)


def _vanished_persons(
    existing_persons: list[int], taken: set[int], before: np.ndarray, after: np.ndarray
) -> tuple[list[tuple[int, int]], list[int]]:
    """Persons no group took: merged into the one person all their faces went to, or emptied."""
    destinations: defaultdict[int, set[int]] = defaultdict(set)
    for person, destination in zip(before.tolist(), after.tolist(), strict=True):
        if person >= 0:
            destinations[person].add(destination)
    merged, emptied = [], []
    for person in existing_persons:
        if person in taken or person not in destinations:  # kept, or already empty before
            continue
        targets = destinations[person]
        if len(targets) == 1 and (target := next(iter(targets))) >= 0:
            merged.append((person, target))
        else:
            emptied.append(person)
    return merged, emptied
