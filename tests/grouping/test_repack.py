"""Switching the model pack, on real photos with the real models over SQLite and PostgreSQL: `repack`
analyses the stored images again with the new pack and carries persons, names, manual edits, covers and
cannot-links over; a recluster under the new pack keeps them; a second run and a dry run write nothing.

The second pack is the bundled buffalo_sc's files in a folder of another name (MODEL_DIR), so it is a real
pack with its own id; it finds the same faces, which lets the test compare the two packs face by face.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from image_grouping.bootstrap import bootstrap
from image_grouping.config import Settings, load_settings
from image_grouping.handlers.detection import handle_images_uploaded
from image_grouping.handlers.recognition import handle_recluster_requested
from image_grouping.handlers.repack import RepackSummary, repack_images
from image_grouping.local_scan import find_images, scan_files
from image_grouping.models.messages import ImageUploaded, ReclusterRequested
from image_grouping.storage import SqlUnitOfWork
from image_grouping.storage.schema import BY_HAND, cannot_links, faces, images, persons
from image_grouping.vision.model_pack import BUNDLED_MODEL_FOLDER, BUNDLED_PACKS

UnitOfWork = Callable[[], SqlUnitOfWork]
PACK_A, PACK_B = "buffalo_sc", "pack_b"
GROUP_PHOTOS = ["compreface__010_2.jpg", "deepface__couple.jpg", "compreface__017_0.jpg"]  # the last: no face
SAME_PERSON = ["Al_Gore_0001.jpg", "Al_Gore_0002.jpg", "Al_Gore_0003.jpg"]
UPLOADED = "Al_Gore_0004.jpg"  # registered by the uploader's path, read through DB_PREFIX
GONE = "Al_Sharpton_0001.jpg"  # analysed, then deleted from disk before the switch

FaceKey = tuple[int, int]  # (image id, face index): the same face in both packs, which find the same faces


@pytest.fixture(scope="module")
def pack_b_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("packs") / PACK_B
    folder.mkdir()
    for name in BUNDLED_PACKS[PACK_A]:
        shutil.copy(BUNDLED_MODEL_FOLDER / name, folder / name)
    return folder


async def _rows(engine: AsyncEngine) -> dict[str, list[Any]]:
    """Every row of the tables a repack could write."""
    async with engine.connect() as connection:
        return {
            table.name: (await connection.execute(select(table).order_by(*table.primary_key))).all()
            for table in (images, faces, persons, cannot_links)
        }


async def _faces_of(engine: AsyncEngine, pack: str) -> dict[FaceKey, tuple[int, int | None, str]]:
    """(image id, face index) -> (face id, person id, assigned_by) of one pack's faces."""
    query = select(
        faces.c.image_id, faces.c.face_index, faces.c.id, faces.c.person_id, faces.c.assigned_by
    ).where(faces.c.model_pack == pack)
    async with engine.connect() as connection:
        return {(row[0], row[1]): tuple(row[2:]) for row in await connection.execute(query)}


def _settings(engine: AsyncEngine, storage: Path, uploads: Path) -> Settings:
    return load_settings(
        database_url=engine.url.render_as_string(hide_password=False),
        sql_connection_string=None,
        system_storage=storage,
        thumbnail_save_path=storage / "thumbnails",
        db_prefix="//server/files",
        container_images_root=uploads,
        model_pack=PACK_A,
        model_dir=None,
    )


async def repack(
    settings: Settings, engine: AsyncEngine, *, dry_run: bool = False, limit: int | None = None
) -> RepackSummary:
    """`image-grouping repack` as the command wires it."""
    settings = settings.model_copy(update={"dry_run": dry_run})
    async with bootstrap(settings, engine=engine, local_files=True) as adapters:
        return await repack_images(adapters.detection_deps(), from_pack=None, limit=limit)


async def _analyse_under_pack_a(settings: Settings, engine: AsyncEngine, eval_dir: Path, tmp: Path) -> None:
    """One uploaded image through detection, a scanned folder through `scan` (which groups them all)."""
    scanned = tmp / "scanned"
    scanned.mkdir()
    for name in GROUP_PHOTOS:
        shutil.copy(eval_dir / "groups" / name, scanned / name)
    for name in [*SAME_PERSON, GONE]:
        shutil.copy(eval_dir / "identity" / name.rsplit("_", 1)[0] / name, scanned / name)
    shutil.copy(eval_dir / "identity" / "Al_Gore" / UPLOADED, settings.container_images_root / "gore.jpg")

    async with bootstrap(settings, engine=engine, local_files=True) as adapters:
        upload = ImageUploaded(image_id="up-1", path="\\\\server\\files\\gore.jpg")
        (detected,) = await handle_images_uploaded([upload], adapters.detection_deps())
        assert isinstance(detected, list)
        deps = adapters.detection_deps(skip_known_content=True)
        summary = await scan_files(find_images(scanned), deps, batch_size=4)
        await handle_recluster_requested([ReclusterRequested()], adapters.grouping_deps())
    assert (summary.analysed, summary.failed) == (len(GROUP_PHOTOS) + len(SAME_PERSON) + 1, 0)
    (scanned / GONE).unlink()


