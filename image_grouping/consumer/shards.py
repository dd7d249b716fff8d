"""Spreading the grouping shards over the replicas.

Each shard is a quorum queue with a single active consumer, and every grouping replica subscribes to every
shard (so that any of them can take over a shard whose replica goes away). The broker makes the first
subscriber of a queue its active consumer: a replica that started first would be active on every shard
while the others stand by. So a replica that finds itself active on more shards than its share (the shards
divided by the replicas, rounded up) hands over the shard it has just worked on: it cancels its
subscription, which makes the next waiting replica that shard's active consumer, gives back the messages of
the shard it still held, and subscribes again, at the end of the line.

A replica only knows that it is active on a shard once a message of it arrives, so the shards are spread
as they get work; the replicas are counted as the consumers of a queue without messages that each of them
consumes (a quorum queue with a single active consumer reports only its active one).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Collection

import structlog

log = structlog.get_logger(__name__)

REPLICA_COUNT_SECONDS = 5.0  # how long a count of the replicas is reused


class ShardBalance:
    def __init__(self, queues: Collection[str], count_replicas: Callable[[], Awaitable[int]]) -> None:
        self.queues = frozenset(queues)
        self._count_replicas = count_replicas
        self._replicas = 1
        self._counted_at = -math.inf

    async def share(self) -> int:
        """The most shards this replica should be the active consumer of."""
        if time.monotonic() - self._counted_at > REPLICA_COUNT_SECONDS:
            self._replicas = max(1, await self._count_replicas())
            self._counted_at = time.monotonic()
        return math.ceil(len(self.queues) / self._replicas)
