"""End to end: image.uploaded on the real broker -> faces in PostgreSQL -> faces.detected."""

from __future__ import annotations

import json
import struct
import uuid
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import func, select

from image_grouping.consumer.publisher import DETAIL_HEADER, REASON_HEADER
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
