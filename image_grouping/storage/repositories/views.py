"""The read side of the people: the queries a photo library's People view makes, as SQL that pages in the
database and reads an embedding only where a suggestion needs one.

A photo's *current* faces are those of the model pack its latest analysis used (`images.model_pack`): a
repack keeps the old pack's faces for switching back, and the views never show a face twice.
Every statement compiles for SQL Server (tests/storage/test_mssql_compat.py): OFFSET/FETCH only with
ORDER BY, IN lists chunked.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from sqlalchemy import Row, Select, and_, case, false, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncConnection

from image_grouping.models.views import FaceView, ImageView, PersonSummary
from image_grouping.storage.repositories.common import IN_CHUNK, chunks
from image_grouping.storage.schema import DEFAULT_LIBRARY, cannot_links, faces, images, persons

# faces joined with their photo, keeping only the faces of the photo's current analysis
_CURRENT_FACES = faces.join(
    images, and_(images.c.id == faces.c.image_id, images.c.model_pack == faces.c.model_pack)
)
_FACE_COLUMNS = (
    faces.c.id,
    faces.c.image_id,
    images.c.source_path,
    faces.c.box_x1,
    faces.c.box_y1,
    faces.c.box_x2,
    faces.c.box_y2,
    faces.c.thumbnail_path,
    faces.c.assigned_by,
    faces.c.person_id,
    faces.c.added_by_hand,
)
# clearest faces first: the ones a person recognises at a glance
_FACE_ORDER = (faces.c.det_score.desc(), faces.c.id)


def _face(row: Row[Any]) -> FaceView:
    return FaceView(
        id=row.id,
        image_id=row.image_id,
        path=row.source_path,
        box=(row.box_x1, row.box_y1, row.box_x2, row.box_y2),
        thumbnail=row.thumbnail_path,
        assigned_by=row.assigned_by,
        person_id=row.person_id,
        added_by_hand=bool(row.added_by_hand),
    )


def _image(row: Row[Any]) -> ImageView:
    return ImageView(
        id=row.id, path=row.source_path, source_id=row.source_id, width=row.width, height=row.height
    )


def _page(query: Select[Any], offset: int, limit: int | None) -> Select[Any]:
    """OFFSET / FETCH (SQL Server wants an ORDER BY with them; every query here has one)."""
    if offset:
        query = query.offset(offset)
    return query.limit(limit) if limit is not None else query


def _blobs_to_matrix(blobs: Sequence[bytes]) -> np.ndarray:
    if not blobs:
        return np.empty((0, 0), np.float32)
    matrix = np.frombuffer(bytearray().join(blobs), "<f4").astype(np.float32, copy=False)
    return matrix.reshape(len(blobs), -1)


class ViewRepository:
    """The People view of one library: every query sees only its images, faces and persons."""

    def __init__(self, connection: AsyncConnection, library_id: str = DEFAULT_LIBRARY) -> None:
        self._connection = connection
        self._library = library_id
        self._in_library = faces.c.library_id == library_id

    # --- persons -----------------------------------------------------------------------------------

    def _persons_query(self) -> Select[Any]:
        counts = (
            select(faces.c.person_id, func.count().label("face_count"))
            .select_from(_CURRENT_FACES)
            .where(faces.c.person_id.is_not(None), self._in_library)
            .group_by(faces.c.person_id)
            .subquery()
        )
        cover = faces.alias("cover")
        return (
            select(
                persons.c.id,
                persons.c.name,
                persons.c.hidden,
                persons.c.cover_face_id,
                func.coalesce(counts.c.face_count, 0).label("face_count"),
                cover.c.thumbnail_path.label("cover_thumbnail"),
            )
            .select_from(
                persons.outerjoin(counts, counts.c.person_id == persons.c.id).outerjoin(
                    cover, cover.c.id == persons.c.cover_face_id
                )
            )
            .where(persons.c.library_id == self._library)
        )

    @staticmethod
    def _summary(row: Row[Any]) -> PersonSummary:
        return PersonSummary(
            id=row.id,
            name=row.name,
            hidden=bool(row.hidden),
            face_count=int(row.face_count),
            cover_face_id=row.cover_face_id,
            cover_thumbnail=row.cover_thumbnail,
        )

    async def person_summaries(
        self, *, include_hidden: bool, offset: int, limit: int | None
    ) -> list[PersonSummary]:
        """Named persons first (by name, ignoring case), then by face count (most first), then by id."""
        query = self._persons_query()
        if not include_hidden:
            query = query.where(persons.c.hidden == false())
        face_count = query.selected_columns.face_count
        query = query.order_by(
            case((persons.c.name.is_(None), literal_column("1")), else_=literal_column("0")),  # named first
            func.lower(persons.c.name),
            persons.c.name,
            face_count.desc(),
            persons.c.id,
        )
        rows = await self._connection.execute(_page(query, offset, limit))
        return [self._summary(row) for row in rows]

    async def count_persons(self, *, include_hidden: bool) -> int:
        query = select(func.count()).select_from(persons).where(persons.c.library_id == self._library)
        if not include_hidden:
            query = query.where(persons.c.hidden == false())
        return int((await self._connection.execute(query)).scalar_one())

    async def person(self, person_id: int) -> PersonSummary | None:
        row = (await self._connection.execute(self._persons_query().where(persons.c.id == person_id))).first()
        return self._summary(row) if row else None

    async def existing_persons(self, person_ids: Iterable[int]) -> set[int]:
        found: set[int] = set()
        for chunk in chunks(sorted({int(person_id) for person_id in person_ids})):
            found.update(
                (
                    await self._connection.execute(
                        select(persons.c.id).where(
                            persons.c.id.in_(chunk), persons.c.library_id == self._library
                        )
                    )
                ).scalars()
            )
        return found

    # --- faces -------------------------------------------------------------------------------------

    async def faces_of_person(self, person_id: int, *, offset: int, limit: int | None) -> list[FaceView]:
        """The person's current faces, clearest first."""
        query = (
            select(*_FACE_COLUMNS)
            .select_from(_CURRENT_FACES)
            .where(faces.c.person_id == person_id, self._in_library)
        )
        rows = await self._connection.execute(_page(query.order_by(*_FACE_ORDER), offset, limit))
        return [_face(row) for row in rows]

    async def unassigned_faces(self, *, offset: int, limit: int | None) -> list[FaceView]:
        """Current faces without a person, clearest first."""
        query = (
            select(*_FACE_COLUMNS)
            .select_from(_CURRENT_FACES)
            .where(faces.c.person_id.is_(None), self._in_library)
        )
        rows = await self._connection.execute(_page(query.order_by(*_FACE_ORDER), offset, limit))
        return [_face(row) for row in rows]

    async def faces_of_image(self, image_id: int) -> list[FaceView]:
        """The photo's current faces, in the order its analysis found them."""
        query = (
            select(*_FACE_COLUMNS)
            .select_from(_CURRENT_FACES)
            .where(faces.c.image_id == image_id, self._in_library)
            .order_by(faces.c.face_index, faces.c.id)
        )
        return [_face(row) for row in await self._connection.execute(query)]

    async def embeddings(self, face_ids: Sequence[int], model_pack: str) -> dict[int, np.ndarray]:
        """The embeddings of those of these faces that the pack found."""
        found: dict[int, np.ndarray] = {}
        for chunk in chunks(sorted({int(face_id) for face_id in face_ids})):
            query = select(faces.c.id, faces.c.embedding).where(
                faces.c.id.in_(chunk), faces.c.model_pack == model_pack, self._in_library
            )
            for row in await self._connection.execute(query):
                found[row.id] = np.frombuffer(row.embedding, "<f4").astype(np.float32)
        return found

    async def person_samples(self, model_pack: str, per_person: int) -> tuple[np.ndarray, np.ndarray]:
        """(person ids, embeddings) of each person's `per_person` clearest current faces of the pack:
        enough for its centroid, and a read bounded by the persons rather than the faces."""
        ranked = (
            select(
                faces.c.id,
                func.row_number()
                .over(partition_by=faces.c.person_id, order_by=(faces.c.det_score.desc(), faces.c.id))
                .label("position"),
            )
            .select_from(_CURRENT_FACES)
            .where(faces.c.model_pack == model_pack, faces.c.person_id.is_not(None), self._in_library)
            .subquery()
        )
        query = (
            select(faces.c.person_id, faces.c.embedding)
            .join(ranked, ranked.c.id == faces.c.id)
            .where(ranked.c.position <= per_person)
            .order_by(faces.c.person_id, faces.c.id)
        )
        rows = (await self._connection.execute(query)).all()
        return np.array([row.person_id for row in rows], np.int64), _blobs_to_matrix(
            [row.embedding for row in rows]
        )

    async def persons_seen_together(self, model_pack: str) -> set[tuple[int, int]]:
        """Pairs of persons (a < b) with current faces of the pack in one photo. (Not `b > a` in the join:
        SQLite would then walk the person index instead of the photo's faces, for every face.)"""
        first, second = faces.alias("face_a"), faces.alias("face_b")
        query = (
            select(first.c.person_id, second.c.person_id.label("other"))
            .distinct()
            .select_from(
                first.join(
                    second,
                    and_(
                        second.c.image_id == first.c.image_id,
                        second.c.model_pack == first.c.model_pack,
                        second.c.person_id != first.c.person_id,
                    ),
                ).join(
                    images, and_(images.c.id == first.c.image_id, images.c.model_pack == first.c.model_pack)
                )
            )
            .where(first.c.model_pack == model_pack, first.c.library_id == self._library)
        )
        rows = await self._connection.execute(query)
        return {(min(row.person_id, row.other), max(row.person_id, row.other)) for row in rows}

    async def refused_pairs(self) -> set[tuple[int, int]]:
        """(person of a face, person that face was said not to be): merging them would undo the refusal."""
        query = (
            select(faces.c.person_id, cannot_links.c.person_id.label("refused"))
            .select_from(cannot_links.join(faces, faces.c.id == cannot_links.c.face_id))
            .where(faces.c.person_id.is_not(None), self._in_library)
        )
        return {(row.person_id, row.refused) for row in await self._connection.execute(query)}

    # --- photos ------------------------------------------------------------------------------------

    async def image(self, image_id: int) -> ImageView | None:
        query = select(
            images.c.id, images.c.source_path, images.c.source_id, images.c.width, images.c.height
        ).where(images.c.id == image_id, images.c.library_id == self._library)
        row = (await self._connection.execute(query)).first()
        return _image(row) if row else None

    async def images_with(
        self, person_ids: Sequence[int], *, offset: int, limit: int | None
    ) -> list[ImageView]:
        """Photos showing every one of these persons (at most IN_CHUNK of them), oldest first."""
        wanted = sorted({int(person_id) for person_id in person_ids})
        if not wanted or len(wanted) > IN_CHUNK:
            raise ValueError(f"between 1 and {IN_CHUNK} persons")
        showing_all = (
            select(faces.c.image_id)
            .select_from(_CURRENT_FACES)
            .where(faces.c.person_id.in_(wanted), self._in_library)
            .group_by(faces.c.image_id)
            .having(func.count(faces.c.person_id.distinct()) == len(wanted))
        )
        query = (
            select(images.c.id, images.c.source_path, images.c.source_id, images.c.width, images.c.height)
            .where(images.c.id.in_(showing_all))
            .order_by(images.c.id)
        )
        return [_image(row) for row in await self._connection.execute(_page(query, offset, limit))]
