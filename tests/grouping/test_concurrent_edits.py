"""Edits committed while grouping computes are kept: a recluster of 20,000 faces (and an incremental
assignment) reads its snapshot, the edits commit, then it writes; every edit is intact afterwards, while
the recluster's own decisions elsewhere in the same run are written. On SQLite and PostgreSQL.

The seam is the unit of work: grouping reads in one and writes in the next, and the factory given here
commits the edits just before the write's unit of work begins (no sleeping, no timing).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from database_helpers import emptied, migrated_engine
from sqlalchemy import bindparam, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from image_grouping.bootstrap import grouping_params
from image_grouping.config import Settings
from image_grouping.handlers.people import (
    PeopleDeps,
    handle_assign_face,
    handle_choose_cover,
    handle_forget_person,
    handle_merge_persons,
    handle_reject_face,
    handle_rename_person,
    handle_set_person_hidden,
)
from image_grouping.handlers.ports import Outcome
from image_grouping.handlers.recognition import (
    GroupingDeps,
    handle_faces_detected,
    handle_recluster_requested,
)
from image_grouping.models.messages import (
    DEFAULT_LIBRARY,
    AssignFace,
    ChooseCover,
    FacesDetected,
    ForgetPerson,
    MergePersons,
    PersonsUpdated,
    ReclusterRequested,
    RejectFace,
    RenamePerson,
    SetPersonHidden,
)
from image_grouping.models.persons import PersonChanges
from image_grouping.storage import SqlUnitOfWork, ThumbnailStore, read_database_id
from image_grouping.storage.schema import AUTOMATIC, BY_HAND, cannot_links, faces, images, persons

IDENTITIES, PER_IDENTITY, DIM = 2000, 10, 512  # 20,000 faces
NOISE = 0.6  # a face is its identity's centre plus noise of this norm: ~0.86 to the centre, ~0 to others
EXTRA = ("eve", "hidden", "split")  # persons holding faces 7..9 of identities 6, 8 and 18


def synthetic_faces(seed: int = 0) -> np.ndarray:
    """(IDENTITIES, PER_IDENTITY + 1, DIM) unit embeddings; the last face of each identity is kept apart
    for incremental assignment."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((IDENTITIES, 1, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=2, keepdims=True)
    noise = rng.standard_normal((IDENTITIES, PER_IDENTITY + 1, DIM)).astype(np.float32)
    noise *= NOISE / np.linalg.norm(noise, axis=2, keepdims=True)
    embeddings = centres + noise
    return embeddings / np.linalg.norm(embeddings, axis=2, keepdims=True)


async def insert_faces(
    engine: AsyncEngine, embeddings: dict[tuple[int, int], np.ndarray], model_pack: str
) -> dict[tuple[int, int], int]:
    """Store faces (one photo each, named by its key), unassigned, in bulk; key -> face id."""
    moment = datetime.now(UTC)
    paths = {key: f"synthetic/{key[0]}/{key[1]}.jpg" for key in embeddings}
    async with engine.begin() as connection:
        await connection.execute(
            insert(images),
            [
                {
                    "source_path": path,
                    "path_key": hashlib.sha256(path.encode()).hexdigest(),
                    "content_hash": hashlib.sha256(b"content " + path.encode()).hexdigest(),
                    "status": "done",
                    "model_pack": model_pack,
                    "width": 200,
                    "height": 200,
                    "created_at": moment,
                    "processed_at": moment,
                }
                for path in paths.values()
            ],
        )
        image_of = dict((await connection.execute(select(images.c.source_path, images.c.id))).all())
        key_of_image = {image_of[path]: key for key, path in paths.items()}
        await connection.execute(
            insert(faces),
            [
                {
                    "image_id": image_of[paths[key]],
                    "model_pack": model_pack,
                    "face_index": 0,
                    "box_x1": 40.0,
                    "box_y1": 40.0,
                    "box_x2": 140.0,
                    "box_y2": 140.0,
                    "landmarks": bytes(40),
                    "det_score": 0.9,
                    "size_px": 100.0,
                    "sharpness": 100.0,
                    "yaw": 0.0,
                    "pose": "frontal",
                    "embedding": embedding.astype("<f4").tobytes(),
                    "assigned_by": AUTOMATIC,
                    "created_at": moment,
                    "updated_at": moment,
                }
                for key, embedding in embeddings.items()
            ],
        )
        rows = await connection.execute(
            select(faces.c.image_id, faces.c.id).where(faces.c.image_id.in_(list(key_of_image)))
        )
        return {key_of_image[image_id]: face_id for image_id, face_id in rows}


