"""Grouping: `faces.detected` joins the new faces to persons, `recluster.requested` regroups a pack, each
within one library: a library's faces are grouped among themselves only, never with another's.

Each handler reads the faces in one transaction, lets `image_grouping.grouping` decide outside any
transaction, then writes the decision in a second one that keeps whatever was edited in between, commits,
and returns `persons.updated` with what it wrote.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import structlog

from image_grouping.grouping import (
    NEW_PERSON,
    GroupingInput,
    GroupingParams,
    IdentityPlan,
    assign_incrementally,
    group_faces,
    map_groups_to_persons,
    reliable_faces,
)
from image_grouping.handlers.ports import (
    Clock,
    GroupingReader,
    GroupingRows,
    GroupingSource,
    Outcome,
    UnitOfWork,
    UnitOfWorkFactory,
)
from image_grouping.models.messages import (
    DEFAULT_LIBRARY,
    PERIODIC,
    FacesDetected,
    PersonsUpdated,
    ReclusterRequested,
)
from image_grouping.models.persons import PersonChanges
from image_grouping.models.records import FaceSet, PersonRecord

log = structlog.get_logger(__name__)

# Every replica that runs recognition asks for a recluster each INTERVAL_SECONDS. A periodic request is
# skipped when a recluster of its pack started less than this share of the interval ago, so replicas
# together run about one per interval (and a lone replica, whose requests come one interval apart, never
# skips its own).
PERIODIC_SKIP_SHARE = 0.9


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ColdGroupingReader:
    """`GroupingReader` that reads everything from the database each time."""

    @asynccontextmanager
    async def hold(self, library_id: str, model_pack: str) -> AsyncIterator[GroupingSource]:
        yield _ColdSource(model_pack)


@dataclass(frozen=True)
class _ColdSource:
    model_pack: str

    async def read(self, uow: UnitOfWork, *, fresh: bool) -> GroupingRows:
        return await read_rows(uow, self.model_pack)


async def read_rows(uow: UnitOfWork, model_pack: str) -> GroupingRows:
    """The rows for grouping of the pack and of `uow`'s library, read in `uow`."""
    faces = await uow.faces.load_for_grouping(model_pack)
    return GroupingRows(
        faces.take(faces.groupable()), await uow.persons.list(counted=False), await uow.faces.cannot_links()
    )


@dataclass(frozen=True)
class GroupingDeps:
    unit_of_work: UnitOfWorkFactory
    params: GroupingParams
    model_pack: str  # the pack of a recluster request that names none
    interval_seconds: float  # of the periodic recluster requests
    clock: Clock = field(default=_utc_now)
    # The thresholds of another pack's faces (each pack's embeddings have their own similarity scale);
    # None: `params` for every pack.
    params_of_pack: Callable[[str], GroupingParams] | None = None
    # Where the faces are read: the process's warm copy (bootstrap) or the database each time.
    reader: GroupingReader = field(default_factory=ColdGroupingReader)

    def params_for(self, model_pack: str) -> GroupingParams:
        if self.params_of_pack is None or model_pack == self.model_pack:
            return self.params
        return self.params_of_pack(model_pack)


async def handle_faces_detected(events: Sequence[FacesDetected], deps: GroupingDeps) -> list[Outcome]:
    """Assign the new faces of several images to persons (or new persons) incrementally, each library's
    among that library's faces only.

    One `persons.updated` per library and model pack, given as the outcome of the batch's last message of
    that library and pack.
    """
    last_of = {
        (event.library_id, event.model_pack): index for index, event in enumerate(events) if event.face_ids
    }
    outcomes: list[Outcome] = [[] for _ in events]
    for (library_id, model_pack), index in last_of.items():
        face_ids = [
            face
            for event in events
            if (event.library_id, event.model_pack) == (library_id, model_pack)
            for face in event.face_ids
        ]
        changes = await assign_new_faces(
            deps.unit_of_work,
            face_ids,
            model_pack,
            deps.params_for(model_pack),
            library_id=library_id,
            reader=deps.reader,
        )
        outcomes[index] = [
            PersonsUpdated(library_id=library_id, model_pack=model_pack, changes=changes.to_event_data())
        ]
    return outcomes


