"""`image-grouping consume`: the service's entry point.

MODE=loop consumes RabbitMQ until SIGTERM (and asks for a recluster every INTERVAL_SECONDS);
MODE=oneshot processes the images of the database that have no result yet, regroups, and exits.
SERVICE picks detection, recognition or both.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Coroutine
from functools import partial
from typing import Any, TypeVar

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from aiormq.exceptions import AMQPError

from image_grouping.bootstrap import Adapters, bootstrap, log_model_licence
from image_grouping.config import Settings
from image_grouping.consumer.liveness import keep_alive
from image_grouping.consumer.publisher import BrokerPublisher, DryRunPublisher, Publisher
from image_grouping.consumer.routes import detection_route, recognition_route
from image_grouping.consumer.shards import ShardBalance
from image_grouping.consumer.topology import declare_topology
from image_grouping.consumer.worker import (
    Acknowledger,
    BrokerAcknowledger,
    HoldingAcknowledger,
    Route,
    Worker,
)
from image_grouping.errors import BadInputError
from image_grouping.handlers.detection import handle_images_uploaded
from image_grouping.handlers.ports import UnitOfWorkFactory
from image_grouping.handlers.recognition import (
    handle_faces_detected,
    handle_recluster_requested,
    libraries_to_recluster,
)
from image_grouping.models.messages import (
    PERIODIC,
    FacesDetected,
    ImageUploaded,
    ReclusterRequested,
    new_event,
)
from image_grouping.observability import DETECTION, RECOGNITION, configure_logging, start_metrics_server
from image_grouping.retry import backoff

log = structlog.get_logger(__name__)

PENDING_BATCH = 100
T = TypeVar("T")


async def run_service(settings: Settings) -> int:
    """Run until done (oneshot) or until SIGTERM/SIGINT (loop); returns the process exit code."""
    configure_logging(settings)
    start_metrics_server(settings.metrics_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("starting", service=settings.service, mode=settings.mode, dry_run=settings.dry_run)
    log_model_licence(settings)
    detection = settings.service in (DETECTION, "both")
    async with contextlib.AsyncExitStack() as stack:
        services = bootstrap(settings, load_models=detection, wait_for_database=True)
        adapters = await _until_stopped(stack.enter_async_context(services), stop)
        if adapters is None:
            return 0
        if settings.mode == "oneshot":
            return await run_oneshot(adapters)
        return await run_loop(adapters, stop)


async def run_loop(adapters: Adapters, stop: asyncio.Event) -> int:
    """Consume until `stop` is set, then drain within the grace period."""
    settings = adapters.settings
    connection = await _until_stopped(_connect(settings), stop)
    if connection is None:
        return 0
    try:
        publish_channel = await connection.channel(publisher_confirms=True)
        consume_channel = await connection.channel()
        await consume_channel.set_qos(prefetch_count=settings.prefetch_count)
        topology = await declare_topology(consume_channel, settings)
        exchange = await publish_channel.get_exchange(settings.exchange_name)
        dead_letter_exchange = await publish_channel.get_exchange(settings.dead_letter_exchange)
        publisher: Publisher
        acknowledger: Acknowledger
        if adapters.dry_run:
            publisher, acknowledger = DryRunPublisher(), HoldingAcknowledger()
        else:
            publisher, acknowledger = BrokerPublisher(exchange, dead_letter_exchange), BrokerAcknowledger()

        routes: list[Route] = []
        if settings.service in (DETECTION, "both"):
            routes.append(detection_route(topology.upload_queue, adapters))
        if settings.service in (RECOGNITION, "both"):
            # A channel of its own, whose prefetch lets a whole batch of faces.detected arrive.
            recognition_channel = await connection.channel()
            await recognition_channel.set_qos(
                prefetch_count=max(settings.prefetch_count, settings.grouping_batch_size)
            )
            shards = [await recognition_channel.get_queue(queue.name) for queue in topology.shard_queues]
            balance = ShardBalance(
                [queue.name for queue in shards],
                partial(_count_consumers, recognition_channel, topology.replicas_queue.name),
            )
            routes.extend(recognition_route(queue, adapters, balance) for queue in shards)
            for queue in topology.retired_queues:  # until empty; they take no new message
                routes.append(recognition_route(await recognition_channel.get_queue(queue.name), adapters))
            # Counted by the others (the shards' share of each); nothing is ever sent to it.
            replicas = await recognition_channel.get_queue(topology.replicas_queue.name)
            await replicas.consume(_discard)
        worker = Worker(routes, publisher, acknowledger, adapters.probe_database)
        background = [
            asyncio.create_task(
                keep_alive(
                    settings.liveness_file,
                    settings.liveness_interval_seconds,
                    lambda: _connected(connection),
                )
            )
        ]
        if settings.service in (RECOGNITION, "both") and settings.recluster_requested:
            background.append(
                asyncio.create_task(_request_reclusters(publisher, settings, adapters.unit_of_work))
            )

        await worker.start()
        await stop.wait()
        log.info("stop requested")
        await worker.drain(settings.shutdown_grace_seconds)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
    finally:
        await connection.close()
    log.info("stopped")
    return 0


async def run_oneshot(adapters: Adapters) -> int:
    """Analyse every image of the database without a result, then regroup; 0 when all went through."""
    settings = adapters.settings
    detected: list[FacesDetected] = []
    failed = 0
    if settings.service in (DETECTION, "both"):
        deps = adapters.detection_deps()
        seen: set[int] = set()  # a dry run writes nothing, so the same images stay pending
        while True:
            async with adapters.unit_of_work() as uow:
                batch = [image for image in await uow.images.pending(PENDING_BATCH) if image.id not in seen]
            if not batch:
                break
            seen.update(image.id for image in batch)
            for start in range(0, len(batch), settings.detection_batch_size):
                events = [
                    ImageUploaded(
                        library_id=image.library_id,
                        image_id=image.source_id or str(image.id),
                        path=image.source_path,
                    )
                    for image in batch[start : start + settings.detection_batch_size]
                ]
                with structlog.contextvars.bound_contextvars(service=DETECTION):
                    outcomes = await handle_images_uploaded(events, deps)
                for event, outcome in zip(events, outcomes, strict=True):
                    if isinstance(outcome, BadInputError):
                        failed += 1
                        log.warning(
                            "bad input",
                            service=DETECTION,
                            image_id=event.image_id,
                            reason=outcome.reason,
                            detail=str(outcome),
                        )
                    else:
                        detected.extend(each for each in outcome if isinstance(each, FacesDetected))
        faces = sum(each.face_count for each in detected)
        log.info("pending images processed", images=len(seen), failed=failed, faces=faces)

    if settings.service in (RECOGNITION, "both"):
        grouping = adapters.grouping_deps()
        with structlog.contextvars.bound_contextvars(service=RECOGNITION):
            if settings.recluster_requested:
                async with adapters.unit_of_work() as uow:
                    libraries = await uow.images.libraries()
                requests = [
                    ReclusterRequested(
                        library_id=library_id, model_pack=settings.model_pack, reason="oneshot"
                    )
                    for library_id in libraries
                ]
                outcomes = await handle_recluster_requested(requests, grouping)
            else:
                outcomes = await handle_faces_detected(detected, grouping)
        updates = [
            event.model_dump() for outcome in outcomes if isinstance(outcome, list) for event in outcome
        ]
        log.info("grouping done", service=RECOGNITION, changes=updates)
    return 0


async def _request_reclusters(
    publisher: Publisher, settings: Settings, unit_of_work: UnitOfWorkFactory
) -> None:
    """Every INTERVAL_SECONDS ask for a recluster of each library that changed since its last one (new
    faces, edits by hand), each on its library's shard, whose single active consumer runs it; a library
    where nothing happened is left alone. A database that does not answer skips the round."""
    while True:
        await asyncio.sleep(settings.interval_seconds)
        try:
            libraries = await libraries_to_recluster(unit_of_work, settings.model_pack)
        except Exception:  # transient (the database away): the next interval asks again
            log.warning("could not read which libraries changed; no recluster requested", exc_info=True)
            continue
        for library_id in libraries:
            await publisher.publish(
                new_event(
                    ReclusterRequested(library_id=library_id, model_pack=settings.model_pack, reason=PERIODIC)
                )
            )
        log.info("recluster requested", interval_seconds=settings.interval_seconds, libraries=len(libraries))


async def _count_consumers(channel: AbstractChannel, queue: str) -> int:
    # The broker's own answer: aio-pika's robust channel would answer a passive declaration from its cache.
    underlay = await channel.get_underlay_channel()
    declared = await underlay.queue_declare(queue, passive=True)
    return int(declared.consumer_count or 0)


async def _discard(message: AbstractIncomingMessage) -> None:
    await message.ack()


async def _connect(settings: Settings) -> AbstractRobustConnection:
    """A robust connection (it reconnects by itself once made); the first one is retried here."""
    async for attempt in backoff("broker", retry_on=(ConnectionError, OSError, AMQPError)):
        with attempt:
            return await aio_pika.connect_robust(
                settings.rabbitmq_url.get_secret_value(),
                client_properties={"connection_name": f"image-grouping {settings.service}"},
            )
    raise AssertionError("unreachable: the backoff retries until connected")


def _connected(connection: AbstractRobustConnection) -> bool:
    return not connection.is_closed and connection.connected.is_set()


async def _until_stopped(work: Coroutine[Any, Any, T], stop: asyncio.Event) -> T | None:
    """`work`'s result, or None if `stop` is set first (SIGTERM while waiting for the database)."""
    work_task = asyncio.create_task(work)
    stop_task = asyncio.create_task(stop.wait())
    await asyncio.wait({work_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    stop_task.cancel()
    if work_task.done():
        return work_task.result()
    work_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await work_task
    return None
