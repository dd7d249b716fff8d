"""The warm copy of the faces (`WarmGroupingReader`) gives incremental assignment exactly what a fresh read
gives, after every kind of change: faces detected, grouped, edited by hand (renamed, assigned, refused,
merged, hidden, a cover chosen), a photo deleted (a cover's too), a person forgotten, a face analysed
again, a recluster of this process and of another, and writes of faces and persons that committed late
with times older than the refresh. Compared: the rows (every array, every person, every cannot-link) and
the decisions of incremental assignment on them. On SQLite and PostgreSQL. With `approximate_from=0` the
copy also keeps each face's row of the approximate neighbour search (as a large library's does): it must
stay in step with the faces, and the decisions taken with it must be those of the exact search on a fresh
read.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from test_concurrent_edits import insert_faces

from image_grouping.bootstrap import grouping_params
from image_grouping.config import Settings
from image_grouping.grouping import assign_incrementally
from image_grouping.handlers import people
from image_grouping.handlers.ports import GroupingRows
from image_grouping.handlers.recognition import (
    GroupingDeps,
    _snapshot,
    handle_faces_detected,
    handle_recluster_requested,
    read_rows,
)
from image_grouping.models.messages import (
    DEFAULT_LIBRARY,
    AssignFace,
    ChooseCover,
    FacesDetected,
    ForgetPerson,
    ImageDeleted,
    MergePersons,
    ReclusterRequested,
    RejectFace,
    RenamePerson,
    SetPersonHidden,
)
from image_grouping.storage import SqlUnitOfWork, ThumbnailStore, read_database_id
from image_grouping.storage.grouping_cache import APPROXIMATE_FROM, WarmGroupingReader
from image_grouping.storage.schema import faces, images, persons

IDENTITIES, PER_IDENTITY, DIM = 60, 8, 512
NOISE = 0.6


def identity_faces(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((IDENTITIES, 1, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=2, keepdims=True)
    noise = rng.standard_normal((IDENTITIES, PER_IDENTITY, DIM)).astype(np.float32)
    noise *= NOISE / np.linalg.norm(noise, axis=2, keepdims=True)
    embeddings = centres + noise
    return embeddings / np.linalg.norm(embeddings, axis=2, keepdims=True)


def assert_same_rows(warm: GroupingRows, fresh: GroupingRows) -> None:
    for name in ("face_ids", "image_ids", "embeddings", "person_ids", "manual"):
        np.testing.assert_array_equal(getattr(warm.faces, name), getattr(fresh.faces, name), err_msg=name)
    for name in ("det_score", "size_px", "sharpness", "yaw"):
        np.testing.assert_array_equal(getattr(warm.faces, name), getattr(fresh.faces, name), err_msg=name)
    assert warm.persons == fresh.persons
    assert warm.cannot_links == fresh.cannot_links


class Check:
    def __init__(
        self, unit_of_work: Callable[[], SqlUnitOfWork], reader: WarmGroupingReader, settings: Settings
    ):
        self.unit_of_work, self.reader = unit_of_work, reader
        self.pack, self.params = settings.model_pack, grouping_params(settings)
        self.decisions = 0

    async def same_as_fresh(self, change: str) -> None:
        async with self.reader.hold(DEFAULT_LIBRARY, self.pack) as source:
            async with self.unit_of_work() as uow:
                warm = await source.read(uow, fresh=False)
            async with self.unit_of_work() as uow:
                fresh = await read_rows(uow, self.pack)
            try:
                assert_same_rows(warm, fresh)
            except AssertionError as error:
                raise AssertionError(f"after {change}: {error}") from error
            if warm.reduced is not None:
                # Each row's projection is that of the face now in the row (kept in step by every change).
                projection = self.reader._copies[DEFAULT_LIBRARY, self.pack].rows.projection
                assert projection is not None
                expected = projection.apply(warm.faces.embeddings)
                np.testing.assert_allclose(warm.reduced, expected, atol=1e-5, err_msg=change)
            unassigned = np.flatnonzero(fresh.faces.person_ids < 0)
            if len(unassigned) == 0:
                return
            decided = [
                assign_incrementally(
                    _snapshot(rows, self.params).grouping,
                    rows.faces.person_ids,
                    unassigned,
                    self.params,
                    reduced=rows.reduced,
                )
                for rows in (warm, fresh)
            ]
        assert decided[0].joined == decided[1].joined, change
        assert [members.tolist() for members in decided[0].founded] == [
            members.tolist() for members in decided[1].founded
        ], change
        self.decisions += 1


async def person_of(engine: AsyncEngine, face_id: int) -> int | None:
    async with engine.connect() as connection:
        return (await connection.execute(select(faces.c.person_id).where(faces.c.id == face_id))).scalar_one()


# Without a window, each change is caught by its own time (no re-read of everything written lately).
@pytest.mark.parametrize("window_seconds", [300.0, 0.0])
@pytest.mark.parametrize("approximate_from", [APPROXIMATE_FROM, 0], ids=["exact", "approximate"])
async def test_the_warm_copy_decides_as_a_fresh_read_after_every_kind_of_change(
    unit_of_work: Callable[[], SqlUnitOfWork],
    grouping_engine: AsyncEngine,
    grouping_settings: Settings,
    tmp_path: Path,
    window_seconds: float,
    approximate_from: int,
) -> None:
    pack, params = grouping_settings.model_pack, grouping_params(grouping_settings)
    embeddings = identity_faces()
    reader = WarmGroupingReader(
        max_faces=1_000_000, window_seconds=window_seconds, approximate_from=approximate_from
    )
    warm_deps = GroupingDeps(unit_of_work, params, pack, 900.0, reader=reader)
    other_process = GroupingDeps(unit_of_work, params, pack, 900.0)  # reads from the database each time
    store = ThumbnailStore(tmp_path / "thumbnails", tmp_path, await read_database_id(grouping_engine))
    people_deps = people.PeopleDeps(unit_of_work=unit_of_work, thumbnails=store, model_pack=pack)
    check = Check(unit_of_work, reader, grouping_settings)

    async def add(keys: list[tuple[int, int]]) -> dict[tuple[int, int], int]:
        return await insert_faces(grouping_engine, {key: embeddings[key] for key in keys}, pack)

    face = await add([(i, n) for i in range(IDENTITIES) for n in range(5)])
    (outcome,) = await handle_recluster_requested([ReclusterRequested(model_pack=pack)], other_process)
    assert isinstance(outcome, list)
    await check.same_as_fresh("the first read")  # warms the copy
    assert reader.faces_held == IDENTITIES * 5

    # Faces detected, then grouped by this process (its own write).
    face |= await add([(i, 5) for i in range(IDENTITIES)])
    await check.same_as_fresh("faces detected")
    batch = [
        FacesDetected(image_id="x", face_ids=[face[i, 5] for i in range(30)], face_count=30, model_pack=pack)
    ]
    await handle_faces_detected(batch, warm_deps)
    assert await person_of(grouping_engine, face[0, 5]) is not None
    await check.same_as_fresh("faces grouped here")

    # Edits by hand.
    person = {i: await person_of(grouping_engine, face[i, 0]) for i in range(IDENTITIES)}
    assert None not in person.values()
    assert len(set(person.values())) == IDENTITIES
    edits = [
        (people.handle_rename_person, RenamePerson(person_id=person[1], name="Ada")),
        (people.handle_assign_face, AssignFace(face_id=face[2, 1], person_id=person[3])),
        (people.handle_reject_face, RejectFace(face_id=face[4, 1])),
        (people.handle_reject_face, RejectFace(face_id=face[5, 2], person_id=person[5])),
        (people.handle_merge_persons, MergePersons(target_id=person[6], source_ids=[person[5]])),
        (people.handle_assign_face, AssignFace(face_id=face[7, 2], person_id=None)),
        (people.handle_image_deleted, ImageDeleted(path="synthetic/8/0.jpg")),
        (people.handle_forget_person, ForgetPerson(person_id=person[9])),
        (people.handle_set_person_hidden, SetPersonHidden(person_id=person[14], hidden=True)),
        (people.handle_choose_cover, ChooseCover(person_id=person[15], face_id=face[15, 2])),
        # The cover's photo deleted: the person's cover is cleared.
        (people.handle_image_deleted, ImageDeleted(path="synthetic/15/2.jpg")),
    ]
    for handler, command in edits:
        (outcome,) = await handler([command], people_deps)
        assert isinstance(outcome, list), (command, outcome)
        await check.same_as_fresh(command.event_type)

    # A face analysed again (its embedding and quality change, as a re-upload's analysis writes them).
    async with grouping_engine.begin() as connection:
        await connection.execute(
            update(faces)
            .where(faces.c.id == face[10, 1])
            .values(
                embedding=embeddings[11, 7].astype("<f4").tobytes(),
                det_score=0.5,
                updated_at=datetime.now(UTC),
            )
        )
    await check.same_as_fresh("a face analysed again")

    # Reclusters: another process's (the copy catches up on what it moved), then this process's.
    face |= await add([(i, 6) for i in range(IDENTITIES)])
    (outcome,) = await handle_recluster_requested([ReclusterRequested(model_pack=pack)], other_process)
    assert isinstance(outcome, list)
    await check.same_as_fresh("another process's recluster")
    face |= await add([(i, 7) for i in range(IDENTITIES // 2)])
    (outcome,) = await handle_recluster_requested([ReclusterRequested(model_pack=pack)], warm_deps)
    assert isinstance(outcome, list)
    await check.same_as_fresh("this process's recluster")

    # Writes that committed late: times older than the previous refresh, within the window (a move), and
    # older than the window (new faces: the count finds them).
    earlier = datetime.now(UTC) - timedelta(seconds=window_seconds / 10)
    async with grouping_engine.begin() as connection:
        await connection.execute(
            update(faces).where(faces.c.id == face[12, 3]).values(person_id=person[13], updated_at=earlier)
        )
    await check.same_as_fresh("a move committed late")
    late = await add([(i, 7) for i in range(IDENTITIES // 2, IDENTITIES)])
    async with grouping_engine.begin() as connection:
        await connection.execute(
            update(faces)
            .where(faces.c.id.in_(list(late.values())))
            .values(updated_at=datetime.now(UTC) - timedelta(seconds=10 * window_seconds))
        )
    await check.same_as_fresh("faces committed later than the window")
    # Persons written late: renamed within the window (with none, it is missed until the copy's next read
    # from scratch), created earlier than the window (their count finds it).
    if window_seconds:
        async with grouping_engine.begin() as connection:
            renamed = await connection.execute(
                update(persons).where(persons.c.id == person[16]).values(name="Grace", updated_at=earlier)
            )
            assert renamed.rowcount == 1
        await check.same_as_fresh("a person renamed late")
    long_ago = datetime.now(UTC) - timedelta(seconds=10 * window_seconds)
    async with grouping_engine.begin() as connection:
        late_person = await connection.execute(
            insert(persons).values(
                name="Late",
                hidden=False,
                created_at=long_ago,
                updated_at=long_ago,
                library_id=DEFAULT_LIBRARY,
            )
        )
        # Given a face as it is read (a person with faces is read as one without: the copy must not count
        # them either).
        await connection.execute(
            update(faces)
            .where(faces.c.id == face[18, 4])
            .values(person_id=late_person.inserted_primary_key[0], updated_at=datetime.now(UTC))
        )
    await check.same_as_fresh("a person committed later than the window")
    assert reader.faces_held == len(await read_groupable(unit_of_work, pack))
    assert (reader._copies[DEFAULT_LIBRARY, pack].rows.reduced is not None) == (approximate_from == 0)
    assert check.decisions >= 10  # most changes left faces to decide on


async def read_groupable(unit_of_work: Callable[[], SqlUnitOfWork], pack: str) -> np.ndarray:
    async with unit_of_work() as uow:
        return (await read_rows(uow, pack)).faces.face_ids


async def test_each_library_has_its_copy_and_the_budget_drops_the_least_recently_used(
    unit_of_work: Callable[..., SqlUnitOfWork], grouping_engine: AsyncEngine, grouping_settings: Settings
) -> None:
    pack = grouping_settings.model_pack
    embeddings = identity_faces(1)
    first = 0
    for library, count in (("lib_a", 3), ("lib_b", 2), ("lib_c", 4)):  # 5 faces (photos) an identity
        keys = [(first + i, n) for i in range(count) for n in range(5)]
        stored = await insert_faces(
            grouping_engine, {key: embeddings[key[0] % IDENTITIES, key[1]] for key in keys}, pack
        )
        await move_to_library(grouping_engine, list(stored.values()), library)
        first += count
    reader = WarmGroupingReader(max_faces=30)

    async def read(library: str, reader: WarmGroupingReader = reader) -> GroupingRows:
        async with reader.hold(library, pack) as source, unit_of_work(library) as uow:
            return await source.read(uow, fresh=False)

    for library in ("lib_a", "lib_b", "lib_a"):
        warm = await read(library)
        async with unit_of_work(library) as uow:
            assert_same_rows(warm, await read_rows(uow, pack))  # its own faces only
    assert reader.faces_held == 25  # a (15) and b (10)
    assert len((await read("lib_c")).faces) == 20  # b, then a, must go
    assert list(reader._copies) == [("lib_c", pack)]
    small = WarmGroupingReader(max_faces=10)
    assert len((await read("lib_c", small)).faces) == 20
    assert small.faces_held == 0


async def move_to_library(engine: AsyncEngine, face_ids: list[int], library: str) -> None:
    async with engine.begin() as connection:
        image_ids = select(faces.c.image_id).where(faces.c.id.in_(face_ids)).scalar_subquery()
        await connection.execute(update(images).where(images.c.id.in_(image_ids)).values(library_id=library))
        await connection.execute(update(faces).where(faces.c.id.in_(face_ids)).values(library_id=library))