async def handle_recluster_requested(
    events: Sequence[ReclusterRequested], deps: GroupingDeps
) -> list[Outcome]:
    """Regroup every face of each request's library and pack, one request after the other (the library's
    grouping shard has a single active consumer). A periodic request that another replica's request of
    the same interval already served is skipped."""
    outcomes: list[Outcome] = []
    for event in events:
        model_pack, library_id = event.model_pack or deps.model_pack, event.library_id
        if event.reason == PERIODIC and not await _periodic_recluster_due(model_pack, deps, library_id):
            log.info(
                "periodic recluster skipped: one ran within this interval",
                model_pack=model_pack,
                library_id=library_id,
            )
            outcomes.append([])
            continue
        changes = await recluster_all(
            deps.unit_of_work,
            model_pack,
            deps.params_for(model_pack),
            library_id=library_id,
            reader=deps.reader,
        )
        outcomes.append(
            [PersonsUpdated(library_id=library_id, model_pack=model_pack, changes=changes.to_event_data())]
        )
    return outcomes


async def libraries_to_recluster(unit_of_work: UnitOfWorkFactory, model_pack: str) -> list[str]:
    """The libraries a periodic recluster of the pack has work in: new faces or edits by hand since their
    last recluster (every library, whichever one the unit of work is of)."""
    async with unit_of_work() as uow:
        return await uow.runs.changed_libraries("recluster", model_pack)


async def _periodic_recluster_due(
    model_pack: str, deps: GroupingDeps, library_id: str = DEFAULT_LIBRARY
) -> bool:
    """Whether a periodic recluster request still has work to do: no recluster of the library and pack
    has completed that started within the last `PERIODIC_SKIP_SHARE` of the interval."""
    async with deps.unit_of_work(library_id) as uow:
        latest = await uow.runs.latest("recluster")
    if latest is None or latest["status"] != "done":
        return True
    if (latest["model_pack"] or (latest["stats"] or {}).get("model_pack")) != model_pack:
        return True
    started: datetime = latest["started_at"]
    if started.tzinfo is None:  # SQLite keeps no offset; every time stored is UTC
        started = started.replace(tzinfo=UTC)
    return deps.clock() - started >= timedelta(seconds=PERIODIC_SKIP_SHARE * deps.interval_seconds)


# Grouping reads a snapshot in one transaction, decides without holding one (seconds to minutes for a full
# recluster: edits, uploads and, on SQLite, every other writer go on meanwhile), then writes in a second
# transaction that checks, row by row, that what it decides on has not changed since it read it: an edit
# committed in between is kept (see `_write`).


@dataclass(frozen=True)
class _Snapshot:
    """What grouping read: the pack's groupable faces, the persons as they were (their `updated_at` is the
    version the write compares), and the grouping input built from them."""

    faces: FaceSet
    persons: list[PersonRecord]
    grouping: GroupingInput
    reduced: np.ndarray | None = None  # the rows of the approximate neighbour search, if the reader has them


def _snapshot(rows: GroupingRows, params: GroupingParams) -> _Snapshot:
    return _Snapshot(
        rows.faces,
        rows.persons,
        _grouping_input(rows.faces, rows.persons, rows.cannot_links, params),
        rows.reduced,
    )


async def assign_new_faces(
    unit_of_work: UnitOfWorkFactory,
    face_ids: Sequence[int],
    model_pack: str,
    params: GroupingParams,
    *,
    library_id: str = DEFAULT_LIBRARY,
    reader: GroupingReader | None = None,
) -> PersonChanges:
    """Put newly detected faces of a library into its existing persons where the evidence is strong; found
    tight new groups. Reads (a warm copy brought up to date, with `reader`), decides, then writes and
    commits what is still as it read it."""
    changes = PersonChanges(model_pack=model_pack, kind="incremental")
    async with (reader or ColdGroupingReader()).hold(library_id, model_pack) as source:
        async with unit_of_work(library_id) as uow:
            snapshot = _snapshot(await source.read(uow, fresh=False), params)
        subset = snapshot.faces
        new = _rows_of(subset.face_ids, face_ids)
        new = new[subset.person_ids[new] < 0] if len(new) else new
        if len(new) == 0:
            return changes
        decision = assign_incrementally(
            snapshot.grouping, subset.person_ids, new, params, reduced=snapshot.reduced
        )
        final = subset.person_ids.copy()
        for row, person in decision.joined.items():
            final[row] = person
        founded = [NEW_PERSON - group for group in range(len(decision.founded))]
        for placeholder, members in zip(founded, decision.founded, strict=True):
            final[members] = placeholder
        async with unit_of_work(library_id) as uow:
            await _write(uow, snapshot, final, founded, changes)
            await uow.commit()
    log.info(
        "new faces grouped",
        faces=len(new),
        joined=len(decision.joined),
        founded=len(decision.founded),
        written=changes.faces_assigned,
    )
    return changes


