"""Every statement the repositories issue compiles for SQL Server and uses nothing SQL Server lacks.

The statements are collected by running every repository method against SQLite with an event listener,
then each one is compiled with the mssql dialect and checked.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.dialects import mssql
from sqlalchemy.sql import ClauseElement
from storage_factories import PACK, make_analysis

from image_grouping.models.records import FaceEdit, ImageResult
from image_grouping.storage import SqlUnitOfWork, ensure_schema
from image_grouping.storage.database import async_url, engine_for_url

SQL_SERVER_PARAMETER_LIMIT = 2100
# Constructs other databases accept and SQL Server does not.
FORBIDDEN = {
    "RETURNING": re.compile(r"\bRETURNING\b", re.I),
    "ON CONFLICT": re.compile(r"\bON\s+CONFLICT\b", re.I),
    "LIMIT": re.compile(r"\bLIMIT\b", re.I),
    "boolean compared with IS": re.compile(r"\bIS\s+(NOT\s+)?(TRUE|FALSE|1|0)\b", re.I),
    "ILIKE": re.compile(r"\bILIKE\b", re.I),
    "cast with ::": re.compile(r"::"),
    "NULLS FIRST/LAST": re.compile(r"\bNULLS\s+(FIRST|LAST)\b", re.I),
    "DISTINCT ON": re.compile(r"\bDISTINCT\s+ON\b", re.I),
    "FOR UPDATE": re.compile(r"\bFOR\s+UPDATE\b", re.I),
    "|| concatenation": re.compile(r"\|\|"),
    "GREATEST/LEAST": re.compile(r"\b(GREATEST|LEAST)\s*\(", re.I),
}


async def _exercise_every_repository_method(uow_factory: Any) -> None:
    boxes = [(float(10 * i), 0.0, float(10 * i + 8), 8.0) for i in range(500)]
    face_ids: list[int] = []
    for n in range(5):
        async with uow_factory() as uow:
            image = await uow.images.get_or_create(f"id-{n}", f"//srv/files/{n}.jpg")
            thumbnails = [f"t/{n}_{i}.jpg" for i in range(len(boxes))]
            face_ids += await uow.save_analysis(image.id, f"h{n}", 10, make_analysis(boxes, n), thumbnails)
            await uow.commit()
    async with uow_factory() as uow:
        image = await uow.images.get_or_create(None, "//srv/files/0.jpg")  # existing
        registered = await uow.images.get_or_create_many(
            [(None, "//srv/files/1.jpg"), ("id-new", "//srv/files/new.jpg")]
        )
        await uow.save_analyses(
            [ImageResult(each.id, "h", 1, make_analysis(boxes[:2], 7), ["t"] * 2) for each in registered]
        )
        await uow.save_analysis(
            image.id, "h0", 10, make_analysis([*boxes[:-3], (0.0, 50.0, 9.0, 60.0)], 9), ["t"] * 498
        )
        await uow.images.get(image.id)
        await uow.images.find_processed("h1", PACK)
        await uow.images.pending(10)
        await uow.images.mark_failed(image.id, "image_corrupt", "h0", PACK)
        await uow.images.mark_failed(image.id, "image_corrupt")
        persons = [await uow.persons.create() for _ in range(3)]
        await uow.persons.create(cover_face_id=face_ids[0], name="Named")
        await uow.faces.set_persons({face_id: persons[i % 3] for i, face_id in enumerate(face_ids)})
        await uow.faces.set_persons({face_ids[0]: None})
        await uow.faces.load_for_grouping(PACK)
        await uow.faces.load_by_ids(face_ids)
        await uow.faces.load_versioned(PACK)
        await uow.faces.load_versioned(PACK, face_ids)  # the warm copy's reads (more ids than one IN list)
        await uow.faces.versions_since(PACK, datetime.now(UTC) - timedelta(minutes=5))
        await uow.faces.count_groupable(PACK)
        await uow.faces.groupable_ids(PACK)
        await uow.persons.changed_since(datetime.now(UTC) - timedelta(minutes=5))
        await uow.persons.count()
        await uow.persons.ids()
        await uow.persons.get(persons, counted=False)
        await uow.faces.assign_by_hand(face_ids[1], persons[0])
        await uow.faces.remove_from_person(face_ids[2])
        await uow.images.analysed_by_other_pack("other_pack", PACK, 0, 10)
        await uow.images.count_analysed_by_other_pack("other_pack", None)
        await uow.faces.boxes_of_image(image.id, PACK)
        await uow.faces.carry_over(dict(zip(face_ids[:1200], face_ids[1200:2400], strict=True)))
        await uow.faces.cannot_links()
        await uow.faces.thumbnails(persons[0], 5)
        await uow.faces.thumbnails(None, 5, model_pack=PACK)
        await uow.persons.list()
        await uow.persons.list(counted=False)
        await _exercise_every_view(uow, image.id, persons, face_ids)
        await _exercise_every_edit(uow, image.id, persons, face_ids, [each.id for each in registered])
        await uow.persons.rename(persons[0], "Dana")
        await uow.persons.set_cover(persons[0], face_ids[3])
        await uow.persons.set_hidden(persons[1], True)
        await uow.persons.merge_by_hand(persons[0], persons[1])
        await uow.persons.delete(persons)
        run_id = await uow.runs.start("full", PACK)
        await uow.runs.finish(run_id, {"persons": 3})
        await uow.runs.latest("full")
        await uow.runs.changed_libraries("full", PACK)
        await uow.images.in_other_library(image.id)
        await uow.faces.in_other_library(face_ids[0])
        await uow.persons.in_other_library(persons[0])
        await uow.faces.count_in_library()
        await uow.images.libraries()
        await uow.commit()
    # Libraries: another library's, and its erasure (every table of the library).
    async with uow_factory("another library") as uow:
        other = await uow.images.get_or_create(None, "//srv/files/0.jpg")
        await uow.save_analysis(other.id, "h0", 10, make_analysis(boxes[:3], 1), ["t"] * 3)
        await uow.persons.create(name="Other")
        await uow.runs.start("full", PACK)
        await uow.images.erase_library()
        await uow.persons.erase_library()
        await uow.runs.erase_library()
        await uow.commit()


async def _exercise_every_edit(
    uow: Any, image_id: int, persons: list[int], face_ids: list[int], image_ids: list[int]
) -> None:
    """The statements of the people's edits and deletions (image_grouping.handlers.people)."""
    await uow.images.find("id-1", "//srv/files/1.jpg")
    await uow.images.find(None, "//srv/files/1.jpg")
    await uow.images.forgotten_boxes(range(1, 1500))
    await uow.images.hand_boxes([f"//srv/files/{n}.jpg" for n in range(1500)])
    await uow.faces.get(face_ids)
    await uow.faces.of_persons(persons)
    await uow.faces.of_images(range(1, 1500))
    await uow.faces.is_refused(face_ids[4], persons[0])
    await uow.faces.refuse(face_ids[4], persons[0])
    await uow.persons.get(range(1, 1500))
    await uow.persons.merged_into(range(1, 1500))
    await uow.persons.forgotten(persons[0])
    await uow.persons.model_packs(persons[0])
    await uow.persons.choose_cover(persons)
    await _exercise_the_checked_writes(uow, persons, face_ids)
    await uow.persons.delete_empty(range(1, 1500))
    await uow.faces.forget(face_ids[2000:3200], persons[2])
    await uow.faces.delete(face_ids[3200:4400])
    await uow.images.delete(image_ids[1:])


