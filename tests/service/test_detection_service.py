"""End to end: image.uploaded on the real broker -> faces in PostgreSQL -> faces.detected."""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aio_pika
import pytest
import structlog.testing
from service_helpers import add_photo, delete_topology, service_settings
from sqlalchemy import func, select

from image_grouping.bootstrap import bootstrap
from image_grouping.consumer import routes
from image_grouping.consumer.publisher import DETAIL_HEADER, REASON_HEADER, BrokerPublisher
from image_grouping.consumer.routes import detection_route
from image_grouping.consumer.topology import declare_topology, shard_queue_name
from image_grouping.consumer.worker import BrokerAcknowledger, Worker
from image_grouping.handlers.detection import handle_images_uploaded
from image_grouping.models.messages import ImageUploaded, new_event
from image_grouping.storage import SqlUnitOfWork
from image_grouping.storage.repositories import path_key
from image_grouping.storage.schema import faces, images

if TYPE_CHECKING:
    from service_helpers import RunningService

DB_PREFIX = "//fileserver/photos"
PHOTOS = ("face_recognition__two_people.jpg", "deepface__couple.jpg", "insightface__t1.jpg")

pytestmark = pytest.mark.slow


async def face_rows(service: RunningService, image_id: str) -> list[tuple[int, int]]:
    """(face id, face index) of every face stored for the uploader's image id."""
    async with service.adapters.engine.connect() as connection:
        query = (
            select(faces.c.id, faces.c.face_index)
            .join(images, images.c.id == faces.c.image_id)
            .where(images.c.source_id == image_id)
            .order_by(faces.c.face_index)
        )
        return [tuple(row) for row in await connection.execute(query)]


async def test_uploaded_photos_get_their_faces_stored_and_announced(
    service: RunningService, eval_dir: Path
) -> None:
    uploads = {
        f"img-{uuid.uuid4().hex[:8]}": service.add_photo(eval_dir / "groups" / name, "ok") for name in PHOTOS
    }
    for image_id, path in uploads.items():
        await service.bus.upload(image_id, path)
    await service.bus.wait_detected(set(uploads))

    for image_id in uploads:
        [announced] = service.bus.detected[image_id]
        stored = await face_rows(service, image_id)
        assert announced["face_count"] >= 1
        assert announced["face_ids"] == [face_id for face_id, _ in stored]
        assert announced["model_pack"] == service.adapters.analyzer.model_pack
        thumbnails = list((service.settings.thumbnail_save_path).rglob("*.jpg"))
        assert len(thumbnails) >= announced["face_count"]


async def test_a_redelivered_upload_leaves_one_set_of_faces(service: RunningService, eval_dir: Path) -> None:
    image_id = f"img-{uuid.uuid4().hex[:8]}"
    path = service.add_photo(eval_dir / "groups" / "deepface__couple.jpg", "again")
    await service.bus.upload(image_id, path)
    await service.bus.wait_detected({image_id})
    first = await face_rows(service, image_id)

    await service.bus.upload(image_id, path)  # what a redelivery after a crash before the ack looks like
    await service.bus.wait_detected({image_id}, times=2)

    first_ids, second_ids = (event["face_ids"] for event in service.bus.detected[image_id])
    assert first_ids == second_ids
    assert await face_rows(service, image_id) == first
    async with service.adapters.engine.connect() as connection:
        count = await connection.scalar(
            select(func.count()).select_from(images).where(images.c.source_id == image_id)
        )
    assert count == 1


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares `width` x `height` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * (width + 1) * 8)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


async def test_bad_input_is_dead_lettered_with_its_reason_and_does_not_block(
    service: RunningService, eval_dir: Path
) -> None:
    root = service.settings.container_images_root / "bad"
    root.mkdir(parents=True, exist_ok=True)
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 64)
    (root / "notes.jpg").write_text("not an image at all")
    (root / "bomb.png").write_bytes(png_bomb(60_000, 60_000))
    good_id = f"img-{uuid.uuid4().hex[:8]}"
    good_path = service.add_photo(eval_dir / "groups" / "insightface__t1.jpg", "after-bad")
    valid = json.loads(
        json.dumps({"specversion": "1.0", "id": "x", "type": "image.uploaded", "source": "test"})
    ) | {"time": "2024-01-01T00:00:00Z", "dataversion": 1}

    def uploaded(path: str, **envelope: object) -> bytes:
        data = {"image_id": f"bad-{uuid.uuid4().hex[:6]}", "path": path}
        return json.dumps(valid | {"data": data} | envelope).encode()

    expected = {
        b"{not json": "invalid_message",
        json.dumps(valid | {"data": {"path": "x.jpg"}}).encode(): "invalid_message",
        uploaded(f"{DB_PREFIX}/bad/x.jpg", dataversion=2): "unsupported_schema_version",
        uploaded(f"{DB_PREFIX}/bad/missing.jpg"): "image_not_found",
        uploaded(f"{DB_PREFIX}/bad/corrupt.jpg"): "image_corrupt",
        uploaded(f"{DB_PREFIX}/bad/notes.jpg"): "image_unsupported_format",
        uploaded(f"{DB_PREFIX}/bad/bomb.png"): "image_too_large",
        uploaded(f"{DB_PREFIX}/../../etc/passwd"): "path_outside_images_root",
        uploaded("//otherserver/share/photo.jpg"): "path_outside_images_root",
    }
    for body in expected:
        await service.bus.publish_raw(body)
    await service.bus.upload(good_id, good_path)

    letters = await service.bus.dead_letters(len(expected))
    reasons = {letter.body: letter.headers[REASON_HEADER] for letter in letters}
    assert reasons == expected
    assert all(letter.headers[DETAIL_HEADER] for letter in letters)
    await service.bus.wait_detected({good_id})  # the queue kept flowing


