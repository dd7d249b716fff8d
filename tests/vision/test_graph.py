"""The PRelu rewrite: the recogniser runs without PRelu nodes and embeds as the original model does,
in runs of at most MAX_BATCH faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from image_grouping.vision import FaceAnalyzer, decode_image
from image_grouping.vision.align import norm_crop
from image_grouping.vision.arcface import ArcFace
from image_grouping.vision.graph import without_prelu
from image_grouping.vision.model_pack import BUNDLED_MODEL_FOLDER


def op_types(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def test_prelu_nodes_are_replaced_and_the_original_is_left_alone() -> None:
    model = onnx.load(str(BUNDLED_MODEL_FOLDER / "w600k_mbf.onnx"))

    rewritten = without_prelu(model)

    assert op_types(model).count("PRelu") == 34
    assert "PRelu" not in op_types(rewritten)
    onnx.checker.check_model(rewritten)


def test_a_model_without_prelu_is_returned_as_it_is() -> None:
    detector = onnx.load(str(BUNDLED_MODEL_FOLDER / "scrfd_500m_bnkps.onnx"))

    assert without_prelu(detector) is detector


def test_rewritten_recogniser_embeds_as_the_original(analyzer: FaceAnalyzer, groups_dir: Path) -> None:
    data = (groups_dir / "insightface__t1.jpg").read_bytes()
    pixels = decode_image(data, max_pixels=10**8).pixels
    crops = [norm_crop(pixels, face.landmarks) for face in analyzer.analyze(data).faces]
    path = BUNDLED_MODEL_FOLDER / "w600k_mbf.onnx"
    original = ArcFace(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), path)

    expected = original.embed(crops)
    embeddings = analyzer.recognizer.embed(crops)  # the session the pack loaded, rewritten

    assert len(crops) == 6
    assert np.abs(embeddings - expected).max() < 1e-5
    # 18 faces run 8 at a time (8, 8, 2): the last six come out as they do alone.
    assert np.abs(analyzer.recognizer.embed(crops * 3)[12:] - embeddings).max() < 1e-5
