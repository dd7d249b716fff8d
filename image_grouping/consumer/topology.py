"""Exchanges, queues and bindings, declared by the service at start (idempotent on every replica)."""

from __future__ import annotations

from dataclasses import dataclass

from aio_pika import ExchangeType
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

from image_grouping.config import Settings
from image_grouping.models.messages import PEOPLE_COMMANDS, FacesDetected, ImageUploaded, ReclusterRequested

# A message redelivered this often keeps killing its worker (e.g. out of memory): the broker dead-letters
# it. Well above the redeliveries that crashes and broker restarts cause to healthy messages.
POISON_DELIVERY_LIMIT = 20


@dataclass(frozen=True, slots=True)
class Topology:
    exchange: AbstractExchange
    dead_letter_exchange: AbstractExchange
    upload_queue: AbstractQueue
    recluster_queue: AbstractQueue
    dead_letter_queue: AbstractQueue


async def declare_topology(channel: AbstractChannel, settings: Settings) -> Topology:
    """A durable topic exchange, two quorum work queues and a dead-letter exchange and queue.

    The recluster queue has a single active consumer, so however many replicas run, one grouping run or
    people's edit happens at a time.
    """
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

    recluster_queue = await channel.declare_queue(
        settings.recluster_queue,
        durable=True,
        arguments={**work_queue_arguments, "x-single-active-consumer": True},
    )
    await recluster_queue.bind(exchange, routing_key=FacesDetected.event_type)
    await recluster_queue.bind(exchange, routing_key=ReclusterRequested.event_type)
    # The people's edits and deletions go through the same single active consumer as grouping: an edit
    # never interleaves with a recluster's read and write.
    for command in PEOPLE_COMMANDS:
        await recluster_queue.bind(exchange, routing_key=command.event_type)
    return Topology(exchange, dead_letter_exchange, upload_queue, recluster_queue, dead_letter_queue)
