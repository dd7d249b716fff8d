"""A small library for the web app's API tests, stored with the real data layer on SQLite or PostgreSQL:
real JPEG photos (under the images root, as the uploader stores them, and one at a local path, as a scan
stores it) and real thumbnail files; embeddings made so that suggestions exist.

Photos 0-2 show Ada, Bob and a third person (Cy) side by side; photo 3 shows a fourth person whose face is
Ada's again (a merge suggestion: Ada and Ada-too), and a face like Bob's that belongs to nobody (an
"Is this Bob?" suggestion); photo 4 is a local file with one unassigned stranger.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from image_grouping.bootstrap import bootstrap
from image_grouping.config import Settings, load_settings
from image_grouping.models.faces import DetectedFace, FaceQuality, ImageAnalysis

BOXES = [(10.0, 10.0, 110.0, 130.0), (300.0, 40.0, 380.0, 140.0), (500.0, 200.0, 580.0, 290.0)]
DIMENSION = 512


@dataclass
class Library:
    settings: Settings
    faces: list[list[int]]  # per photo, its face ids in box order
    photos: list[int]  # database ids of photos 0-4
    ada: int
    bob: int
    cy: int
    ada_too: int
    photo_files: list[Path]

    @property
    def stranger(self) -> int:
        return self.faces[4][0]

    @property
    def like_bob(self) -> int:
        return self.faces[3][1]


def _jpeg(seed: int, size: tuple[int, int] = (640, 480)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=70)
    return out.getvalue()


def _face(box: tuple[float, float, float, float], direction: np.ndarray, seed: int) -> DetectedFace:
    noise = np.random.default_rng(seed).standard_normal(DIMENSION).astype(np.float32)
    embedding = direction + 0.3 * noise / np.sqrt(DIMENSION)
    return DetectedFace(
        box=box,
        landmarks=np.zeros((5, 2), np.float32),
        quality=FaceQuality(
            det_score=0.9 - seed / 1000, size_px=80.0, sharpness=50.0, yaw=0.0, pose="frontal"
        ),
        embedding=(embedding / np.linalg.norm(embedding)).astype(np.float32),
        thumbnail_jpeg=_jpeg(1000 + seed, (48, 48)),
    )


def build_library(settings: Settings, root: Path) -> Library:
    identities = np.random.default_rng(7).standard_normal((4, DIMENSION)).astype(np.float32)
    identities /= np.linalg.norm(identities, axis=1, keepdims=True)
    ada, bob, cy, stranger = identities
    (settings.container_images_root / "photos").mkdir(parents=True)
    (root / "scanned").mkdir()
    files = [settings.container_images_root / "photos" / f"{n}.jpg" for n in range(4)]
    files.append(root / "scanned" / "4.jpg")
    for n, file in enumerate(files):
        file.write_bytes(_jpeg(n))
    stored = [f"//nas/photos/{n}.jpg" for n in range(4)] + [files[4].as_posix()]
    faces_of = [[ada, bob, cy]] * 3 + [[ada, bob], [stranger]]

    async def store() -> Library:
        async with bootstrap(settings) as adapters, adapters.unit_of_work() as uow:
            face_ids, photo_ids = [], []
            for n, (path, directions) in enumerate(zip(stored, faces_of, strict=True)):
                image = await uow.images.get_or_create(f"upload-{n}", path)
                faces = [_face(BOXES[i], d, 10 * n + i) for i, d in enumerate(directions)]
                analysis = ImageAnalysis(640, 480, settings.model_pack, faces)
                paths = adapters.thumbnails.save_faces(image.id, analysis)
                content_hash = hashlib.sha256(b"%d" % n).hexdigest()
                face_ids.append(await uow.save_analysis(image.id, content_hash, 1, analysis, paths))
                photo_ids.append(image.id)
            persons = [await uow.persons.create(cover_face_id=face_ids[0][i]) for i in range(3)]
            await uow.faces.set_persons({face_ids[n][i]: persons[i] for n in range(3) for i in range(3)})
            ada_too = await uow.persons.create(cover_face_id=face_ids[3][0])
            await uow.faces.set_persons({face_ids[3][0]: ada_too})
            await uow.persons.rename(persons[0], "Ada")
            await uow.persons.rename(persons[1], "Bob")
            await uow.commit()
        return Library(settings, face_ids, photo_ids, *persons, ada_too, files)

    return asyncio.run(store())


def web_settings(database: str, root: Path, **overrides: object) -> Settings:
    return load_settings(
        database_url=database,
        system_storage=root / "data",
        log_root=root / "logs",
        db_prefix="//nas",
        container_images_root=root / "images",
        **overrides,
    )
