"""What the people queries return: frozen, JSON-ready views (`as_json`) of persons, faces and photos.

A face's `thumbnail` is a path relative to SYSTEM_STORAGE; `path` is the photo's path as the uploader
stored it; `box` is x1, y1, x2, y2 in the photo's pixels. `assigned_by` is "manual" when a person set the
face's person (or its absence) by hand, which grouping never changes, and "auto" when grouping did;
`added_by_hand` is true for a face a person drew where the detector had found none.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class PersonSummary:
    id: int
    name: str | None
    hidden: bool
    face_count: int  # the person's faces from each photo's current analysis
    cover_face_id: int | None
    cover_thumbnail: str | None


@dataclass(frozen=True, slots=True)
class FaceView:
    id: int
    image_id: int  # the photo's database id
    path: str
    box: tuple[float, float, float, float]
    thumbnail: str | None
    assigned_by: str
    person_id: int | None
    added_by_hand: bool = False


@dataclass(frozen=True, slots=True)
class PersonDetail(PersonSummary):
    """A person and one page of its faces (`face_count` is the total, for paging)."""

    faces: list[FaceView] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Suggestion:
    """The person an unassigned face most probably is, and the cosine similarity that says so."""

    person_id: int
    name: str | None
    similarity: float


@dataclass(frozen=True, slots=True)
class UnassignedFace(FaceView):
    suggestion: Suggestion | None = None


@dataclass(frozen=True, slots=True)
class MergeSuggestion:
    """Two persons that are probably one (`person_a` < `person_b`); accepting it is an ordinary merge."""

    person_a: int
    person_b: int
    similarity: float
    names: tuple[str | None, str | None]  # of person_a and person_b


@dataclass(frozen=True, slots=True)
class ImageView:
    id: int
    path: str
    source_id: str | None  # the uploader's id of the photo
    width: int | None
    height: int | None


@dataclass(frozen=True, slots=True)
class ImageDetail(ImageView):
    """A photo and every face of its current analysis, with its box and person."""

    faces: list[FaceView] = field(default_factory=list)


def as_json(view: Any) -> Any:
    """A view, or a list of views, as plain JSON values (tuples become lists when serialised)."""
    if isinstance(view, list):
        return [as_json(each) for each in view]
    if is_dataclass(view) and not isinstance(view, type):
        return asdict(view)
    raise TypeError(f"not a view: {view!r}")