@dataclass
class Library:
    engine: AsyncEngine
    people: PeopleDeps
    embeddings: np.ndarray
    face: dict[tuple[int, int], int]  # (identity, n) -> face id
    person: dict[int, int]  # identity -> its person
    extra: dict[str, int]  # EXTRA name -> person

    async def add_faces(self, keys: Sequence[tuple[int, int]], model_pack: str) -> None:
        """Store these faces (one photo each), unassigned, in bulk."""
        self.face |= await insert_faces(self.engine, {key: self.embeddings[key] for key in keys}, model_pack)

    async def assign(self, assignments: dict[int, int | None], covers: dict[int, int]) -> None:
        async with self.engine.begin() as connection:
            await connection.execute(
                update(faces).where(faces.c.id == bindparam("face")).values(person_id=bindparam("person")),
                [{"face": face, "person": person} for face, person in assignments.items()],
            )
            await connection.execute(
                update(persons)
                .where(persons.c.id == bindparam("person"))
                .values(cover_face_id=bindparam("cover")),
                [{"person": person, "cover": cover} for person, cover in covers.items()],
            )

    async def state(self, face_id: int) -> tuple[int | None, str]:
        async with self.engine.connect() as connection:
            row = (
                await connection.execute(
                    select(faces.c.person_id, faces.c.assigned_by).where(faces.c.id == face_id)
                )
            ).one()
        return row.person_id, row.assigned_by

    async def persons_of(self, face_ids: Sequence[int]) -> set[int | None]:
        return {(await self.state(face_id))[0] for face_id in face_ids}

    async def person_row(self, person_id: int) -> Any:
        async with self.engine.connect() as connection:
            return (await connection.execute(select(persons).where(persons.c.id == person_id))).first()

    async def refused(self, face_id: int, person_id: int) -> bool:
        async with self.engine.connect() as connection:
            query = select(cannot_links.c.face_id).where(
                cannot_links.c.face_id == face_id, cannot_links.c.person_id == person_id
            )
            return (await connection.execute(query)).first() is not None


@pytest.fixture
async def library(
    unit_of_work: Callable[[], SqlUnitOfWork],
    grouping_engine: AsyncEngine,
    grouping_settings: Settings,
    tmp_path: Path,
) -> Library:
    """20,000 faces of 2,000 identities, each identity's faces in a person of its own (cover: face 1),
    except faces 7..9 of identities 6, 8 and 18, each trio in an extra person."""
    store = ThumbnailStore(tmp_path / "thumbnails", tmp_path, await read_database_id(grouping_engine))
    people = PeopleDeps(unit_of_work=unit_of_work, thumbnails=store, model_pack=grouping_settings.model_pack)
    library = Library(grouping_engine, people, synthetic_faces(), {}, {}, {})
    await library.add_faces(
        [(i, n) for i in range(IDENTITIES) for n in range(PER_IDENTITY)], grouping_settings.model_pack
    )
    moment = datetime.now(UTC)
    labels = [f"identity {i}" for i in range(IDENTITIES)] + list(EXTRA)
    async with grouping_engine.begin() as connection:
        # Named while created so that each id is known; the names are cleared below.
        await connection.execute(
            insert(persons),
            [
                {"name": label, "hidden": False, "created_at": moment, "updated_at": moment}
                for label in labels
            ],
        )
        id_of = dict((await connection.execute(select(persons.c.name, persons.c.id))).all())
        await connection.execute(update(persons).values(name=None))
    library.person = {i: id_of[f"identity {i}"] for i in range(IDENTITIES)}
    library.extra = {label: id_of[label] for label in EXTRA}
    assignments: dict[int, int | None] = {face: library.person[key[0]] for key, face in library.face.items()}
    for label, identity in zip(EXTRA, (6, 8, 18), strict=True):
        assignments.update({library.face[identity, n]: library.extra[label] for n in (7, 8, 9)})
    covers = {person: library.face[i, 1] for i, person in library.person.items()}
    covers |= {library.extra[label]: library.face[i, 7] for label, i in zip(EXTRA, (6, 8, 18), strict=True)}
    await library.assign(assignments, covers)
    return library


