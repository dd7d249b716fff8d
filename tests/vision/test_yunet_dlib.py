"""The licence-clean pack `yunet_dlib` (YuNet + dlib's ResNet): its files are checked by sha256 before
anything loads, it analyses real group photos like the default pack, and `image-grouping packs` lists it
with its licence."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_face_analyzer import annotated_counts
from typer.testing import CliRunner

from image_grouping.bootstrap import grouping_params, load_analyzer, vision_params
from image_grouping.cli import app
from image_grouping.config import Settings, load_settings
from image_grouping.grouping.params import GroupingParams, pack_defaults
from image_grouping.packs import LICENCE_CLEAN_PACK
from image_grouping.vision import FaceAnalyzer, ModelPackError
from image_grouping.vision.model_pack import YUNET_DLIB_FILES, check_yunet_dlib, yunet_dlib_folders


@pytest.fixture(scope="module")
def clean_settings() -> Settings:
    return load_settings(intra_op_threads=1, model_pack=LICENCE_CLEAN_PACK)


@pytest.fixture(scope="module")
def clean_analyzer(clean_settings: Settings) -> Iterator[FaceAnalyzer]:
    analyzer = load_analyzer(clean_settings)
    yield analyzer
    analyzer.close()


@pytest.fixture
def models_copy(tmp_path: Path) -> dict[str, Path]:
    """The pack's folders, face_recognition_models' files copied (they are what the test alters)."""
    folders = yunet_dlib_folders()
    copy = tmp_path / "face_recognition_models"
    for name in YUNET_DLIB_FILES["face_recognition_models"]:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(folders["face_recognition_models"] / name, copy / name)
    return folders | {"face_recognition_models": copy}


def test_every_file_of_the_pack_matches_its_sha256() -> None:
    files = check_yunet_dlib()

    assert sum(len(paths) for paths in files.values()) == 4


def test_an_altered_recogniser_is_refused(models_copy: dict[str, Path]) -> None:
    check_yunet_dlib(models_copy)  # the copy as it is passes
    recogniser = models_copy["face_recognition_models"] / "models/dlib_face_recognition_resnet_model_v1.dat"
    with recogniser.open("r+b") as stream:
        stream.seek(1000)
        byte = stream.read(1)
        stream.seek(1000)
        stream.write(bytes([byte[0] ^ 1]))

    with pytest.raises(ModelPackError, match="sha256"):
        check_yunet_dlib(models_copy)


def test_a_missing_file_is_refused(models_copy: dict[str, Path]) -> None:
    (models_copy["face_recognition_models"] / "models/shape_predictor_5_face_landmarks.dat").unlink()

    with pytest.raises(ModelPackError, match="missing"):
        check_yunet_dlib(models_copy)


@pytest.mark.parametrize("name", ["compreface__000_5.jpg", "compreface__016_8.jpg", "compreface__017_0.jpg"])
def test_group_photo_gives_the_annotated_number_of_faces(
    clean_analyzer: FaceAnalyzer, groups_dir: Path, name: str
) -> None:
    analysis = clean_analyzer.analyze((groups_dir / name).read_bytes())

    assert analysis.model_pack == LICENCE_CLEAN_PACK
    assert len(analysis.faces) == annotated_counts(groups_dir)[name]


def test_group_faces_sit_on_the_annotated_noses(clean_analyzer: FaceAnalyzer, groups_dir: Path) -> None:
    noses = [(219, 105), (304, 251), (392, 218), (469, 309), (600, 299)]  # groups_annotations.csv

    analysis = clean_analyzer.analyze((groups_dir / "compreface__000_5.jpg").read_bytes())

    for x, y in noses:
        assert any(f.box[0] < x < f.box[2] and f.box[1] < y < f.box[3] for f in analysis.faces), (x, y)


def test_outputs_are_complete(
    clean_analyzer: FaceAnalyzer, groups_dir: Path, clean_settings: Settings
) -> None:
    analysis = clean_analyzer.analyze((groups_dir / "insightface__t1.jpg").read_bytes())

    assert (analysis.width, analysis.height) == (1280, 886)
    assert clean_analyzer.embedding_dim == 128
    assert len(analysis.faces) == 6
    for face in analysis.faces:
        assert face.embedding.shape == (128,)
        assert face.embedding.dtype == np.float32
        assert np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-5)
        x1, y1, x2, y2 = face.box
        assert 0 <= x1 < x2 <= analysis.width + 5
        assert 0 <= y1 < y2 <= analysis.height + 5
        assert face.landmarks.shape == (5, 2)
        assert np.all((face.landmarks >= (x1 - 2, y1 - 2)) & (face.landmarks <= (x2 + 2, y2 + 2)))
        # The image's left eye comes first, as SCRFD gives them (the yaw and the stored landmarks use it).
        assert face.landmarks[0, 0] < face.landmarks[1, 0]
        assert face.quality.det_score >= clean_analyzer.detector.score_threshold == 0.75
        assert face.quality.sharpness > 0
        assert -1 <= face.quality.yaw <= 1
        thumbnail = Image.open(io.BytesIO(face.thumbnail_jpeg))
        assert max(thumbnail.size) == clean_settings.thumbnail_size
    # Six different people: no two of them as similar as the pack's link threshold.
    embeddings = np.stack([face.embedding for face in analysis.faces])
    similarities = embeddings @ embeddings.T
    link = pack_defaults(LICENCE_CLEAN_PACK).link_similarity
    assert similarities[~np.eye(6, dtype=bool)].max() < link


def test_the_same_person_is_closer_than_others(clean_analyzer: FaceAnalyzer, eval_dir: Path) -> None:
    def embedding(name: str) -> np.ndarray:
        person = name.rsplit("_", 1)[0]
        (face,) = [
            face
            for face in clean_analyzer.analyze((eval_dir / "identity" / person / name).read_bytes()).faces
            if face.box[0] < 125 < face.box[2] and face.box[1] < 125 < face.box[3]
        ]
        return face.embedding

    gore = [embedding(f"Al_Gore_000{index}.jpg") for index in (1, 2, 3)]
    others = [embedding("Al_Sharpton_0001.jpg"), embedding("Alvaro_Uribe_0001.jpg")]
    link = pack_defaults(LICENCE_CLEAN_PACK).link_similarity

    closest_stranger = max(float(a @ b) for a in gore for b in others)
    assert min(float(a @ b) for i, a in enumerate(gore) for b in gore[i + 1 :]) > closest_stranger
    assert closest_stranger < link


def test_packs_lists_both_packs_with_their_licences() -> None:
    result = CliRunner().invoke(app, ["packs", "--json"])

    assert result.exit_code == 0, result.output
    packs = {pack["id"]: pack for pack in json.loads(result.output)}
    assert packs == {
        "buffalo_sc": {
            "id": "buffalo_sc",
            "licence": packs["buffalo_sc"]["licence"],
            "commercial_use": False,
            "embedding_size": 512,
        },
        LICENCE_CLEAN_PACK: {
            "id": LICENCE_CLEAN_PACK,
            "licence": packs[LICENCE_CLEAN_PACK]["licence"],
            "commercial_use": True,
            "embedding_size": 128,
        },
    }
    assert "non-commercial" in packs["buffalo_sc"]["licence"]
    assert "CC0" in packs[LICENCE_CLEAN_PACK]["licence"]
    assert "BSD-3-Clause" in packs[LICENCE_CLEAN_PACK]["licence"]


def test_grouping_thresholds_are_the_packs_unless_set() -> None:
    clean = load_settings(model_pack=LICENCE_CLEAN_PACK)
    default = load_settings(model_pack="buffalo_sc")

    assert grouping_params(clean) == pack_defaults(LICENCE_CLEAN_PACK)
    assert grouping_params(default) == pack_defaults("buffalo_sc") == GroupingParams()
    assert pack_defaults(LICENCE_CLEAN_PACK).link_similarity > 0.9
    assert grouping_params(default, LICENCE_CLEAN_PACK) == pack_defaults(LICENCE_CLEAN_PACK)
    chosen = load_settings(model_pack=LICENCE_CLEAN_PACK, grouping_link_similarity=0.7)
    assert grouping_params(chosen).link_similarity == 0.7
    assert grouping_params(chosen).vote_similarity == pack_defaults(LICENCE_CLEAN_PACK).vote_similarity


def test_vision_params_name_the_pack() -> None:
    assert vision_params(load_settings(model_pack=LICENCE_CLEAN_PACK)).model_pack == LICENCE_CLEAN_PACK
