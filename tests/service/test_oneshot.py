"""MODE=oneshot: process the images the database holds without a result, regroup, exit."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from service_helpers import add_photo, service_settings
from sqlalchemy import func, select

from image_grouping.bootstrap import bootstrap
from image_grouping.consumer.app import run_oneshot
from image_grouping.storage.schema import faces, images, recluster_runs

pytestmark = pytest.mark.slow

PHOTOS = ("face_recognition__two_people.jpg", "deepface__couple.jpg")


async def test_pending_images_are_processed_then_regrouped(
    tmp_path: Path, postgres_url: str, rabbitmq_url: str, eval_dir: Path
) -> None:
    folder = uuid.uuid4().hex[:8]
    settings = service_settings(
        tmp_path, postgres_url, rabbitmq_url, service="both", mode="oneshot", recognizer_args="--recluster"
    )
    dry = settings.model_copy(update={"dry_run": True})
    paths = [add_photo(settings, eval_dir / "groups" / name, folder) for name in PHOTOS]
    missing = f"{settings.db_prefix}/{folder}/gone.jpg"
    async with bootstrap(settings, load_models=True) as adapters:
        async with adapters.unit_of_work() as uow:
            for path in [*paths, missing]:
                await uow.images.get_or_create(None, path)
            await uow.commit()

        async def statuses() -> dict[str, str]:
            async with adapters.engine.connect() as connection:
                query = select(images.c.source_path, images.c.status).where(
                    images.c.source_path.in_([*paths, missing])
                )
                return dict((await connection.execute(query)).all())

        async def count(table) -> int:
            async with adapters.engine.connect() as connection:
                return await connection.scalar(select(func.count()).select_from(table))

        runs_before = await count(recluster_runs)
        async with bootstrap(dry, analyzer=adapters.analyzer, engine=adapters.engine) as dry_adapters:
            assert await run_oneshot(dry_adapters) == 0
        assert set((await statuses()).values()) == {"pending"}  # a dry run writes nothing
        assert await count(recluster_runs) == runs_before

        assert await run_oneshot(adapters) == 0
        assert await statuses() == {paths[0]: "done", paths[1]: "done", missing: "failed"}
        assert await count(faces) >= 2
        assert await count(recluster_runs) == runs_before + 1
