"""Publishing with broker confirms, retried with backoff across connection losses."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

import aio_pika
import structlog
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage
from aiormq.exceptions import AMQPError

from image_grouping.consumer.topology import LIBRARY_HEADER
from image_grouping.errors import BadInputError
from image_grouping.models.messages import Envelope
from image_grouping.retry import backoff

log = structlog.get_logger(__name__)

REASON_HEADER = "x-dead-letter-reason"
DETAIL_HEADER = "x-dead-letter-detail"
QUEUE_HEADER = "x-original-queue"
CONFIRM_TIMEOUT_SECONDS = 15.0
# Broker hiccups: aio-pika's robust connection reconnects on its own; a publish waits for it.
TRANSIENT_BROKER_ERRORS = (AMQPError, ConnectionError, asyncio.TimeoutError, RuntimeError)


class Publisher(Protocol):
    async def publish(self, event: Envelope) -> None: ...

    async def dead_letter(
        self, message: AbstractIncomingMessage, queue: str, error: BadInputError
    ) -> None: ...


class BrokerPublisher:
    """Publishes events to the topic exchange and bad messages to the dead-letter exchange.

    Each publish returns once the broker has confirmed it (the channel is in confirm mode).
    """

    def __init__(self, exchange: AbstractExchange, dead_letter_exchange: AbstractExchange) -> None:
        self._exchange = exchange
        self._dead_letter_exchange = dead_letter_exchange

    async def publish(self, event: Envelope) -> None:
        # The grouping shards are chosen by the library: the consistent-hash exchange hashes this header.
        library = getattr(event.data, "library_id", None)
        message = aio_pika.Message(
            body=event.to_json(),
            headers={LIBRARY_HEADER: library} if library is not None else None,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=event.id,
            type=event.type,
            timestamp=event.time,
        )
        await _with_retries(
            lambda: self._exchange.publish(
                message, event.routing_key, mandatory=False, timeout=CONFIRM_TIMEOUT_SECONDS
            ),
            what=event.type,
        )

    async def dead_letter(self, message: AbstractIncomingMessage, queue: str, error: BadInputError) -> None:
        """Copy the message to the dead-letter exchange with the reason in its headers."""
        headers = {
            **(message.headers or {}),
            REASON_HEADER: error.reason,
            DETAIL_HEADER: str(error)[:1000],
            QUEUE_HEADER: queue,
        }
        copy = aio_pika.Message(
            body=message.body,
            headers=headers,
            content_type=message.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message.message_id,
            type=message.type,
            timestamp=message.timestamp,
        )
        routing_key = message.routing_key or queue
        await _with_retries(
            lambda: self._dead_letter_exchange.publish(
                copy, routing_key, mandatory=False, timeout=CONFIRM_TIMEOUT_SECONDS
            ),
            what="dead letter",
        )


class DryRunPublisher:
    """--dry-run: log what would be published, publish nothing."""

    async def publish(self, event: Envelope) -> None:
        log.info("dry run: not publishing", event_type=event.type, data=event.data.model_dump())

    async def dead_letter(self, message: AbstractIncomingMessage, queue: str, error: BadInputError) -> None:
        log.info("dry run: not dead-lettering", reason=error.reason, detail=str(error))


async def _with_retries(publish: Callable[[], Awaitable[object]], *, what: str) -> None:
    async for attempt in backoff(
        f"publish {what}", retry_on=TRANSIENT_BROKER_ERRORS, initial=0.2, maximum=5.0
    ):
        with attempt:
            await publish()
