"""The consumer loop: take a message, run its handler, publish what it returns, then acknowledge.

- A message is acknowledged only after its handler committed and every event it returned is confirmed
  by the broker; a crash before that leaves it unacknowledged, and the broker redelivers it.
- Bad input (`BadInputError`) is copied to the dead-letter exchange with the reason in its headers and
  acknowledged at once: it never blocks the queue.
- Any other failure is transient. The worker probes its dependencies (the database); while they are
  down it stops consuming, probes with backoff and resumes, and the messages it holds wait. A failure
  that repeats while the dependencies are up (a bug) is requeued after a few tries; a message that keeps
  coming back is dead-lettered by the broker's delivery limit.
- `drain()` stops consuming, lets in-flight messages finish within the grace period and hands the rest
  back to the broker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, ConsumerTag
from aio_pika.exceptions import MessageProcessError

from image_grouping.consumer.publisher import TRANSIENT_BROKER_ERRORS, Publisher
from image_grouping.errors import BadInputError
from image_grouping.models.messages import Envelope, EventData, new_event, parse_event
from image_grouping.observability import (
    MESSAGES_FAILED,
    MESSAGES_HANDLED,
    PROCESSING_SECONDS,
    QUEUE_LAG_SECONDS,
)

log = structlog.get_logger(__name__)

Handler = Callable[[Any], Awaitable[Sequence[EventData]]]  # event data -> events to publish
Probe = Callable[[], Awaitable[None]]

# Tries of a message whose handler fails while the database answers, before it is requeued.
FAILURES_BEFORE_REQUEUE = 5
MAX_BACKOFF_SECONDS = 30.0


@dataclass(frozen=True)
class Route:
    """A queue, what each event type arriving on it does, and how many of its messages run at once;
    `service` tags the log lines."""

    queue: AbstractQueue
    service: str
    handlers: Mapping[type[EventData], Handler]
    max_in_flight: int = 1


class Worker:
    def __init__(
        self,
        routes: Sequence[Route],
        publisher: Publisher,
        probe: Probe,
        *,
        dry_run: bool = False,
    ) -> None:
        self._routes = routes
        self._publisher = publisher
        self._probe = probe
        self._dry_run = dry_run
        self._slots = {route.queue.name: asyncio.Semaphore(route.max_in_flight) for route in routes}
        self._consumer_tags: dict[str, ConsumerTag] = {}
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._healthy = asyncio.Event()
        self._healthy.set()
        self._recovery: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def paused(self) -> bool:
        return not self._healthy.is_set()

    async def start(self) -> None:
        for route in self._routes:
            tag = await route.queue.consume(partial(self._on_message, route))
            self._consumer_tags[route.queue.name] = tag
        log.info("consuming", queues=[route.queue.name for route in self._routes])

    async def drain(self, grace_seconds: float) -> None:
        """Stop taking messages; wait up to `grace_seconds` for those in flight; hand back the rest."""
        self._stopping = True
        if self._recovery is not None:
            self._recovery.cancel()
        await self._stop_consuming()
        pending = set(self._in_flight)
        log.info("draining", in_flight=len(pending), grace_seconds=grace_seconds, paused=self.paused)
        if pending and self.paused:  # they only wait for the database: hand them back now
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=5)
        elif pending:
            _, unfinished = await asyncio.wait(pending, timeout=grace_seconds)
            for task in unfinished:
                task.cancel()
            if unfinished:
                await asyncio.wait(unfinished, timeout=5)
                log.warning(
                    "grace period over: unfinished messages go back to the queue", count=len(unfinished)
                )
        log.info("drained")

    async def _on_message(self, route: Route, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        try:
            async with self._slots[route.queue.name]:
                if self._stopping:  # prefetched, never started: give it back untouched
                    await _settle(partial(message.nack, requeue=True))
                    return
                await self._process(route, message)
        except asyncio.CancelledError:
            await _settle(partial(message.nack, requeue=True))
            raise
        finally:
            self._in_flight.discard(task)

    async def _process(self, route: Route, message: AbstractIncomingMessage) -> None:
        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(
            service=route.service, message_id=message.message_id, redelivered=message.redelivered
        ):
            try:
                event = parse_event(message.body, *route.handlers)
            except BadInputError as error:
                await self._dead_letter(route, message, error, event_type=message.routing_key or "unknown")
                return
            with structlog.contextvars.bound_contextvars(
                image_id=getattr(event.data, "image_id", None), event_type=event.type
            ):
                lag = (datetime.now(UTC) - event.time).total_seconds()
                QUEUE_LAG_SECONDS.labels(event.type).observe(max(lag, 0.0))
                outgoing = await self._handle_with_retries(route, message, event)
                if outgoing is None:
                    return
                for data in outgoing:
                    await self._publisher.publish(new_event(data))
                if self._dry_run:
                    log.info("dry run: message left unacknowledged")
                    return
                await _settle(message.ack)
                elapsed = time.perf_counter() - started
                MESSAGES_HANDLED.labels(event.type).inc()
                PROCESSING_SECONDS.labels(event.type).observe(elapsed)
                log.info(
                    "message handled", seconds=round(elapsed, 3), published=[d.event_type for d in outgoing]
                )

    async def _handle_with_retries(
        self, route: Route, message: AbstractIncomingMessage, event: Envelope[Any]
    ) -> Sequence[EventData] | None:
        """The handler's events, or None when the message was dead-lettered or requeued."""
        handler = route.handlers[type(event.data)]
        failures = 0
        delay = 0.5
        while True:
            await self._healthy.wait()
            try:
                return await handler(event.data)
            except BadInputError as error:
                await self._dead_letter(route, message, error, event_type=event.type)
                return None
            except Exception as error:
                MESSAGES_FAILED.labels(event.type, "transient").inc()
                if await self._dependencies_down(error):
                    continue  # waits for the recovery to resume, without counting the failure
                failures += 1
                if failures >= FAILURES_BEFORE_REQUEUE:
                    log.exception("handler keeps failing while the database is up: requeueing")
                    await _settle(partial(message.nack, requeue=True))
                    return None
                log.warning("handler failed, retrying", error=repr(error), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)

    async def _dead_letter(
        self, route: Route, message: AbstractIncomingMessage, error: BadInputError, *, event_type: str
    ) -> None:
        MESSAGES_FAILED.labels(event_type, error.reason).inc()
        log.warning("bad input: dead-lettering", reason=error.reason, detail=str(error))
        await self._publisher.dead_letter(message, route.queue.name, error)
        if not self._dry_run:
            await _settle(message.ack)

    async def _dependencies_down(self, error: Exception) -> bool:
        """Whether the database is down (pausing consumption if it just went down)."""
        if self.paused:
            return True
        try:
            await self._probe()
            return False
        except Exception as probe_error:
            if not self.paused:  # the first message to notice pauses; the others just wait
                log.warning("database down: pausing consumption", error=repr(error), probe=repr(probe_error))
                self._healthy.clear()
                await self._stop_consuming()
                self._recovery = asyncio.create_task(self._recover())
            return True

    async def _recover(self) -> None:
        delay = 0.5
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_SECONDS)
            try:
                await self._probe()
            except Exception as error:
                log.info("database still down", error=repr(error), retry_in=delay)
                continue
            self._healthy.set()
            if self._stopping:
                return
            try:
                await self.start()
            except TRANSIENT_BROKER_ERRORS as error:
                log.warning("cannot resume consuming yet", error=repr(error))
                self._healthy.clear()
                continue
            log.info("database back: consumption resumed")
            return

    async def _stop_consuming(self) -> None:
        for route in self._routes:
            tag = self._consumer_tags.pop(route.queue.name, None)
            if tag is None:
                continue
            try:
                log.info("cancelling consumer", queue=route.queue.name, tag=tag)
                await route.queue.cancel(tag)
                log.info("cancelled consumer", queue=route.queue.name)
            except TRANSIENT_BROKER_ERRORS as error:  # the broker is gone: nothing to cancel
                log.warning("could not cancel consumer", queue=route.queue.name, error=repr(error))


async def _settle(settle: Callable[[], Awaitable[None]]) -> None:
    """Ack or nack; if the channel is gone the broker already took the message back and redelivers it."""
    try:
        await settle()
    except (MessageProcessError, *TRANSIENT_BROKER_ERRORS) as error:
        log.warning("could not settle the message: the broker redelivers it", error=repr(error))
