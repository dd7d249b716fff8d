"""The data layer against real databases: idempotent writes, atomicity, manual edits kept."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from sqlalchemy import event, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from storage_factories import BOXES, PACK, make_analysis

from image_grouping.models.records import ImageResult
from image_grouping.storage import SqlUnitOfWork
from image_grouping.storage.schema import faces

UowFactory = Callable[[], SqlUnitOfWork]


async def store(new_uow: UowFactory, path: str, boxes=BOXES, seed: int = 0, pack: str = PACK) -> list[int]:
    """Register an image and save an analysis of it in one transaction, as the detection handler does."""
    async with new_uow() as uow:
        image = await uow.images.get_or_create(None, path)
        analysis = make_analysis(list(boxes), seed, pack)
        thumbnails = [f"thumbnails/{image.id}_{index}.jpg" for index in range(len(boxes))]
        face_ids = await uow.save_analysis(image.id, f"hash-{path}", 1234, analysis, thumbnails)
        await uow.commit()
    return face_ids


async def face_rows(new_uow: UowFactory) -> list:
    async with new_uow() as uow:
        query = select(
            faces.c.id, faces.c.image_id, faces.c.face_index, faces.c.person_id, faces.c.assigned_by
        )
        return (await uow.connection.execute(query.order_by(faces.c.id))).all()


async def test_redelivered_image_keeps_one_set_of_faces(uow_factory: UowFactory) -> None:
    first = await store(uow_factory, "//srv/files/a.jpg")
    second = await store(uow_factory, "//srv/files/a.jpg")

    assert len(first) == 3
    assert second == first
    assert [row.id for row in await face_rows(uow_factory)] == first


async def test_reanalysis_keeps_matching_faces_and_their_persons(uow_factory: UowFactory) -> None:
    first = await store(uow_factory, "//srv/files/b.jpg")
    async with uow_factory() as uow:
        alice = await uow.persons.create(name="Alice")
        bob = await uow.persons.create()
        await uow.faces.assign_by_hand(first[0], alice)
        await uow.faces.set_persons({first[1]: bob})
        await uow.persons.set_cover(bob, first[2])
        await uow.commit()

    # The same faces found again, slightly moved, in another order; the third face is gone, one is new.
    moved = [(602.0, 500.0, 660.0, 570.0), (302.0, 42.0, 381.0, 141.0), (12.0, 11.0, 111.0, 129.0)]
    second = await store(uow_factory, "//srv/files/b.jpg", moved, seed=1)

    assert second[1] == first[1]
    assert second[2] == first[0]
    assert second[0] not in first
    rows = {row.id: row for row in await face_rows(uow_factory)}
    assert set(rows) == set(second)
    assert (rows[first[0]].person_id, rows[first[0]].assigned_by) == (alice, "manual")
    assert (rows[first[1]].person_id, rows[first[1]].assigned_by) == (bob, "auto")
    assert [rows[face_id].face_index for face_id in second] == [0, 1, 2]
    async with uow_factory() as uow:
        stored = await uow.faces.load_by_ids(second)
        covers = {person.id: person.cover_face_id for person in await uow.persons.list()}
    new_embeddings = np.stack([face.embedding for face in make_analysis(moved, 1).faces])
    np.testing.assert_array_equal(stored.embeddings, new_embeddings[np.argsort(second)])
    assert covers[bob] is None  # its cover face no longer exists


async def test_two_workers_writing_the_same_image_at_once_make_no_duplicates(uow_factory: UowFactory) -> None:
    results = await asyncio.gather(*(store(uow_factory, "//srv/files/c.jpg") for _ in range(2)))

    assert results[0] == results[1]
    rows = await face_rows(uow_factory)
    assert len(rows) == 3
    assert len({row.image_id for row in rows}) == 1


async def test_the_unique_key_refuses_a_second_copy_of_a_face(uow_factory: UowFactory) -> None:
    await store(uow_factory, "//srv/files/d.jpg")
    async with uow_factory() as uow:
        row = dict(
            (await uow.connection.execute(select(faces).where(faces.c.face_index == 0))).one()._mapping
        )
        del row["id"]
        with pytest.raises(IntegrityError):
            await uow.connection.execute(insert(faces).values(**row))


async def test_a_crash_while_writing_an_image_leaves_no_partial_rows(uow_factory: UowFactory) -> None:
    first = await store(uow_factory, "//srv/files/e.jpg")
    before = await face_rows(uow_factory)
    async with uow_factory() as uow:
        image = await uow.images.get_or_create(None, "//srv/files/e.jpg")
        image_before = await uow.images.get(image.id)
    broken = make_analysis([BOXES[0], (1.0, 2.0, 3.0, 4.0), (500.0, 500.0, 560.0, 580.0)], seed=7)
    # Fails after the image row is updated and the two faces not found again are deleted.
    broken.faces[1] = replace(broken.faces[1], landmarks=np.zeros(3, np.float32))

    async def write_broken() -> None:
        async with uow_factory() as uow:
            await uow.save_analysis(image.id, "other-hash", 99, broken, ["x", "y", "z"])
            await uow.commit()

    with pytest.raises(ValueError, match="cannot reshape"):
        await write_broken()

    async with uow_factory() as uow:
        new_image = await uow.images.get_or_create(None, "//srv/files/f.jpg")
        await uow.commit()

    async def crash_after_writing() -> None:
        async with uow_factory() as uow:
            await uow.save_analysis(new_image.id, "hash-f", 10, make_analysis(BOXES, 4), [None] * 3)
            raise RuntimeError("worker killed")

    with pytest.raises(RuntimeError, match="worker killed"):
        await crash_after_writing()

    assert await face_rows(uow_factory) == before
    async with uow_factory() as uow:
        assert await uow.images.get(image.id) == image_before
        assert (await uow.images.get_or_create(None, "//srv/files/f.jpg")).status == "pending"
        assert len(await uow.faces.load_by_ids(first)) == 3


async def test_a_batch_of_analyses_is_stored_as_each_image_alone(uow_factory: UowFactory) -> None:
    known = await store(uow_factory, "//srv/files/a1.jpg")
    async with uow_factory() as uow:
        alice = await uow.persons.create(name="Alice")
        await uow.faces.assign_by_hand(known[1], alice)
        await uow.commit()

    moved = [(302.0, 42.0, 381.0, 141.0), (900.0, 20.0, 960.0, 90.0)]  # the second face again, and a new one
    paths = ["//srv/files/a1.jpg", "//srv/files/b1.jpg", "//srv/files/c1.jpg", "//srv/files/b1.jpg"]
    analyses = [
        make_analysis(moved, 1),
        make_analysis(BOXES[:2], 2),
        make_analysis([]),
        make_analysis(BOXES, 3),
    ]
    async with uow_factory() as uow:
        images = await uow.images.get_or_create_many([(None, path) for path in paths])
        results = [
            ImageResult(
                image.id, f"hash-{n}", 10 + n, analysis, [f"t/{n}_{i}" for i in range(len(analysis.faces))]
            )
            for n, (image, analysis) in enumerate(zip(images, analyses, strict=True))
        ]
        saved = await uow.save_analyses(results)
        await uow.commit()

    assert saved[0][0] == known[1]  # found again by its box
    assert saved[0][1] not in known  # a new face
    assert len(saved[1]) == len(saved[3]) == 3  # b given twice: its last result, for both
    assert saved[1] == saved[3]
    assert saved[2] == []
    rows = {row.id: row for row in await face_rows(uow_factory)}
    assert set(rows) == {*saved[0], *saved[3]}  # a's two other old faces are gone
    assert (rows[known[1]].person_id, rows[known[1]].assigned_by) == (alice, "manual")
    assert [rows[face_id].face_index for face_id in saved[0]] == [0, 1]
    async with uow_factory() as uow:
        stored_images = [await uow.images.get(image.id) for image in images[:3]]
        stored_b = await uow.faces.load_by_ids(saved[3])
    assert [(image.status, image.content_hash, image.size_bytes) for image in stored_images] == [
        ("done", "hash-0", 10),
        ("done", "hash-3", 13),
        ("done", "hash-2", 12),
    ]
    np.testing.assert_array_equal(
        stored_b.embeddings, np.stack([face.embedding for face in analyses[3].faces])
    )


async def test_a_batch_costs_a_few_statements_whatever_its_size(
    engine: AsyncEngine, uow_factory: UowFactory
) -> None:
    """The batched writes that keep the service near the bare pipeline (README, "Where the service's time
    goes"): storing or re-analysing 40 images costs the statements that one image costs."""
    executed: list[str] = []

    @event.listens_for(engine.sync_engine, "before_execute")
    def _count(_conn: Any, clause: Any, _multi: Any, _params: Any, _options: Any) -> None:
        executed.append(type(clause).__name__)

    moved = [(302.0, 42.0, 381.0, 141.0), (12.0, 8.0, 111.0, 128.0), (900.0, 20.0, 960.0, 90.0)]

    async def statements_of(results: list[ImageResult]) -> int:
        async with uow_factory() as uow:
            executed.clear()
            await uow.save_analyses(results)
            count = len(executed)
            await uow.commit()
        return count

    async def costs(size: int) -> tuple[int, int]:
        async with uow_factory() as uow:
            paths = [(None, f"//srv/files/size{size}/{n}.jpg") for n in range(size)]
            images = await uow.images.get_or_create_many(paths)
            await uow.commit()
        first = [
            ImageResult(image.id, "h", 1, make_analysis(BOXES, n), [None] * 3)
            for n, image in enumerate(images)
        ]
        # Two faces found again, one gone, one new: every kind of change, in every image.
        again = [
            ImageResult(image.id, "h", 1, make_analysis(moved, n), [None] * 3)
            for n, image in enumerate(images)
        ]
        return await statements_of(first), await statements_of(again)

    try:
        one, many = await costs(1), await costs(40)
    finally:
        event.remove(engine.sync_engine, "before_execute", _count)
    assert one == many
    assert one <= (
        4,
        8,
    )  # first: images, faces now, insert, ids; again: + indexes aside, covers, delete, update
    rows = await face_rows(uow_factory)
    assert len(rows) == 41 * 3
    assert sum(row.face_index == 2 for row in rows) == 41  # the new face of each image


async def test_a_batch_naming_a_missing_image_stores_nothing(uow_factory: UowFactory) -> None:
    async with uow_factory() as uow:
        image = await uow.images.get_or_create(None, "//srv/files/d1.jpg")
        await uow.commit()
    batch = [
        ImageResult(image.id, "h", 1, make_analysis(BOXES), [None] * 3),
        ImageResult(10**9, "x", 1, make_analysis([]), []),
    ]
    async with uow_factory() as uow:
        with pytest.raises(LookupError, match=f"no image with id {10**9}"):
            await uow.save_analyses(batch)
    assert await face_rows(uow_factory) == []
    async with uow_factory() as uow:
        assert (await uow.images.get(image.id)).status == "pending"


async def test_overlapping_batches_written_at_once_make_no_duplicates(
    engine: AsyncEngine, uow_factory: UowFactory
) -> None:
    locked: list[list[int]] = []  # the image ids of each UPDATE of images, in the order it locks them

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _record(_conn: Any, _cursor: Any, sql: str, parameters: Any, _context: Any, many: bool) -> None:
        if sql.lstrip().upper().startswith("UPDATE IMAGES") and many:
            locked.append(
                [row[-1] if isinstance(row, tuple | list) else row["image_id"] for row in parameters]
            )

    async with uow_factory() as uow:
        images = await uow.images.get_or_create_many([(None, f"//srv/files/{name}.jpg") for name in "efg"])
        await uow.commit()

    async def write(order: list[int]) -> list[list[int]]:
        async with uow_factory() as uow:
            batch = [
                ImageResult(images[n].id, f"h{n}", 1, make_analysis(BOXES, n), [None] * 3) for n in order
            ]
            saved = await uow.save_analyses(batch)
            await asyncio.sleep(0.05)  # hold the locks while the other batch waits for them
            await uow.commit()
            return saved

    try:
        first, second = await asyncio.gather(write([0, 1, 2]), write([2, 1, 0]))
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", _record)
    assert first == second[::-1]
    # Both lock in id order whatever the order of their batch, so neither can hold what the other waits for.
    assert locked == [sorted(locked[0])] * 2
    rows = await face_rows(uow_factory)
    assert sorted(row.id for row in rows) == sorted(face_id for ids in first for face_id in ids)
    assert len(rows) == 9


async def test_set_persons_never_changes_faces_set_by_hand(uow_factory: UowFactory) -> None:
    face_ids = await store(uow_factory, "//srv/files/g.jpg")
    async with uow_factory() as uow:
        alice, bob = await uow.persons.create(), await uow.persons.create()
        await uow.faces.assign_by_hand(face_ids[0], alice)
        await uow.faces.remove_from_person(face_ids[1])  # manual "nobody"
        changed = await uow.faces.set_persons({face_id: bob for face_id in face_ids})
        unchanged = await uow.faces.set_persons({face_id: bob for face_id in face_ids})
        loaded = await uow.faces.load_for_grouping(PACK)
        await uow.commit()

    assert (changed, unchanged) == (1, 0)
    assert loaded.face_ids.tolist() == face_ids
    assert loaded.person_ids.tolist() == [alice, -1, bob]
    assert loaded.manual.tolist() == [True, True, False]

    async with uow_factory() as uow:
        assert await uow.faces.set_persons({face_ids[2]: None, face_ids[0]: None}) == 1
        assert (await uow.faces.load_by_ids(face_ids)).person_ids.tolist() == [alice, -1, -1]


async def test_removing_a_face_from_a_person_records_a_cannot_link(uow_factory: UowFactory) -> None:
    face_ids = await store(uow_factory, "//srv/files/h.jpg")
    async with uow_factory() as uow:
        person = await uow.persons.create(cover_face_id=face_ids[0])
        await uow.faces.set_persons({face_id: person for face_id in face_ids})
        await uow.faces.remove_from_person(face_ids[0])
        await uow.faces.remove_from_person(face_ids[0])  # twice: still one link
        await uow.commit()
    async with uow_factory() as uow:
        assert await uow.faces.cannot_links() == [(face_ids[0], person)]
        [record] = await uow.persons.list()
        assert (record.face_count, record.cover_face_id) == (2, None)
        image = await uow.images.get_or_create(None, "//srv/files/h.jpg")
        assert await uow.faces.thumbnails(None, 10) == [(face_ids[0], f"thumbnails/{image.id}_0.jpg")]
        assert len(await uow.faces.thumbnails(person, 1)) == 1
        await uow.faces.assign_by_hand(face_ids[0], person)  # put back by hand: the link goes
        assert await uow.faces.cannot_links() == []


async def test_persons_merge_rename_and_delete(uow_factory: UowFactory) -> None:
    a_faces = await store(uow_factory, "//srv/files/i.jpg")
    b_faces = await store(uow_factory, "//srv/files/j.jpg", seed=2)
    async with uow_factory() as uow:
        target, source = await uow.persons.create(), await uow.persons.create(cover_face_id=b_faces[0])
        await uow.faces.set_persons({a_faces[0]: target} | {face_id: source for face_id in b_faces})
        await uow.faces.remove_from_person(b_faces[2])
        await uow.persons.merge_by_hand(target, source)
        await uow.persons.rename(target, "Carol")
        await uow.persons.set_hidden(target, True)
        await uow.commit()
    async with uow_factory() as uow:
        [person] = await uow.persons.list()
        assert (person.id, person.name, person.hidden, person.face_count) == (target, "Carol", True, 3)
        assert person.cover_face_id == b_faces[0]
        assert await uow.faces.cannot_links() == [(b_faces[2], target)]
        merged = await uow.faces.load_by_ids(b_faces[:2])
        assert merged.person_ids.tolist() == [target, target]
        assert merged.manual.all()

        await uow.persons.delete([target])
        await uow.commit()
    async with uow_factory() as uow:
        assert await uow.persons.list() == []
        assert await uow.faces.cannot_links() == []
        freed = await uow.faces.load_for_grouping(PACK)
        assert (freed.person_ids == -1).all()
        assert freed.manual.tolist() == [False, False, False, False, False, True]
        with pytest.raises(LookupError):
            await uow.persons.rename(target, "gone")


async def test_load_for_grouping_returns_typed_arrays(uow_factory: UowFactory) -> None:
    a_faces = await store(uow_factory, "//srv/files/k.jpg")
    await store(uow_factory, "//srv/files/l.jpg", BOXES[:1], seed=5, pack="other_pack")
    async with uow_factory() as uow:
        loaded = await uow.faces.load_for_grouping(PACK)
        empty = await uow.faces.load_for_grouping("no_such_pack")

    expected = make_analysis(BOXES, 0)
    assert len(loaded) == 3
    assert len(empty) == 0
    assert loaded.embeddings.dtype == np.float32
    assert loaded.embeddings.shape == (3, 512)
    assert loaded.embeddings.flags.writeable
    np.testing.assert_array_equal(loaded.embeddings, np.stack([face.embedding for face in expected.faces]))
    assert loaded.face_ids.dtype == np.int64
    assert loaded.face_ids.tolist() == a_faces
    assert loaded.person_ids.dtype == np.int64
    assert (loaded.person_ids == -1).all()
    assert loaded.manual.dtype == bool
    assert not loaded.manual.any()
    np.testing.assert_allclose(
        loaded.det_score, [face.quality.det_score for face in expected.faces], rtol=1e-6
    )
    np.testing.assert_allclose(loaded.size_px, [100, 80, 60])
    assert len(set(loaded.image_ids.tolist())) == 1


async def test_images_are_found_by_path_content_and_status(uow_factory: UowFactory) -> None:
    async with uow_factory() as uow:
        first = await uow.images.get_or_create("upload-1", "\\\\srv\\files\\m.jpg")
        again = await uow.images.get_or_create("upload-1", "//srv/files/m.jpg")  # other slashes, same image
        other = await uow.images.get_or_create(None, "//srv/files/n.jpg")
        bad = await uow.images.get_or_create(None, "//srv/files/o.jpg")
        await uow.commit()
    assert again.id == first.id
    assert (first.status, first.source_id) == ("pending", "upload-1")

    async with uow_factory() as uow:
        assert [image.id for image in await uow.images.pending(10)] == [first.id, other.id, bad.id]
        assert [image.id for image in await uow.images.pending(1)] == [first.id]
        await uow.save_analysis(first.id, "sha-m", 5, make_analysis([]), [])
        await uow.images.mark_failed(bad.id, "image_corrupt", content_hash="sha-o", model_pack=PACK)
        await uow.commit()

    async with uow_factory() as uow:
        assert [image.id for image in await uow.images.pending(10)] == [other.id]
        done = await uow.images.find_processed("sha-m", PACK)
        assert done is not None
        assert (done.id, done.status, done.width, done.size_bytes) == (
            first.id,
            "done",
            1000,
            5,
        )
        assert (await uow.images.find_processed("sha-o", PACK)).error == "image_corrupt"
        assert await uow.images.find_processed("sha-m", "other_pack") is None
        assert await uow.images.get(10**9) is None
        with pytest.raises(LookupError):
            await uow.save_analysis(10**9, "x", 1, make_analysis([]), [])


async def test_concurrent_registration_of_one_path_gives_one_image(uow_factory: UowFactory) -> None:
    async def register() -> int:
        async with uow_factory() as uow:
            image = await uow.images.get_or_create(None, "//srv/files/p.jpg")
            await asyncio.sleep(0.05)  # hold the transaction open while the other registers
            await uow.commit()
            return image.id

    first, second = await asyncio.gather(register(), register())
    assert first == second
    async with uow_factory() as uow:
        assert [image.id for image in await uow.images.pending(10)] == [first]


async def test_many_images_are_registered_at_once_in_their_order(uow_factory: UowFactory) -> None:
    async with uow_factory() as uow:
        known = await uow.images.get_or_create("upload-k", "//srv/files/k.jpg")
        await uow.commit()
    paths = ["\\\\srv\\files\\k.jpg", "//srv/files/q.jpg", "//srv/files/r.jpg", "//srv/files/q.jpg"]
    async with uow_factory() as uow:
        registered = await uow.images.get_or_create_many([(f"up-{n}", path) for n, path in enumerate(paths)])
        await uow.commit()
    ids = [image.id for image in registered]
    assert ids[0] == known.id
    assert ids[1] == ids[3] != ids[2]
    assert [image.source_path for image in registered[1:3]] == paths[1:3]
    assert [image.status for image in registered] == ["pending"] * 4
    async with uow_factory() as uow:
        again = await uow.images.get_or_create_many([(None, path) for path in paths])
        one_by_one = [await uow.images.get_or_create(None, path) for path in paths]
    assert [image.id for image in again] == [image.id for image in one_by_one] == ids


async def test_concurrent_registration_of_overlapping_batches_gives_one_image_per_path(
    uow_factory: UowFactory,
) -> None:
    async def register(paths: list[str]) -> list[int]:
        async with uow_factory() as uow:
            images = await uow.images.get_or_create_many([(None, path) for path in paths])
            await asyncio.sleep(0.05)  # hold the transaction open while the other registers
            await uow.commit()
            return [image.id for image in images]

    first, second = await asyncio.gather(
        register(["//srv/files/s.jpg", "//srv/files/t.jpg"]),
        register(["//srv/files/t.jpg", "//srv/files/u.jpg"]),
    )
    assert first[1] == second[0]
    async with uow_factory() as uow:
        assert sorted(image.id for image in await uow.images.pending(10)) == sorted({*first, *second})


async def test_recluster_runs_are_logged(uow_factory: UowFactory) -> None:
    async with uow_factory() as uow:
        run_id = await uow.runs.start("full")
        await uow.runs.finish(run_id, {"faces": 12, "persons": 3})
        await uow.commit()
    async with uow_factory() as uow:
        latest = await uow.runs.latest("full")
        count = (await uow.connection.execute(select(func.count()).select_from(faces))).scalar_one()
    assert latest is not None
    assert (latest["id"], latest["status"], latest["stats"]) == (run_id, "done", {"faces": 12, "persons": 3})
    assert latest["finished_at"] is not None
    assert count == 0
