"""Model packs: the bundled one is checked by sha256, another pack loads from a folder by its contents."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

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
        load_bundled_pack("buffalo_sc", settings, folder=pack_copy)


def test_unknown_pack_name_is_refused(settings: Settings) -> None:
    with pytest.raises(ModelPackError, match="unknown model pack"):
        FaceAnalyzer.from_settings(settings.model_copy(update={"model_pack": "no_such_pack"}))


def test_folder_without_a_recogniser_is_refused(pack_copy: Path, settings: Settings) -> None:
    (pack_copy / "w600k_mbf.onnx").unlink()

    with pytest.raises(ModelPackError, match="recogniser"):
        FaceAnalyzer.from_settings(settings.model_copy(update={"model_dir": pack_copy}))


def test_model_dir_pack_is_found_by_its_contents(
    pack_copy: Path, settings: Settings, analyzer: FaceAnalyzer, eval_dir: Path
) -> None:
    # Names that say nothing: the detector and the recogniser are told apart by their inputs and outputs.
    (pack_copy / "scrfd_500m_bnkps.onnx").rename(pack_copy / "b.onnx")
    (pack_copy / "w600k_mbf.onnx").rename(pack_copy / "a.onnx")
    data = (eval_dir / "groups" / "face_recognition__two_people.jpg").read_bytes()

    other = FaceAnalyzer.from_settings(load_settings(intra_op_threads=1, model_dir=pack_copy))
    try:
        analysis = other.analyze(data)
    finally:
        other.close()

    # The pack id, which grouping uses too, is the folder's name unless MODEL_PACK says otherwise.
    assert analysis.model_pack == other.settings.model_pack == "my_pack"
    reference = analyzer.analyze(data)
    assert len(analysis.faces) == len(reference.faces) == 2
    for face, same in zip(analysis.faces, reference.faces, strict=True):
        assert float(face.embedding @ same.embedding) > 0.9999


def test_default_threads_give_each_image_in_flight_one_core() -> None:
    defaults = Settings()

    assert defaults.analysis_workers == len(os.sched_getaffinity(0))
    if defaults.analysis_workers > 1:
        assert intra_op_threads(defaults) == 1
    assert intra_op_threads(defaults.model_copy(update={"analysis_workers": 1})) == 0  # onnxruntime's choice
    assert intra_op_threads(defaults.model_copy(update={"intra_op_threads": 3})) == 3
