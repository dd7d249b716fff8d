"""One transaction and the repositories that work inside it."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from image_grouping.models.faces import ImageAnalysis
from image_grouping.models.messages import DEFAULT_LIBRARY
from image_grouping.models.records import ImageResult
from image_grouping.storage.repositories import (
    FaceRepository,
    ImageRepository,
    PersonRepository,
    ReclusterRunRepository,
    ViewRepository,
)

log = structlog.get_logger(__name__)


class SqlUnitOfWork:
    """`async with SqlUnitOfWork(engine) as uow: ...; await uow.commit()`.

    Nothing is written unless `commit` is called; leaving the block (normally or by an exception)
    rolls back whatever was not committed. After a commit the unit of work can go on with a new
    transaction.
    """

    images: ImageRepository
    faces: FaceRepository
    persons: PersonRepository
    runs: ReclusterRunRepository
    views: ViewRepository

    def __init__(self, engine: AsyncEngine, library_id: str = DEFAULT_LIBRARY) -> None:
        self._engine = engine
        self._connection: AsyncConnection | None = None
        self.library_id = library_id  # every repository reads and writes this library's rows only

    async def __aenter__(self) -> SqlUnitOfWork:
        self._connection = connection = await self._engine.connect()
        library = self.library_id
        self.images = ImageRepository(connection, library)
        self.faces = FaceRepository(connection, library)
        self.persons = PersonRepository(connection, library)
        self.runs = ReclusterRunRepository(connection, library)
        self.views = ViewRepository(connection, library)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            if connection.in_transaction():
                await connection.rollback()
        finally:
            await connection.close()

    @property
    def connection(self) -> AsyncConnection:
        if self._connection is None:
            raise RuntimeError("the unit of work is used outside its `async with` block")
        return self._connection

    async def commit(self) -> None:
        await self.connection.commit()

    async def rollback(self) -> None:
        await self.connection.rollback()

    async def save_analysis(
        self,
        image_id: int,
        content_hash: str,
        size_bytes: int,
        analysis: ImageAnalysis,
        thumbnail_paths: Sequence[str | None],
    ) -> list[int]:
        """See `ImageRepository.save_analysis`: the idempotent write of one image's result."""
        return await self.images.save_analysis(image_id, content_hash, size_bytes, analysis, thumbnail_paths)

    async def save_analyses(self, results: Sequence[ImageResult]) -> list[list[int]]:
        """See `ImageRepository.save_analyses`: `save_analysis` of several images, in a few statements."""
        return await self.images.save_analyses(results)


class DryRunUnitOfWork(SqlUnitOfWork):
    """--dry-run: everything is read and written inside the transaction as usual, and `commit` commits
    nothing, so the transaction is rolled back when the block ends."""

    async def commit(self) -> None:
        log.debug("dry run: transaction not committed")
