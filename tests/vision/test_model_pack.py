"""Model packs: the bundled one is checked by sha256, another pack loads from a folder by its contents."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from image_grouping.bootstrap import load_analyzer, vision_params
from image_grouping.config import Settings, load_settings
from image_grouping.vision import FaceAnalyzer, ModelPackError
from image_grouping.vision.model_pack import (
    BUNDLED_MODEL_FOLDER,
    BUNDLED_PACKS,
    intra_op_threads,
    load_bundled_pack,
)


@pytest.fixture
def pack_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "my_pack"
    folder.mkdir()
    for name in BUNDLED_PACKS["buffalo_sc"]:
        shutil.copy(BUNDLED_MODEL_FOLDER / name, folder / name)
    return folder


def test_altered_model_file_is_refused(pack_copy: Path, settings: Settings) -> None:
    with (pack_copy / "w600k_mbf.onnx").open("ab") as stream:
        stream.write(b"\0")

    with pytest.raises(ModelPackError, match="sha256"):
        load_bundled_pack("buffalo_sc", vision_params(settings), folder=pack_copy)


def test_unknown_pack_name_is_refused(settings: Settings) -> None:
    with pytest.raises(ModelPackError, match="unknown model pack"):
        load_analyzer(settings.model_copy(update={"model_pack": "no_such_pack"}))


def test_folder_without_a_recogniser_is_refused(pack_copy: Path, settings: Settings) -> None:
    (pack_copy / "w600k_mbf.onnx").unlink()

    with pytest.raises(ModelPackError, match="recogniser"):
        load_analyzer(settings.model_copy(update={"model_dir": pack_copy}))


def test_model_dir_pack_is_found_by_its_contents(
    pack_copy: Path, settings: Settings, analyzer: FaceAnalyzer, eval_dir: Path
) -> None:
    # Names that say nothing: the detector and the recogniser are told apart by their inputs and outputs.
    (pack_copy / "scrfd_500m_bnkps.onnx").rename(pack_copy / "b.onnx")
    (pack_copy / "w600k_mbf.onnx").rename(pack_copy / "a.onnx")
    data = (eval_dir / "groups" / "face_recognition__two_people.jpg").read_bytes()

    other = load_analyzer(load_settings(intra_op_threads=1, model_dir=pack_copy))
    try:
        analysis = other.analyze(data)
    finally:
        other.close()

    # The pack id, which grouping uses too, is the folder's name unless MODEL_PACK says otherwise.
    assert analysis.model_pack == other.params.model_pack == "my_pack"
    reference = analyzer.analyze(data)
    assert len(analysis.faces) == len(reference.faces) == 2
    for face, same in zip(analysis.faces, reference.faces, strict=True):
        assert float(face.embedding @ same.embedding) > 0.9999


def test_default_threads_give_each_image_in_flight_one_core() -> None:
    defaults = vision_params(Settings())

    assert defaults.analysis_workers == len(os.sched_getaffinity(0))
    if defaults.analysis_workers > 1:
        assert intra_op_threads(defaults) == 1
    assert intra_op_threads(replace(defaults, analysis_workers=1)) == 0  # onnxruntime's choice
    assert intra_op_threads(replace(defaults, intra_op_threads=3)) == 3


def test_vision_params_are_the_settings_of_the_same_name() -> None:
    settings = load_settings(model_dir=Path("/models/my_pack"), min_face_size=20, thumbnail_quality=70)

    params = vision_params(settings)

    assert (params.model_pack, params.model_dir) == ("my_pack", Path("/models/my_pack"))
    assert (params.min_face_size, params.thumbnail_quality) == (20, 70)
    assert params.det_input_size == settings.det_input_size
