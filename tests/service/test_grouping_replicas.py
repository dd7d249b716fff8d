"""Two real grouping replicas (`image-grouping consume --service recognition`, each its own process) on
PostgreSQL and RabbitMQ, with the libraries spread over two shards: both group at the same time, no library
is grouped by both at once, and when one is killed (SIGKILL) in the middle of a recluster the other takes
its shard over and finishes: every message handled, every face grouped in its own library, nothing lost.

What each replica did is read from the database: every recluster records its run (library, start, end);
a process groups one library at a time, so two runs that overlap are two processes working at once. Which
replica is in the middle of a recluster is read from its log ("recluster started", then "recluster
done").
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import aio_pika
import numpy as np
import pytest
from service_helpers import delete_topology, service_settings
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from image_grouping.config import Settings
from image_grouping.consumer.topology import (
    LIBRARY_HEADER,
    declare_topology,
    declared_names,
    replicas_queue_name,
    shard_queue_name,
)
from image_grouping.models.messages import EventData, FacesDetected, ReclusterRequested, new_event
from image_grouping.storage import ensure_schema
from image_grouping.storage.schema import AUTOMATIC, faces, images, persons, recluster_runs

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
LIBRARIES_A_SHARD = 4  # libraries on each of the two grouping shards
IDENTITIES, PER_IDENTITY, DIM = 120, 12, 512  # 1,440 faces a library
FIRST_FACES = 9  # of each identity stored at first and reclustered; the rest come as faces.detected
NOISE = 0.6


def library_faces(library: int) -> np.ndarray:
    """(IDENTITIES, PER_IDENTITY, DIM) unit embeddings of one library's people (each library its own)."""
    rng = np.random.default_rng(1000 + library)
    centres = rng.standard_normal((IDENTITIES, 1, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=2, keepdims=True)
    noise = rng.standard_normal((IDENTITIES, PER_IDENTITY, DIM)).astype(np.float32)
    noise *= NOISE / np.linalg.norm(noise, axis=2, keepdims=True)
    embeddings = centres + noise
    return embeddings / np.linalg.norm(embeddings, axis=2, keepdims=True)


async def store_faces(
    engine: AsyncEngine, library: str, embeddings: dict[tuple[int, int], np.ndarray], pack: str
) -> dict[tuple[int, int], int]:
    """Faces of one library (a photo each), unassigned, as detection stores them; key -> face id."""
    moment = datetime.now(UTC)
    paths = {key: f"{library}/{key[0]}/{key[1]}.jpg" for key in embeddings}
    async with engine.begin() as connection:
        await connection.execute(
            insert(images),
            [
                {
                    "library_id": library,
                    "source_path": path,
                    "path_key": hashlib.sha256(f"{library}:{path}".encode()).hexdigest(),
                    "status": "done",
                    "model_pack": pack,
                    "created_at": moment,
                    "processed_at": moment,
                }
                for path in paths.values()
            ],
        )
        query = select(images.c.source_path, images.c.id).where(images.c.library_id == library)
        image_of = dict((await connection.execute(query)).all())
        await connection.execute(
            insert(faces),
            [
                {
                    "library_id": library,
                    "image_id": image_of[paths[key]],
                    "model_pack": pack,
                    "face_index": 0,
                    "box_x1": 40.0,
                    "box_y1": 40.0,
                    "box_x2": 140.0,
                    "box_y2": 140.0,
                    "landmarks": bytes(40),
                    "det_score": 0.9,
                    "size_px": 100.0,
                    "sharpness": 100.0,
                    "yaw": 0.0,
                    "pose": "frontal",
                    "embedding": embedding.astype("<f4").tobytes(),
                    "assigned_by": AUTOMATIC,
                    "created_at": moment,
                    "updated_at": moment,
                }
                for key, embedding in embeddings.items()
            ],
        )
        face_of = dict(
            (
                await connection.execute(
                    select(faces.c.image_id, faces.c.id).where(faces.c.library_id == library)
                )
            ).all()
        )
    return {key: face_of[image_of[path]] for key, path in paths.items()}


class Replica:
    """`image-grouping consume --service recognition --mode loop` in a process of its own."""

    def __init__(
        self, name: str, settings: Settings, database_url: str, rabbitmq_url: str, work: Path
    ) -> None:
        self.name, self.database_url = name, database_url
        self.log = work / f"{name}.log"
        environment = os.environ | {
            "PYTHONPATH": str(REPO_ROOT),
            "DATABASE_URL": database_url,
            "RABBITMQ_URL": rabbitmq_url,
            "EXCHANGE_NAME": settings.exchange_name,
            "UPLOAD_QUEUE": settings.upload_queue,
            "RECLUSTER_QUEUE": settings.recluster_queue,
            "DEAD_LETTER_EXCHANGE": settings.dead_letter_exchange,
            "DEAD_LETTER_QUEUE": settings.dead_letter_queue,
            "GROUPING_SHARDS": str(settings.grouping_shards),
            "SERVICE": "recognition",
            "MODE": "loop",
            "RECOGNIZER_ARGS": "",
            "INTERVAL_SECONDS": "3600",  # no periodic recluster during the test
            "GROUPING_BATCH_WAIT_SECONDS": "0.3",
            "SYSTEM_STORAGE": str(work / name),
            "THUMBNAIL_SAVE_PATH": str(work / name / "thumbnails"),
            "LOG_ROOT": str(work / name / "logs"),
            "LIVENESS_FILE": str(work / name / "alive"),
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
            "ACCEPT_NON_COMMERCIAL_MODELS": "true",
        }
        code = "import sys; from image_grouping.cli import main; sys.argv[0] = 'image-grouping'; main()"
        self._output = self.log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-c", code, "consume"],
            env=environment,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            cwd=work,
        )

    def events(self) -> list[str]:
        found = []
        for line in self.log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                found.append(json.loads(line).get("event", ""))
        return found

    def in_a_recluster(self) -> bool:
        """Whether its last recluster began (it read the faces from scratch) and has not ended."""
        events = [event for event in self.events() if event in {"recluster started", "recluster done"}]
        return bool(events) and events[-1] == "recluster started"

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._output.close()