@pytest.mark.slow
async def test_repack_carries_persons_and_manual_edits_over_to_the_new_pack(
    unit_of_work: UnitOfWork,
    grouping_engine: AsyncEngine,
    eval_dir: Path,
    pack_b_folder: Path,
    tmp_path: Path,
) -> None:
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    settings_a = _settings(grouping_engine, tmp_path / "data", uploads)
    settings_b = settings_a.model_copy(update={"model_dir": pack_b_folder, "model_pack": PACK_B})
    await _analyse_under_pack_a(settings_a, grouping_engine, eval_dir, tmp_path)

    async with grouping_engine.connect() as connection:
        gone_id = (
            await connection.execute(select(images.c.id).where(images.c.source_path.like(f"%{GONE}")))
        ).scalar_one()

    # Edits by hand under pack A: name the largest person, take one face out, move another face in
    # (a face of a photo still on disk, so the move can be carried over).
    async with unit_of_work() as uow:
        named = max(await uow.persons.list(), key=lambda person: person.face_count)
        assert named.face_count >= len(SAME_PERSON)  # the three photos of one man, grouped together
        stored = await uow.faces.load_for_grouping(PACK_A)
        on_disk = stored.image_ids != gone_id
        members = stored.face_ids[(stored.person_ids == named.id) & on_disk].tolist()
        cover, removed = members[0], members[-1]
        moved = int(stored.face_ids[(stored.person_ids != named.id) & on_disk][0])
        await uow.persons.rename(named.id, "Ada")
        await uow.persons.set_cover(named.id, cover)
        await uow.faces.remove_from_person(removed)
        await uow.faces.assign_by_hand(moved, named.id)
        await uow.commit()
    faces_a = await _faces_of(grouping_engine, PACK_A)
    kept_a = {key: value for key, value in faces_a.items() if key[0] != gone_id}
    total_images = len(GROUP_PHOTOS) + len(SAME_PERSON) + 2

    carried = [value for value in kept_a.values() if value[1] is not None or value[2] == BY_HAND]

    # A dry run analyses, matches and carries over everything, and writes nothing, thumbnails included.
    before = await _rows(grouping_engine)
    dry = await repack(settings_b, grouping_engine, dry_run=True)
    assert await _rows(grouping_engine) == before
    assert not list((tmp_path / "data" / "thumbnails").rglob(f"*_{PACK_B}_*"))
    assert (dry.images, dry.repacked, dry.failed) == (total_images, total_images - 1, 1)
    assert dry.faces == dry.matched == len(kept_a)
    assert dry.carried == len(carried)

    # A first run stopped after a few images, then the rest: each image is done once.
    first = await repack(settings_b, grouping_engine, limit=3)
    rest = await repack(settings_b, grouping_engine)
    assert (first.images, first.repacked, first.failed) == (3, 3, 0)
    assert (rest.images, rest.repacked, rest.failed) == (total_images - 3, total_images - 4, 1)
    assert first.faces + rest.faces == len(kept_a)
    assert first.carried + rest.carried == len(carried)
    assert first.cannot_links + rest.cannot_links == 1

    async with grouping_engine.connect() as connection:
        packs = dict((await connection.execute(select(images.c.id, images.c.model_pack))).all())
    assert packs.pop(gone_id) == PACK_A  # unreadable: skipped, its result left as it was
    assert set(packs.values()) == {PACK_B}  # the image without a face too
    faces_b = await _faces_of(grouping_engine, PACK_B)
    assert faces_b.keys() == kept_a.keys()
    # Every face has its old face's person, set the same way (by grouping or by hand).
    assert {key: value[1:] for key, value in faces_b.items()} == {
        key: value[1:] for key, value in kept_a.items()
    }
    key_of = {value[0]: key for key, value in faces_a.items()}
    new_id = {key: value[0] for key, value in faces_b.items()}
    assert faces_b[key_of[moved]][1:] == (named.id, BY_HAND)
    assert faces_b[key_of[removed]][1:] == (None, BY_HAND)
    async with unit_of_work() as uow:
        assert (new_id[key_of[removed]], named.id) in await uow.faces.cannot_links()
        ada = next(person for person in await uow.persons.list() if person.id == named.id)
    assert ada.name == "Ada"
    assert ada.cover_face_id == new_id[key_of[cover]]

    # Grouping the new pack keeps all of it; the old pack's faces are untouched.
    async with bootstrap(settings_b, engine=grouping_engine) as adapters:
        await handle_recluster_requested([ReclusterRequested()], adapters.grouping_deps())
    regrouped = await _faces_of(grouping_engine, PACK_B)
    members_b = {key for key, value in faces_b.items() if value[1] == named.id}
    assert {key for key, value in regrouped.items() if value[1] == named.id} == members_b
    assert regrouped[key_of[moved]][1:] == (named.id, BY_HAND)
    assert regrouped[key_of[removed]][1:] == (None, BY_HAND)
    async with unit_of_work() as uow:
        assert (new_id[key_of[removed]], named.id) in await uow.faces.cannot_links()
        assert {person.id: person.name for person in await uow.persons.list()}[named.id] == "Ada"
    assert await _faces_of(grouping_engine, PACK_A) == faces_a

    # A second run finds only the image it cannot read, and writes nothing.
    before = await _rows(grouping_engine)
    again = await repack(settings_b, grouping_engine)
    assert (again.images, again.repacked, again.failed) == (1, 0, 1)
    assert await _rows(grouping_engine) == before
