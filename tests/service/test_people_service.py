"""The people's commands on the bus: each reaches its handler through RECLUSTER_QUEUE, writes what it
says, publishes its events; bad input is dead-lettered with its reason; a redelivery changes nothing."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from service_helpers import RunningService, running_service, service_settings
from sqlalchemy import func, select

from image_grouping.consumer.publisher import REASON_HEADER
from image_grouping.models.faces import DetectedFace, FaceQuality, ImageAnalysis
from image_grouping.models.messages import (
    AssignFace,
    ChooseCover,
    EventData,
    ForgetPerson,
    ImageDeleted,
    MergePersons,
    RejectFace,
    RenamePerson,
    SetPersonHidden,
)
from image_grouping.storage.schema import cannot_links, face_tombstones, faces, images, persons

pytestmark = pytest.mark.slow

BOXES = [(10.0, 10.0, 110.0, 130.0), (300.0, 40.0, 380.0, 140.0), (600.0, 200.0, 660.0, 270.0)]


def _face(box: tuple[float, float, float, float], seed: int) -> DetectedFace:
    embedding = np.random.default_rng(seed).standard_normal(64).astype(np.float32)
    return DetectedFace(
        box=box,
        landmarks=np.zeros((5, 2), np.float32),
        quality=FaceQuality(det_score=0.9, size_px=80.0, sharpness=50.0, yaw=0.0, pose="frontal"),
        embedding=embedding / np.linalg.norm(embedding),
        thumbnail_jpeg=b"jpeg %d" % seed,
    )


async def _library(service: RunningService, pack: str) -> tuple[list[list[int]], list[int]]:
    """Three photos of three faces; person i holds the faces at position i."""
    face_ids = []
    async with service.adapters.unit_of_work() as uow:
        for n in range(3):
            image = await uow.images.get_or_create(f"upload-{n}", f"//nas/photos/{n}.jpg")
            analysis = ImageAnalysis(1000, 800, pack, [_face(box, 10 * n + i) for i, box in enumerate(BOXES)])
            paths = service.adapters.thumbnails.save_faces(image.id, analysis)
            face_ids.append(
                await uow.save_analysis(image.id, hashlib.sha256(b"%d" % n).hexdigest(), 1, analysis, paths)
            )
        person_ids = [await uow.persons.create(cover_face_id=face_ids[0][i]) for i in range(3)]
        await uow.faces.set_persons({face_ids[n][i]: person_ids[i] for n in range(3) for i in range(3)})
        await uow.commit()
    return face_ids, person_ids


def _thumbnail_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.jpg"))


async def _scalar(service: RunningService, query: Any) -> Any:
    async with service.adapters.engine.connect() as connection:
        return await connection.scalar(query)


async def _updated_after(service: RunningService, command: EventData) -> dict[str, Any]:
    """Publish the command and return the `persons.updated` it caused."""
    count = len(service.bus.persons_updated)
    await service.bus.publish(command)
    await service.bus.wait_persons_updated(count + 1, within=30)
    return service.bus.persons_updated[count]["changes"]


async def test_every_people_command_through_the_recluster_queue(
    tmp_path: Path, fresh_postgres_url: str, rabbitmq_url: str
) -> None:
    settings = service_settings(tmp_path, fresh_postgres_url, rabbitmq_url, service="recognition")
    async with running_service(settings) as service:
        face_ids, (alice, bob, carol) = await _library(service, settings.model_pack)
        thumbnails = _thumbnail_files(tmp_path)
        assert len(thumbnails) == 9

        assert (await _updated_after(service, RenamePerson(person_id=alice, name="Alice")))["renamed"] == [
            alice
        ]
        assert await _scalar(service, select(persons.c.name).where(persons.c.id == alice)) == "Alice"
        assert (await _updated_after(service, SetPersonHidden(person_id=carol, hidden=True)))["hidden"] == [
            carol
        ]
        cover = ChooseCover(person_id=bob, face_id=face_ids[2][1])
        assert (await _updated_after(service, cover))["cover_changed"] == [bob]
        moved = await _updated_after(service, AssignFace(face_id=face_ids[1][2], person_id=bob))
        assert moved["faces"] == [{"face_id": face_ids[1][2], "before": carol, "after": bob, "by": "hand"}]
        rejected = await _updated_after(service, RejectFace(face_id=face_ids[1][1]))
        assert rejected["faces"] == [{"face_id": face_ids[1][1], "before": bob, "after": None, "by": "hand"}]
        assert await _scalar(service, select(func.count()).select_from(cannot_links)) == 1
        merged = await _updated_after(service, MergePersons(target_id=alice, source_ids=[carol]))
        assert merged["merged"] == [[carol, alice]]
        assert await _scalar(service, select(func.count()).where(faces.c.person_id == alice)) == 5

        # A redelivery (the same command again) changes nothing and publishes nothing: the next
        # command's event is the next one to arrive.
        before = len(service.bus.persons_updated)
        await service.bus.publish(RenamePerson(person_id=alice, name="Alice"))
        await service.bus.publish(MergePersons(target_id=alice, source_ids=[carol]))
        shown = await _updated_after(service, SetPersonHidden(person_id=alice, hidden=True))
        assert shown["hidden"] == [alice]
        assert len(service.bus.persons_updated) == before + 1

        forgotten = await _updated_after(service, ForgetPerson(person_id=alice))
        assert forgotten["deleted"] == [alice]
        assert await _scalar(service, select(func.count()).where(faces.c.person_id == alice)) == 0
        assert await _scalar(service, select(func.count()).select_from(face_tombstones)) == 5
        await service.bus.publish(ImageDeleted(image_id="upload-2"))
        async with asyncio.timeout(30):
            while len(service.bus.announced) < 2:  # noqa: ASYNC110 - polls what the observer collected
                await asyncio.sleep(0.1)
        kinds = [kind for kind, _ in service.bus.announced]
        assert kinds == ["person.forgotten", "faces.deleted"]
        assert service.bus.announced[1][1]["image_id"] == "upload-2"
        assert await _scalar(service, select(func.count()).select_from(images)) == 2
        left = await _scalar(service, select(func.count()).select_from(faces))
        assert left == 3  # of 9: Alice's 5 forgotten, then photo 2's last one deleted
        assert len(_thumbnail_files(tmp_path)) == left

        # Bad input: dead-lettered with its reason, one message each, the queue going on.
        async with service.adapters.unit_of_work() as uow:
            image = await uow.images.get_or_create("other", "//nas/photos/other.jpg")
            analysis = ImageAnalysis(1000, 800, "other_pack", [_face(BOXES[0], 99)])
            (other_pack_face,) = await uow.save_analysis(image.id, "h", 1, analysis, [None])
            await uow.commit()
        bad = [
            (AssignFace(face_id=other_pack_face, person_id=bob), "model_pack_mismatch"),
            (RenamePerson(person_id=10**9, name="X"), "unknown_person"),
            (AssignFace(face_id=10**9, person_id=bob), "unknown_face"),
            (RenamePerson(person_id=bob, name="  "), "invalid_command"),
            (MergePersons(target_id=bob, source_ids=[bob]), "invalid_command"),
        ]
        for command, _ in bad:
            await service.bus.publish(command)
        await service.bus.publish_raw(
            b'{"specversion": "1.0", "id": "x", "type": "face.assign.requested"}', "face.assign.requested"
        )
        letters = await service.bus.dead_letters(len(bad) + 1)
        reasons = sorted(str(letter.headers[REASON_HEADER]) for letter in letters)
        assert reasons == sorted([reason for _, reason in bad] + ["invalid_message"])
        assert await _scalar(service, select(persons.c.name).where(persons.c.id == bob)) is None