async def publish(channel: aio_pika.abc.AbstractChannel, settings: Settings, data: EventData) -> None:
    exchange = await channel.get_exchange(settings.exchange_name)
    library = data.library_id
    message = aio_pika.Message(
        new_event(data).to_json(),
        headers={LIBRARY_HEADER: library},
        message_id=uuid.uuid4().hex,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )
    await exchange.publish(message, data.event_type)


async def libraries_on_both_shards(channel: aio_pika.abc.AbstractChannel, settings: Settings) -> list[str]:
    """Library ids, LIBRARIES_A_SHARD of them on each of the two grouping shards. The consistent-hash
    exchange places a library on a ring drawn from the shard queues' names, which are new in every run, so
    fixed ids may all land on one shard, where the replicas can never group at the same time. Each
    candidate is sent once and found in its shard's queue; the queues are purged after."""
    await declare_topology(channel, settings)
    underlay = await channel.get_underlay_channel()  # the broker's counts, not the robust channel's cache
    chosen: dict[str, list[str]] = {shard_queue_name(settings, shard): [] for shard in range(2)}
    counts = dict.fromkeys(chosen, 0)
    for number in range(1000):
        library = f"family-{number}"
        await publish(channel, settings, ReclusterRequested(library_id=library, reason="which shard"))
        for queue, libraries in chosen.items():
            count = int((await underlay.queue_declare(queue, passive=True)).message_count or 0)
            if count > counts[queue] and len(libraries) < LIBRARIES_A_SHARD:
                libraries.append(library)
            counts[queue] = count
        if all(len(libraries) >= LIBRARIES_A_SHARD for libraries in chosen.values()):
            break
    else:
        raise AssertionError(f"the grouping exchange spread 1,000 libraries as {counts}")
    for queue in chosen:
        await underlay.queue_purge(queue)
    return [library for libraries in chosen.values() for library in libraries]


async def wait_for(condition, within: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:.0f} s: {what}")
        await asyncio.sleep(0.05)


