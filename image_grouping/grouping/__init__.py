"""Grouping faces into persons: pure domain logic (numpy in, decisions out, no I/O)."""

from image_grouping.grouping.clustering import (
    UNGROUPED,
    Grouping,
    GroupingInput,
    attach_by_centroids,
    attach_by_votes,
    group_faces,
    mean_pairwise_similarity,
)
from image_grouping.grouping.identity import NEW_PERSON, NO_PERSON, IdentityPlan, map_groups_to_persons
from image_grouping.grouping.incremental import IncrementalDecision, assign_incrementally
from image_grouping.grouping.neighbours import Neighbours, nearest_neighbours, search
from image_grouping.grouping.params import GroupingParams
from image_grouping.grouping.quality import reliable_faces

__all__ = [
    "NEW_PERSON",
    "NO_PERSON",
    "UNGROUPED",
    "Grouping",
    "GroupingInput",
    "GroupingParams",
    "IdentityPlan",
    "IncrementalDecision",
    "Neighbours",
    "assign_incrementally",
    "attach_by_centroids",
    "attach_by_votes",
    "group_faces",
    "map_groups_to_persons",
    "mean_pairwise_similarity",
    "nearest_neighbours",
    "reliable_faces",
    "search",
]
