"""In-memory adapters for fast unit tests of the handlers: a unit of work with real transactions (a copy
of the committed state, kept only on commit), an analyzer, image files and thumbnails."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np

from image_grouping.errors import BadInputError, CorruptImageError, ImageNotFoundError
from image_grouping.models.face_identity import StoredFace, distinct_boxes, match_boxes, plan_reanalysis
from image_grouping.models.faces import DetectedFace, FaceQuality, HandBox, ImageAnalysis
from image_grouping.models.messages import DEFAULT_LIBRARY
from image_grouping.models.records import (
    FaceEdit,
    FaceRecord,
    FaceSet,
    ImageRecord,
    ImageResult,
    PersonRecord,
)
from image_grouping.models.views import FaceView, ImageView, PersonSummary

AUTOMATIC, BY_HAND = "grouping", "manual"


@dataclass
class FaceRow:
    id: int
    image_id: int
    model_pack: str
    box: tuple[float, float, float, float]
    embedding: np.ndarray
    det_score: float
    size_px: float
    sharpness: float
    yaw: float
    thumbnail_path: str | None
    person_id: int | None = None
    assigned_by: str = AUTOMATIC
    added_by_hand: bool = False
    library_id: str = DEFAULT_LIBRARY


@dataclass
class State:
    """Everything a fake database holds."""

    images: dict[int, ImageRecord] = field(default_factory=dict)
    faces: dict[int, FaceRow] = field(default_factory=dict)
    persons: dict[int, dict[str, Any]] = field(default_factory=dict)
    cannot_links: set[tuple[int, int]] = field(default_factory=set)
    tombstones: list[tuple[int, tuple[float, float, float, float]]] = field(default_factory=list)
    edits: list[FaceEdit] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    next_id: int = 1

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


class FakeDatabase:
    """Holds the committed state; `unit_of_work(library_id)` is the factory the handlers take."""

    def __init__(self) -> None:
        self.committed = State()
        self.commits = 0

    def unit_of_work(self, library_id: str = DEFAULT_LIBRARY) -> FakeUnitOfWork:
        return FakeUnitOfWork(self, library_id)


class FakeUnitOfWork:
    """A transaction of one library: its repositories see `state`, the library's images, faces and
    persons (ids, refusals, tombstones, edits and runs are shared); `everything` is the whole copy."""

    def __init__(self, database: FakeDatabase, library_id: str = DEFAULT_LIBRARY) -> None:
        self._database = database
        self.library_id = library_id

    async def __aenter__(self) -> Self:
        self.everything = copy.deepcopy(self._database.committed)
        library = self.library_id
        self.state = replace(
            self.everything,
            images={k: v for k, v in self.everything.images.items() if v.library_id == library},
            faces={k: v for k, v in self.everything.faces.items() if v.library_id == library},
            persons={
                k: v
                for k, v in self.everything.persons.items()
                if v.get("library_id", DEFAULT_LIBRARY) == library
            },
        )
        self.images = FakeImages(self)
        self.faces = FakeFaces(self)
        self.persons = FakePersons(self)
        self.runs = FakeRuns(self)
        self.views = FakeViews(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        del self.state  # what was not committed is gone

    async def commit(self) -> None:
        library, everything = self.library_id, self.everything
        merged = replace(
            self.state,
            images={k: v for k, v in everything.images.items() if v.library_id != library}
            | self.state.images,
            faces={k: v for k, v in everything.faces.items() if v.library_id != library} | self.state.faces,
            persons={
                k: v for k, v in everything.persons.items() if v.get("library_id", DEFAULT_LIBRARY) != library
            }
            | self.state.persons,
        )
        self._database.committed = copy.deepcopy(merged)
        self._database.commits += 1


class _Repository:
    def __init__(self, uow: FakeUnitOfWork) -> None:
        self._uow = uow

    @property
    def state(self) -> State:
        return self._uow.state


class FakeImages(_Repository):
    async def get(self, image_id: int) -> ImageRecord | None:
        return self.state.images.get(image_id)

    async def in_other_library(self, image_id: int) -> bool:
        return image_id in self._uow.everything.images and image_id not in self.state.images

    async def libraries(self) -> list[str]:
        return sorted({image.library_id for image in self._uow.everything.images.values()})

    async def erase_library(self) -> tuple[list[int], list[str]]:
        ids = sorted(self.state.images)
        thumbnails = [row.thumbnail_path for row in self.state.faces.values() if row.thumbnail_path]
        face_ids = set(self.state.faces)
        self.state.cannot_links = {link for link in self.state.cannot_links if link[0] not in face_ids}
        self.state.edits = [edit for edit in self.state.edits if edit.face_id not in face_ids]
        self.state.tombstones = [each for each in self.state.tombstones if each[0] not in ids]
        self.state.images, self.state.faces = {}, {}
        return ids, thumbnails

    async def hand_boxes(
        self, source_paths: Sequence[str]
    ) -> dict[str, list[tuple[float, float, float, float]]]:
        found: dict[str, list[tuple[float, float, float, float]]] = {}
        for path in source_paths:
            image = next((each for each in self.state.images.values() if each.source_path == path), None)
            boxes = [
                row.box
                for row in sorted(self.state.faces.values(), key=lambda row: row.id)
                if image is not None and row.image_id == image.id and row.added_by_hand
            ]
            if boxes:
                found[path] = distinct_boxes(boxes)
        return found

    async def forgotten_boxes(self, image_ids: Sequence[int]) -> dict[int, np.ndarray]:
        found: dict[int, list[tuple[float, float, float, float]]] = {}
        for image_id, box in self.state.tombstones:
            if image_id in image_ids:
                found.setdefault(image_id, []).append(box)
        return {image_id: np.array(boxes, np.float64) for image_id, boxes in found.items()}

    async def get_or_create(self, source_id: str | None, source_path: str) -> ImageRecord:
        found = next((each for each in self.state.images.values() if each.source_path == source_path), None)
        if found is not None:
            return found
        image_id = self.state.new_id()
        image = ImageRecord(
            image_id,
            source_id,
            source_path,
            "pending",
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            self._uow.library_id,
        )
        self.state.images[image_id] = image
        return image

    async def get_or_create_many(self, registrations: Sequence[tuple[str | None, str]]) -> list[ImageRecord]:
        return [await self.get_or_create(source_id, path) for source_id, path in registrations]

    async def find_processed(self, content_hash: str, model_pack: str) -> ImageRecord | None:
        return next(
            (
                each
                for each in self.state.images.values()
                if each.content_hash == content_hash
                and each.model_pack == model_pack
                and each.status in ("done", "failed")
            ),
            None,
        )

    async def pending(self, limit: int) -> list[ImageRecord]:
        return [each for each in self.state.images.values() if each.status == "pending"][:limit]

    async def analysed_by_other_pack(
        self, model_pack: str, from_pack: str | None, after_id: int, limit: int
    ) -> list[ImageRecord]:
        return [
            each
            for each in sorted(self.state.images.values(), key=lambda image: image.id)
            if each.status == "done"
            and each.model_pack != model_pack
            and (from_pack is None or each.model_pack == from_pack)
            and each.id > after_id
        ][:limit]

    async def count_analysed_by_other_pack(self, model_pack: str, from_pack: str | None) -> int:
        return len(await self.analysed_by_other_pack(model_pack, from_pack, 0, 10**9))

    async def mark_failed(
        self, image_id: int, reason: str, content_hash: str | None = None, model_pack: str | None = None
    ) -> None:
        image = replace(self.state.images[image_id], status="failed", error=reason)
        if content_hash is not None:
            image = replace(image, content_hash=content_hash, model_pack=model_pack)
        self.state.images[image_id] = image

    async def save_analyses(self, results: Sequence[ImageResult]) -> list[list[int]]:
        """Replace each image's faces of the pack by the domain's plan, as the real data layer does: a
        re-detected face keeps its id and person, a face no longer found goes (with its cannot-links and
        covers), an image given twice keeps its last result."""
        latest = {result.image_id: result for result in results}
        saved: dict[int, list[int]] = {}
        for image_id, result in latest.items():
            analysis = result.analysis
            image = self.state.images[image_id]
            self.state.images[image_id] = replace(
                image,
                status="done",
                content_hash=result.content_hash,
                size_bytes=result.size_bytes,
                width=analysis.width,
                height=analysis.height,
                model_pack=analysis.model_pack,
            )
            stored = {
                row.id: row
                for row in self.state.faces.values()
                if row.image_id == image_id and row.model_pack == analysis.model_pack
            }
            plan = plan_reanalysis(
                [StoredFace(row.id, row.box, row.added_by_hand) for row in stored.values()],
                [face.box for face in analysis.faces],
            )
            for face_id in plan.removed:
                del self.state.faces[face_id]
                self.state.cannot_links = {link for link in self.state.cannot_links if link[0] != face_id}
                for person in self.state.persons.values():
                    if person["cover_face_id"] == face_id:
                        person["cover_face_id"] = None
            ids = []
            for index, (face, thumbnail) in enumerate(
                zip(analysis.faces, result.thumbnail_paths, strict=True)
            ):
                kept = stored.get(plan.kept[index]) if index in plan.kept else None
                row = FaceRow(
                    id=kept.id if kept else self.state.new_id(),
                    image_id=image_id,
                    model_pack=analysis.model_pack,
                    box=face.box,
                    embedding=face.embedding,
                    det_score=face.quality.det_score,
                    size_px=face.quality.size_px,
                    sharpness=face.quality.sharpness,
                    yaw=face.quality.yaw,
                    thumbnail_path=thumbnail,
                    person_id=kept.person_id if kept else None,
                    assigned_by=kept.assigned_by if kept else AUTOMATIC,
                    added_by_hand=face.added_by_hand,
                    library_id=self._uow.library_id,
                )
                self.state.faces[row.id] = row
                ids.append(row.id)
            saved[image_id] = ids
        return [saved[result.image_id] for result in results]


class FakeFaces(_Repository):
    async def in_other_library(self, face_id: int) -> bool:
        return face_id in self._uow.everything.faces and face_id not in self.state.faces

    async def count_in_library(self) -> int:
        return len(self.state.faces)

    async def get(self, face_ids: Iterable[int]) -> dict[int, FaceRecord]:
        return {
            row.id: FaceRecord(
                id=row.id,
                image_id=row.image_id,
                model_pack=row.model_pack,
                person_id=row.person_id,
                manual=row.assigned_by == BY_HAND,
                thumbnail_path=row.thumbnail_path,
                added_by_hand=row.added_by_hand,
            )
            for face_id in face_ids
            if (row := self.state.faces.get(face_id)) is not None
        }

    async def record_edits(self, edits: Sequence[FaceEdit]) -> None:
        self.state.edits += edits

    async def assign_by_hand(self, face_id: int, person_id: int) -> None:
        row = self.state.faces[face_id]
        row.person_id, row.assigned_by = person_id, BY_HAND
        self.state.cannot_links.discard((face_id, person_id))

    async def load_for_grouping(self, model_pack: str) -> FaceSet:
        rows = sorted(
            (row for row in self.state.faces.values() if row.model_pack == model_pack), key=lambda r: r.id
        )
        if not rows:
            return FaceSet.empty()
        return FaceSet(
            face_ids=np.array([row.id for row in rows], np.int64),
            image_ids=np.array([row.image_id for row in rows], np.int64),
            embeddings=np.stack([row.embedding for row in rows]).astype(np.float32),
            person_ids=np.array([-1 if row.person_id is None else row.person_id for row in rows], np.int64),
            manual=np.array([row.assigned_by == BY_HAND for row in rows], bool),
            det_score=np.array([row.det_score for row in rows], np.float32),
            size_px=np.array([row.size_px for row in rows], np.float32),
            sharpness=np.array([row.sharpness for row in rows], np.float32),
            yaw=np.array([row.yaw for row in rows], np.float32),
        )

    async def set_persons(self, assignments: Mapping[int, int | None]) -> int:
        changed = 0
        for face_id, person_id in assignments.items():
            row = self.state.faces[face_id]
            if row.assigned_by != BY_HAND and row.person_id != person_id:
                row.person_id = person_id
                changed += 1
        return changed

    async def regroup(
        self, moves: Sequence[tuple[int, int | None, int | None]], persons_seen: Mapping[int, datetime]
    ) -> set[int]:
        written = set()
        for face_id, before, after in moves:
            row = self.state.faces.get(face_id)
            if row is None or row.assigned_by == BY_HAND or row.person_id != before:
                continue
            if (
                before is not None
                and self.state.persons.get(before, {}).get("updated_at") != persons_seen[before]
            ):
                continue
            if after is not None and (
                after not in self.state.persons or (face_id, after) in self.state.cannot_links
            ):
                continue
            row.person_id = after
            written.add(face_id)
        return written

    async def cannot_links(self) -> list[tuple[int, int]]:
        return sorted(link for link in self.state.cannot_links if link[0] in self.state.faces)

    async def boxes_of_image(self, image_id: int, model_pack: str) -> tuple[list[int], np.ndarray]:
        rows = sorted(
            (
                row
                for row in self.state.faces.values()
                if row.image_id == image_id and row.model_pack == model_pack
            ),
            key=lambda r: r.id,
        )
        return [row.id for row in rows], np.array([row.box for row in rows], np.float64).reshape(-1, 4)

    async def carry_over(self, old_to_new: Mapping[int, int]) -> tuple[int, int]:
        carried = links = 0
        for old_id, new_id in old_to_new.items():
            old, new = self.state.faces[old_id], self.state.faces[new_id]
            if old.person_id is not None or old.assigned_by == BY_HAND:
                new.person_id, new.assigned_by = old.person_id, old.assigned_by
                carried += 1
            for face_id, person_id in list(self.state.cannot_links):
                if face_id == old_id:
                    self.state.cannot_links.add((new_id, person_id))
                    links += 1
        return carried, links

    async def thumbnails(
        self, person_id: int | None, limit: int, model_pack: str | None = None
    ) -> list[tuple[int, str]]:
        rows = [
            row
            for row in self.state.faces.values()
            if row.person_id == person_id
            and row.thumbnail_path is not None
            and (model_pack is None or row.model_pack == model_pack)
        ]
        rows.sort(key=lambda row: (-row.det_score, row.id))
        return [(row.id, row.thumbnail_path) for row in rows[:limit] if row.thumbnail_path]


class FakePersons(_Repository):
    async def in_other_library(self, person_id: int) -> bool:
        return person_id in self._uow.everything.persons and person_id not in self.state.persons

    async def erase_library(self) -> list[int]:
        ids = sorted(self.state.persons)
        self.state.cannot_links = {link for link in self.state.cannot_links if link[1] not in ids}
        self.state.persons = {}
        return ids

    async def get(self, person_ids: Iterable[int], *, counted: bool = True) -> dict[int, PersonRecord]:
        wanted = set(person_ids)
        return {person.id: person for person in await self.list(counted=counted) if person.id in wanted}

    async def model_packs(self, person_id: int) -> set[str]:
        return {row.model_pack for row in self.state.faces.values() if row.person_id == person_id}

    async def list(self, *, counted: bool = True) -> list[PersonRecord]:
        counts: dict[int, int] = {}
        for row in self.state.faces.values():
            if row.person_id is not None:
                counts[row.person_id] = counts.get(row.person_id, 0) + 1
        return [
            PersonRecord(
                id=person_id,
                name=values["name"],
                hidden=values["hidden"],
                cover_face_id=values["cover_face_id"],
                face_count=counts.get(person_id, 0) if counted else 0,
                created_at=values["created_at"],
                updated_at=values["updated_at"],
            )
            for person_id, values in sorted(self.state.persons.items())
        ]

    async def changed_since(self, since: datetime) -> list[PersonRecord]:
        return [person for person in await self.list(counted=False) if person.updated_at >= since]

    async def count(self) -> int:
        return len(self.state.persons)

    async def ids(self) -> list[int]:
        return sorted(self.state.persons)

    async def create(self, cover_face_id: int | None = None, name: str | None = None) -> int:
        person_id = self.state.new_id()
        self.state.persons[person_id] = {
            "name": name,
            "hidden": False,
            "cover_face_id": cover_face_id,
            "created_at": (moment := datetime.now(UTC)),
            "updated_at": moment,
            "library_id": self._uow.library_id,
        }
        return person_id

    async def delete(self, person_ids: Iterable[int]) -> None:
        for person_id in person_ids:
            self.state.persons.pop(person_id, None)

    async def set_cover(
        self, person_id: int, face_id: int | None, *, expected_updated_at: datetime | None = None
    ) -> bool:
        person = self.state.persons.get(person_id)
        if person is None or expected_updated_at not in (None, person["updated_at"]):
            return False
        person.update(cover_face_id=face_id, updated_at=datetime.now(UTC))
        return True

    async def delete_empty(self, person_ids: Iterable[int]) -> list[int]:
        used = {row.person_id for row in self.state.faces.values()}
        empty = sorted(
            person
            for person in set(person_ids)
            if person in self.state.persons
            and person not in used
            and self.state.persons[person]["name"] is None
        )
        await self.delete(empty)
        return empty

    async def delete_unchanged_empty(self, seen: Mapping[int, datetime]) -> list[int]:
        unchanged = [
            person
            for person, version in seen.items()
            if person in self.state.persons and self.state.persons[person]["updated_at"] == version
        ]
        return await self.delete_empty(unchanged)


class FakeRuns(_Repository):
    async def start(self, kind: str, model_pack: str | None = None) -> int:
        run_id = self.state.new_id()
        self.state.runs.append(
            {
                "id": run_id,
                "kind": kind,
                "status": "running",
                "stats": None,
                "started_at": datetime.now(UTC),
                "library_id": self._uow.library_id,
                "model_pack": model_pack,
            }
        )
        return run_id

    async def erase_library(self) -> None:
        self.state.runs = [run for run in self.state.runs if run["library_id"] != self._uow.library_id]

    async def changed_libraries(self, kind: str, model_pack: str) -> list[str]:
        """Every library with faces of the pack (the fake keeps no face times)."""
        return sorted(
            {row.library_id for row in self._uow.everything.faces.values() if row.model_pack == model_pack}
        )

    async def finish(self, run_id: int, stats: Mapping[str, Any], status: str = "done") -> None:
        run = next(run for run in self.state.runs if run["id"] == run_id)
        run.update(status=status, stats=dict(stats))

    async def latest(self, kind: str) -> dict[str, Any] | None:
        runs = [
            run
            for run in self.state.runs
            if run["kind"] == kind and run["library_id"] == self._uow.library_id
        ]
        return dict(runs[-1]) if runs else None


class FakeViews(_Repository):
    """The read side of the people (ViewStore), over the same state; a photo's current faces only."""

    def _current(self) -> list[FaceRow]:
        return [
            row
            for row in self.state.faces.values()
            if (image := self.state.images.get(row.image_id)) is not None
            and image.model_pack == row.model_pack
        ]

    def _view(self, row: FaceRow) -> FaceView:
        return FaceView(
            id=row.id,
            image_id=row.image_id,
            path=self.state.images[row.image_id].source_path,
            box=tuple(float(value) for value in row.box),  # type: ignore[arg-type]
            thumbnail=row.thumbnail_path,
            assigned_by="manual" if row.assigned_by == BY_HAND else "auto",
            person_id=row.person_id,
            added_by_hand=row.added_by_hand,
        )

    def _summary(self, person_id: int) -> PersonSummary:
        values = self.state.persons[person_id]
        cover = self.state.faces.get(values["cover_face_id"]) if values["cover_face_id"] else None
        return PersonSummary(
            id=person_id,
            name=values["name"],
            hidden=values["hidden"],
            face_count=sum(1 for row in self._current() if row.person_id == person_id),
            cover_face_id=values["cover_face_id"],
            cover_thumbnail=cover.thumbnail_path if cover else None,
        )

    @staticmethod
    def _page(rows: list[Any], offset: int, limit: int | None) -> list[Any]:
        return rows[offset : None if limit is None else offset + limit]

    @staticmethod
    def _clearest_first(rows: Iterable[FaceRow]) -> list[FaceRow]:
        return sorted(rows, key=lambda row: (-row.det_score, row.id))

    async def person_summaries(
        self, *, include_hidden: bool, offset: int, limit: int | None
    ) -> list[PersonSummary]:
        summaries = [self._summary(person_id) for person_id in self.state.persons]
        summaries = [each for each in summaries if include_hidden or not each.hidden]
        summaries.sort(
            key=lambda each: (
                each.name is None,
                (each.name or "").lower(),
                each.name or "",
                -each.face_count,
                each.id,
            )
        )
        return self._page(summaries, offset, limit)

    async def count_persons(self, *, include_hidden: bool) -> int:
        return sum(1 for values in self.state.persons.values() if include_hidden or not values["hidden"])

    async def person(self, person_id: int) -> PersonSummary | None:
        return self._summary(person_id) if person_id in self.state.persons else None

    async def existing_persons(self, person_ids: Iterable[int]) -> set[int]:
        return set(person_ids) & set(self.state.persons)

    async def faces_of_person(self, person_id: int, *, offset: int, limit: int | None) -> list[FaceView]:
        rows = self._clearest_first(row for row in self._current() if row.person_id == person_id)
        return [self._view(row) for row in self._page(rows, offset, limit)]

    async def unassigned_faces(self, *, offset: int, limit: int | None) -> list[FaceView]:
        rows = self._clearest_first(row for row in self._current() if row.person_id is None)
        return [self._view(row) for row in self._page(rows, offset, limit)]

    async def faces_of_image(self, image_id: int) -> list[FaceView]:
        return [
            self._view(row) for row in sorted(self._current(), key=lambda r: r.id) if row.image_id == image_id
        ]

    async def embeddings(self, face_ids: Sequence[int], model_pack: str) -> dict[int, np.ndarray]:
        rows = (self.state.faces.get(face_id) for face_id in face_ids)
        return {row.id: row.embedding for row in rows if row is not None and row.model_pack == model_pack}

    async def person_samples(self, model_pack: str, per_person: int) -> tuple[np.ndarray, np.ndarray]:
        rows = [row for row in self._current() if row.model_pack == model_pack and row.person_id is not None]
        by_person: dict[int, list[FaceRow]] = {}
        for row in self._clearest_first(rows):
            by_person.setdefault(row.person_id, []).append(row)  # type: ignore[arg-type]
        kept = [row for person in sorted(by_person) for row in by_person[person][:per_person]]
        embeddings = np.stack([row.embedding for row in kept]) if kept else np.empty((0, 0))
        return np.array([row.person_id for row in kept], np.int64), embeddings.astype(np.float32)

    async def persons_seen_together(self, model_pack: str) -> set[tuple[int, int]]:
        seen: dict[int, set[int]] = {}
        for row in self._current():
            if row.model_pack == model_pack and row.person_id is not None:
                seen.setdefault(row.image_id, set()).add(row.person_id)
        return {(a, b) for persons in seen.values() for a in persons for b in persons if a < b}

    async def refused_pairs(self) -> set[tuple[int, int]]:
        return {
            (face.person_id, person_id)
            for face_id, person_id in self.state.cannot_links
            if (face := self.state.faces.get(face_id)) is not None and face.person_id is not None
        }

    async def image(self, image_id: int) -> ImageView | None:
        image = self.state.images.get(image_id)
        if image is None:
            return None
        return ImageView(image.id, image.source_path, image.source_id, image.width, image.height)

    async def images_with(
        self, person_ids: Sequence[int], *, offset: int, limit: int | None
    ) -> list[ImageView]:
        wanted = set(person_ids)
        shown: dict[int, set[int]] = {}
        for row in self._current():
            if row.person_id in wanted:
                shown.setdefault(row.image_id, set()).add(row.person_id)
        found = [image_id for image_id, persons in sorted(shown.items()) if persons == wanted]
        return [view for image_id in self._page(found, offset, limit) if (view := await self.image(image_id))]


