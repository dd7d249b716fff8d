"""What the handlers need from the outside world, as Protocols: the adapters in `storage`, `vision` and
`consumer` fulfil them in production (wired by `image_grouping.bootstrap`), fakes in the unit tests.

A handler takes a batch of messages (one message is a batch of one) and returns one `Outcome` per
message, in their order: the events to publish for it, or the `BadInputError` that refused it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import numpy as np

from image_grouping.errors import BadInputError
from image_grouping.models.faces import Box, HandBox, ImageAnalysis
from image_grouping.models.messages import DEFAULT_LIBRARY, EventData
from image_grouping.models.records import (
    FaceEdit,
    FaceRecord,
    FaceSet,
    ImageRecord,
    ImageResult,
    PersonRecord,
)
from image_grouping.models.views import FaceView, ImageView, PersonSummary

Outcome = list[EventData] | BadInputError


class ImageStore(Protocol):
    async def get_or_create(self, source_id: str | None, source_path: str) -> ImageRecord: ...

    async def get_or_create_many(
        self, registrations: Sequence[tuple[str | None, str]]
    ) -> list[ImageRecord]: ...

    async def find_processed(self, content_hash: str, model_pack: str) -> ImageRecord | None: ...

    async def pending(self, limit: int) -> list[ImageRecord]: ...

    async def analysed_by_other_pack(
        self, model_pack: str, from_pack: str | None, after_id: int, limit: int
    ) -> list[ImageRecord]: ...

    async def count_analysed_by_other_pack(self, model_pack: str, from_pack: str | None) -> int: ...

    async def mark_failed(
        self, image_id: int, reason: str, content_hash: str | None = None, model_pack: str | None = None
    ) -> None: ...

    async def save_analyses(self, results: Sequence[ImageResult]) -> list[list[int]]: ...

    async def find(self, source_id: str | None, source_path: str | None) -> list[ImageRecord]: ...

    async def delete(self, image_ids: Sequence[int]) -> None: ...

    async def forgotten_boxes(self, image_ids: Sequence[int]) -> dict[int, np.ndarray]: ...

    async def get(self, image_id: int) -> ImageRecord | None: ...

    async def in_other_library(self, image_id: int) -> bool: ...

    async def libraries(self) -> list[str]: ...

    async def erase_library(self) -> tuple[list[int], list[str]]: ...

    async def hand_boxes(self, source_paths: Sequence[str]) -> dict[str, list[Box]]: ...


class FaceStore(Protocol):
    async def load_for_grouping(self, model_pack: str) -> FaceSet: ...

    async def in_other_library(self, face_id: int) -> bool: ...

    async def count_in_library(self) -> int: ...
    # What a warm copy of a pack's faces (GroupingReader) reads to catch up; versions are each face's
    # updated_at in microseconds since the epoch (UTC).
    async def load_versioned(
        self, model_pack: str, face_ids: Sequence[int] | None = None
    ) -> tuple[FaceSet, np.ndarray]: ...

    async def versions_since(self, model_pack: str, since: datetime) -> tuple[np.ndarray, np.ndarray]: ...

    async def count_groupable(self, model_pack: str) -> int: ...

    async def groupable_ids(self, model_pack: str) -> np.ndarray: ...

    async def set_persons(self, assignments: Mapping[int, int | None]) -> int: ...

    async def regroup(
        self, moves: Sequence[tuple[int, int | None, int | None]], persons_seen: Mapping[int, datetime]
    ) -> set[int]: ...

    async def cannot_links(self) -> list[tuple[int, int]]: ...

    async def boxes_of_image(self, image_id: int, model_pack: str) -> tuple[list[int], np.ndarray]: ...

    async def carry_over(self, old_to_new: Mapping[int, int]) -> tuple[int, int]: ...

    async def thumbnails(
        self, person_id: int | None, limit: int, model_pack: str | None = None
    ) -> list[tuple[int, str]]: ...

    async def get(self, face_ids: Iterable[int]) -> dict[int, FaceRecord]: ...

    async def of_persons(self, person_ids: Iterable[int]) -> list[FaceRecord]: ...

    async def of_images(self, image_ids: Iterable[int]) -> list[FaceRecord]: ...

    async def assign_by_hand(self, face_id: int, person_id: int) -> None: ...

    async def get_for_edit(self, face_id: int) -> FaceRecord | None: ...

    async def record_edits(self, edits: Sequence[FaceEdit]) -> None: ...

    async def edits(self, face_ids: Iterable[int]) -> list[FaceEdit]: ...

    async def refuse(self, face_id: int, person_id: int) -> None: ...

    async def is_refused(self, face_id: int, person_id: int) -> bool: ...

    async def delete(self, face_ids: Sequence[int]) -> None: ...

    async def forget(self, face_ids: Sequence[int], person_id: int) -> None: ...


class PersonStore(Protocol):
    async def list(self, *, counted: bool = True) -> list[PersonRecord]: ...

    async def changed_since(self, since: datetime) -> list[PersonRecord]: ...

    async def count(self) -> int: ...

    async def ids(self) -> list[int]: ...

    async def in_other_library(self, person_id: int) -> bool: ...

    async def erase_library(self) -> list[int]: ...

    async def create(self, cover_face_id: int | None = None, name: str | None = None) -> int: ...

    async def delete(self, person_ids: Iterable[int]) -> None: ...

    async def set_cover(
        self, person_id: int, face_id: int | None, *, expected_updated_at: datetime | None = None
    ) -> bool: ...

    async def delete_unchanged_empty(self, seen: Mapping[int, datetime]) -> list[int]: ...

    async def get(self, person_ids: Iterable[int], *, counted: bool = True) -> dict[int, PersonRecord]: ...

    async def rename(self, person_id: int, name: str | None) -> None: ...

    async def set_hidden(self, person_id: int, hidden: bool) -> None: ...

    async def merge_by_hand(self, target_id: int, source_id: int) -> None: ...

    async def merged_into(self, person_ids: Iterable[int]) -> dict[int, int]: ...

    async def forgotten(self, person_id: int) -> bool: ...

    async def model_packs(self, person_id: int) -> set[str]: ...

    async def delete_empty(self, person_ids: Iterable[int]) -> list[int]: ...

    async def choose_cover(self, person_ids: Iterable[int]) -> None: ...


class RunStore(Protocol):
    async def start(self, kind: str, model_pack: str | None = None) -> int: ...

    async def changed_libraries(self, kind: str, model_pack: str) -> list[str]: ...

    async def erase_library(self) -> None: ...

    async def finish(self, run_id: int, stats: Mapping[str, Any], status: str = "done") -> None: ...

    async def latest(self, kind: str) -> dict[str, Any] | None: ...


class ViewStore(Protocol):
    """The read side of the people (image_grouping.handlers.queries); a photo's current faces only."""

    async def person_summaries(
        self, *, include_hidden: bool, offset: int, limit: int | None
    ) -> list[PersonSummary]: ...

    async def count_persons(self, *, include_hidden: bool) -> int: ...

    async def person(self, person_id: int) -> PersonSummary | None: ...

    async def existing_persons(self, person_ids: Iterable[int]) -> set[int]: ...

    async def faces_of_person(self, person_id: int, *, offset: int, limit: int | None) -> list[FaceView]: ...

    async def unassigned_faces(self, *, offset: int, limit: int | None) -> list[FaceView]: ...

    async def faces_of_image(self, image_id: int) -> list[FaceView]: ...

    async def embeddings(self, face_ids: Sequence[int], model_pack: str) -> dict[int, np.ndarray]: ...

    async def person_samples(self, model_pack: str, per_person: int) -> tuple[np.ndarray, np.ndarray]: ...

    async def persons_seen_together(self, model_pack: str) -> set[tuple[int, int]]: ...

    async def refused_pairs(self) -> set[tuple[int, int]]: ...

    async def image(self, image_id: int) -> ImageView | None: ...

    async def images_with(
        self, person_ids: Sequence[int], *, offset: int, limit: int | None
    ) -> list[ImageView]: ...


