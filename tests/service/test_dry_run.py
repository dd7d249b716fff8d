"""DRY_RUN in MODE=loop: the service analyses what arrives and writes, publishes and acknowledges nothing;
the messages go back to the queue when it stops."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage
from service_helpers import Bus, add_photo, delete_topology, service_settings
from sqlalchemy import func, select

from image_grouping.bootstrap import bootstrap
from image_grouping.consumer.app import run_loop
from image_grouping.consumer.worker import HoldingAcknowledger
from image_grouping.storage.schema import faces, images

pytestmark = pytest.mark.slow


async def test_a_dry_run_service_writes_publishes_and_acknowledges_nothing(
    tmp_path: Path,
    fresh_postgres_url: str,
    rabbitmq_url: str,
    eval_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = service_settings(tmp_path, fresh_postgres_url, rabbitmq_url, service="both", dry_run=True)
    async with bootstrap(settings.model_copy(update={"dry_run": False})):
        pass  # a migrated database, as production has
    held: list[AbstractIncomingMessage] = []
    hold = HoldingAcknowledger.acknowledge

    async def recorded(self: HoldingAcknowledger, messages: Sequence[AbstractIncomingMessage]) -> None:
        held.extend(messages)
        await hold(self, messages)

    monkeypatch.setattr(HoldingAcknowledger, "acknowledge", recorded)

    connection = await aio_pika.connect_robust(rabbitmq_url)
    try:
        async with bootstrap(settings, load_models=True) as adapters:
            stop = asyncio.Event()
            service = asyncio.create_task(run_loop(adapters, stop))
            async with asyncio.timeout(30):
                while not settings.liveness_file.exists():  # noqa: ASYNC110 - a file, not an event
                    await asyncio.sleep(0.1)
            bus = Bus(settings, connection)
            await bus.start()
            await bus.upload(
                "dry-1", add_photo(settings, eval_dir / "groups" / "deepface__couple.jpg", "dry")
            )
            await bus.publish_raw(b"{not json")
            async with asyncio.timeout(60):
                while len(held) < 2:  # noqa: ASYNC110 - polls what the worker held
                    await asyncio.sleep(0.1)
            stop.set()
            assert await service == 0

        channel = await connection.channel()
        uploads = await channel.declare_queue(settings.upload_queue, passive=True)
        dead = await channel.declare_queue(settings.dead_letter_queue, passive=True)
        assert uploads.declaration_result.message_count == 2  # both back in their queue
        assert dead.declaration_result.message_count == 0
        assert bus.detected == {}
    finally:
        await delete_topology(connection, settings)
        await connection.close()
    async with (
        bootstrap(settings.model_copy(update={"dry_run": False})) as adapters,
        adapters.engine.connect() as database,
    ):
        assert await database.scalar(select(func.count()).select_from(images)) == 0
        assert await database.scalar(select(func.count()).select_from(faces)) == 0
    assert not list(settings.thumbnail_save_path.rglob("*.jpg"))
    assert not (tmp_path / "logs").exists()  # a dry run writes no log files either
