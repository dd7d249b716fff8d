"""Switching a library from the default pack (buffalo_sc) to the licence-clean one (yunet_dlib), on real
photos with the real models over SQLite and PostgreSQL: the new pack's detector finds each face again
where the old one was, so `repack` gives every new face the old face's person, and keeps names, covers,
faces moved in by hand and "not this person" marks; a recluster with the new pack's thresholds keeps
them all. The two packs' embeddings (512-d and 128-d) are never compared."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from image_grouping.bootstrap import bootstrap
from image_grouping.config import Settings, load_settings
from image_grouping.handlers.recognition import handle_recluster_requested
from image_grouping.handlers.repack import repack_images
from image_grouping.local_scan import find_images, scan_files
from image_grouping.models.face_identity import match_boxes
from image_grouping.models.messages import ReclusterRequested
from image_grouping.storage import SqlUnitOfWork
from image_grouping.storage.schema import BY_HAND, faces, images

UnitOfWork = Callable[[], SqlUnitOfWork]
OLD, NEW = "buffalo_sc", "yunet_dlib"
GROUP_PHOTOS = ["deepface__couple.jpg", "compreface__010_2.jpg"]
SAME_PERSON = ["Al_Gore_0001.jpg", "Al_Gore_0002.jpg", "Al_Gore_0003.jpg", "Al_Gore_0004.jpg"]

Face = tuple[int, int | None, str]  # face id, person id, assigned_by


async def _faces_of(engine: AsyncEngine, pack: str) -> dict[int, list[tuple[tuple[float, ...], Face]]]:
    """image id -> [(box, (face id, person id, assigned_by))] of one pack's faces, in analysis order."""
    query = (
        select(
            faces.c.image_id,
            faces.c.box_x1,
            faces.c.box_y1,
            faces.c.box_x2,
            faces.c.box_y2,
            faces.c.id,
            faces.c.person_id,
            faces.c.assigned_by,
        )
        .where(faces.c.model_pack == pack)
        .order_by(faces.c.image_id, faces.c.face_index)
    )
    found: dict[int, list[tuple[tuple[float, ...], Face]]] = {}
    async with engine.connect() as connection:
        for row in await connection.execute(query):
            found.setdefault(row[0], []).append((tuple(row[1:5]), tuple(row[5:])))
    return found


def _same_faces(old: dict, new: dict) -> dict[int, int]:
    """Old face id -> new face id of the faces both packs found at one place (box IoU >= 0.5)."""
    pairs = {}
    for image_id, new_faces in new.items():
        old_faces = old.get(image_id, [])
        old_boxes = np.array([box for box, _ in old_faces], np.float64).reshape(-1, 4)
        new_boxes = np.array([box for box, _ in new_faces], np.float64).reshape(-1, 4)
        for new_index, old_index in match_boxes(old_boxes, new_boxes).items():
            pairs[old_faces[old_index][1][0]] = new_faces[new_index][1][0]
    return pairs


def _settings(engine: AsyncEngine, storage: Path, pack: str) -> Settings:
    return load_settings(
        database_url=engine.url.render_as_string(hide_password=False),
        sql_connection_string=None,
        system_storage=storage,
        thumbnail_save_path=storage / "thumbnails",
        model_pack=pack,
        model_dir=None,
        intra_op_threads=1,
    )


@pytest.mark.slow
async def test_repack_to_the_licence_clean_pack_keeps_persons_names_and_edits(
    unit_of_work: UnitOfWork, grouping_engine: AsyncEngine, eval_dir: Path, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in GROUP_PHOTOS:
        shutil.copy(eval_dir / "groups" / name, photos / name)
    for name in SAME_PERSON:
        shutil.copy(eval_dir / "identity" / "Al_Gore" / name, photos / name)
    old_settings = _settings(grouping_engine, tmp_path / "data", OLD)
    new_settings = _settings(grouping_engine, tmp_path / "data", NEW)

    async with bootstrap(old_settings, engine=grouping_engine, local_files=True) as adapters:
        await scan_files(find_images(photos), adapters.detection_deps(), batch_size=4)
        await handle_recluster_requested([ReclusterRequested()], adapters.grouping_deps())

    # By hand under the old pack: name the man of the four photos, choose his cover, take one of his
    # faces out ("not this person"), move a face of a group photo in.
    async with unit_of_work() as uow:
        named = max(await uow.persons.list(), key=lambda person: person.face_count)
        assert named.face_count == len(SAME_PERSON)
        stored = await uow.faces.load_for_grouping(OLD)
        members = stored.face_ids[stored.person_ids == named.id].tolist()
        cover, removed = members[0], members[-1]
        moved = int(stored.face_ids[stored.person_ids != named.id][0])
        await uow.persons.rename(named.id, "Ada")
        await uow.persons.set_cover(named.id, cover)
        await uow.faces.remove_from_person(removed)
        await uow.faces.assign_by_hand(moved, named.id)
        await uow.commit()
    old_faces = await _faces_of(grouping_engine, OLD)
    old_by_id = {face[0]: face for image in old_faces.values() for _, face in image}

    async with bootstrap(new_settings, engine=grouping_engine, local_files=True) as adapters:
        summary = await repack_images(adapters.detection_deps(), from_pack=None, limit=None)
    total_images = len(GROUP_PHOTOS) + len(SAME_PERSON)
    assert (summary.images, summary.repacked, summary.failed) == (total_images, total_images, 0)

    new_faces = await _faces_of(grouping_engine, NEW)
    same = _same_faces(old_faces, new_faces)
    # The new detector finds every old face again at its place, and nothing else.
    assert set(same) == set(old_by_id)
    assert summary.faces == summary.matched == len(old_by_id)
    new_by_id = {face[0]: face for image in new_faces.values() for _, face in image}
    for old_id, new_id in same.items():
        assert new_by_id[new_id][1:] == old_by_id[old_id][1:]  # the same person, set the same way
    assert new_by_id[same[moved]][1:] == (named.id, BY_HAND)
    assert new_by_id[same[removed]][1:] == (None, BY_HAND)
    async with grouping_engine.connect() as connection:
        packs = set((await connection.execute(select(images.c.model_pack))).scalars())
    assert packs == {NEW}

    # Grouping the new pack's faces, with its own thresholds, keeps the name, the cover and the edits.
    async with bootstrap(new_settings, engine=grouping_engine) as adapters:
        await handle_recluster_requested([ReclusterRequested()], adapters.grouping_deps())
    regrouped = {
        face[0]: face for image in (await _faces_of(grouping_engine, NEW)).values() for _, face in image
    }
    ada_before = {new_id for new_id, face in new_by_id.items() if face[1] == named.id}
    assert {face_id for face_id, face in regrouped.items() if face[1] == named.id} == ada_before
    assert regrouped[same[moved]][1:] == (named.id, BY_HAND)
    assert regrouped[same[removed]][1:] == (None, BY_HAND)
    async with unit_of_work() as uow:
        assert (same[removed], named.id) in await uow.faces.cannot_links()
        ada = next(person for person in await uow.persons.list() if person.id == named.id)
    assert ada.name == "Ada"
    assert ada.cover_face_id == same[cover]
    # The old pack's faces stay as they were, for switching back.
    assert await _faces_of(grouping_engine, OLD) == old_faces