async def _exercise_the_checked_writes(uow: Any, persons: list[int], face_ids: list[int]) -> None:
    """Grouping's writes checked against what it read (every shape of move), and the faces' edit record."""
    seen = {person.id: person.updated_at for person in await uow.persons.list()}
    moves = [(face_ids[100 + i], None, persons[i % 3]) for i in range(1200)]
    moves += [(face_ids[1400], persons[0], None), (face_ids[1401], persons[1], persons[2])]
    await uow.faces.regroup(moves, seen)
    await uow.persons.set_cover(persons[2], face_ids[5], expected_updated_at=seen[persons[2]])
    empty = await uow.persons.create()
    await uow.persons.delete_unchanged_empty({empty: (await uow.persons.get([empty]))[empty].updated_at})
    await uow.persons.delete_unchanged_empty(dict.fromkeys(range(1, 1500), seen[persons[0]]))
    await uow.faces.get_for_edit(face_ids[6])
    await uow.faces.record_edits([FaceEdit(face_ids[6], persons[0], persons[1], "assign")] * 3)
    assert len(await uow.faces.edits(face_ids)) == 3


async def _exercise_every_view(uow: Any, image_id: int, persons: list[int], face_ids: list[int]) -> None:
    views = uow.views
    await views.person_summaries(include_hidden=False, offset=1, limit=2)
    await views.person_summaries(include_hidden=True, offset=0, limit=None)
    await views.count_persons(include_hidden=False)
    await views.person(persons[0])
    await views.existing_persons(range(1, 1500))
    await views.faces_of_person(persons[0], offset=2, limit=3)
    await views.faces_of_person(persons[0], offset=0, limit=None)
    await views.unassigned_faces(offset=0, limit=5)
    await views.faces_of_image(image_id)
    await views.embeddings(face_ids, PACK)
    await views.person_samples(PACK, 32)
    await views.persons_seen_together(PACK)
    await views.refused_pairs()
    await views.image(image_id)
    await views.images_with(persons[:2], offset=1, limit=1)