def _rows_of(face_ids: np.ndarray, wanted: Sequence[int]) -> np.ndarray:
    """The sorted rows of `face_ids` (sorted) that hold the `wanted` faces; those absent are left out."""
    rows = _rows_or_absent(face_ids, np.unique(np.asarray(wanted, np.int64)))
    return rows[rows >= 0]


async def recluster_all(
    unit_of_work: UnitOfWorkFactory,
    model_pack: str,
    params: GroupingParams,
    *,
    library_id: str = DEFAULT_LIBRARY,
    reader: GroupingReader | None = None,
) -> PersonChanges:
    """Regroup every face of the library and the pack, keeping person ids (largest overlap) and every
    manual edit, including those committed while it computes. Reads (from scratch), decides, then writes
    and commits."""
    changes = PersonChanges(model_pack=model_pack, kind="recluster")
    log.info("recluster started", library_id=library_id, model_pack=model_pack)
    async with (reader or ColdGroupingReader()).hold(library_id, model_pack) as source:
        async with unit_of_work(library_id) as uow:
            run_id = await uow.runs.start("recluster", model_pack)
            snapshot = _snapshot(await source.read(uow, fresh=True), params)
            await uow.commit()  # the run is seen as running while it computes
        try:
            labels = group_faces(snapshot.grouping, params).labels
            plan = map_groups_to_persons(
                labels,
                snapshot.faces.person_ids,
                snapshot.grouping.pinned,
                snapshot.grouping.anchors,
                snapshot.grouping.forbidden,
                [person.id for person in snapshot.persons],
                min_faces=params.min_faces,
            )
            async with unit_of_work(library_id) as uow:
                await _write(uow, snapshot, plan.person_ids.copy(), plan.new_persons, changes, plan)
                await uow.runs.finish(run_id, changes.to_event_data())
                await uow.commit()
        except BaseException:
            await _record_failed_run(unit_of_work, run_id, model_pack, library_id)
            raise
    log.info(
        "recluster done",
        library_id=library_id,
        created=len(changes.created),
        merged=len(changes.merged),
        emptied=len(changes.emptied),
        faces_assigned=changes.faces_assigned,
        faces_moved=changes.faces_moved,
        faces_unassigned=changes.faces_unassigned,
    )
    return changes


async def _record_failed_run(
    unit_of_work: UnitOfWorkFactory, run_id: int, model_pack: str, library_id: str
) -> None:
    try:
        async with unit_of_work(library_id) as uow:
            await uow.runs.finish(run_id, {"model_pack": model_pack}, status="failed")
            await uow.commit()
    except Exception:  # the database may be what failed; the run then stays "running", which is due too
        log.warning("could not record the failed recluster run", run_id=run_id, exc_info=True)


