"""The service under faults: the database goes away and comes back; SIGTERM in the middle of work.

The outage is a TCP proxy in front of the real PostgreSQL that this test cuts, so other tests sharing the
server are not disturbed (bench/faults.py stops the server itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import aio_pika
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from image_grouping.storage.schema import faces, images

if TYPE_CHECKING:
    from service_helpers import Bus

pytestmark = pytest.mark.slow

PHOTOS = ("face_recognition__two_people.jpg", "deepface__couple.jpg", "insightface__t1.jpg")


class CuttableProxy:
    """Forwards a local port to PostgreSQL until `cut()`; `restore()` listens again on the same port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def restore(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {writer, upstream_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        self._writers -= {writer, upstream_writer}


async def upload_count(bus: Bus) -> int:
    """Messages ready in the upload queue (not delivered to a consumer)."""
    channel = await bus.connection.channel()
    declared = await channel.declare_queue(bus.settings.upload_queue, passive=True)
    await channel.close()
    return declared.declaration_result.message_count


async def test_while_the_database_is_down_consumption_pauses_and_resumes_after(
    tmp_path: Path, postgres_url: str, rabbitmq_url: str, eval_dir: Path
) -> None:
    from service_helpers import running_service, service_settings

    proxy = CuttableProxy(5432)
    await proxy.restore()
    proxied_url = postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    settings = service_settings(tmp_path, proxied_url, rabbitmq_url, prefetch_count=10)
    async with running_service(settings) as service:
        first = f"img-{uuid.uuid4().hex[:8]}"
        await service.bus.upload(first, service.add_photo(eval_dir / "groups" / PHOTOS[0], "before"))
        await service.bus.wait_detected({first})

        await proxy.cut()
        # The first upload during the outage meets the dead database and pauses consumption...
        during = {f"img-{uuid.uuid4().hex[:8]}": name for name in PHOTOS}
        first_during, *later = during
        await service.bus.upload(first_during, service.add_photo(eval_dir / "groups" / PHOTOS[0], "during"))
        await asyncio.sleep(2)
        # ...so later ones stay in the queue although the prefetch window has room for them.
        for image_id in later:
            await service.bus.upload(
                image_id, service.add_photo(eval_dir / "groups" / during[image_id], image_id)
            )
        await asyncio.sleep(2)
        assert await upload_count(service.bus) == len(later)
        assert not set(during) & set(service.bus.detected)
        assert not await service.bus.dead_letters(0)

        await proxy.restore()
        await service.bus.wait_detected(set(during), within=120)
        assert await upload_count(service.bus) == 0

    engine = create_async_engine(postgres_url)
    async with engine.connect() as connection:
        for image_id in during:
            stored = await connection.scalar(
                select(func.count()).select_from(faces.join(images)).where(images.c.source_id == image_id)
            )
            [announced] = service.bus.detected[image_id]
            assert stored == announced["face_count"] > 0
    await engine.dispose()
    await proxy.cut()


async def test_sigterm_drains_in_flight_work_and_exits_cleanly(
    tmp_path: Path, postgres_url: str, rabbitmq_url: str, eval_dir: Path
) -> None:
    from service_helpers import Bus, delete_topology, service_settings

    settings = service_settings(tmp_path, postgres_url, rabbitmq_url, shutdown_grace_seconds=20)
    environment = (
        os.environ
        | {
            name.upper(): str(value.get_secret_value() if hasattr(value, "get_secret_value") else value)
            for name, value in settings.model_dump().items()
            if value is not None
        }
        | {"LOG_FORMAT": "json"}
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "image_grouping.cli",
        "consume",
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    connection = await aio_pika.connect_robust(rabbitmq_url)
    uploads = 12
    try:
        async with asyncio.timeout(60):
            while not settings.liveness_file.exists():
                assert process.returncode is None, "the service exited at start"
                await asyncio.sleep(0.2)
        bus = Bus(settings, connection)
        await bus.start()
        image_ids = [f"img-{uuid.uuid4().hex[:8]}" for _ in range(uploads)]
        for index, image_id in enumerate(image_ids):
            path = settings.db_prefix + "/" + image_id + "/" + PHOTOS[index % len(PHOTOS)]
            target = settings.container_images_root / image_id / PHOTOS[index % len(PHOTOS)]
            target.parent.mkdir(parents=True)
            target.write_bytes((eval_dir / "groups" / PHOTOS[index % len(PHOTOS)]).read_bytes())
            await bus.upload(image_id, path)
        async with asyncio.timeout(60):
            while not bus.detected:  # noqa: ASYNC110 - until some work is in flight
                await asyncio.sleep(0.05)

        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        output, _ = await asyncio.wait_for(process.communicate(), settings.shutdown_grace_seconds + 10)
        assert process.returncode == 0, output.decode()[-3000:]
        assert time.monotonic() - signalled < settings.shutdown_grace_seconds
        await asyncio.sleep(0.5)  # the last faces.detected confirmed before the ack reaches the observer

        # Nothing lost: every upload was either finished (announced) or is back in the queue.
        assert len(bus.detected) + await upload_count(bus) == uploads
        assert all(len(announced) == 1 for announced in bus.detected.values())
        lines = [json.loads(line) for line in output.decode().splitlines() if line.startswith("{")]
        assert any(line["event"] == "draining" for line in lines)
        handled = [line for line in lines if line["event"] == "message handled"]
        assert {line["image_id"] for line in handled} == set(bus.detected)
        assert all(line["message_id"] and line["service"] == "detection" for line in handled)
        detection_log = settings.log_root / "image_face_detection" / "logs" / "detection.log"
        assert "message handled" in detection_log.read_text()
        assert (
            "message handled"
            not in (settings.log_root / "person_recognition" / "logs" / "recognition.log").read_text()
        )
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await delete_topology(connection, settings)
        await connection.close()
