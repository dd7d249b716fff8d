"""The grouping shards on the real broker: libraries are hashed onto GROUPING_SHARDS queues, and the
replicas spread the queues among themselves (each the single active consumer of its share)."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection
from service_helpers import delete_topology, service_settings

from image_grouping.config import Settings
from image_grouping.consumer.app import _count_consumers, _discard
from image_grouping.consumer.publisher import BrokerPublisher
from image_grouping.consumer.shards import ShardBalance
from image_grouping.consumer.topology import LIBRARY_HEADER, declare_topology
from image_grouping.consumer.worker import BrokerAcknowledger, Handling, Route, Worker
from image_grouping.handlers.ports import Outcome
from image_grouping.models.messages import ReclusterRequested, new_event

pytestmark = pytest.mark.slow

LIBRARIES = [f"library-{n}" for n in range(8)]
HANDLING_SECONDS = 0.3


async def replica(
    connection: AbstractRobustConnection,
    settings: Settings,
    name: str,
    handled: list[tuple[str, str, float, float]],
) -> Worker:
    """A grouping replica as the service wires it, whose recluster handler records (replica, library,
    start, end) and takes a while."""
    channel = await connection.channel(publisher_confirms=True)
    await channel.set_qos(prefetch_count=10)
    topology = await declare_topology(channel, settings)

    async def on_recluster(events: Sequence[ReclusterRequested]) -> list[Outcome]:
        for event in events:
            started = time.monotonic()
            await asyncio.sleep(HANDLING_SECONDS)
            handled.append((name, event.reason, started, time.monotonic()))
        return [[] for _ in events]

    balance = ShardBalance(
        [queue.name for queue in topology.shard_queues],
        partial(_count_consumers, channel, topology.replicas_queue.name),
    )
    await topology.replicas_queue.consume(_discard)
    routes = [
        Route(
            queue, "recognition", {ReclusterRequested: Handling(on_recluster)}, slot_key="g", balance=balance
        )
        for queue in topology.shard_queues
    ]

    async def database_up() -> None:
        return None

    publisher = BrokerPublisher(topology.exchange, topology.dead_letter_exchange)
    worker = Worker(routes, publisher, BrokerAcknowledger(), probe=database_up)
    await worker.start()
    return worker


async def test_two_replicas_share_the_shards_and_a_library_is_never_handled_twice_at_once(
    tmp_path: Path, postgres_url: str, rabbitmq_url: str
) -> None:
    settings = service_settings(tmp_path, postgres_url, rabbitmq_url, grouping_shards=2)
    handled: list[tuple[str, str, float, float]] = []
    connections = [await aio_pika.connect_robust(rabbitmq_url) for _ in range(3)]
    try:
        # The first replica subscribes to both shards before the second: the broker makes it active on both.
        first = await replica(connections[0], settings, "first", handled)
        second = await replica(connections[1], settings, "second", handled)
        channel = await connections[2].channel(publisher_confirms=True)
        exchange = await channel.get_exchange(settings.exchange_name)
        sent = 0
        for _ in range(3):
            for library in LIBRARIES:
                # The library rides in the header the exchange hashes (the reason tells the test which).
                body = new_event(ReclusterRequested(reason=library)).to_json()
                message = aio_pika.Message(
                    body, headers={LIBRARY_HEADER: library}, message_id=uuid.uuid4().hex
                )
                await exchange.publish(message, ReclusterRequested.event_type)
                sent += 1
        async with asyncio.timeout(60):
            while len(handled) < sent:  # noqa: ASYNC110 - polls what the handlers saw
                await asyncio.sleep(0.1)
        await asyncio.sleep(1)  # nothing handled twice arrives late
        await first.drain(5)
        await second.drain(5)

        assert len(handled) == sent
        by_replica = {name for name, *_ in handled}
        assert by_replica == {"first", "second"}, "one replica stood by on every shard"
        overlapping = [
            (one, other)
            for one in handled
            for other in handled
            if one[0] == "first" and other[0] == "second" and one[2] < other[3] and other[2] < one[3]
        ]
        assert overlapping, "the replicas never worked at the same time"
        for library in LIBRARIES:
            runs = sorted((start, end) for _, each, start, end in handled if each == library)
            assert len(runs) == 3
            assert all(end <= following for (_, end), (following, _) in itertools.pairwise(runs))
    finally:
        # The replicas' robust channels first: one still subscribed declares its queue again once deleted.
        for connection in connections[:2]:
            await connection.close()
        await delete_topology(connections[2], settings)
        await connections[2].close()