async def test_uploads_are_analysed_and_stored_in_batches_and_bad_input_in_a_batch_is_refused_alone(
    tmp_path: Path, postgres_url: str, rabbitmq_url: str, eval_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = service_settings(
        tmp_path, postgres_url, rabbitmq_url, max_in_flight=4, detection_batch_size=4, prefetch_count=8
    )
    handled: list[list[str]] = []  # the image ids of each handler call, in order
    handle = routes.handle_images_uploaded

    async def recorded(events: Sequence[ImageUploaded], deps: Any) -> Any:
        handled.append([event.image_id for event in events])
        return await handle(events, deps)

    monkeypatch.setattr(routes, "handle_images_uploaded", recorded)
    uploads = {
        name: add_photo(settings, eval_dir / "groups" / photo, name)
        for name, photo in (
            ("e", PHOTOS[0]),
            ("f", PHOTOS[1]),
            ("a", PHOTOS[2]),
            ("b", PHOTOS[0]),
            ("d", PHOTOS[1]),
        )
    }
    uploads["c"] = f"{DB_PREFIX}/c/missing.jpg"
    order = ["e", "f", "a", "b", "c", "d"]

    stack = contextlib.AsyncExitStack()
    adapters = await stack.enter_async_context(bootstrap(settings))
    connection = await aio_pika.connect_robust(rabbitmq_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=settings.prefetch_count)
        topology = await declare_topology(channel, settings)
        for image_id in order:  # all queued before the worker starts, so the batches are known
            event = new_event(ImageUploaded(image_id=image_id, path=uploads[image_id]))
            await topology.exchange.publish(aio_pika.Message(event.to_json()), "image.uploaded")
        publisher = BrokerPublisher(topology.exchange, topology.dead_letter_exchange)
        worker = Worker(
            [detection_route(topology.upload_queue, adapters)],
            publisher,
            BrokerAcknowledger(),
            adapters.probe_database,
        )
        with structlog.testing.capture_logs() as logs:
            await worker.start()
            async with asyncio.timeout(60):
                while sum(len(call) for call in handled) < 6:  # noqa: ASYNC110 - polls the handler
                    await asyncio.sleep(0.1)
            await worker.drain(grace_seconds=10)

        # Four to a batch; the missing image is refused alone and its batch's other image stored once.
        assert handled == [["e", "f", "a", "b"], ["c", "d"]]
        # A line per message handled, with the events of that message only, also in a batch.
        lines = [line for line in logs if line["event"] == "message handled"]
        assert sorted(line["image_id"] for line in lines) == ["a", "b", "d", "e", "f"]
        assert all(line["published"] == ["faces.detected"] for line in lines)
        await channel.close()  # unacknowledged messages would go back to the queue now
        check = await connection.channel()
        pending = await check.declare_queue(settings.upload_queue, passive=True)
        assert pending.declaration_result.message_count == 0
        shards = [shard_queue_name(settings, shard) for shard in range(settings.grouping_shards)]
        detected = [await check.declare_queue(name, passive=True) for name in shards]
        # One faces.detected per good upload, on the shard of its library.
        assert sum(queue.declaration_result.message_count for queue in detected) == 5
        dead = await check.get_queue(settings.dead_letter_queue)
        letter = await dead.get(timeout=5)
        assert letter.headers[REASON_HEADER] == "image_not_found"
        async with adapters.engine.connect() as connection_db:
            stored = dict(
                (
                    await connection_db.execute(
                        select(images.c.source_id, func.count(faces.c.id))
                        .join(faces, faces.c.image_id == images.c.id)
                        .where(images.c.path_key.in_([path_key(path) for path in uploads.values()]))
                        .group_by(images.c.source_id)
                    )
                ).all()
            )
        assert set(stored) == {"e", "f", "a", "b", "d"}
        assert all(count >= 1 for count in stored.values())
    finally:
        await delete_topology(connection, settings)
        await connection.close()
        await stack.aclose()


async def test_a_retry_after_the_faces_commit_failed_leaves_no_orphaned_thumbnails(
    tmp_path: Path, fresh_postgres_url: str, rabbitmq_url: str, eval_dir: Path
) -> None:
    settings = service_settings(tmp_path, fresh_postgres_url, rabbitmq_url)
    upload = ImageUploaded(image_id="up-1", path=add_photo(settings, eval_dir / "groups" / PHOTOS[0], "t"))
    failures = [ConnectionResetError("the database went away at the commit")]

    class FacesCommitFailsOnce(SqlUnitOfWork):
        """The second commit (the faces', after the images' registration) fails once."""

        commits = 0

        async def commit(self) -> None:
            self.commits += 1
            if self.commits == 2 and failures:
                raise failures.pop()
            await super().commit()

    async with bootstrap(settings) as adapters:
        deps = adapters.detection_deps()
        failing = replace(deps, unit_of_work=partial(FacesCommitFailsOnce, adapters.engine))
        with pytest.raises(ConnectionResetError):
            await handle_images_uploaded([upload], failing)
        ((detected,),) = await handle_images_uploaded([upload], deps)  # the redelivery

        async with adapters.engine.connect() as connection:
            stored = set((await connection.execute(select(faces.c.thumbnail_path))).scalars())
        files = {
            path.relative_to(settings.system_storage).as_posix()
            for path in settings.thumbnail_save_path.rglob("*.jpg")
        }
        assert detected.face_count == len(stored) >= 2
        assert files == stored
