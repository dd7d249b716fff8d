"""A service wired to the real RabbitMQ and PostgreSQL of this machine, under names unique to this run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from image_grouping.bootstrap import Adapters, bootstrap
from image_grouping.config import Settings, load_settings
from image_grouping.consumer.app import run_loop
from image_grouping.consumer.topology import declared_names
from image_grouping.models.messages import EventData, ImageUploaded, new_event

DB_PREFIX = "//fileserver/photos"


def service_settings(tmp: Path, postgres_url: str, rabbitmq_url: str, **overrides: object) -> Settings:
    run = uuid.uuid4().hex[:8]
    values: dict[str, object] = {
        "database_url": postgres_url,
        "rabbitmq_url": rabbitmq_url,
        "exchange_name": f"test-{run}",
        "upload_queue": f"test-{run}.image-uploaded",
        "recluster_queue": f"test-{run}.recluster",
        "dead_letter_exchange": f"test-{run}.dlx",
        "dead_letter_queue": f"test-{run}.dead-letter",
        "db_prefix": DB_PREFIX,
        "container_images_root": tmp / "images",
        "system_storage": tmp,
        "thumbnail_save_path": tmp / "thumbnails",
        "liveness_file": tmp / "alive",
        "liveness_interval_seconds": 0.5,
        "log_root": tmp / "logs",
        "service": "detection",
        "mode": "loop",
        "prefetch_count": 4,
        "max_in_flight": 2,
        "shutdown_grace_seconds": 20,
    }
    (tmp / "images").mkdir(parents=True, exist_ok=True)
    return load_settings(**(values | overrides))


def add_photo(settings: Settings, source: Path, folder: str) -> str:
    """Copy a photo under the images root; return its path as the uploader stores it."""
    target = settings.container_images_root / folder / source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return f"{settings.db_prefix}/{folder}/{source.name}"


async def delete_topology(connection: AbstractRobustConnection, settings: Settings) -> None:
    channel = await connection.channel()
    queues, exchanges = declared_names(settings)
    for queue in queues:
        await channel.queue_delete(queue)
    for exchange in exchanges:
        await channel.exchange_delete(exchange)
    await channel.close()


@dataclass
class Bus:
    """The test's side of the broker: publishes uploads, collects faces.detected and dead letters."""

    settings: Settings
    connection: AbstractRobustConnection
    detected: dict[str, list[dict]] = field(default_factory=dict)
    persons_updated: list[dict] = field(default_factory=list)
    # person.forgotten, faces.deleted, face.added
    announced: list[tuple[str, dict]] = field(default_factory=list)
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def start(self) -> None:
        self.channel = await self.connection.channel(publisher_confirms=True)
        self.exchange = await self.channel.declare_exchange(
            self.settings.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        observer = await self.channel.declare_queue(exclusive=True, auto_delete=True)
        await observer.bind(self.exchange, "faces.detected")
        await observer.bind(self.exchange, "persons.updated")
        await observer.bind(self.exchange, "person.forgotten")
        await observer.bind(self.exchange, "faces.deleted")
        await observer.bind(self.exchange, "face.added")
        await observer.bind(self.exchange, "library.erased")
        await observer.consume(self._on_event, no_ack=True)

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        data = json.loads(message.body)["data"]
        async with self._arrived:
            if message.routing_key == "persons.updated":
                self.persons_updated.append(data)
            elif message.routing_key in ("person.forgotten", "faces.deleted", "face.added", "library.erased"):
                self.announced.append((message.routing_key, data))
            else:
                self.detected.setdefault(data["image_id"], []).append(data)
            self._arrived.notify_all()

    async def publish(self, data: EventData) -> None:
        await self.publish_raw(new_event(data).to_json(), data.event_type)

    async def publish_raw(self, body: bytes, routing_key: str = "image.uploaded") -> None:
        message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await self.exchange.publish(message, routing_key)

    async def upload(self, image_id: str, path: str) -> None:
        await self.publish(ImageUploaded(image_id=image_id, path=path))

    async def wait_detected(self, image_ids: set[str], *, times: int = 1, within: float = 90) -> None:
        """Until each image was announced `times` times."""
        async with asyncio.timeout(within), self._arrived:
            await self._arrived.wait_for(
                lambda: all(len(self.detected.get(image_id, [])) >= times for image_id in image_ids)
            )

    async def wait_persons_updated(self, count: int, within: float = 90) -> None:
        async with asyncio.timeout(within), self._arrived:
            await self._arrived.wait_for(lambda: len(self.persons_updated) >= count)

    async def dead_letters(self, count: int, within: float = 30) -> list[AbstractIncomingMessage]:
        queue = await self.channel.get_queue(self.settings.dead_letter_queue)
        letters: list[AbstractIncomingMessage] = []
        async with asyncio.timeout(within):
            while len(letters) < count:
                message = await queue.get(fail=False)
                if message is None:
                    await asyncio.sleep(0.1)
                    continue
                await message.ack()
                letters.append(message)
        return letters


@dataclass
class RunningService:
    settings: Settings
    adapters: Adapters
    bus: Bus

    def add_photo(self, source: Path, folder: str) -> str:
        return add_photo(self.settings, source, folder)


@contextlib.asynccontextmanager
async def running_service(settings: Settings) -> AsyncIterator[RunningService]:
    """The service's consume loop in this event loop, and a bus to talk to it; topology deleted after."""
    stack = contextlib.AsyncExitStack()
    adapters = await stack.enter_async_context(
        bootstrap(settings, load_models=settings.service in ("detection", "both"))
    )
    stop = asyncio.Event()
    loop_task = asyncio.create_task(run_loop(adapters, stop))
    connection = await aio_pika.connect_robust(settings.rabbitmq_url.get_secret_value())
    try:
        bus = Bus(settings, connection)
        # The service declares the topology; wait for it before binding the observer.
        async with asyncio.timeout(30):
            while not settings.liveness_file.exists():  # noqa: ASYNC110 - a file, not an event
                await asyncio.sleep(0.1)
        await bus.start()
        yield RunningService(settings, adapters, bus)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(loop_task, 60)
        await delete_topology(connection, settings)
        await connection.close()
        await stack.aclose()
