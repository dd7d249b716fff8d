"""Grouping on the bus: detected faces are assigned in batches, and a recluster runs on request."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from service_helpers import delete_topology, running_service, service_settings
from sqlalchemy import func, select

import image_grouping.handlers.recognition as recognition
from image_grouping.consumer.publisher import BrokerPublisher
from image_grouping.consumer.topology import declare_topology
from image_grouping.consumer.worker import BrokerAcknowledger, Handling, Route, Worker
from image_grouping.errors import BadInputError
from image_grouping.handlers.ports import Outcome
from image_grouping.models.messages import PERIODIC, FacesDetected, ReclusterRequested, new_event
from image_grouping.storage.schema import faces, images, recluster_runs

pytestmark = pytest.mark.slow

PHOTOS = (
    "face_recognition__obama_and_biden.jpg",
    "face_recognition__two_people.jpg",
    "deepface__couple.jpg",
    "face_api_js__bbt1.jpg",
)


async def test_detected_faces_are_grouped_in_batches_and_a_requested_recluster_runs_after(
    tmp_path: Path, postgres_url: str, rabbitmq_url: str, eval_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[int]] = []  # face ids of each assignment the service ran
    assign_new_faces = recognition.assign_new_faces

    async def recorded(unit_of_work: Any, face_ids: Sequence[int], *args: Any, **kwargs: Any) -> Any:
        calls.append(list(face_ids))
        return await assign_new_faces(unit_of_work, face_ids, *args, **kwargs)

    monkeypatch.setattr(recognition, "assign_new_faces", recorded)
    # A wait longer than the gap between two detections: the faces.detected gather into few batches.
    settings = service_settings(
        tmp_path, postgres_url, rabbitmq_url, service="both", grouping_batch_wait_seconds=10
    )
    async with running_service(settings) as service:
        image_ids = [f"img-{uuid.uuid4().hex[:8]}" for _ in PHOTOS]
        for image_id, name in zip(image_ids, PHOTOS, strict=True):
            await service.bus.upload(image_id, service.add_photo(eval_dir / "groups" / name, image_id))
        await service.bus.wait_detected(set(image_ids))
        # Handled after the faces.detected before it (it closes their open batch), and alone.
        await service.bus.publish(ReclusterRequested(reason="test"))
        async with asyncio.timeout(90):
            while not any(event["changes"]["kind"] == "recluster" for event in service.bus.persons_updated):
                await service.bus.wait_persons_updated(len(service.bus.persons_updated) + 1)

        *incremental, recluster = service.bus.persons_updated
        assert [event["changes"]["kind"] for event in incremental] == ["incremental"] * len(calls)
        assert recluster["changes"]["kind"] == "recluster"
        assert 1 <= len(calls) < len(image_ids)
        announced = {
            face_id for image_id in image_ids for face_id in service.bus.detected[image_id][0]["face_ids"]
        }
        assert sorted(face_id for call in calls for face_id in call) == sorted(announced)
        channel = await service.bus.connection.channel()
        queue = await channel.declare_queue(settings.recluster_queue, passive=True)
        assert queue.declaration_result.message_count == 0

        async with service.adapters.engine.connect() as connection:
            stored = await connection.scalar(
                select(func.count()).select_from(faces.join(images)).where(images.c.source_id.in_(image_ids))
            )
        assert stored == len(announced) > 0


async def test_a_batch_is_handled_in_one_call_acked_after_it_and_in_order_with_other_events(
    tmp_path: Path, postgres_url: str, rabbitmq_url: str
) -> None:
    # One shard: the test's messages carry no library, and its worker consumes that one queue.
    settings = service_settings(tmp_path, postgres_url, rabbitmq_url, grouping_shards=1)
    handled: list[list[str]] = []  # what each handler call received, in order

    async def on_faces_detected(events: Sequence[FacesDetected]) -> list[Outcome]:
        handled.append([event.image_id for event in events])
        if any(event.image_id == "b1" for event in events):
            raise BadInputError("b1 refuses its whole batch")
        return [BadInputError("a2 is refused") if event.image_id == "a2" else [] for event in events]

    async def on_recluster(events: Sequence[ReclusterRequested]) -> list[Outcome]:
        handled.append([f"recluster {event.reason}" for event in events])
        return [[] for _ in events]

    async def database_up() -> None:
        return None

    connection = await aio_pika.connect_robust(rabbitmq_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=50)
        topology = await declare_topology(channel, settings)
        first = [
            FacesDetected(image_id=f"a{n}", face_ids=[n], face_count=1, model_pack="p") for n in range(5)
        ]
        later = [
            FacesDetected(image_id=f"b{n}", face_ids=[n], face_count=1, model_pack="p") for n in range(2)
        ]
        messages = [*first[:2], b"{not json", *first[2:], ReclusterRequested(reason="x"), *later]
        for message in messages:
            body, key = (
                (message, "faces.detected")
                if isinstance(message, bytes)
                else (new_event(message).to_json(), message.event_type)
            )
            await topology.exchange.publish(aio_pika.Message(body), key)

        route = Route(
            topology.recluster_queue,
            "recognition",
            {
                FacesDetected: Handling(on_faces_detected, batch_size=4, wait_seconds=1.0),
                ReclusterRequested: Handling(on_recluster),
            },
        )
        publisher = BrokerPublisher(topology.exchange, topology.dead_letter_exchange)
        worker = Worker([route], publisher, BrokerAcknowledger(), probe=database_up)
        await worker.start()
        async with asyncio.timeout(30):
            while sum(len(call) for call in handled) < 10:  # noqa: ASYNC110 - polls what the handlers saw
                await asyncio.sleep(0.1)
        await worker.drain(grace_seconds=10)
        await channel.close()  # unacknowledged messages would go back to the queue now

        # Full at 4; the bad message dead-lettered alone; the recluster after the batch before it, alone;
        # a batch refused as a whole handled again one message at a time.
        assert handled == [["a0", "a1", "a2", "a3"], ["a4"], ["recluster x"], ["b0", "b1"], ["b0"], ["b1"]]
        check = await connection.channel()
        queue = await check.declare_queue(settings.recluster_queue, passive=True)
        assert queue.declaration_result.message_count == 0
        dead = await check.declare_queue(settings.dead_letter_queue, passive=True)
        assert dead.declaration_result.message_count == 3  # the malformed message, a2 and b1
    finally:
        await delete_topology(connection, settings)
        await connection.close()


async def test_periodic_requests_of_several_replicas_run_one_recluster_and_a_manual_request_runs_anyway(
    tmp_path: Path, fresh_postgres_url: str, rabbitmq_url: str
) -> None:
    settings = service_settings(tmp_path, fresh_postgres_url, rabbitmq_url, service="recognition")
    async with running_service(settings) as service:
        # Three replicas' requests of one interval, then an operator's.
        for reason in (PERIODIC, PERIODIC, PERIODIC, "manual"):
            await service.bus.publish(ReclusterRequested(reason=reason))
        await service.bus.wait_persons_updated(2)
        # Requests are handled in order and a recluster of no faces takes milliseconds: a periodic
        # request that ran instead of being skipped would announce itself well within this wait.
        await asyncio.sleep(2)
        assert [event["changes"]["kind"] for event in service.bus.persons_updated] == ["recluster"] * 2
        async with service.adapters.engine.connect() as connection:
            runs = await connection.scalar(select(func.count()).select_from(recluster_runs))
        assert runs == 2