class EditsBeforeTheWrite:
    """A unit-of-work factory for grouping: its second unit of work (grouping's write; the first read the
    snapshot) begins only after `edits` have run and committed, each in units of work of their own."""

    def __init__(self, unit_of_work: Callable[[], SqlUnitOfWork], edits: Callable[[], Awaitable[None]]):
        self._unit_of_work, self._edits = unit_of_work, edits
        self.opened = 0
        self.edited = False

    def __call__(self, library_id: str = DEFAULT_LIBRARY) -> Any:
        self.opened += 1
        uow = self._unit_of_work(library_id)
        return _EditsFirst(uow, self) if self.opened == 2 else uow


class _EditsFirst:
    def __init__(self, uow: SqlUnitOfWork, factory: EditsBeforeTheWrite) -> None:
        self._uow, self._factory = uow, factory

    async def __aenter__(self) -> SqlUnitOfWork:
        await self._factory._edits()
        self._factory.edited = True
        return await self._uow.__aenter__()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._uow.__aexit__(*exc_info)


def done(outcomes: list[Outcome]) -> None:
    assert all(isinstance(outcome, list) for outcome in outcomes), outcomes


async def test_edits_committed_while_a_recluster_of_20000_faces_computes_are_kept(
    library: Library, unit_of_work: Callable[[], SqlUnitOfWork], grouping_settings: Settings
) -> None:
    face, person, extra = library.face, library.person, library.extra
    # What the recluster will want to write: faces to join their identity's person (m, r2, n, s, g, and
    # c1 untouched), faces in the wrong person (r1, k0 the cover of person 10; c2 and kc untouched), and
    # the extra persons, each to merge into its identity's person (eve, hidden; split untouched).
    m, r1, r2, n, k0, s, g = (face[i, 0] for i in (0, 2, 4, 5, 11, 12, 14))
    c1, kc, c2 = face[16, 0], face[21, 0], face[22, 0]
    # Identity 24's faces belong to nobody: the recluster founds a person for them, and nine of them are
    # moved by hand meanwhile, so the new person gets one face, which must be its cover.
    founding = [face[24, k] for k in range(10)]
    await library.assign(
        {m: None, r2: None, n: None, s: None, g: None, c1: None, r1: person[3], k0: person[10]}
        | {kc: person[20], c2: person[23]}
        | dict.fromkeys(founding, None),
        {person[10]: k0, person[20]: kc},
    )
    created: list[int] = []

    async def edits() -> None:
        async with unit_of_work() as uow:  # grouping has read: its run is recorded as running
            run = await uow.runs.latest("recluster")
        assert run is not None
        assert run["status"] == "running"
        deps = library.people
        done(await handle_assign_face([AssignFace(face_id=m, person_id=person[1])], deps))
        done(await handle_reject_face([RejectFace(face_id=r1)], deps))
        done(await handle_reject_face([RejectFace(face_id=r2, person_id=person[4])], deps))
        (outcome,) = await handle_assign_face([AssignFace(face_id=n, person_id=None)], deps)
        assert isinstance(outcome, list)
        created.extend(outcome[0].changes["created"])  # type: ignore[attr-defined]
        done(await handle_rename_person([RenamePerson(person_id=extra["eve"], name="Eve")], deps))
        done(await handle_set_person_hidden([SetPersonHidden(person_id=extra["hidden"], hidden=True)], deps))
        done(await handle_choose_cover([ChooseCover(person_id=person[10], face_id=face[10, 3])], deps))
        done(await handle_merge_persons([MergePersons(target_id=person[13], source_ids=[person[12]])], deps))
        done(await handle_forget_person([ForgetPerson(person_id=person[14])], deps))
        for moved in founding[:9]:
            done(await handle_assign_face([AssignFace(face_id=moved, person_id=person[25])], deps))

    factory = EditsBeforeTheWrite(unit_of_work, edits)
    deps = GroupingDeps(factory, grouping_params(grouping_settings), grouping_settings.model_pack, 900.0)
    (outcome,) = await handle_recluster_requested([ReclusterRequested(reason="test")], deps)
    assert factory.edited
    assert isinstance(outcome, list)
    (updated,) = outcome
    assert isinstance(updated, PersonsUpdated)
    changes = PersonChanges.from_event_data(updated.changes)

    # The recluster wrote its decisions where nobody edited meanwhile.
    assert await library.state(c1) == (person[16], AUTOMATIC)
    assert await library.state(c2) == (person[22], AUTOMATIC)
    assert await library.state(kc) == (person[21], AUTOMATIC)
    assert (await library.person_row(person[20])).cover_face_id in {face[20, k] for k in range(10)}
    assert await library.person_row(extra["split"]) is None
    assert await library.persons_of([face[18, k] for k in range(10)]) == {person[18]}
    assert (extra["split"], person[18]) in changes.merged

    # Every edit committed while it computed is intact.
    assert await library.state(m) == (person[1], BY_HAND)  # moved
    assert await library.state(r1) == (None, BY_HAND)  # "not this person": out of person 3, unassigned
    assert await library.refused(r1, person[3])
    assert (await library.state(r2))[0] is None  # declined for person 4: never put there
    assert await library.refused(r2, person[4])
    (new_person,) = created  # moved into a new person
    assert await library.state(n) == (new_person, BY_HAND)
    assert await library.person_row(new_person) is not None
    eve = await library.person_row(extra["eve"])  # renamed: kept, with its name and its faces
    assert eve is not None
    assert eve.name == "Eve"
    assert await library.persons_of([face[6, k] for k in (7, 8, 9)]) == {extra["eve"]}
    assert extra["eve"] not in {source for source, _ in changes.merged}
    hidden = await library.person_row(extra["hidden"])  # hidden: kept, hidden, with its faces
    assert hidden is not None
    assert hidden.hidden
    assert await library.persons_of([face[8, k] for k in (7, 8, 9)]) == {extra["hidden"]}
    assert (await library.person_row(person[10])).cover_face_id == face[10, 3]  # the cover chosen
    assert await library.person_row(person[12]) is None  # merged by hand into person 13
    assert await library.persons_of([face[12, k] for k in range(1, 10)]) == {person[13]}
    assert (await library.state(s))[0] is None  # not put into the person merged away
    assert await library.person_row(person[14]) is None  # forgotten
    assert (await library.state(g))[0] is None  # not put into the forgotten person
    (founded,) = await library.persons_of(founding[9:])  # the person the recluster founded
    assert founded is not None
    assert changes.created == [founded]
    assert (await library.person_row(founded)).cover_face_id == founding[9]
    assert await library.persons_of(founding[:9]) == {person[25]}


