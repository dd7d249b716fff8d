"""Grouping: `faces.detected` joins the new faces to persons, `recluster.requested` regroups a pack.

Each handler loads faces from its unit of work, lets `image_grouping.grouping` decide, writes the
decision back, commits, and returns `persons.updated` with what changed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import structlog

from image_grouping.grouping import (
    GroupingInput,
    GroupingParams,
    assign_incrementally,
    group_faces,
    map_groups_to_persons,
    reliable_faces,
)
from image_grouping.handlers.ports import Clock, Outcome, UnitOfWork, UnitOfWorkFactory
from image_grouping.models.messages import PERIODIC, FacesDetected, PersonsUpdated, ReclusterRequested
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

    def params_for(self, model_pack: str) -> GroupingParams:
        if self.params_of_pack is None or model_pack == self.model_pack:
            return self.params
        return self.params_of_pack(model_pack)


async def handle_faces_detected(events: Sequence[FacesDetected], deps: GroupingDeps) -> list[Outcome]:
    """Assign the new faces of several images to persons (or new persons) incrementally, in one commit.

    One `persons.updated` per model pack, given as the outcome of the batch's last message of that pack.
    """
    last_of_pack = {event.model_pack: index for index, event in enumerate(events) if event.face_ids}
    outcomes: list[Outcome] = [[] for _ in events]
    if not last_of_pack:
        return outcomes
    async with deps.unit_of_work() as uow:
        for model_pack, index in last_of_pack.items():
            face_ids = [face for event in events if event.model_pack == model_pack for face in event.face_ids]
            changes = await assign_new_faces(uow, face_ids, model_pack, deps.params_for(model_pack))
            outcomes[index] = [PersonsUpdated(model_pack=model_pack, changes=changes.to_event_data())]
        await uow.commit()
    return outcomes


async def handle_recluster_requested(
    events: Sequence[ReclusterRequested], deps: GroupingDeps
) -> list[Outcome]:
    """Regroup every face of each request's pack, one request after the other (the recluster queue's
    single active consumer runs one at a time). A periodic request that another replica's request of the
    same interval already served is skipped."""
    outcomes: list[Outcome] = []
    for event in events:
        model_pack = event.model_pack or deps.model_pack
        async with deps.unit_of_work() as uow:
            if event.reason == PERIODIC and not await _periodic_recluster_due(uow, model_pack, deps):
                log.info("periodic recluster skipped: one ran within this interval", model_pack=model_pack)
                outcomes.append([])
                continue
            changes = await recluster_all(uow, model_pack, deps.params_for(model_pack))
            await uow.commit()
        outcomes.append([PersonsUpdated(model_pack=model_pack, changes=changes.to_event_data())])
    return outcomes


async def _periodic_recluster_due(uow: UnitOfWork, model_pack: str, deps: GroupingDeps) -> bool:
    """Whether a periodic recluster request still has work to do: no recluster of the pack has
    completed that started within the last `PERIODIC_SKIP_SHARE` of the interval."""
    latest = await uow.runs.latest("recluster")
    if latest is None or latest["status"] != "done":
        return True
    if (latest["stats"] or {}).get("model_pack") != model_pack:
        return True
    started: datetime = latest["started_at"]
    if started.tzinfo is None:  # SQLite keeps no offset; every time stored is UTC
        started = started.replace(tzinfo=UTC)
    return deps.clock() - started >= timedelta(seconds=PERIODIC_SKIP_SHARE * deps.interval_seconds)


async def assign_new_faces(
    uow: UnitOfWork, face_ids: Sequence[int], model_pack: str, params: GroupingParams
) -> PersonChanges:
    """Put newly detected faces into existing persons where the evidence is strong; found tight new
    groups. Writes through `uow`; the caller commits."""
    changes = PersonChanges(model_pack=model_pack, kind="incremental")
    faces = await uow.faces.load_for_grouping(model_pack)
    persons = await uow.persons.list()
    usable = _groupable(faces)
    index_of = {face_id: row for row, face_id in enumerate(faces.face_ids[usable].tolist())}
    subset = faces.take(usable)
    new = np.array(sorted({index_of[face_id] for face_id in face_ids if face_id in index_of}), np.int64)
    new = new[subset.person_ids[new] < 0] if len(new) else new
    if len(new) == 0:
        return changes
    grouping_input = _grouping_input(subset, persons, await uow.faces.cannot_links(), params)
    decision = assign_incrementally(grouping_input, subset.person_ids, new, params)

    assignments: dict[int, int | None] = {
        int(subset.face_ids[row]): person for row, person in decision.joined.items()
    }
    for members in decision.founded:
        person = await uow.persons.create(cover_face_id=_cover_face(subset, grouping_input.reliable, members))
        changes.created.append(person)
        assignments.update({int(face_id): person for face_id in subset.face_ids[members].tolist()})
    changes.faces_assigned = len(assignments)
    if assignments:
        await uow.faces.set_persons(assignments)
    log.info("new faces grouped", faces=len(new), joined=len(decision.joined), founded=len(decision.founded))
    return changes


async def recluster_all(uow: UnitOfWork, model_pack: str, params: GroupingParams) -> PersonChanges:
    """Regroup every face of the pack, keeping person ids (largest overlap) and every manual edit.
    Writes through `uow`; the caller commits."""
    changes = PersonChanges(model_pack=model_pack, kind="recluster")
    run_id = await uow.runs.start("recluster")
    faces = await uow.faces.load_for_grouping(model_pack)
    persons = await uow.persons.list()
    subset = faces.take(_groupable(faces))
    grouping_input = _grouping_input(subset, persons, await uow.faces.cannot_links(), params)
    labels = group_faces(grouping_input, params).labels
    plan = map_groups_to_persons(
        labels,
        subset.person_ids,
        grouping_input.pinned,
        grouping_input.anchors,
        grouping_input.forbidden,
        [person.id for person in persons],
        min_faces=params.min_faces,
    )

    final = plan.person_ids.copy()
    for placeholder in plan.new_persons:
        members = np.flatnonzero(final == placeholder)
        person = await uow.persons.create(cover_face_id=_cover_face(subset, grouping_input.reliable, members))
        final[members] = person
        changes.created.append(int(person))
    before, automatic = subset.person_ids, ~subset.manual
    changed = automatic & (final != before)
    changes.faces_assigned = int((changed & (before < 0)).sum())
    changes.faces_unassigned = int((changed & (final < 0)).sum())
    changes.faces_moved = int((changed & (before >= 0) & (final >= 0)).sum())
    changes.merged = plan.merged
    changes.emptied = plan.emptied
    await uow.faces.set_persons(
        {
            int(face_id): (int(person) if person >= 0 else None)
            for face_id, person in zip(
                subset.face_ids[changed].tolist(), final[changed].tolist(), strict=True
            )
        }
    )
    await _tidy_persons(uow, persons, changes, subset, final, grouping_input.reliable)
    await uow.runs.finish(run_id, changes.to_event_data())
    log.info(
        "recluster done",
        created=len(changes.created),
        merged=len(changes.merged),
        emptied=len(changes.emptied),
        faces_assigned=changes.faces_assigned,
        faces_moved=changes.faces_moved,
        faces_unassigned=changes.faces_unassigned,
    )
    return changes


def _groupable(faces: FaceSet) -> np.ndarray:
    """Faces grouping may look at: all but those taken out of a person by hand (they stay unassigned)."""
    return ~(faces.manual & (faces.person_ids < 0))


def _grouping_input(
    faces: FaceSet, persons: list[PersonRecord], cannot_links: list[tuple[int, int]], params: GroupingParams
) -> GroupingInput:
    """Hand-assigned faces and faces of named persons are anchored to their person; refusals by row."""
    named = np.array([person.id for person in persons if person.name], np.int64)
    anchored = (faces.person_ids >= 0) & (faces.manual | np.isin(faces.person_ids, named))
    row_of = {face_id: row for row, face_id in enumerate(faces.face_ids.tolist())}
    forbidden: dict[int, set[int]] = {}
    for face_id, person_id in cannot_links:
        if face_id in row_of:
            forbidden.setdefault(row_of[face_id], set()).add(person_id)
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


async def _tidy_persons(
    uow: UnitOfWork,
    persons: list[PersonRecord],
    changes: PersonChanges,
    faces: FaceSet,
    final: np.ndarray,
    reliable: np.ndarray,
) -> None:
    """Delete unnamed persons left empty; give a new cover to persons whose cover face left them."""
    by_id = {person.id: person for person in persons}
    vanished = [source for source, _ in changes.merged] + changes.emptied
    await uow.persons.delete([person for person in vanished if not by_id[person].name])
    person_of_face = dict(zip(faces.face_ids.tolist(), final.tolist(), strict=True))
    for person in persons:
        if person.id in vanished or person.cover_face_id is None:
            continue
        if person_of_face.get(person.cover_face_id, person.id) != person.id:
            members = np.flatnonzero(final == person.id)
            await uow.persons.set_cover(
                person.id, _cover_face(faces, reliable, members) if len(members) else None
            )
