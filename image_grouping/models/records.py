"""What the data layer returns: plain records and the arrays grouping works on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Literal

import numpy as np

from image_grouping.models.faces import ImageAnalysis
from image_grouping.models.messages import DEFAULT_LIBRARY

ImageStatus = Literal["pending", "done", "failed"]


@dataclass(frozen=True, slots=True)
class ImageRecord:
    id: int
    source_id: str | None  # the uploader's id, when the message carries one
    source_path: str  # the path as the uploader stored it (UNC prefix and all)
    status: ImageStatus
    content_hash: str | None  # sha256 hex of the file's bytes, once processed
    size_bytes: int | None
    width: int | None
    height: int | None
    model_pack: str | None
    error: str | None
    processed_at: datetime | None
    library_id: str = DEFAULT_LIBRARY


@dataclass(frozen=True, slots=True)
class ImageResult:
    """One image's analysis as the data layer stores it, with a thumbnail path (or None) per face."""

    image_id: int
    content_hash: str  # sha256 hex of the file's bytes
    size_bytes: int
    analysis: ImageAnalysis
    thumbnail_paths: Sequence[str | None]


@dataclass(frozen=True, slots=True)
class PersonRecord:
    id: int
    name: str | None
    hidden: bool
    cover_face_id: int | None
    face_count: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class FaceSet:
    """Faces as parallel numpy arrays: what grouping needs, loaded in one query."""

    face_ids: np.ndarray  # (n,) int64
    image_ids: np.ndarray  # (n,) int64
    embeddings: np.ndarray  # (n, d) float32
    person_ids: np.ndarray  # (n,) int64, -1 where the face belongs to nobody
    manual: np.ndarray  # (n,) bool: the person (or its absence) was set by hand; grouping must keep it
    det_score: np.ndarray  # (n,) float32
    size_px: np.ndarray  # (n,) float32
    sharpness: np.ndarray  # (n,) float32
    yaw: np.ndarray  # (n,) float32

    def __len__(self) -> int:
        return len(self.face_ids)

    def groupable(self) -> np.ndarray:
        """Faces grouping may look at: all but those taken out of a person by hand (they stay unassigned)."""
        return ~(self.manual & (self.person_ids < 0))

    def take(self, rows: np.ndarray) -> FaceSet:
        """The faces at `rows` (indices or a boolean mask), every array alike."""
        return FaceSet(**{field.name: getattr(self, field.name)[rows] for field in fields(self)})

    @classmethod
    def empty(cls, dim: int = 0) -> FaceSet:
        none = np.empty(0, np.float32)
        ids = np.empty(0, np.int64)
        return cls(ids, ids, np.empty((0, dim), np.float32), ids, np.empty(0, bool), none, none, none, none)


@dataclass(frozen=True, slots=True)
class FaceEdit:
    """One edit of a face by hand: the person it had and the person it got (None: none)."""

    face_id: int
    from_person_id: int | None
    to_person_id: int | None
    action: str  # assign, reject, merge, cover, add (a face added by hand)
    at: datetime | None = None  # when it was recorded; None before


@dataclass(frozen=True, slots=True)
class FaceRecord:
    """One face as the edits see it (no embedding)."""

    id: int
    image_id: int
    model_pack: str
    person_id: int | None
    manual: bool  # its person (or its absence) was set by hand
    thumbnail_path: str | None
    added_by_hand: bool = False  # a person drew its box