class FakeAnalyzer:
    """Returns the analysis given for each image's bytes; other bytes are corrupt. Faces added by hand
    follow, one per `hand` box, at that box (a drawn box moved to `snapped[box]` if given, as the detector's
    box of the face in it), with an embedding of their own; the analysis' faces at their place are left out,
    as the real analyzer does."""

    model_pack = "fake_pack"

    def __init__(
        self,
        analyses: Mapping[bytes, ImageAnalysis],
        snapped: Mapping[tuple[float, float, float, float], tuple[float, float, float, float]] | None = None,
    ) -> None:
        self.analyses = analyses
        self.snapped = dict(snapped or {})
        self.calls: list[bytes] = []
        self.hand_calls: list[list[HandBox]] = []

    async def analyze_async(self, data: bytes, hand: Sequence[HandBox] = ()) -> ImageAnalysis:
        self.calls.append(data)
        self.hand_calls.append(list(hand))
        if data not in self.analyses:
            raise CorruptImageError("not an image")
        analysis = self.analyses[data]
        if not hand:
            return analysis
        boxes = [self.snapped.get(each.box, each.box) if each.drawn else each.box for each in hand]
        detected = np.array([face.box for face in analysis.faces], np.float64).reshape(-1, 4)
        covered = set(match_boxes(np.array(boxes, np.float64), detected))
        faces = [face for index, face in enumerate(analysis.faces) if index not in covered]
        for box in boxes:
            seed = int(sum(box) * 1000) % 2**32
            embedding = np.random.default_rng(seed).standard_normal(
                analysis.faces[0].embedding.shape if analysis.faces else 8
            )
            faces.append(
                DetectedFace(
                    box=box,
                    landmarks=np.zeros((5, 2), np.float32),
                    quality=FaceQuality(
                        det_score=0.3, size_px=box[2] - box[0], sharpness=10.0, yaw=0.0, pose="frontal"
                    ),
                    embedding=(embedding / np.linalg.norm(embedding)).astype(np.float32),
                    thumbnail_jpeg=b"hand face",
                    added_by_hand=True,
                )
            )
        return replace(analysis, faces=faces)


class FakeFiles:
    """Files by stored path; a path it does not hold is missing."""

    def __init__(self, files: Mapping[str, bytes]) -> None:
        self.files = dict(files)

    def read(self, stored_path: str) -> tuple[bytes, str]:
        if stored_path not in self.files:
            raise ImageNotFoundError(f"image not found: {stored_path!r}")
        data = self.files[stored_path]
        return data, hashlib.sha256(data).hexdigest()


class FakeThumbnails:
    def __init__(self) -> None:
        self.saved: dict[str, int] = {}

    def save_faces(self, image_id: int, analysis: ImageAnalysis) -> list[str]:
        paths = [
            f"thumbnails/{image_id}_{analysis.model_pack}_{index}.jpg" for index in range(len(analysis.faces))
        ]
        self.saved.update({path: image_id for path in paths})
        return paths

    def path_of(self, stored: str) -> Path:
        return Path(stored)

    def remove(self, stored_paths: Iterable[str]) -> None:
        for path in stored_paths:
            self.saved.pop(path, None)


def is_refusal(outcome: object, reason: str) -> bool:
    return isinstance(outcome, BadInputError) and outcome.reason == reason
