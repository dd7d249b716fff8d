"""The thresholds of grouping as one frozen object, so the domain code never sees the environment.

`image_grouping.bootstrap.grouping_params` builds it from the GROUPING_* settings.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from image_grouping.packs import pack_info


@dataclass(frozen=True, slots=True)
class GroupingParams:
    """Cosine similarities are those of the model pack's unit embeddings (buffalo_sc defaults)."""

    neighbours: int = 16  # k of the neighbour graph
    link_similarity: float = 0.36  # an edge of the graph: two faces this similar may be one person
    merge_similarity: float = 0.34  # two groups merge when their faces are this similar on average
    cohesion_similarity: float = 0.35  # a group's mean pairwise similarity must reach this to be a person
    member_similarity: float = 0.3  # a face less similar than this to its group's mean is cut loose
    vote_similarity: float = 0.36  # a neighbour this similar is a vote for its person
    min_votes: int = 3  # votes a face needs to join a person (a person smaller than this: all its faces)
    centroid_similarity: float = 0.35  # a face the votes left out joins a person's mean this similar...
    centroid_margin: float = 0.15  # ...when no other person's mean comes this close to it
    twin_similarity: float = 0.5  # two groups, each the other's nearest by their means, this alike: one
    min_faces: int = 2  # smallest person a full recluster founds
    found_min_faces: int = 2  # smallest person incremental assignment founds...
    found_pair_similarity: float = 0.4  # ...two faces only this alike (a tighter bar: less context)
    min_reliable_faces: int = 1  # reliable faces (see quality.py) a new person needs
    min_det_score: float = 0.6
    min_face_px: float = 32.0
    min_sharpness: float = 40.0  # Laplacian variance of the aligned crop (motion blur: ~33, sharp: 150+)
    max_abs_yaw: float = 0.6
    exact_search_limit: int = 20_000  # above this many faces the neighbour search is approximate


def pack_defaults(model_pack: str) -> GroupingParams:
    """The thresholds measured for the pack's embeddings (image_grouping/packs.py); a pack the service
    does not ship (MODEL_DIR, an SCRFD + ArcFace pack) takes the defaults above, buffalo_sc's."""
    info = pack_info(model_pack)
    return replace(GroupingParams(), **info.grouping) if info is not None else GroupingParams()
