"""A face added by hand, with the real models on a real photo, over SQLite and PostgreSQL: it is embedded
like the detector's face of it, gets its thumbnail, is marked and joins its person, and keeps all of it
through re-analysis (the detector missing it again, then finding it), three reclusters and a repack;
forgotten with its person, re-analysis does not bring it back.

The detector "misses" a face by a minimum face size just above that face's (the analyzer's own filter),
so the same photo gives the face by detection (the plain analyzer) and by hand (the strict one); the second
pack is the same model files under another pack id, sharing the sessions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from image_grouping.bootstrap import bootstrap, grouping_params, load_analyzer
from image_grouping.config import Settings, load_settings
from image_grouping.handlers import people
from image_grouping.handlers.add_face import handle_add_face
from image_grouping.handlers.detection import handle_images_uploaded
from image_grouping.handlers.recognition import GroupingDeps, handle_recluster_requested
from image_grouping.handlers.repack import repack_images
from image_grouping.models.face_identity import box_iou
from image_grouping.models.messages import (
    AddFace,
    FaceAdded,
    ForgetPerson,
    ImageUploaded,
    ReclusterRequested,
)
from image_grouping.storage import SqlUnitOfWork
from image_grouping.storage.schema import BY_HAND, faces
from image_grouping.vision import FaceAnalyzer

pytestmark = pytest.mark.slow

PHOTO = "compreface__000_5.jpg"  # five faces, one of them smaller than the others
PACK_B = "pack_b"
# The embedding of a face added by hand, against the detector's of the same face (bench/hand_faces.py
# measures: median above 0.99 from a box like this one).
MIN_COSINE = 0.9


@pytest.fixture(scope="module")
def analyzer() -> Iterator[FaceAnalyzer]:
    analyzer = load_analyzer(load_settings(intra_op_threads=1))
    yield analyzer
    analyzer.close()


def strict(analyzer: FaceAnalyzer, min_face_size: int, pack: str | None = None) -> FaceAnalyzer:
    """The same sessions with a larger minimum face size (and, with `pack`, under another pack's id)."""
    params = dataclasses.replace(analyzer.params, min_face_size=min_face_size)
    return FaceAnalyzer(params, pack or analyzer.model_pack, analyzer.detector, analyzer.recognizer)


def drawn(box: tuple[float, ...]) -> tuple[float, float, float, float]:
    """A box as a person draws it: larger than the detector's, reaching up over the hair."""
    x1, y1, x2, y2 = box
    width, height = x2 - x1, y2 - y1
    return (x1 - 0.1 * width, y1 - 0.25 * height, x2 + 0.1 * width, y2 + 0.05 * height)


async def _faces(engine: AsyncEngine, pack: str) -> dict[int, Any]:
    query = select(faces).where(faces.c.model_pack == pack).order_by(faces.c.face_index)
    async with engine.connect() as connection:
        return {row.id: row for row in await connection.execute(query)}


def _cosine(row: Any, embedding: np.ndarray) -> float:
    return float(np.frombuffer(row.embedding, "<f4") @ embedding)


async def test_a_face_added_by_hand_is_kept_through_reanalysis_reclusters_and_a_repack(
    unit_of_work: Callable[[], SqlUnitOfWork],
    grouping_engine: AsyncEngine,
    grouping_settings: Settings,
    analyzer: FaceAnalyzer,
    eval_dir: Path,
    tmp_path: Path,
) -> None:
    photo = eval_dir / "groups" / PHOTO
    plain = analyzer.analyze(photo.read_bytes())
    sizes = [face.quality.size_px for face in plain.faces]
    smallest = int(np.argmin(sizes))
    assert sorted(sizes)[1] > sizes[smallest] + 2  # only that one is missed by the strict analyzer
    missing = plain.faces[smallest]
    missing_by = strict(analyzer, int(sizes[smallest]) + 1)
    settings = grouping_settings.model_copy(
        update={"system_storage": tmp_path, "thumbnail_save_path": tmp_path / "thumbnails"}
    )
    pack = analyzer.model_pack
    async with bootstrap(settings, analyzer=missing_by, engine=grouping_engine, local_files=True) as adapters:
        detection = adapters.detection_deps()
        add_deps = adapters.add_face_deps()
        upload = ImageUploaded(image_id="group", path=str(photo))
        (detected,) = await handle_images_uploaded([upload], detection)
        assert isinstance(detected, list)
        assert detected[0].face_count == len(plain.faces) - 1
        async with unit_of_work() as uow:
            person = await uow.persons.create(name="Somebody")
            (image,) = await uow.images.find("group", None)
            await uow.commit()

        # Added by hand with a sloppy box: analysed where the detector puts that face.
        command = AddFace(image_id=image.id, box=drawn(missing.box), person_id=person)
        (outcome,) = await handle_add_face([command], add_deps)
        assert isinstance(outcome, list), outcome
        added = outcome[0]
        assert isinstance(added, FaceAdded)
        assert box_iou(np.array(added.box), np.array(missing.box))[0, 0] > 0.8
        stored = await _faces(grouping_engine, pack)
        assert len(stored) == len(plain.faces)
        row = stored[added.face_id]
        assert (row.added_by_hand, row.person_id, row.assigned_by) == (True, person, BY_HAND)
        assert not any(other.added_by_hand for other in stored.values() if other.id != added.face_id)
        assert _cosine(row, missing.embedding) > MIN_COSINE
        assert (tmp_path / row.thumbnail_path).is_file()
        embedding = np.frombuffer(row.embedding, "<f4").copy()
        async with unit_of_work() as uow:
            shown = {face.id: face for face in await uow.views.faces_of_image(image.id)}
            (recorded,) = await uow.faces.edits([added.face_id])
        assert (recorded.from_person_id, recorded.to_person_id, recorded.action) == (None, person, "add")
        assert shown[added.face_id].added_by_hand
        assert shown[added.face_id].assigned_by == "manual"

        # The same command again: nothing more.
        assert await handle_add_face([command], add_deps) == [[]]
        assert (await _faces(grouping_engine, pack)).keys() == stored.keys()

        def unchanged() -> None:
            assert again.keys() == stored.keys()
            row = again[added.face_id]
            assert (row.added_by_hand, row.person_id, row.assigned_by) == (True, person, BY_HAND)
            assert (row.box_x1, row.box_y1, row.box_x2, row.box_y2) == added.box
            assert _cosine(row, embedding) > 0.999
            assert (tmp_path / row.thumbnail_path).is_file()

        # Re-analysed (a redelivered upload) by the detector that misses it: kept.
        await handle_images_uploaded([upload], detection)
        again = await _faces(grouping_engine, pack)
        unchanged()
        # ... and by one that finds it: the same face, not a second one.
        await handle_images_uploaded([upload], dataclasses.replace(detection, analyzer=analyzer))
        again = await _faces(grouping_engine, pack)
        unchanged()

        grouping = GroupingDeps(
            unit_of_work=unit_of_work,
            params=grouping_params(settings),
            model_pack=pack,
            interval_seconds=settings.interval_seconds,
        )
        for _ in range(3):
            await handle_recluster_requested([ReclusterRequested(model_pack=pack)], grouping)
            again = await _faces(grouping_engine, pack)
            unchanged()

        # Repack: the new pack's analysis has the face too, added by hand, with its person.
        pack_b = strict(analyzer, int(sizes[smallest]) + 1, PACK_B)
        summary = await repack_images(
            dataclasses.replace(detection, analyzer=pack_b), from_pack=None, limit=None
        )
        assert (summary.repacked, summary.failed) == (1, 0)
        in_b = await _faces(grouping_engine, PACK_B)
        assert len(in_b) == len(plain.faces)
        (by_hand,) = [row for row in in_b.values() if row.added_by_hand]
        assert (by_hand.person_id, by_hand.assigned_by) == (person, BY_HAND)
        assert (by_hand.box_x1, by_hand.box_y1, by_hand.box_x2, by_hand.box_y2) == added.box
        assert _cosine(by_hand, embedding) > 0.999  # the same models under another id

        # Forgotten with its person (every pack's face of it goes): analysing the photo again, by the
        # detector that misses the face or by the one that finds it, does not bring it back.
        (forgotten,) = await people.handle_forget_person(
            [ForgetPerson(person_id=person)], adapters.people_deps()
        )
        assert isinstance(forgotten, list)
        for reanalysis in (detection, dataclasses.replace(detection, analyzer=analyzer)):
            await handle_images_uploaded([upload], reanalysis)
            left = (await _faces(grouping_engine, pack)).values()
            assert len(left) == len(plain.faces) - 1
            assert not any(row.added_by_hand for row in left)
            boxes = np.array([(row.box_x1, row.box_y1, row.box_x2, row.box_y2) for row in left])
            assert box_iou(boxes, np.array(added.box)).max() < 0.5
        assert not any(row.added_by_hand for row in (await _faces(grouping_engine, PACK_B)).values())
