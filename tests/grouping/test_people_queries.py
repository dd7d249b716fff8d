"""The people queries on real LFW faces, after a recluster, in SQLite and PostgreSQL: listings that agree
with the faces stored, suggestions that name the right identity, and the CLI's JSON, key for key."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from lfw_faces import detected
from sqlalchemy import insert

from image_grouping.bootstrap import grouping_params, suggestion_params
from image_grouping.config import Settings
from image_grouping.errors import UnknownImageError, UnknownPersonError
from image_grouping.evaluation.grouping import LabelledFaces
from image_grouping.handlers.queries import (
    image_detail,
    images_with,
    list_persons,
    merge_suggestions,
    show_person,
    unassigned_faces,
)
from image_grouping.handlers.recognition import GroupingDeps, handle_recluster_requested
from image_grouping.models.faces import ImageAnalysis
from image_grouping.models.messages import ReclusterRequested
from image_grouping.storage import SqlUnitOfWork
from image_grouping.storage.database import async_url, engine_for_url
from image_grouping.storage.schema import cannot_links

UnitOfWork = Callable[[], SqlUnitOfWork]
CONSOLE_SCRIPT = Path(sys.executable).with_name("image-grouping")


@dataclass
class Library:
    """The LFW subset stored and reclustered, one photo per face but for one photo of two identities,
    with one face of each identity held back (stored after the recluster, so unassigned)."""

    face_of_row: dict[int, int]
    label_of_face: dict[int, str]
    held_back: list[int]  # face ids
    group_photo: int  # image id
    group_faces: list[int]


async def _store(
    unit_of_work: UnitOfWork, faces: LabelledFaces, photos: Sequence[Sequence[int]], pack: str
) -> dict[int, int]:
    face_of_row = {}
    async with unit_of_work() as uow:
        for rows in photos:
            path = f"//nas/photos/{'+'.join(faces.paths[row] for row in rows)}"
            image = await uow.images.get_or_create(f"upload-{rows[0]}", path)
            analysis = ImageAnalysis(250 * len(rows), 250, pack, [detected(faces, row) for row in rows])
            thumbnails = [f"thumbnails/{rows[0]}_{index}.jpg" for index in range(len(rows))]
            ids = await uow.save_analysis(
                image.id, hashlib.sha256(path.encode()).hexdigest(), 1, analysis, thumbnails
            )
            face_of_row.update(zip(rows, ids, strict=True))
        await uow.commit()
    return face_of_row


async def build_library(unit_of_work: UnitOfWork, faces: LabelledFaces, settings: Settings) -> Library:
    rows_of: dict[str, list[int]] = {}
    for row, label in enumerate(faces.labels.tolist()):
        rows_of.setdefault(label, []).append(row)
    several = [rows for rows in rows_of.values() if len(rows) >= 5]
    held_back = [rows[-1] for rows in several]
    group = [several[0][0], several[1][0]]  # one photo of the first two identities together
    singles = [row for row in range(len(faces)) if row not in held_back and row not in group]
    pack = settings.model_pack
    face_of_row = await _store(unit_of_work, faces, [group, *([row] for row in singles)], pack)
    deps = GroupingDeps(unit_of_work, grouping_params(settings), pack, 900.0)
    (outcome,) = await handle_recluster_requested([ReclusterRequested(model_pack=pack)], deps)
    assert isinstance(outcome, list)
    face_of_row |= await _store(unit_of_work, faces, [[row] for row in held_back], pack)
    async with unit_of_work() as uow:
        group_photo = (
            await uow.images.get_or_create(
                None, f"//nas/photos/{'+'.join(faces.paths[row] for row in group)}"
            )
        ).id
    return Library(
        face_of_row=face_of_row,
        label_of_face={face: str(faces.labels[row]) for row, face in face_of_row.items()},
        held_back=[face_of_row[row] for row in held_back],
        group_photo=group_photo,
        group_faces=[face_of_row[row] for row in group],
    )


def majority_labels(library: Library, persons: dict[int, list[int]]) -> dict[int, str]:
    return {
        person: Counter(library.label_of_face[face] for face in faces).most_common(1)[0][0]
        for person, faces in persons.items()
    }


async def faces_by_person(unit_of_work: UnitOfWork, person_ids: list[int]) -> dict[int, list[int]]:
    return {
        person: [face.id for face in (await show_person(unit_of_work, person)).faces] for person in person_ids
    }


async def test_listings_agree_with_the_faces_stored(
    unit_of_work: UnitOfWork, lfw_subset: LabelledFaces, grouping_settings: Settings
) -> None:
    library = await build_library(unit_of_work, lfw_subset, grouping_settings)

    persons = await list_persons(unit_of_work)
    shown = {person.id: await show_person(unit_of_work, person.id) for person in persons}
    unassigned = await unassigned_faces(unit_of_work, suggestion_params(grouping_settings))

    assert len(persons) >= 20
    counts = [person.face_count for person in persons]
    assert counts == sorted(counts, reverse=True)  # nobody is named: by face count
    assert sum(counts) + len(unassigned) == len(library.face_of_row)
    for person in persons:
        detail = shown[person.id]
        assert len(detail.faces) == person.face_count
        assert {face.person_id for face in detail.faces} == {person.id}
        assert person.cover_face_id in {face.id for face in detail.faces}
        assert person.cover_thumbnail == next(
            face.thumbnail for face in detail.faces if face.id == person.cover_face_id
        )
        scores = [lfw_subset.det_score[_row_of(library, face.id)] for face in detail.faces]
        assert scores == sorted(scores, reverse=True)  # clearest first
    assert set(library.held_back) <= {face.id for face in unassigned}
    page = await show_person(unit_of_work, persons[0].id, offset=1, limit=2)
    assert [face.id for face in page.faces] == [face.id for face in shown[persons[0].id].faces[1:3]]
    with pytest.raises(UnknownPersonError):
        await show_person(unit_of_work, max(shown) + 1000)


def _row_of(library: Library, face_id: int) -> int:
    return next(row for row, face in library.face_of_row.items() if face == face_id)


async def test_a_held_back_face_is_offered_the_person_of_its_identity(
    unit_of_work: UnitOfWork, lfw_subset: LabelledFaces, grouping_settings: Settings
) -> None:
    library = await build_library(unit_of_work, lfw_subset, grouping_settings)
    persons = [person.id for person in await list_persons(unit_of_work)]
    label_of_person = majority_labels(library, await faces_by_person(unit_of_work, persons))

    faces = {
        face.id: face for face in await unassigned_faces(unit_of_work, suggestion_params(grouping_settings))
    }

    suggested = [faces[face].suggestion for face in library.held_back]
    right = [
        suggestion is not None and label_of_person[suggestion.person_id] == library.label_of_face[face]
        for face, suggestion in zip(library.held_back, suggested, strict=True)
    ]
    assert np.mean(right) >= 0.9, suggested
    wrong = [s for s, ok in zip(suggested, right, strict=True) if s is not None and not ok]
    assert wrong == []
    # Refusing the suggested person ("not this person") takes the suggestion away.
    face, suggestion = library.held_back[0], suggested[0]
    assert suggestion is not None
    async with unit_of_work() as uow:
        await uow.connection.execute(
            insert(cannot_links).values(
                face_id=face, person_id=suggestion.person_id, created_at=datetime.now(UTC)
            )
        )
        await uow.commit()
    again = {
        each.id: each for each in await unassigned_faces(unit_of_work, suggestion_params(grouping_settings))
    }
    assert again[face].suggestion is None or again[face].suggestion.person_id != suggestion.person_id


async def test_a_split_person_is_the_first_merge_suggestion_until_refused(
    unit_of_work: UnitOfWork, lfw_subset: LabelledFaces, grouping_settings: Settings
) -> None:
    await build_library(unit_of_work, lfw_subset, grouping_settings)
    params = suggestion_params(grouping_settings)
    before = await merge_suggestions(unit_of_work, params)
    largest = (await list_persons(unit_of_work))[0]
    faces = [face.id for face in (await show_person(unit_of_work, largest.id)).faces]
    async with unit_of_work() as uow:
        split = await uow.persons.create(cover_face_id=faces[1])
        await uow.faces.set_persons({face: split for face in faces[1::2]})
        await uow.commit()

    after = await merge_suggestions(unit_of_work, params)

    assert (after[0].person_a, after[0].person_b) == (min(largest.id, split), max(largest.id, split))
    assert after[0].similarity > 0.5
    assert after[0].names == (None, None)
    assert [pair.similarity for pair in after] == sorted((pair.similarity for pair in after), reverse=True)
    assert len(after) <= len(before) + 2  # nothing else changed much
    async with unit_of_work() as uow:
        await uow.connection.execute(
            insert(cannot_links).values(face_id=faces[1], person_id=largest.id, created_at=datetime.now(UTC))
        )
        await uow.commit()
    refused = await merge_suggestions(unit_of_work, params)
    assert (min(largest.id, split), max(largest.id, split)) not in {(p.person_a, p.person_b) for p in refused}


async def test_the_photo_of_two_persons(
    unit_of_work: UnitOfWork, lfw_subset: LabelledFaces, grouping_settings: Settings
) -> None:
    library = await build_library(unit_of_work, lfw_subset, grouping_settings)

    detail = await image_detail(unit_of_work, library.group_photo)
    first, second = (face.person_id for face in detail.faces)

    assert [face.id for face in detail.faces] == library.group_faces
    assert first is not None
    assert second is not None
    assert first != second
    assert detail.faces[1].box == detected(lfw_subset, _row_of(library, library.group_faces[1])).box
    assert (detail.width, detail.height) == (500, 250)
    assert detail.source_id is not None
    assert detail.source_id.startswith("upload-")
    together = await images_with(unit_of_work, [first, second])
    assert [photo.id for photo in together] == [library.group_photo]
    alone = await images_with(unit_of_work, [first])
    assert library.group_photo in [photo.id for photo in alone]
    assert len(alone) == (await show_person(unit_of_work, first)).face_count
    with pytest.raises(UnknownImageError):
        await image_detail(unit_of_work, library.group_photo + 10_000)
    async with unit_of_work() as uow:
        seen_together = await uow.views.persons_seen_together(grouping_settings.model_pack)
    assert seen_together == {(min(first, second), max(first, second))}  # the one photo of two


# --- the CLI, in its own process, key for key ----------------------------------------------------------

PERSON_KEYS = {"id", "name", "hidden", "face_count", "cover_face_id", "cover_thumbnail"}
FACE_KEYS = {"id", "image_id", "path", "box", "thumbnail", "assigned_by", "person_id", "added_by_hand"}


def run_cli(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "SQL_CONNECTION_STRING"}
    }
    return subprocess.run(
        [str(CONSOLE_SCRIPT), *arguments],
        env=environment | {"SYSTEM_STORAGE": str(tmp_path / "data"), "LOG_ROOT": str(tmp_path / "logs")},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def cli_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'people.sqlite3'}"
    return request.getfixturevalue("fresh_postgres_url")


def test_the_cli_prints_the_queries_as_json(
    cli_database: str, tmp_path: Path, lfw_subset: LabelledFaces, grouping_settings: Settings
) -> None:
    async def prepare() -> Library:
        from image_grouping.storage import ensure_schema

        engine = engine_for_url(async_url(cli_database))
        try:
            await ensure_schema(engine)
            return await build_library(partial(SqlUnitOfWork, engine), lfw_subset, grouping_settings)
        finally:
            await engine.dispose()

    library = asyncio.run(prepare())

    def query(*arguments: str) -> object:
        result = run_cli(tmp_path, *arguments, "--db", cli_database, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    persons = query("persons", "list")
    assert isinstance(persons, list)
    assert persons
    assert all(set(person) == PERSON_KEYS for person in persons)
    assert query("persons", "list", "--dry-run") == persons
    first = persons[0]
    person = query("persons", "show", str(first["id"]))
    assert set(person) == PERSON_KEYS | {"faces"}
    assert len(person["faces"]) == first["face_count"]
    assert all(set(face) == FACE_KEYS for face in person["faces"])
    face = person["faces"][0]
    assert face["person_id"] == first["id"]
    assert face["assigned_by"] == "auto"
    assert len(face["box"]) == 4
    assert face["path"].startswith("//nas/photos/")
    unassigned = query("faces", "unassigned")
    assert all(set(each) == FACE_KEYS | {"suggestion"} for each in unassigned)
    suggestions = [each["suggestion"] for each in unassigned if each["suggestion"]]
    assert suggestions
    assert all(set(each) == {"person_id", "name", "similarity"} for each in suggestions)
    assert {each["id"] for each in unassigned} >= set(library.held_back)
    pairs = query("persons", "suggest-merges")
    assert isinstance(pairs, list)
    assert all(set(pair) == {"person_a", "person_b", "similarity", "names"} for pair in pairs)
    photos = query("images", "with", str(first["id"]))
    assert len(photos) == first["face_count"]
    assert all(set(photo) == {"id", "path", "source_id", "width", "height"} for photo in photos)

    # --dry-run: read only, not even the schema brought up to date (a new SQLite file is not created)
    new_database = tmp_path / "never-created.sqlite3"
    for arguments in (["persons", "list"], ["faces", "unassigned"], ["persons", "suggest-merges"]):
        untouched = run_cli(tmp_path, *arguments, "--db", f"sqlite:///{new_database}", "--dry-run", "--json")
        assert untouched.returncode == 0, untouched.stderr
        assert json.loads(untouched.stdout) == []
    assert not new_database.exists()

    for arguments in (["persons", "show", "999999"], ["images", "with", str(first["id"]), "999999"]):
        refused = run_cli(tmp_path, *arguments, "--db", cli_database)
        assert refused.returncode == 2
        assert refused.stderr.strip() == "no person with id 999999"


async def test_a_centroid_reads_only_the_clearest_faces_of_each_person(
    unit_of_work: UnitOfWork, lfw_subset: LabelledFaces, grouping_settings: Settings
) -> None:
    library = await build_library(unit_of_work, lfw_subset, grouping_settings)
    persons = await list_persons(unit_of_work)

    async with unit_of_work() as uow:
        person_ids, embeddings = await uow.views.person_samples(grouping_settings.model_pack, 3)

    assert Counter(person_ids.tolist()) == {p.id: min(3, p.face_count) for p in persons if p.face_count}
    for person in persons:
        clearest = (await show_person(unit_of_work, person.id, limit=3)).faces
        expected = np.stack([lfw_subset.embeddings[_row_of(library, face.id)] for face in clearest])
        found = embeddings[person_ids == person.id]
        np.testing.assert_array_equal(found[np.lexsort(found.T)], expected[np.lexsort(expected.T)])