class UnitOfWork(Protocol):
    """One transaction in one library: `async with unit_of_work(library_id) as uow: ...; await
    uow.commit()`; what is not committed is rolled back when the block ends. Its stores see and write that
    library's images, faces, persons and runs only (a few listings for operators, said so, see all)."""

    images: ImageStore
    faces: FaceStore
    persons: PersonStore
    runs: RunStore
    views: ViewStore

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    async def commit(self) -> None: ...


class UnitOfWorkFactory(Protocol):
    """A unit of work of the library named (default: the default library)."""

    def __call__(self, library_id: str = DEFAULT_LIBRARY) -> UnitOfWork: ...


def in_library(unit_of_work: UnitOfWorkFactory, library_id: str) -> UnitOfWorkFactory:
    """The factory whose units of work are of `library_id` when called without one: what the queries, the
    CLI and each web request take, so that everything they read is of that library."""

    def scoped(library: str = library_id) -> UnitOfWork:
        return unit_of_work(library)

    return scoped


@dataclass(frozen=True)
class GroupingRows:
    """What grouping reads of a library's model pack: its groupable faces (all but those taken out of a
    person by hand, who stay unassigned), ordered by id; every person (its `updated_at` is the version
    grouping's write compares); the cannot-links."""

    faces: FaceSet
    persons: list[PersonRecord]
    cannot_links: list[tuple[int, int]]
    # Each face's row of the approximate neighbour search (`SearchProjection.apply`), where the reader
    # keeps one (a large library's warm copy); None: incremental assignment searches exactly.
    reduced: np.ndarray | None = None


class GroupingSource(Protocol):
    async def read(self, uow: UnitOfWork, *, fresh: bool) -> GroupingRows:
        """The pack's rows as the database has them now, read in `uow`; `fresh`: from scratch (a recluster,
        which rewrites much of the pack), else a warm copy may be brought up to date."""
        ...


class GroupingReader(Protocol):
    """Where grouping reads its rows: from the database each time, or from a warm copy brought up to date."""

    def hold(self, library_id: str, model_pack: str) -> AbstractAsyncContextManager[GroupingSource]:
        """The source of the library's rows of the pack (read in a unit of work of that library); what it
        reads stays valid (a warm copy is not changed) until the block ends."""
        ...


class Analyzer(Protocol):
    model_pack: str

    async def analyze_async(self, data: bytes, hand: Sequence[HandBox] = ()) -> ImageAnalysis:
        """The image's faces: the detector's, then one for each `hand` box (added by hand), in order."""
        ...


class ImageFiles(Protocol):
    def read(self, stored_path: str) -> tuple[bytes, str]:
        """The bytes of the image stored under `stored_path` and their sha256; BadInputError when the
        path is not acceptable or the file cannot be read."""
        ...


class Thumbnails(Protocol):
    def save_faces(self, image_id: int, analysis: ImageAnalysis) -> list[str]: ...

    def path_of(self, stored: str) -> Path: ...

    def remove(self, stored_paths: Iterable[str]) -> None: ...


Clock = Callable[[], datetime]