async def test_two_replicas_group_libraries_side_by_side_and_one_killed_mid_recluster_loses_nothing(
    tmp_path: Path, fresh_postgres_url: str, rabbitmq_url: str
) -> None:
    settings = service_settings(
        tmp_path, fresh_postgres_url, rabbitmq_url, service="recognition", grouping_shards=2
    )
    pack = settings.model_pack
    engine = create_async_engine(fresh_postgres_url)
    await ensure_schema(engine)
    connection = await aio_pika.connect_robust(rabbitmq_url)
    channel = await connection.channel(publisher_confirms=True)
    libraries = await libraries_on_both_shards(channel, settings)
    embeddings = {library: library_faces(n) for n, library in enumerate(libraries)}
    later: dict[str, dict[tuple[int, int], int]] = {}
    for library in libraries:
        first = {(i, n): embeddings[library][i, n] for i in range(IDENTITIES) for n in range(FIRST_FACES)}
        await store_faces(engine, library, first, pack)
    replicas = [
        Replica("first", settings, fresh_postgres_url, rabbitmq_url, tmp_path),
        Replica("second", settings, fresh_postgres_url, rabbitmq_url, tmp_path),
    ]
    try:
        shard_queues = [
            name for name in declared_names(settings)[0] if name.startswith(settings.recluster_queue)
        ]
        shard_queues = [name for name in shard_queues if not name.endswith(".replicas")]

        async def shard_state() -> list[tuple[int, int]] | None:
            """(ready messages, consumers) of each shard queue; None before they are declared."""
            state = []
            probe = await connection.channel()
            try:
                for name in shard_queues:
                    queue = await probe.declare_queue(name, passive=True)
                    result = queue.declaration_result
                    state.append((result.message_count, result.consumer_count))
            except aio_pika.exceptions.ChannelClosed:
                return None
            finally:
                with contextlib.suppress(Exception):
                    await probe.close()
            return state

        async def replicas_subscribed() -> bool:
            """Both replicas up: a shard reports only its active consumer, the replicas' queue all."""
            state = await shard_state()
            if state is None or not all(consumers >= 1 for _, consumers in state):
                return False
            underlay = await channel.get_underlay_channel()
            declared = await underlay.queue_declare(replicas_queue_name(settings), passive=True)
            return declared.consumer_count == len(replicas)

        async def queues_empty() -> bool:
            state = await shard_state()
            return state is not None and all(ready == 0 and consumers >= 1 for ready, consumers in state)

        async def runs() -> list[tuple[str, str, datetime, datetime | None]]:
            async with engine.connect() as db:
                query = select(
                    recluster_runs.c.library_id,
                    recluster_runs.c.status,
                    recluster_runs.c.started_at,
                    recluster_runs.c.finished_at,
                ).order_by(recluster_runs.c.id)
                return [tuple(row) for row in await db.execute(query)]  # type: ignore[misc]

        async def each_library_reclustered(times: int) -> bool:
            done = [library for library, status, *_ in await runs() if status == "done"]
            return all(done.count(library) >= times for library in libraries)

        # The replicas start (their topology declared), then every library is reclustered once.
        await wait_for(replicas_subscribed, 90, "the replicas started")
        for library in libraries:
            await publish(channel, settings, ReclusterRequested(library_id=library, reason="first"))
        await wait_for(lambda: each_library_reclustered(1), 240, "a first recluster of every library")

        # New faces of every library, announced as detection announces them (incremental assignment).
        for library in libraries:
            rest = {
                (i, n): embeddings[library][i, n]
                for i in range(IDENTITIES)
                for n in range(FIRST_FACES, PER_IDENTITY)
            }
            later[library] = await store_faces(engine, library, rest, pack)
            ids = list(later[library].values())
            for start in range(0, len(ids), 60):
                chunk = ids[start : start + 60]
                detected = FacesDetected(
                    library_id=library,
                    image_id=f"{library}-{start}",
                    face_ids=chunk,
                    face_count=len(chunk),
                    model_pack=pack,
                )
                await publish(channel, settings, detected)

        # A second recluster of every library; one replica is killed in the middle of one of them.
        for library in libraries:
            await publish(channel, settings, ReclusterRequested(library_id=library, reason="second"))
        deadline = time.monotonic() + 240
        while not (
            any(replica.in_a_recluster() for replica in replicas)
            and any(status == "running" for _, status, *_ in await runs())
        ):
            assert time.monotonic() < deadline, "no replica began a recluster"
            await asyncio.sleep(0.01)
        killed = next(replica for replica in replicas if replica.in_a_recluster())
        killed_at = datetime.now(UTC)
        killed.kill()
        await wait_for(lambda: each_library_reclustered(2), 300, "a second recluster of every library")
        await wait_for(queues_empty, 60, "every grouping message handled")
        survivor = next(replica for replica in replicas if replica is not killed)
        assert survivor.process.poll() is None

        # Every message handled: nothing dead-lettered.
        dead_letters = await channel.declare_queue(settings.dead_letter_queue, passive=True)
        assert dead_letters.declaration_result.message_count == 0

        # The runs: the killed one never finished; no library had two runs at once; the replicas worked
        # side by side (two runs of different libraries at once: two processes).
        recorded = await runs()
        ended = [(library, start, end or killed_at) for library, _, start, end in recorded]
        unfinished = [library for library, status, *_ in recorded if status == "running"]
        # The recluster the kill cut short (none when it was cut before its run was recorded).
        assert len(unfinished) <= 1, recorded
        print(f"killed {killed.name} in a recluster; runs:", *recorded, sep="\n  ")
        for library in libraries:
            spans = sorted((start, end) for each, start, end in ended if each == library)
            assert all(end <= following for (_, end), (following, _) in itertools.pairwise(spans)), library
        side_by_side = [
            (one, other)
            for one, other in itertools.combinations(ended, 2)
            if one[0] != other[0] and one[1] < other[2] and other[1] < one[2]
        ]
        assert side_by_side, "the replicas never grouped at the same time"

        # Every face grouped, in its own library; each library's people are its own persons.
        async with engine.connect() as db:
            total = (await db.execute(select(func.count()).select_from(faces))).scalar_one()
            assert total == len(libraries) * IDENTITIES * PER_IDENTITY  # nothing lost
            query = select(
                faces.c.library_id, persons.c.library_id, faces.c.person_id, faces.c.image_id
            ).select_from(faces.outerjoin(persons, persons.c.id == faces.c.person_id))
            rows = (await db.execute(query)).all()
        assert all(person is not None for _, _, person, _ in rows), "a face left ungrouped"
        assert all(face_library == person_library for face_library, person_library, *_ in rows)
        for library in libraries:
            persons_of_library = {person for each, _, person, _ in rows if each == library}
            assert len(persons_of_library) == IDENTITIES, library
    finally:
        for replica in replicas:
            replica.stop()
        await delete_topology(connection, settings)
        await connection.close()
        await engine.dispose()
