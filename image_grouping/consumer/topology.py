"""Exchanges, queues and bindings, declared by the service at start (idempotent on every replica).

Grouping is sharded by library. Every grouping message (`faces.detected`, `recluster.requested`, the
people's commands) goes from the topic exchange to a consistent-hash exchange (RabbitMQ's plugin
`rabbitmq_consistent_hash_exchange`), which hashes its `library_id` header onto one of GROUPING_SHARDS
quorum queues, each with a single active consumer: a library's messages always reach the same queue, so one
consumer at a time groups and edits it, and several libraries are grouped at once by the replicas that are
the active consumers of their queues. Shard 0 is RECLUSTER_QUEUE itself (so a single shard is the topology
of before), shard i the queue `RECLUSTER_QUEUE.i`.
"""

from __future__ import annotations

from dataclasses import dataclass

from aio_pika import ExchangeType
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue
from aiormq.exceptions import AMQPError, ChannelNotFoundEntity

from image_grouping.config import Settings
from image_grouping.models.messages import PEOPLE_COMMANDS, FacesDetected, ImageUploaded, ReclusterRequested

# A message redelivered this often keeps killing its worker (e.g. out of memory): the broker dead-letters
# it. Well above the redeliveries that crashes and broker restarts cause to healthy messages.
POISON_DELIVERY_LIMIT = 20
# The header the consistent-hash exchange hashes: the message's library (BrokerPublisher sets it). A
# message without it (an outside publisher that does not set it) is hashed as one and the same library.
LIBRARY_HEADER = "library_id"
CONSISTENT_HASH = "x-consistent-hash"
SHARD_WEIGHT = "1"  # a consistent-hash binding's key is the queue's weight on the hash ring: all equal
GROUPING_EVENT_TYPES = (
    FacesDetected.event_type,
    ReclusterRequested.event_type,
    *(command.event_type for command in PEOPLE_COMMANDS),
)
# Shards above GROUPING_SHARDS left by a larger setting are looked for up to this index.
MAX_RETIRED_SHARDS = 256


class MissingPluginError(RuntimeError):
    """RabbitMQ cannot declare a consistent-hash exchange: its plugin is not enabled."""


@dataclass(frozen=True, slots=True)
class Topology:
    exchange: AbstractExchange
    dead_letter_exchange: AbstractExchange
    upload_queue: AbstractQueue
    grouping_exchange: AbstractExchange
    shard_queues: list[AbstractQueue]  # shard i at index i; shard 0 is RECLUSTER_QUEUE
    # Shards at or above GROUPING_SHARDS that a larger setting left: unbound, consumed until empty.
    retired_queues: list[AbstractQueue]
    replicas_queue: AbstractQueue
    dead_letter_queue: AbstractQueue

    @property
    def recluster_queue(self) -> AbstractQueue:
        return self.shard_queues[0]


def shard_queue_name(settings: Settings, shard: int) -> str:
    return settings.recluster_queue if shard == 0 else f"{settings.recluster_queue}.{shard}"


def grouping_exchange_name(settings: Settings) -> str:
    return f"{settings.exchange_name}.grouping"


def replicas_queue_name(settings: Settings) -> str:
    """A queue without messages that every grouping replica consumes: its consumer count is how many
    replicas there are (a quorum queue with a single active consumer reports only the active one)."""
    return f"{settings.recluster_queue}.replicas"