async def test_edits_committed_while_new_faces_are_assigned_are_kept(
    library: Library, unit_of_work: Callable[[], SqlUnitOfWork], grouping_settings: Settings
) -> None:
    person = library.person
    new = [(i, PER_IDENTITY) for i in (30, 32, 34, 36)]  # the kept-apart face of four identities
    await library.add_faces(new, grouping_settings.model_pack)
    a, b, c, d = (library.face[key] for key in new)

    async def edits() -> None:
        deps = library.people
        done(await handle_assign_face([AssignFace(face_id=a, person_id=person[31])], deps))
        done(await handle_reject_face([RejectFace(face_id=b, person_id=person[32])], deps))
        done(await handle_forget_person([ForgetPerson(person_id=person[34])], deps))

    factory = EditsBeforeTheWrite(unit_of_work, edits)
    deps = GroupingDeps(factory, grouping_params(grouping_settings), grouping_settings.model_pack, 900.0)
    detected = FacesDetected(image_id="new", face_ids=[a, b, c, d], face_count=4, model_pack=deps.model_pack)
    done(await handle_faces_detected([detected], deps))
    assert factory.edited

    assert await library.state(d) == (person[36], AUTOMATIC)  # written where nobody edited
    assert await library.state(a) == (person[31], BY_HAND)
    assert (await library.state(b))[0] is None
    assert await library.refused(b, person[32])
    assert await library.person_row(person[34]) is None
    assert (await library.state(c))[0] is None


