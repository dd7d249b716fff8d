"""FaceAnalyzer on real photos: counts, close-ups, orientation, batching, the async API and the outputs."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from image_grouping.config import Settings
from image_grouping.errors import BadInputError, EmptyImageError
from image_grouping.models.faces import ImageAnalysis
from image_grouping.vision import FaceAnalyzer


def box_iou(first: tuple[float, ...], second: tuple[float, ...]) -> float:
    width = max(0.0, min(first[2], second[2]) - max(first[0], second[0]))
    height = max(0.0, min(first[3], second[3]) - max(first[1], second[1]))
    inter = width * height
    area = lambda box: (box[2] - box[0]) * (box[3] - box[1])  # noqa: E731
    return inter / (area(first) + area(second) - inter)


def annotated_counts(groups_dir: Path) -> dict[str, int]:
    with (groups_dir / "groups_annotations.csv").open() as stream:
        return {
            row["file"]: int(row["n_faces_per_source"])
            for row in csv.DictReader(stream)
            if row["n_faces_per_source"].isdigit()
        }


@pytest.mark.parametrize("name", ["compreface__000_5.jpg", "compreface__016_8.jpg", "compreface__017_0.jpg"])
def test_group_photo_gives_the_annotated_number_of_faces(
    analyzer: FaceAnalyzer, groups_dir: Path, name: str
) -> None:
    analysis = analyzer.analyze((groups_dir / name).read_bytes())

    assert len(analysis.faces) == annotated_counts(groups_dir)[name]


def test_group_faces_sit_on_the_annotated_noses(analyzer: FaceAnalyzer, groups_dir: Path) -> None:
    noses = [(219, 105), (304, 251), (392, 218), (469, 309), (600, 299)]  # groups_annotations.csv

    analysis = analyzer.analyze((groups_dir / "compreface__000_5.jpg").read_bytes())

    for x, y in noses:
        assert any(f.box[0] < x < f.box[2] and f.box[1] < y < f.box[3] for f in analysis.faces), (x, y)


def test_outputs_are_complete(analyzer: FaceAnalyzer, groups_dir: Path, settings: Settings) -> None:
    analysis = analyzer.analyze((groups_dir / "insightface__t1.jpg").read_bytes())

    assert (analysis.width, analysis.height, analysis.model_pack) == (1280, 886, "buffalo_sc")
    assert analyzer.embedding_dim == 512
    assert len(analysis.faces) == 6
    for face in analysis.faces:
        assert face.embedding.shape == (512,)
        assert face.embedding.dtype == np.float32
        assert np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-5)
        assert face.landmarks.shape == (5, 2)
        x1, y1, x2, y2 = face.box
        assert 0 <= x1 < x2 <= analysis.width + 5
        assert 0 <= y1 < y2 <= analysis.height + 5
        assert np.all((face.landmarks >= (x1, y1)) & (face.landmarks <= (x2, y2)))
        assert face.quality.det_score >= analyzer.detector.score_threshold == 0.5
        assert face.quality.size_px == pytest.approx(min(x2 - x1, y2 - y1))
        assert face.quality.sharpness > 0
        assert -1 <= face.quality.yaw <= 1
        assert face.quality.pose in ("frontal", "profile")
        thumbnail = Image.open(io.BytesIO(face.thumbnail_jpeg))
        assert thumbnail.format == "JPEG"
        assert max(thumbnail.size) == settings.thumbnail_size
    # Different people in one photo: their embeddings are far apart.
    embeddings = np.stack([face.embedding for face in analysis.faces])
    similarity = embeddings @ embeddings.T
    assert similarity[~np.eye(len(embeddings), dtype=bool)].max() < 0.5


def test_mirroring_a_face_mirrors_its_yaw(analyzer: FaceAnalyzer, groups_dir: Path) -> None:
    analysis = analyzer.analyze((groups_dir / "insightface__t1.jpg").read_bytes())
    mirrored = cv2.imencode(".jpg", cv2.imread(str(groups_dir / "insightface__t1.jpg"))[:, ::-1])[1].tobytes()
    flipped = analyzer.analyze(mirrored)

    turned = [face for face in analysis.faces if abs(face.quality.yaw) > 0.2]
    assert turned  # t1.jpg has faces turned away from the camera
    for face in turned:
        twin = max(
            flipped.faces,
            key=lambda f: box_iou((1280 - f.box[2], f.box[1], 1280 - f.box[0], f.box[3]), face.box),
        )
        assert np.sign(twin.quality.yaw) == -np.sign(face.quality.yaw)


@pytest.mark.parametrize(
    "person", ["Aaron_Eckhart/Aaron_Eckhart_0001.jpg", "Abdullah_Gul/Abdullah_Gul_0001.jpg"]
)
def test_closeup_face_crop_is_found(analyzer: FaceAnalyzer, eval_dir: Path, person: str) -> None:
    path = eval_dir / "identity" / person
    if not path.exists():
        path = sorted((eval_dir / "identity").glob("*/*_0001.jpg"))[0]

    analysis = analyzer.analyze(path.read_bytes())

    assert (analysis.width, analysis.height) == (250, 250)
    central = min(
        analysis.faces,
        key=lambda f: abs((f.box[0] + f.box[2]) / 2 - 125) + abs((f.box[1] + f.box[3]) / 2 - 125),
    )
    assert central.box[0] < 125 < central.box[2]
    assert central.box[1] < 125 < central.box[3]
    assert central.quality.size_px > 80


@pytest.mark.parametrize(
    ("orientation", "stored_rotation"), [(6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270)]
)
def test_exif_orientation_gives_the_same_faces(
    analyzer: FaceAnalyzer, groups_dir: Path, orientation: int, stored_rotation: Image.Transpose
) -> None:
    photo = Image.open(groups_dir / "insightface__t1.jpg")
    upright = analyzer.analyze((groups_dir / "insightface__t1.jpg").read_bytes())
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    photo.transpose(stored_rotation).save(buffer, "JPEG", quality=95, exif=exif.tobytes())

    rotated = analyzer.analyze(buffer.getvalue())

    assert (rotated.width, rotated.height) == (upright.width, upright.height)
    assert len(rotated.faces) == len(upright.faces)
    for face in upright.faces:
        twin = max(rotated.faces, key=lambda f: box_iou(f.box, face.box))
        assert box_iou(twin.box, face.box) > 0.8
        assert float(twin.embedding @ face.embedding) > 0.95


def test_batch_equals_one_by_one(analyzer: FaceAnalyzer, groups_dir: Path) -> None:
    images = [(groups_dir / name).read_bytes() for name in ("compreface__010_2.jpg", "face_api_js__bbt2.jpg")]

    batch = analyzer.analyze_batch([images[0], b"", images[1]])
    single = [analyzer.analyze(data) for data in images]

    assert isinstance(batch[1], EmptyImageError)
    for together, alone in zip([batch[0], batch[2]], single, strict=True):
        assert isinstance(together, ImageAnalysis)
        assert len(together.faces) == len(alone.faces) > 0
        for a, b in zip(together.faces, alone.faces, strict=True):
            assert a.box == pytest.approx(b.box)
            assert float(a.embedding @ b.embedding) > 0.9999


def test_bad_input_raises_a_bad_input_error(analyzer: FaceAnalyzer) -> None:
    with pytest.raises(BadInputError):
        analyzer.analyze(b"not an image at all")


async def test_async_api_does_not_block_the_event_loop(analyzer: FaceAnalyzer, groups_dir: Path) -> None:
    data = (groups_dir / "dlib__bald_guys.jpg").read_bytes()  # 24 faces: a long analysis
    gaps: list[float] = []
    done = asyncio.Event()

    async def heartbeat() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    beating = asyncio.create_task(heartbeat())
    started = time.perf_counter()
    analysis = await analyzer.analyze_async(data)
    elapsed = time.perf_counter() - started
    done.set()
    await beating

    assert len(analysis.faces) > 10
    # The loop kept turning while the CPU work ran: many beats, none held up for long.
    assert len(gaps) >= elapsed / 0.05
    assert max(gaps) < 0.25
