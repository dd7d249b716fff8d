"""A warm copy of each library's faces (of a pack) for incremental assignment, held by the grouping process.

Incremental assignment needs every groupable face of the library and pack (its embedding above all: 2 KB
a face, 2 GB at a million) for a batch of a few hundred new ones. Read from the database each time, that
read costs more than the assignment itself; so the process keeps the faces it read, and before each batch
reads only what changed since.

How the copy stays right (a read from scratch is always the fallback):

- *Changed and new faces.* Every write of a face sets its `updated_at` (detection's inserts and updates,
  grouping's moves, every edit by hand, a person deleted). Each refresh asks for the (id, updated_at) of
  the pack's faces written since the previous refresh began, minus `window_seconds`, and reads again in
  full those whose `updated_at` differs from the copy's. The window is there because `updated_at` is the
  writer's clock when it wrote, not when it committed: a transaction that commits late (or a writer whose
  clock is behind) has written times older than its commit. What commits later than the window would
  allow is caught by the next two checks, or by the periodic full read.
- *Faces that vanish* (a photo deleted, a person forgotten, a re-analysis that no longer finds a face) and
  faces that stop or start being groupable: after the changes are applied, the copy holds every face the
  database holds, plus those deleted. The number of groupable faces is counted in the database; when it
  differs, their ids are read (8 bytes a face), the vanished ones dropped and any the copy missed read.
- *Persons* are caught up the same way: every write of a person sets its `updated_at` (a cover cleared
  because its face was deleted too), so those written since the refresh began, minus the window, are read
  again; when their number in the database differs from the copy's, their ids are read (the deleted
  dropped, any missed read). *Cannot-links* are read in full each time: few, and a merge moves them
  without a time to go by.
- *When in doubt*, a read from scratch: the first batch of a pack, any error while catching up (the copy is
  dropped), a copy older than `max_age_seconds` (a bound on whatever a clock could hide), and every
  recluster (whose read, from scratch, becomes the copy; the next batch catches up on what it moved).
- *The neighbour search.* A copy of `approximate_from` faces or more also keeps each face's row of the
  approximate neighbour search (`grouping.neighbours.SearchProjection`: a PCA to 128 dimensions, trained
  on each read from scratch, 520 bytes a face), written with the face's row by every change above, so
  that a batch searches its neighbours without comparing it with every full embedding.
- *Memory* is bounded by `max_faces` over all copies: the least recently used library is dropped first,
  and one larger than the budget alone is never kept.

Grouping's write checks every row it changes against what it read (`recognition._write`), so even a copy
that were stale could never overwrite an edit; the refresh is what keeps its decisions those of a fresh
read. The copy's arrays are handed to grouping without a copy, so one reader serves one grouping at a time
in the process (as the consumer runs them anyway): a second waits for the first's block to end.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta

import numpy as np
import structlog

from image_grouping.grouping.neighbours import SearchProjection
from image_grouping.handlers.ports import GroupingRows, GroupingSource, UnitOfWork
from image_grouping.models.records import FaceSet, PersonRecord

log = structlog.get_logger(__name__)

_COLUMNS = tuple(field.name for field in fields(FaceSet))
_VERSIONS, _REDUCED = "_versions", "_reduced"  # the columns held beside the faces'
# From this many faces on, a copy keeps a projection of its rows for the approximate neighbour search of
# incremental assignment (`grouping.neighbours.search_among_reduced`); below it, the exact search is fast.
APPROXIMATE_FROM = 100_000
# Removing more than this share of a copy's rows rebuilds it instead of shifting rows in place.
_REBUILD_SHARE = 0.125


class _Rows:
    """A pack's groupable faces, sorted by id, in arrays with room to grow; `view()` shares their memory.

    Beside the faces' columns: each face's version (`updated_at`) and, with a `projection`, each face's
    row of the approximate neighbour search (`SearchProjection.apply`), kept up to date with the rows."""

    def __init__(self, faces: FaceSet, versions: np.ndarray, keep: np.ndarray | None = None) -> None:
        self.projection: SearchProjection | None = None
        self._fill(self._columns(faces, versions), keep)

    def project(self, projection: SearchProjection) -> None:
        """Keep each row's projection from now on."""
        self.projection = projection
        reduced = projection.apply(self.arrays["embeddings"][: self.count])
        self.arrays[_REDUCED] = _with_capacity(reduced, len(self.versions))

    def _fill(self, columns: dict[str, np.ndarray], keep: np.ndarray | None = None) -> None:
        """Hold `columns` (their rows of `keep`), with a quarter more room; one copy, straight into place."""
        self.count = len(columns[_VERSIONS]) if keep is None else int(keep.sum())
        capacity = max(self.count + self.count // 4, 1024)
        self.arrays = {name: _with_capacity(array, capacity, keep) for name, array in columns.items()}

    def _columns(self, faces: FaceSet, versions: np.ndarray) -> dict[str, np.ndarray]:
        """Every column of these faces, as held."""
        columns = {name: getattr(faces, name) for name in _COLUMNS} | {_VERSIONS: versions}
        if self.projection is not None:
            columns[_REDUCED] = self.projection.apply(faces.embeddings)
        return columns

    def _held(self) -> dict[str, np.ndarray]:
        return {name: array[: self.count] for name, array in self.arrays.items()}

    @property
    def face_ids(self) -> np.ndarray:
        return self.arrays["face_ids"][: self.count]

    @property
    def versions(self) -> np.ndarray:
        return self.arrays[_VERSIONS]

    @property
    def reduced(self) -> np.ndarray | None:
        return self.arrays[_REDUCED][: self.count] if _REDUCED in self.arrays else None

    @property
    def dim(self) -> int:
        return int(self.arrays["embeddings"].shape[1])

    def view(self) -> FaceSet:
        return FaceSet(**{name: self.arrays[name][: self.count] for name in _COLUMNS})

    def versions_of(self, face_ids: np.ndarray) -> np.ndarray:
        """Each face's version in the copy, -1 for a face it does not hold."""
        rows = np.searchsorted(self.face_ids, face_ids)
        found = rows < self.count
        found[found] = self.face_ids[rows[found]] == face_ids[found]
        return np.where(found, self.versions[np.minimum(rows, max(self.count - 1, 0))], -1)

    def upsert(self, faces: FaceSet, versions: np.ndarray) -> None:
        """Put these faces (sorted by id) in: replace those held, add the others."""
        columns = self._columns(faces, versions)
        rows = np.searchsorted(self.face_ids, faces.face_ids)
        held = rows < self.count
        held[held] = self.face_ids[rows[held]] == faces.face_ids[held]
        for name, array in self.arrays.items():
            array[rows[held]] = columns[name][held]
        new = ~held
        if not new.any():
            return
        added = {name: column[new] for name, column in columns.items()}
        if self.count and added["face_ids"][0] < self.face_ids[-1]:
            # A face older than the newest held (a transaction that committed late): rebuild in order.
            merged = {name: np.concatenate([array, added[name]]) for name, array in self._held().items()}
            order = np.argsort(merged["face_ids"], kind="stable")
            self._fill({name: column[order] for name, column in merged.items()})
            return
        end = self.count + len(added["face_ids"])
        if end > len(self.versions):
            capacity = end + end // 4
            self.arrays = {name: _with_capacity(array, capacity) for name, array in self._held().items()}
        for name, array in self.arrays.items():
            array[self.count : end] = added[name]
        self.count = end

    def remove(self, face_ids: np.ndarray) -> None:
        """Take these faces out (those held), keeping the order."""
        rows = np.searchsorted(self.face_ids, face_ids)
        held = rows < self.count
        held[held] = self.face_ids[rows[held]] == face_ids[held]
        gone = np.unique(rows[held])
        if len(gone) == 0:
            return
        if len(gone) > _REBUILD_SHARE * self.count:
            keep = np.ones(self.count, bool)
            keep[gone] = False
            self._fill(self._held(), keep)
            return
        # Shift each run of rows between two removed ones down over the gap: no copy of the whole copy.
        ends = np.append(gone[1:], self.count)
        target = int(gone[0])
        for removed, end in zip(gone.tolist(), ends.tolist(), strict=True):
            start = removed + 1
            for array in self.arrays.values():
                array[target : target + end - start] = array[start:end]
            target += end - start
        self.count = target


def _with_capacity(array: np.ndarray, capacity: int, keep: np.ndarray | None = None) -> np.ndarray:
    """`array` (its rows of `keep`) at the start of a new array of `capacity` rows."""
    grown = np.empty((capacity, *array.shape[1:]), array.dtype)
    if keep is None or keep.all():
        grown[: len(array)] = array
    else:  # row by row into place (np.compress with `out` is many times slower)
        rows = np.flatnonzero(keep)
        np.take(array, rows, axis=0, out=grown[: len(rows)])
    return grown


@dataclass
class _Copy:
    rows: _Rows
    persons: dict[int, PersonRecord]  # by id, in the order of their ids
    read_from: datetime  # the next refresh asks for the faces and persons written since then
    filled: float  # time.monotonic() of the last read from scratch


_Key = tuple[str, str]  # (library, model pack)


@dataclass(frozen=True)
class _WarmSource:
    reader: WarmGroupingReader
    key: _Key

    async def read(self, uow: UnitOfWork, *, fresh: bool) -> GroupingRows:
        return await self.reader.read(uow, self.key, fresh=fresh)


class WarmGroupingReader:
    """`GroupingReader` that keeps each pack's faces between batches (see the module's docstring)."""

    def __init__(
        self,
        *,
        max_faces: int,
        approximate_from: int = APPROXIMATE_FROM,
        window_seconds: float = 300.0,
        max_age_seconds: float = 1800.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.max_faces = max_faces
        self.approximate_from = approximate_from
        self.window = timedelta(seconds=window_seconds)
        self.max_age_seconds = max_age_seconds
        self._clock = clock
        self._copies: OrderedDict[_Key, _Copy] = OrderedDict()  # least recently used first
        self._lock = asyncio.Lock()  # one grouping at a time holds the copies' arrays

    @property
    def faces_held(self) -> int:
        return sum(copy.rows.count for copy in self._copies.values())

    @asynccontextmanager
    async def hold(self, library_id: str, model_pack: str) -> AsyncIterator[GroupingSource]:
        async with self._lock:
            yield _WarmSource(self, (library_id, model_pack))

    async def read(self, uow: UnitOfWork, key: _Key, *, fresh: bool) -> GroupingRows:
        """The rows of the library and pack, read in `uow` (a unit of work of that library; the caller
        holds the lock)."""
        library_id, model_pack = key
        # Taken out first: a copy that fails to catch up is dropped, and a read from scratch never has two
        # copies of the pack in memory.
        copy = self._copies.pop(key, None)
        try:
            copy = await self._catch_up(uow, key, None if fresh else copy)
            cannot_links = await uow.faces.cannot_links()
        except BaseException:
            log.info("warm faces dropped: reading them failed", library_id=library_id, model_pack=model_pack)
            raise
        self._keep(key, copy)
        return GroupingRows(copy.rows.view(), list(copy.persons.values()), cannot_links, copy.rows.reduced)

    def _keep(self, key: _Key, copy: _Copy) -> None:
        """Keep the copy as the most recently used, dropping the least recently used over the budget; a
        copy larger than the budget alone is not kept."""
        if copy.rows.count > self.max_faces:
            return
        while self._copies and self.faces_held + copy.rows.count > self.max_faces:
            dropped, _ = self._copies.popitem(last=False)
            log.info(
                "warm faces dropped: over the memory budget", library_id=dropped[0], model_pack=dropped[1]
            )
        self._copies[key] = copy

    async def _catch_up(self, uow: UnitOfWork, key: _Key, copy: _Copy | None) -> _Copy:
        library_id, model_pack = key
        started = self._clock()
        if copy is None or time.monotonic() - copy.filled > self.max_age_seconds:
            faces, versions = await uow.faces.load_versioned(model_pack)
            rows = _Rows(faces, versions, faces.groupable())
            del faces, versions  # the read's arrays, before the projection's
            if rows.count >= self.approximate_from:
                # A large library's batches search their neighbours approximately, in a projection
                # trained once per read from scratch.
                rows.project(SearchProjection(rows.view().embeddings))
            persons = {person.id: person for person in await uow.persons.list(counted=False)}
            copy = _Copy(rows, persons, started - self.window, time.monotonic())
            log.info(
                "faces read from scratch for grouping",
                library_id=library_id,
                model_pack=model_pack,
                faces=copy.rows.count,
            )
            return copy
        rows = copy.rows
        ids, versions = await uow.faces.versions_since(model_pack, copy.read_from)
        changed = np.sort(ids[rows.versions_of(ids) != versions])
        if len(changed):
            await self._read_again(uow, model_pack, rows, changed)
        held = await uow.faces.count_groupable(model_pack)
        vanished = missed = 0
        if held != rows.count:
            stored = await uow.faces.groupable_ids(model_pack)
            gone = np.setdiff1d(rows.face_ids, stored, assume_unique=True)
            rows.remove(gone)
            absent = np.setdiff1d(stored, rows.face_ids, assume_unique=True)
            if len(absent):
                # Written before the window began but committed after the last refresh: widen the window.
                log.warning(
                    "warm faces missed faces committed late",
                    library_id=library_id,
                    model_pack=model_pack,
                    faces=len(absent),
                )
                await self._read_again(uow, model_pack, rows, absent)
            vanished, missed = len(gone), len(absent)
        await self._catch_up_persons(uow, key, copy)
        copy.read_from = started - self.window
        log.debug(
            "warm faces caught up",
            library_id=library_id,
            model_pack=model_pack,
            faces=rows.count,
            read_again=len(changed),
            vanished=vanished,
            missed=missed,
        )
        return copy

    @staticmethod
    async def _catch_up_persons(uow: UnitOfWork, key: _Key, copy: _Copy) -> None:
        """The copy's persons as the database holds them: those written since the last refresh read again,
        then, when their number differs, those deleted dropped and those committed late read."""
        persons = copy.persons
        last = next(reversed(persons), 0)
        changed = await uow.persons.changed_since(copy.read_from)
        in_order = all(person.id > last or person.id in persons for person in changed)  # ids grow
        persons.update((person.id, person) for person in changed)
        if await uow.persons.count() != len(persons):
            stored = set(await uow.persons.ids())
            for gone in persons.keys() - stored:
                del persons[gone]
            missed = stored - persons.keys()
            if missed:
                log.warning(
                    "warm persons missed persons committed late",
                    library_id=key[0],
                    model_pack=key[1],
                    persons=len(missed),
                )
                persons.update(await uow.persons.get(missed, counted=False))
                in_order = False
        if not in_order:
            copy.persons = dict(sorted(persons.items()))

    @staticmethod
    async def _read_again(uow: UnitOfWork, model_pack: str, rows: _Rows, face_ids: np.ndarray) -> None:
        faces, versions = await uow.faces.load_versioned(model_pack, face_ids.tolist())
        if len(faces) and faces.embeddings.shape[1] != rows.dim and rows.count:
            raise ValueError("faces of one model pack have embeddings of different sizes")
        keep = faces.groupable()
        # Faces no longer groupable, and those deleted since they were listed, leave the copy.
        rows.remove(np.setdiff1d(face_ids, faces.face_ids[keep]))
        rows.upsert(faces.take(keep), versions[keep])