async def _write(
    uow: UnitOfWork,
    snapshot: _Snapshot,
    final: np.ndarray,
    new_persons: Sequence[int],
    changes: PersonChanges,
    plan: IdentityPlan | None = None,
) -> None:
    """Write grouping's decision (`final`: each face's person, placeholders for `new_persons`), keeping every
    edit committed since the snapshot: a face is moved only while it is still set by grouping, still where
    it was read, its person not edited since (renamed, hidden, given a cover, merged into) and the person
    it goes to still there and not refused for it; a person the plan merged away or emptied is deleted only
    while unnamed, without faces and not edited since; a cover is replaced only on a person not edited
    since. Fills `changes` with what was written."""
    faces = snapshot.faces
    seen = {person.id: person.updated_at for person in snapshot.persons}
    reliable = snapshot.grouping.reliable
    created: dict[int, int] = {}  # new person: its cover
    for placeholder in new_persons:
        members = np.flatnonzero(final == placeholder)
        cover = _cover_face(faces, reliable, members)
        person = await uow.persons.create(cover_face_id=cover)
        final[members] = person
        created[int(person)] = cover
        changes.created.append(int(person))
    before = faces.person_ids
    changed = ~faces.manual & (final != before)
    moves = [
        (face, None if was < 0 else was, None if now < 0 else now)
        for face, was, now in zip(
            faces.face_ids[changed].tolist(), before[changed].tolist(), final[changed].tolist(), strict=True
        )
    ]
    written = await uow.faces.regroup(moves, seen)
    applied = changed & np.isin(faces.face_ids, np.fromiter(written, np.int64, len(written)))
    skipped = changed & ~applied
    if skipped.any():
        log.info("grouping kept edits made while it computed", faces_kept=int(skipped.sum()))
    effective = np.where(skipped, before, final)  # each face's person as written (hand edits aside)
    changes.faces_assigned = int((applied & (before < 0)).sum())
    changes.faces_unassigned = int((applied & (final < 0)).sum())
    changes.faces_moved = int((applied & (before >= 0) & (final >= 0)).sum())

    empty_new = await uow.persons.delete_empty(created)  # all their faces were edited meanwhile
    changes.created = [person for person in changes.created if person not in empty_new]

    async def new_covers_if_gone(covers: Sequence[tuple[int, int, datetime | None]]) -> None:
        """A new cover for each (person, cover face, version) whose cover face left the person; on an
        existing person, only while it is as read (`version`): a cover chosen meanwhile stays."""
        rows = _rows_or_absent(faces.face_ids, np.array([cover for _, cover, _ in covers], np.int64))
        owners = np.array([person for person, _, _ in covers], np.int64)
        # Checked at once: a batch between reclusters looks at every person's cover, and moves few.
        found = np.flatnonzero(rows >= 0)
        left = found[effective[rows[found]] != owners[found]]
        for person_id, _, version in (covers[index] for index in left.tolist()):
            members = np.flatnonzero(effective == person_id)
            cover = _cover_face(faces, reliable, members) if len(members) else None
            await uow.persons.set_cover(person_id, cover, expected_updated_at=version)

    await new_covers_if_gone([(person, created[person], None) for person in changes.created])
    gone: set[int] = set()
    if plan is not None:
        vanished = {source for source, _ in plan.merged} | set(plan.emptied)
        current = await uow.persons.get(vanished)
        # A person edited meanwhile kept its faces (no move out of it was written): it did not vanish.
        gone = {
            person for person in vanished if person in current and current[person].updated_at == seen[person]
        }
        changes.merged = [(source, target) for source, target in plan.merged if source in gone]
        changes.emptied = [person for person in plan.emptied if person in gone]
        await uow.persons.delete_unchanged_empty({person: seen[person] for person in gone})
    await new_covers_if_gone(
        [
            (record.id, record.cover_face_id, record.updated_at)
            for record in snapshot.persons
            if record.id not in gone and record.cover_face_id is not None
        ]
    )


def _rows_or_absent(face_ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """The row of each `wanted` face in `face_ids` (sorted), -1 where it is absent: no dictionary of a
    million faces per batch."""
    rows = np.searchsorted(face_ids, wanted)
    found = rows < len(face_ids)
    found[found] = face_ids[rows[found]] == wanted[found]
    return np.where(found, rows, -1)


def _grouping_input(
    faces: FaceSet, persons: list[PersonRecord], cannot_links: list[tuple[int, int]], params: GroupingParams
) -> GroupingInput:
    """Hand-assigned faces and faces of named persons are anchored to their person; refusals by row."""
    named = np.array([person.id for person in persons if person.name], np.int64)
    anchored = (faces.person_ids >= 0) & (faces.manual | np.isin(faces.person_ids, named))
    link_rows = _rows_or_absent(faces.face_ids, np.array([face for face, _ in cannot_links], np.int64))
    forbidden: dict[int, set[int]] = {}
    for row, (_, person_id) in zip(link_rows.tolist(), cannot_links, strict=True):
        if row >= 0:
            forbidden.setdefault(row, set()).add(person_id)
    return GroupingInput(
        embeddings=faces.embeddings,
        image_ids=faces.image_ids,
        reliable=reliable_faces(faces.det_score, faces.size_px, faces.sharpness, faces.yaw, params),
        anchors=np.where(anchored, faces.person_ids, -1),
        pinned=faces.manual & (faces.person_ids >= 0),
        forbidden={row: frozenset(persons) for row, persons in forbidden.items()},
    )


def _cover_face(faces: FaceSet, reliable: np.ndarray, members: np.ndarray) -> int:
    """The member nearest the person's mean embedding, preferring reliable faces: a typical, clear face."""
    preferred = members[reliable[members]] if reliable[members].any() else members
    mean = faces.embeddings[members].sum(axis=0)
    return int(faces.face_ids[preferred[np.argmax(faces.embeddings[preferred] @ mean)]])
