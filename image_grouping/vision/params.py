"""What face analysis needs to know, as one frozen object: vision never reads the environment.

`image_grouping.bootstrap.vision_params` builds it from the settings; the defaults are the settings'.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True, slots=True)
class VisionParams:
    # Which pack: a bundled one by name, or any SCRFD + ArcFace folder (then `model_pack` is its id).
    model_pack: str = "buffalo_sc"  # id stored with every embedding
    model_dir: Path | None = None
    execution_provider: Literal["cpu", "cuda"] = "cpu"
    analysis_workers: int = 1  # images analysed at the same time, sharing the sessions
    intra_op_threads: int = 0  # onnxruntime threads per run; 0: 1 when analysis_workers > 1, else all cores
    det_input_size: int = 640  # SCRFD input long side, pixels
    det_score_threshold: float | None = None  # None: the pack's own (its detector's scale)
    det_nms_threshold: float = 0.4
    det_closeup_padding: float = 2.0  # close-up view: the image shrunk to 1/N of the input, for big faces
    min_face_size: int = 12  # faces whose shorter box side is smaller (pixels) are dropped
    align_max_upscale: float = 1.5  # JPEGs are decoded large enough that a 112x112 crop enlarges <= this
    max_image_pixels: int = 100_000_000  # more is refused as a decompression bomb
    max_image_bytes: int = 200_000_000
    thumbnail_size: int = 160  # edge, pixels
    thumbnail_margin: float = 0.4  # around the face box, as a share of its size
    thumbnail_quality: int = 88  # JPEG quality