async def declare_topology(channel: AbstractChannel, settings: Settings) -> Topology:
    """A durable topic exchange, the upload queue, the grouping shards behind their consistent-hash
    exchange, and a dead-letter exchange and queue."""
    exchange = await channel.declare_exchange(settings.exchange_name, ExchangeType.TOPIC, durable=True)
    dead_letter_exchange = await channel.declare_exchange(
        settings.dead_letter_exchange, ExchangeType.TOPIC, durable=True
    )
    dead_letter_queue = await channel.declare_queue(
        settings.dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await dead_letter_queue.bind(dead_letter_exchange, routing_key="#")

    work_queue_arguments = {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": settings.dead_letter_exchange,
        "x-delivery-limit": POISON_DELIVERY_LIMIT,
    }
    upload_queue = await channel.declare_queue(
        settings.upload_queue, durable=True, arguments=work_queue_arguments
    )
    await upload_queue.bind(exchange, routing_key=ImageUploaded.event_type)

    grouping_exchange = await _declare_grouping_exchange(channel, settings)
    for event_type in GROUPING_EVENT_TYPES:
        await grouping_exchange.bind(exchange, routing_key=event_type)
    shard_arguments = {**work_queue_arguments, "x-single-active-consumer": True}
    shards: list[AbstractQueue] = []
    for shard in range(settings.grouping_shards):
        queue = await channel.declare_queue(
            shard_queue_name(settings, shard), durable=True, arguments=shard_arguments
        )
        await queue.bind(grouping_exchange, routing_key=SHARD_WEIGHT)
        shards.append(queue)
    # Before sharding, RECLUSTER_QUEUE was bound to the topic exchange itself: those bindings would now
    # deliver each message twice (unbinding what is not bound is a no-op).
    for event_type in GROUPING_EVENT_TYPES:
        await shards[0].unbind(exchange, routing_key=event_type)
    retired = await _retire_shards(channel, settings, grouping_exchange, shard_arguments)
    replicas = await channel.declare_queue(replicas_queue_name(settings), durable=True)
    return Topology(
        exchange,
        dead_letter_exchange,
        upload_queue,
        grouping_exchange,
        shards,
        retired,
        replicas,
        dead_letter_queue,
    )


async def _declare_grouping_exchange(channel: AbstractChannel, settings: Settings) -> AbstractExchange:
    try:
        return await channel.declare_exchange(
            grouping_exchange_name(settings),
            CONSISTENT_HASH,
            durable=True,
            arguments={"hash-header": LIBRARY_HEADER},
        )
    except AMQPError as error:
        if CONSISTENT_HASH in str(error):
            raise MissingPluginError(
                "RabbitMQ has no consistent-hash exchange: enable its plugin with "
                "`rabbitmq-plugins enable rabbitmq_consistent_hash_exchange`"
            ) from error
        raise


async def _retire_shards(
    channel: AbstractChannel,
    settings: Settings,
    grouping_exchange: AbstractExchange,
    arguments: dict[str, object],
) -> list[AbstractQueue]:
    """The shards a larger GROUPING_SHARDS left (the first missing index ends the search), unbound so
    that they take no new message; the service consumes them until empty, then they stay, empty."""
    retired: list[AbstractQueue] = []
    connection = (await channel.get_underlay_channel()).connection
    for shard in range(settings.grouping_shards, MAX_RETIRED_SHARDS):
        name = shard_queue_name(settings, shard)
        # A passive declare of a queue that does not exist closes its channel: a throw-away one.
        probe = await connection.channel()
        try:
            await probe.queue_declare(name, passive=True)
        except ChannelNotFoundEntity:
            break
        finally:
            if not probe.is_closed:
                await probe.close()
        queue = await channel.declare_queue(name, durable=True, arguments=arguments)
        await queue.unbind(grouping_exchange, routing_key=SHARD_WEIGHT)
        retired.append(queue)
    return retired


def declared_names(settings: Settings) -> tuple[list[str], list[str]]:
    """The queues and the exchanges `declare_topology` declares (for tools and tests that remove them)."""
    queues = [
        settings.upload_queue,
        *(shard_queue_name(settings, shard) for shard in range(settings.grouping_shards)),
        replicas_queue_name(settings),
        settings.dead_letter_queue,
    ]
    exchanges = [settings.exchange_name, grouping_exchange_name(settings), settings.dead_letter_exchange]
    return queues, exchanges