@pytest.fixture
async def statements(tmp_path: Path) -> list[tuple[ClauseElement, int]]:
    """(statement, largest number of parameters one execution of it bound) for every execution."""
    engine = engine_for_url(async_url(f"sqlite:///{tmp_path / 'compat.sqlite3'}"))
    await ensure_schema(engine)
    seen: list[tuple[ClauseElement, int]] = []
    pending: list[ClauseElement] = []

    @event.listens_for(engine.sync_engine, "before_execute")
    def _statement(_conn: Any, clause: Any, _multi: Any, _params: Any, _options: Any) -> None:
        pending.append(clause)

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _parameters(_conn: Any, _cursor: Any, _sql: str, parameters: Any, _ctx: Any, many: bool) -> None:
        bound = max((len(row) for row in parameters), default=0) if many else len(parameters or ())
        if pending:
            seen.append((pending.pop(), bound))

    await _exercise_every_repository_method(partial(SqlUnitOfWork, engine))
    await engine.dispose()
    return seen


async def test_every_statement_compiles_for_sql_server(statements: list[tuple[ClauseElement, int]]) -> None:
    kinds = {type(statement).__name__ for statement, _ in statements}
    assert {"Select", "Insert", "Update", "Delete"} <= kinds
    assert len(statements) > 40
    assert max(bound for _, bound in statements) > 1000  # the parameter limit check is exercised

    problems = []
    for statement, bound in statements:
        sql = str(statement.compile(dialect=mssql.dialect()))
        problems += [f"{name}: {sql}" for name, pattern in FORBIDDEN.items() if pattern.search(sql)]
        if re.search(r"\bTOP\b|\bOFFSET\b", sql) and "ORDER BY" not in sql:
            problems.append(f"a row limit without ORDER BY picks arbitrary rows: {sql}")
        if bound > SQL_SERVER_PARAMETER_LIMIT:
            problems.append(
                f"{bound} parameters (SQL Server takes {SQL_SERVER_PARAMETER_LIMIT}): {sql[:200]}"
            )
    assert problems == []


def test_the_checks_catch_what_sql_server_lacks() -> None:
    """The patterns above do find the constructs they look for (so an empty problem list means something)."""
    from sqlalchemy import select, true
    from sqlalchemy.dialects import postgresql

    from image_grouping.storage.schema import images, persons

    upsert = postgresql.insert(images).values(path_key="k").on_conflict_do_nothing().returning(images.c.id)
    upsert_sql = str(upsert.compile(dialect=postgresql.dialect()))
    assert FORBIDDEN["ON CONFLICT"].search(upsert_sql)
    assert FORBIDDEN["RETURNING"].search(upsert_sql)
    assert FORBIDDEN["boolean compared with IS"].search(
        str(select(persons).where(persons.c.hidden.is_(true())))
    )
    unordered = str(select(persons).limit(1).compile(dialect=mssql.dialect()))
    assert "TOP" in unordered
    assert "ORDER BY" not in unordered
