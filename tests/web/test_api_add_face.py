"""`POST /api/images/{id}/faces` with the real models on a real photo, over SQLite and PostgreSQL: the app
loads the analyzer the way `image-grouping serve` does (lazily, through bootstrap), and the face the
detector missed is analysed at the drawn box, embedded like the detector's face of it, thumbnailed, marked
as added by hand and given to its person; adding it again changes nothing.

The detector "misses" the photo's smallest face because the photo is stored with the analysis of its
other faces only (as tests/grouping/test_faces_added_by_hand.py's strict analyzer would store it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from test_api import refused, rows, types
from web_library import Library

from image_grouping.bootstrap import bootstrap, load_analyzer
from image_grouping.config import load_settings
from image_grouping.models.face_identity import box_iou
from image_grouping.models.faces import ImageAnalysis
from image_grouping.storage.schema import faces
from image_grouping.vision import FaceAnalyzer
from image_grouping.web import create_app

pytestmark = pytest.mark.slow

PHOTO = "compreface__000_5.jpg"  # five faces, one of them smaller than the others
MIN_COSINE = 0.9  # the face added by hand against the detector's embedding of it


@pytest.fixture(scope="module")
def analyzer() -> Iterator[FaceAnalyzer]:
    analyzer = load_analyzer(load_settings(intra_op_threads=1))
    yield analyzer
    analyzer.close()


def drawn(box: tuple[float, ...]) -> list[float]:
    """A box as a person draws it: larger than the detector's, reaching up over the hair."""
    x1, y1, x2, y2 = box
    width, height = x2 - x1, y2 - y1
    return [x1 - 0.1 * width, y1 - 0.25 * height, x2 + 0.1 * width, y2 + 0.05 * height]


def store_without(library: Library, photo: Path, analysis: ImageAnalysis) -> int:
    """The photo stored (at its local path, as a scan stores it) with `analysis`; its database id."""
    data = photo.read_bytes()

    async def store() -> int:
        async with bootstrap(library.settings) as adapters, adapters.unit_of_work() as uow:
            image = await uow.images.get_or_create("group", str(photo))
            paths = adapters.thumbnails.save_faces(image.id, analysis)
            await uow.save_analysis(image.id, hashlib.sha256(data).hexdigest(), len(data), analysis, paths)
            await uow.commit()
            return image.id

    return asyncio.run(store())


def test_add_a_face_the_detector_missed(library: Library, analyzer: FaceAnalyzer, eval_dir: Path) -> None:
    photo = eval_dir / "groups" / PHOTO
    plain = analyzer.analyze(photo.read_bytes())
    sizes = [face.quality.size_px for face in plain.faces]
    smallest = int(np.argmin(sizes))
    missing = plain.faces[smallest]
    others = [face for index, face in enumerate(plain.faces) if index != smallest]
    image_id = store_without(library, photo, dataclasses.replace(plain, faces=others))
    url = f"/api/images/{image_id}/faces"
    settings = library.settings.model_copy(update={"intra_op_threads": 1})
    with TestClient(create_app(settings)) as client:
        before = client.get(f"/api/images/{image_id}").json()["faces"]
        assert len(before) == len(plain.faces) - 1
        assert not any(face["added_by_hand"] for face in before)

        answer = client.post(url, json={"box": drawn(missing.box), "person_id": library.bob})
        assert types(answer) == ["face.added", "faces.detected", "persons.updated"]
        added = answer.json()["changes"][0]["data"]
        assert (added["image_id"], added["person_id"]) == (image_id, library.bob)
        assert box_iou(np.array(added["box"]), np.array(missing.box))[0, 0] > 0.8
        assert client.app.state.adapters._analyzer is not None  # type: ignore[attr-defined]

        after = {face["id"]: face for face in client.get(f"/api/images/{image_id}").json()["faces"]}
        assert len(after) == len(plain.faces)
        face = after[added["face_id"]]
        assert face["added_by_hand"] is True
        assert (face["person_id"], face["assigned_by"]) == (library.bob, "manual")
        thumbnail = client.get(face["thumbnail_url"])
        assert thumbnail.status_code == 200
        assert thumbnail.content[:2] == b"\xff\xd8"
        ((embedding,),) = rows(library, select(faces.c.embedding).where(faces.c.id == added["face_id"]))
        assert float(np.frombuffer(embedding, "<f4") @ missing.embedding) > MIN_COSINE
        bobs = client.get(f"/api/persons/{library.bob}").json()
        assert added["face_id"] in [each["id"] for each in bobs["faces"]]

        # Again: the face is there already, nothing changes; a detected face is assigned, not added.
        assert types(client.post(url, json={"box": drawn(missing.box)})) == []
        refused(
            client.post(url, json={"box": list(others[0].box)}), 422, "invalid_command", "has a face there"
        )
        assert len(client.get(f"/api/images/{image_id}").json()["faces"]) == len(plain.faces)
