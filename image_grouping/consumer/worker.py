"""The consumer loop: take a message, run its handler, publish what it returns, then acknowledge.

- A message is acknowledged only after its handler committed and every event it returned is confirmed
  by the broker; a crash before that leaves it unacknowledged, and the broker redelivers it.
- Bad input (`BadInputError`) is copied to the dead-letter exchange with the reason in its headers and
  acknowledged at once: it never blocks the queue.
- Any other failure is transient. The worker probes its dependencies (the database); while they are
  down it stops consuming, probes with backoff and resumes, and the messages it holds wait. A failure
  that repeats while the dependencies are up (a bug) is requeued after a few tries; a message that keeps
  coming back is dead-lettered by the broker's delivery limit.
- Every handler takes a batch and returns one outcome per message. Consecutive messages of one event
  type are handled in one call (up to the type's batch size, or until none more arrives within its
  wait; a batch size of 1 handles each alone), acknowledged together after it, but for those the
  handler refused as bad input, which are dead-lettered. Messages are handled in the order they arrive:
  another event type closes the open batch and waits for it.
- `drain()` stops consuming, lets in-flight messages finish within the grace period and hands the rest
  back to the broker.
- What "acknowledge" means is the `Acknowledger`'s: the broker's ack, or (--dry-run) holding the message,
  so that it goes back to the queue when the worker stops.
- Routes may share their in-flight slots (`slot_key`: the grouping shards, one grouping at a time per
  process whichever shard it comes from), and a group of single-active-consumer queues may be spread over
  the replicas (`balance`, see shards.py): after a batch, a replica active on more than its share of them
  hands the queue over to a waiting replica and gives back what it still held of it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

import structlog
import tenacity
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, ConsumerTag
from aio_pika.exceptions import MessageProcessError

from image_grouping.consumer.publisher import TRANSIENT_BROKER_ERRORS, Publisher
from image_grouping.consumer.shards import ShardBalance
from image_grouping.errors import BadInputError
from image_grouping.handlers.ports import Outcome
from image_grouping.models.messages import Envelope, EventData, new_event, parse_event
from image_grouping.observability import (
    MESSAGES_FAILED,
    MESSAGES_HANDLED,
    PROCESSING_SECONDS,
    QUEUE_LAG_SECONDS,
)
from image_grouping.retry import backoff

log = structlog.get_logger(__name__)

BatchHandler = Callable[[Sequence[Any]], Awaitable[list[Outcome]]]  # event data -> one outcome each
Probe = Callable[[], Awaitable[None]]

# Tries of a message whose handler fails while the database answers, before it is requeued.
FAILURES_BEFORE_REQUEUE = 5
MAX_BACKOFF_SECONDS = 30.0


@dataclass(frozen=True)
class Handling:
    """What one event type does: `handler` takes consecutive messages of the type, up to `batch_size`,
    gathered until none more arrives within `wait_seconds`."""

    handler: BatchHandler
    batch_size: int = 1
    wait_seconds: float = 0.0


@dataclass(frozen=True)
class Route:
    """A queue, what each event type arriving on it does, and how many of its batches run at once;
    `service` tags the log lines."""

    queue: AbstractQueue
    service: str
    handlings: Mapping[type[EventData], Handling]
    max_in_flight: int = 1
    slot_key: str | None = None  # routes with one key share their slots (and max_in_flight); None: own
    balance: ShardBalance | None = None  # the group of queues this one is spread over the replicas with

    @property
    def slots(self) -> str:
        return self.slot_key or self.queue.name


class Acknowledger(Protocol):
    async def acknowledge(self, messages: Sequence[AbstractIncomingMessage]) -> None: ...


class BrokerAcknowledger:
    """Acknowledges to the broker, all messages side by side (the broker takes them in one go)."""

    async def acknowledge(self, messages: Sequence[AbstractIncomingMessage]) -> None:
        await asyncio.gather(*(_settle(message.ack) for message in messages))


class HoldingAcknowledger:
    """--dry-run: nothing is acknowledged (an acknowledged message would be gone without its result, a
    requeued one would come straight back); the broker takes the messages back when the worker stops."""

    async def acknowledge(self, messages: Sequence[AbstractIncomingMessage]) -> None:
        log.info("dry run: messages left unacknowledged", count=len(messages))


@dataclass(frozen=True, slots=True)
class _Delivery:
    message: AbstractIncomingMessage
    event: Envelope[Any]


@dataclass(slots=True)
class _OpenBatch:
    """Messages waiting to be handled together; the task of the first one (its leader) handles them."""

    handling: Handling
    deliveries: list[_Delivery]
    grew: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False


class Worker:
    def __init__(
        self,
        routes: Sequence[Route],
        publisher: Publisher,
        acknowledger: Acknowledger,
        probe: Probe,
    ) -> None:
        self._routes = routes
        self._publisher = publisher
        self._acknowledger = acknowledger
        self._probe = probe
        self._slots = {route.slots: asyncio.Semaphore(route.max_in_flight) for route in routes}
        self._consumer_tags: dict[str, ConsumerTag] = {}
        self._in_flight: set[asyncio.Task[Any]] = set()
        # Balanced queues: those a message arrived from since this replica subscribed (it is their active
        # consumer), the subscriptions it handed over, and the batches of each queue not started yet.
        self._active: set[str] = set()
        self._handed_over: set[ConsumerTag] = set()
        self._waiting: dict[str, set[asyncio.Task[Any]]] = {}
        self._open_batches: dict[str, _OpenBatch] = {}
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
        batch: _OpenBatch | None = None  # the messages this task settles, once it leads a batch
        name = route.queue.name
        try:
            if message.consumer_tag in self._handed_over:  # sent before the hand-over took effect
                await _give_back([message])
                return
            if message.consumer_tag == self._consumer_tags.get(name):
                self._active.add(name)
            with structlog.contextvars.bound_contextvars(
                service=route.service, message_id=message.message_id, redelivered=message.redelivered
            ):
                try:
                    delivery = _Delivery(message, parse_event(message.body, *route.handlings))
                except BadInputError as error:
                    await self._dead_letter(
                        route, message, error, event_type=message.routing_key or "unknown"
                    )
                    return
                batch = self._join_batch(route, delivery)
                if batch is None:  # an open batch took it: that batch's leader settles it
                    return
                # Slots are granted in arrival order, so messages are handled in the order they came.
                self._waiting.setdefault(name, set()).add(task)
                async with self._slots[route.slots]:
                    if not batch.closed:
                        await self._gather(route, batch)
                    self._waiting[name].discard(task)
                    if self._stopping:  # prefetched, never started: give them back untouched
                        await _give_back([each.message for each in batch.deliveries])
                        return
                    await self._process(route, batch.handling, batch.deliveries)
                    if route.balance is not None:
                        await self._balance(route, route.balance)
        except asyncio.CancelledError:
            if batch is None:
                await _give_back([message])
            else:
                self._close_batch(route, batch)
                await _give_back([each.message for each in batch.deliveries])
            raise
        finally:
            self._in_flight.discard(task)
            self._waiting.get(name, set()).discard(task)

    async def _balance(self, route: Route, balance: ShardBalance) -> None:
        """Hand the queue over to a waiting replica when this one is the active consumer of more queues of
        the group than its share: cancel the subscription (the broker makes the next subscriber active),
        give back the batches of the queue not started yet, and subscribe again, last in line."""
        name = route.queue.name
        if self._stopping or self.paused or name not in self._active:
            return
        active = len(balance.queues & self._active)
        try:
            share = await balance.share()
        except TRANSIENT_BROKER_ERRORS as error:
            log.warning("cannot count the replicas: keeping the queue", queue=name, error=repr(error))
            return
        tag = self._consumer_tags.get(name)
        if active <= share or tag is None:
            return
        self._handed_over.add(tag)
        self._active.discard(name)
        del self._consumer_tags[name]
        for waiting in self._waiting.pop(name, set()):
            waiting.cancel()  # its messages go back to the queue, for the replica that takes it over
        try:
            await route.queue.cancel(tag)
            self._consumer_tags[name] = await route.queue.consume(partial(self._on_message, route))
        except TRANSIENT_BROKER_ERRORS as error:  # the robust connection subscribes again when back
            log.warning("could not hand the queue over", queue=name, error=repr(error))
            return
        log.info("queue handed over to another replica", queue=name, active=active, share=share)

    def _join_batch(self, route: Route, delivery: _Delivery) -> _OpenBatch | None:
        """The batch this message's task leads, or None when it joined one that another task leads."""
        handling = route.handlings[type(delivery.event.data)]
        open_batch = self._open_batches.get(route.queue.name)
        if open_batch is not None and open_batch.handling is handling:
            open_batch.deliveries.append(delivery)
            open_batch.grew.set()
            if len(open_batch.deliveries) >= handling.batch_size:
                self._close_batch(route, open_batch)
            return None
        if open_batch is not None:  # another type: the batch before it is handled first, as it is
            self._close_batch(route, open_batch)
        led = _OpenBatch(handling, [delivery], closed=handling.batch_size <= 1)
        if not led.closed:
            self._open_batches[route.queue.name] = led
        return led

    async def _gather(self, route: Route, batch: _OpenBatch) -> None:
        """Let the batch grow until it is full or closed, or no message joins within the wait."""
        while not batch.closed and not self._stopping:
            batch.grew.clear()
            try:
                async with asyncio.timeout(batch.handling.wait_seconds):
                    await batch.grew.wait()
            except TimeoutError:
                break
        self._close_batch(route, batch)

    def _close_batch(self, route: Route, batch: _OpenBatch) -> None:
        batch.closed = True
        batch.grew.set()
        if self._open_batches.get(route.queue.name) is batch:
            del self._open_batches[route.queue.name]

    async def _process(self, route: Route, handling: Handling, deliveries: Sequence[_Delivery]) -> None:
        started = time.perf_counter()
        event_type = deliveries[0].event.type
        subject = (
            {"image_id": getattr(deliveries[0].event.data, "image_id", None)}
            if len(deliveries) == 1
            else {"batch": len(deliveries)}
        )
        with structlog.contextvars.bound_contextvars(event_type=event_type, **subject):
            for each in deliveries:
                lag = (datetime.now(UTC) - each.event.time).total_seconds()
                QUEUE_LAG_SECONDS.labels(event_type).observe(max(lag, 0.0))
            try:
                outcomes = await self._handle_with_retries(handling, deliveries)
            except BadInputError as error:  # refused as a whole: find the bad one by handling each alone
                log.warning("batch refused: handling its messages one by one", detail=str(error))
                for each in deliveries:
                    await self._process(route, handling, [each])
                return
            if outcomes is None:
                return
            handled: list[tuple[_Delivery, list[EventData]]] = []
            for each, outcome in zip(deliveries, outcomes, strict=True):
                if isinstance(outcome, BadInputError):
                    with structlog.contextvars.bound_contextvars(
                        message_id=each.message.message_id,
                        image_id=getattr(each.event.data, "image_id", None),
                    ):
                        await self._dead_letter(route, each.message, outcome, event_type=event_type)
                else:
                    handled.append((each, outcome))
            if not handled:
                return
            # Side by side: the broker takes them in one go and confirms them together.
            await asyncio.gather(
                *(self._publisher.publish(new_event(data)) for _, events in handled for data in events)
            )
            await self._acknowledger.acknowledge([each.message for each, _ in handled])
            elapsed = time.perf_counter() - started
            MESSAGES_HANDLED.labels(event_type).inc(len(handled))
            PROCESSING_SECONDS.labels(event_type).observe(elapsed)
            # A line per message, with its own ids and events, also when it was handled in a batch.
            for each, events in handled:
                log.info(
                    "message handled",
                    message_id=each.message.message_id,
                    image_id=getattr(each.event.data, "image_id", None),
                    seconds=round(elapsed, 3),
                    published=[data.event_type for data in events],
                )

    async def _handle_with_retries(
        self, handling: Handling, deliveries: Sequence[_Delivery]
    ) -> list[Outcome] | None:
        """One outcome per message (bad input raised for a single message: its refusal), or None when
        the messages were requeued.

        A batch handler that raises bad input refuses the whole batch: that is raised, and the caller
        handles its messages one by one. Other failures are retried with backoff; those that come while
        the database is down wait for it and do not count towards requeueing.
        """
        event_type = deliveries[0].event.type
        data = [each.event.data for each in deliveries]
        failures = 0
        exponential = tenacity.wait_exponential(multiplier=0.5, min=0.5, max=MAX_BACKOFF_SECONDS)
        retrying = backoff(
            "handler",
            stop=lambda _: failures >= FAILURES_BEFORE_REQUEUE,
            wait=lambda state: 0.0 if self.paused else exponential(state),
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self._healthy.wait()
                    try:
                        return await handling.handler(data)
                    except BadInputError as error:
                        refusal = error
                        break
                    except Exception as error:
                        MESSAGES_FAILED.labels(event_type, "transient").inc(len(deliveries))
                        if not await self._dependencies_down(error):
                            failures += 1
                        raise
        except Exception:
            log.exception("handler keeps failing while the database is up: requeueing")
            await _give_back([each.message for each in deliveries])
            return None
        if len(deliveries) > 1:
            raise refusal
        return [refusal]

    async def _dead_letter(
        self, route: Route, message: AbstractIncomingMessage, error: BadInputError, *, event_type: str
    ) -> None:
        MESSAGES_FAILED.labels(event_type, error.reason).inc()
        log.warning("bad input: dead-lettering", reason=error.reason, detail=str(error))
        await self._publisher.dead_letter(message, route.queue.name, error)
        await self._acknowledger.acknowledge([message])

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
        """Probe the database with backoff until it answers, then consume again."""
        while True:
            await asyncio.sleep(0.5)
            async for attempt in backoff("database probe", maximum=MAX_BACKOFF_SECONDS):
                with attempt:
                    await self._probe()
            self._healthy.set()
            if self._stopping:
                return
            try:
                await self.start()
            except TRANSIENT_BROKER_ERRORS as error:
                log.warning("cannot resume consuming yet", error=repr(error))
                self._healthy.clear()
                await asyncio.sleep(MAX_BACKOFF_SECONDS / 10)
                continue
            log.info("database back: consumption resumed")
            return

    async def _stop_consuming(self) -> None:
        for route in self._routes:
            self._active.discard(route.queue.name)
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


async def _give_back(messages: Sequence[AbstractIncomingMessage]) -> None:
    """Requeue messages: the broker delivers them again (here or to another replica)."""
    for message in messages:
        await _settle(partial(message.nack, requeue=True))