async def test_two_edits_of_one_face_at_once_the_last_committed_wins_and_both_are_recorded(
    postgres_url: str, tmp_path: Path
) -> None:
    """On PostgreSQL, where two transactions do run at once: the first edit has taken the face and waits
    to commit while the second is blocked behind it; the second then decides on what the first committed."""
    async with migrated_engine(postgres_url) as engine:
        unit_of_work = await emptied(engine)
        (face,) = (await insert_faces(engine, {(0, 0): synthetic_faces()[0, 0]}, "pack")).values()
        async with unit_of_work() as uow:
            alice, bob = [await uow.persons.create(name=name) for name in ("Alice", "Bob")]  # kept empty
            await uow.faces.set_persons({face: alice})
            await uow.commit()
        thumbnails = ThumbnailStore(tmp_path / "thumbnails", tmp_path, await read_database_id(engine))
        taken, release = asyncio.Event(), asyncio.Event()

        class CommitWhenReleased(SqlUnitOfWork):
            async def commit(self) -> None:
                taken.set()
                await release.wait()
                await super().commit()

        held = PeopleDeps(partial(CommitWhenReleased, engine), thumbnails, "pack")
        plain = PeopleDeps(unit_of_work, thumbnails, "pack")
        first = asyncio.create_task(handle_assign_face([AssignFace(face_id=face, person_id=bob)], held))
        await taken.wait()  # the first edit has written and recorded, and not committed
        second = asyncio.create_task(handle_reject_face([RejectFace(face_id=face)], plain))
        async with engine.connect() as connection:  # until the second waits for the face the first holds
            for _ in range(3000):
                if await connection.scalar(text("SELECT count(*) FROM pg_locks WHERE NOT granted")):
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the second edit never waited for the first")
        assert not second.done()
        release.set()
        done(await first)
        (rejected,) = await second
        assert isinstance(rejected, list)
        (updated,) = rejected
        assert updated.changes["refused"] == [{"face_id": face, "person_id": bob}]  # type: ignore[attr-defined]

        async with unit_of_work() as uow:
            record = await uow.faces.edits([face])
            (now,) = (await uow.faces.get([face])).values()
        assert (now.person_id, now.manual) == (None, True)  # the last committed: not Bob
        assert [(edit.from_person_id, edit.to_person_id, edit.action) for edit in record] == [
            (alice, bob, "assign"),
            (bob, None, "reject"),
        ]
        assert await _refused(engine, face, bob)
        assert not await _refused(engine, face, alice)


async def _refused(engine: AsyncEngine, face_id: int, person_id: int) -> bool:
    async with engine.connect() as connection:
        query = select(cannot_links.c.face_id).where(
            cannot_links.c.face_id == face_id, cannot_links.c.person_id == person_id
        )
        return (await connection.execute(query)).first() is not None
