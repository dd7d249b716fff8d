"""What the face analysis finds in one image."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Pose = Literal["frontal", "profile"]
Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the oriented full-resolution image


@dataclass(frozen=True, slots=True)
class FaceQuality:
    """Signals that grouping can weigh; computed beside the detection."""

    det_score: float
    size_px: float  # shorter side of the face box, in pixels of the oriented full-resolution image
    sharpness: float  # variance of the Laplacian of the recogniser's aligned grey crop (112 or 150 px)
    yaw: float  # rough yaw from the landmarks: 0 frontal, +-1 full profile
    pose: Pose


@dataclass(frozen=True, slots=True)
class DetectedFace:
    """One face: where it is, how good it is, its embedding and its thumbnail."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the oriented full-resolution image
    landmarks: np.ndarray  # (5, 2) float32: eyes, nose, mouth corners, same coordinates as box
    quality: FaceQuality
    embedding: np.ndarray  # (D,) float32, L2-normalised
    thumbnail_jpeg: bytes = field(repr=False)
    added_by_hand: bool = False  # a person drew its box; analysed there whether the detector finds it or not


@dataclass(frozen=True, slots=True)
class HandBox:
    """The place of a face added by hand, for the analyzer to analyse whatever the detector finds there.

    `drawn`: a box a person has just drawn (a new face): the box the detector gives the face inside it, if
    it finds one, replaces the drawn one, so the face is stored where a detector would put it. A stored
    face's box (`drawn` False) stays as it is, so analysing the photo again finds it at the same place.
    """

    box: Box
    drawn: bool = False


@dataclass(frozen=True, slots=True)
class ImageAnalysis:
    """The result of analysing one image with one model pack."""

    width: int  # oriented full-resolution size
    height: int
    model_pack: str  # id of the pack that made the embeddings, e.g. "buffalo_sc"
    faces: list[DetectedFace]
