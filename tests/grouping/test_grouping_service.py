"""The recognition handlers on real LFW faces against the real SQLite and PostgreSQL data layer:
accuracy, stability, and manual edits that survive reclusters."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np
import pytest
from lfw_faces import detected
from sqlalchemy.ext.asyncio import AsyncEngine

from image_grouping.bootstrap import grouping_params
from image_grouping.config import Settings
from image_grouping.evaluation.grouping import LabelledFaces, clustering_scores
from image_grouping.handlers.recognition import (
    GroupingDeps,
    handle_faces_detected,
    handle_recluster_requested,
)
from image_grouping.models.faces import ImageAnalysis
from image_grouping.models.messages import PERIODIC, FacesDetected, PersonsUpdated, ReclusterRequested
from image_grouping.models.persons import PersonChanges
from image_grouping.storage import SqlUnitOfWork
from image_grouping.storage.unit_of_work import DryRunUnitOfWork

UnitOfWork = Callable[[], SqlUnitOfWork]


async def store(
    unit_of_work: UnitOfWork, faces: LabelledFaces, photos: Sequence[Sequence[int]], model_pack: str
) -> dict[int, int]:
    """Store each photo (a list of rows of `faces`) as one image; returns row -> face id."""
    face_of_row = {}
    async with unit_of_work() as uow:
        for rows in photos:
            path = f"photos/{rows[0]}.jpg"  # rows are never stored twice: a unique path
            image = await uow.images.get_or_create(None, path)
            analysis = ImageAnalysis(250, 250, model_pack, [detected(faces, row) for row in rows])
            content_hash = hashlib.sha256(path.encode()).hexdigest()
            ids = await uow.save_analysis(image.id, content_hash, 0, analysis, [None] * len(rows))
            face_of_row.update(zip(rows, ids, strict=True))
        await uow.commit()
    return face_of_row


def grouping_deps(unit_of_work: UnitOfWork, settings: Settings, interval: float = 900.0) -> GroupingDeps:
    return GroupingDeps(unit_of_work, grouping_params(settings), settings.model_pack, interval)


async def recluster(unit_of_work: UnitOfWork, settings: Settings) -> PersonChanges:
    """One recluster request through its handler; what it changed."""
    (outcome,) = await handle_recluster_requested(
        [ReclusterRequested()], grouping_deps(unit_of_work, settings)
    )
    assert isinstance(outcome, list)
    (updated,) = outcome
    assert isinstance(updated, PersonsUpdated)
    return PersonChanges.from_event_data(updated.changes)


async def assign(unit_of_work: UnitOfWork, face_ids: list[int], settings: Settings) -> None:
    detected = FacesDetected(
        image_id="x", face_ids=face_ids, face_count=len(face_ids), model_pack=settings.model_pack
    )
    await handle_faces_detected([detected], grouping_deps(unit_of_work, settings))


async def persons_of(
    unit_of_work: UnitOfWork, face_of_row: dict[int, int], settings: Settings
) -> dict[int, int]:
    """row -> person id (-1 none)."""
    async with unit_of_work() as uow:
        stored = await uow.faces.load_for_grouping(settings.model_pack)
    person_of_face = dict(zip(stored.face_ids.tolist(), stored.person_ids.tolist(), strict=True))
    return {row: person_of_face[face_id] for row, face_id in face_of_row.items()}


async def test_incremental_then_recluster_groups_real_faces(
    unit_of_work: UnitOfWork, lfw_subset: LabelledFaces, grouping_settings: Settings
) -> None:
    rows = np.random.default_rng(0).permutation(len(lfw_subset)).tolist()
    face_of_row = await store(unit_of_work, lfw_subset, [[row] for row in rows], grouping_settings.model_pack)
    for start in range(0, len(rows), 24):
        await assign(unit_of_work, [face_of_row[row] for row in rows[start : start + 24]], grouping_settings)
    incremental = await persons_of(unit_of_work, face_of_row, grouping_settings)
    changes = await recluster(unit_of_work, grouping_settings)
    final = await persons_of(unit_of_work, face_of_row, grouping_settings)

    order = sorted(face_of_row)
    truth = lfw_subset.labels[order]
    before = clustering_scores(truth, np.array([incremental[row] for row in order]))
    after = clustering_scores(truth, np.array([final[row] for row in order]))
    assert before["bcubed_precision"] >= 0.98
    assert before["assigned"] >= 0.5
    assert after["bcubed_precision"] >= 0.98
    assert after["bcubed_recall"] >= 0.9
    # The recluster kept the incremental persons' ids: most faces did not change person.
    kept = np.mean([final[row] == incremental[row] for row in order if incremental[row] >= 0])
    assert kept >= 0.95
    async with unit_of_work() as uow:
        run = await uow.runs.latest("recluster")
    assert run is not None
    assert run["status"] == "done"
    assert run["stats"]["faces_assigned"] == changes.faces_assigned


async def test_adding_ten_percent_barely_moves_assigned_faces(
    unit_of_work: UnitOfWork, lfw_subset: LabelledFaces, grouping_settings: Settings
) -> None:
    rows = np.random.default_rng(1).permutation(len(lfw_subset)).tolist()
    first, rest = rows[: len(rows) * 9 // 10], rows[len(rows) * 9 // 10 :]
    face_of_row = await store(
        unit_of_work, lfw_subset, [[row] for row in first], grouping_settings.model_pack
    )
    await recluster(unit_of_work, grouping_settings)
    before = await persons_of(unit_of_work, face_of_row, grouping_settings)

    added = await store(unit_of_work, lfw_subset, [[row] for row in rest], grouping_settings.model_pack)
    await assign(unit_of_work, list(added.values()), grouping_settings)
    await recluster(unit_of_work, grouping_settings)
    after = await persons_of(unit_of_work, face_of_row, grouping_settings)

    assigned = [row for row in first if before[row] >= 0]
    moved = sum(after[row] != before[row] for row in assigned)
    assert len(assigned) >= len(first) // 2
    assert moved / len(assigned) < 0.01


async def test_manual_edits_survive_three_reclusters(
    unit_of_work: UnitOfWork, lfw_subset: LabelledFaces, grouping_settings: Settings
) -> None:
    face_of_row = await store(
        unit_of_work, lfw_subset, [[row] for row in range(len(lfw_subset))], grouping_settings.model_pack
    )
    await recluster(unit_of_work, grouping_settings)
    person = await persons_of(unit_of_work, face_of_row, grouping_settings)
    sizes: dict[int, list[int]] = {}
    for row, person_id in person.items():
        if person_id >= 0:
            sizes.setdefault(person_id, []).append(row)
    alice, bob, carol, dave = sorted(sizes, key=lambda person_id: -len(sizes[person_id]))[:4]
    moved_row = sizes[bob][0]  # a face of Bob the user says is Alice
    removed_row = sizes[alice][0]  # a face the user says is not Alice
    async with unit_of_work() as uow:
        await uow.persons.rename(alice, "Alice")
        await uow.persons.rename(carol, "Carol")
        await uow.faces.assign_by_hand(face_of_row[moved_row], alice)
        await uow.faces.remove_from_person(face_of_row[removed_row])
        await uow.persons.merge_by_hand(carol, dave)  # Dave's faces are Carol's, by hand
        await uow.commit()

    for _ in range(3):
        await recluster(unit_of_work, grouping_settings)
        now = await persons_of(unit_of_work, face_of_row, grouping_settings)
        assert now[moved_row] == alice
        assert now[removed_row] == -1
        assert all(now[row] == carol for row in sizes[dave] + sizes[carol][:1])
        async with unit_of_work() as uow:
            names = {record.id: record.name for record in await uow.persons.list()}
        assert (names[alice], names[carol]) == ("Alice", "Carol")
        assert dave not in names
        # Alice's other faces are still hers: a moved face does not drag the person away.
        assert sum(now[row] == alice for row in sizes[alice]) >= len(sizes[alice]) - 2


async def test_two_faces_of_one_photo_are_never_one_person(
    unit_of_work: UnitOfWork, lfw_subset: LabelledFaces, grouping_settings: Settings
) -> None:
    label = lfw_subset.labels[0]
    same = np.flatnonzero(lfw_subset.labels == label).tolist()
    # Two photos of one person pasted into one image, beside that person's other photos.
    photos = [[same[0], same[1]]] + [[row] for row in range(len(lfw_subset)) if row not in same[:2]]
    face_of_row = await store(unit_of_work, lfw_subset, photos, grouping_settings.model_pack)
    for _ in range(2):
        await recluster(unit_of_work, grouping_settings)
        person = await persons_of(unit_of_work, face_of_row, grouping_settings)
        assert person[same[0]] != person[same[1]] or person[same[0]] == -1
        assert max(person[same[0]], person[same[1]]) >= 0  # one of them still joins the person


async def test_dry_run_writes_nothing(
    unit_of_work: UnitOfWork,
    grouping_engine: AsyncEngine,
    lfw_subset: LabelledFaces,
    grouping_settings: Settings,
) -> None:
    face_of_row = await store(
        unit_of_work, lfw_subset, [[row] for row in range(len(lfw_subset))], grouping_settings.model_pack
    )
    changes = await recluster(lambda: DryRunUnitOfWork(grouping_engine), grouping_settings)
    assert len(changes.created) > 0
    person = await persons_of(unit_of_work, face_of_row, grouping_settings)
    async with unit_of_work() as uow:
        assert await uow.persons.list() == []
        assert await uow.runs.latest("recluster") is None
    assert set(person.values()) == {-1}


@pytest.mark.parametrize("other_pack", ["antelopev2"])
async def test_faces_of_another_pack_are_never_grouped_with_the_current_one(
    unit_of_work: UnitOfWork, lfw_subset: LabelledFaces, grouping_settings: Settings, other_pack: str
) -> None:
    half = len(lfw_subset) // 2
    current = await store(
        unit_of_work, lfw_subset, [[row] for row in range(half)], grouping_settings.model_pack
    )
    other = await store(unit_of_work, lfw_subset, [[row] for row in range(half, len(lfw_subset))], other_pack)
    await recluster(unit_of_work, grouping_settings)
    async with unit_of_work() as uow:
        stored = await uow.faces.load_for_grouping(other_pack)
    assert len(stored) == len(other)
    assert (stored.person_ids == -1).all()
    person = await persons_of(unit_of_work, current, grouping_settings)
    assert any(person_id >= 0 for person_id in person.values())


async def test_a_periodic_request_is_skipped_only_after_a_recent_completed_recluster_of_its_pack(
    unit_of_work: UnitOfWork, grouping_settings: Settings
) -> None:
    pack, interval = grouping_settings.model_pack, 900.0
    deps = grouping_deps(unit_of_work, grouping_settings, interval)

    async def runs(model_pack: str = pack, deps: GroupingDeps = deps) -> bool:
        """Whether a periodic request of the pack ran a recluster (published persons.updated)."""
        (outcome,) = await handle_recluster_requested(
            [ReclusterRequested(model_pack=model_pack, reason=PERIODIC)], deps
        )
        return outcome != []

    assert await runs()  # none ran yet
    assert not await runs()  # the run it just completed serves the rest of the interval

    async with unit_of_work() as uow:
        await uow.runs.start("recluster")
        await uow.commit()
    assert await runs()  # the latest is still running, or died: not done
    async with unit_of_work() as uow:
        await uow.runs.finish(await uow.runs.start("recluster"), {"model_pack": pack}, status="failed")
        await uow.commit()
    assert await runs()  # the latest failed
    assert not await runs()
    assert await runs("antelopev2")  # another pack's run serves not
    # A lone replica asks once per interval: its next request finds the run a whole interval old.
    assert await runs(deps=grouping_deps(unit_of_work, grouping_settings, 1e-6))
