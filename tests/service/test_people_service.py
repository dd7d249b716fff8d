"""The people's commands on the bus: each reaches its handler through RECLUSTER_QUEUE, writes what it
says, publishes its events; bad input is dead-lettered with its reason; a redelivery changes nothing."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from service_helpers import RunningService, running_service, service_settings
from sqlalchemy import func, select, true

from image_grouping.consumer.publisher import REASON_HEADER
from image_grouping.models.faces import DetectedFace, FaceQuality, ImageAnalysis
from image_grouping.models.messages import (
    AddFace,
    AssignFace,
    ChooseCover,
    EventData,
    ForgetPerson,
    ImageDeleted,
    LibraryDeleted,
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


async def _rows(service: RunningService, query: Any) -> list[Any]:
    async with service.adapters.engine.connect() as connection:
        return list((await connection.execute(query)).all())


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


async def _until(condition: Callable[[], bool], within: float = 60) -> None:
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - polls what the observer collected
            await asyncio.sleep(0.1)


async def test_adding_a_face_by_hand_through_the_recluster_queue(
    tmp_path: Path, fresh_postgres_url: str, rabbitmq_url: str, eval_dir: Path
) -> None:
    settings = service_settings(tmp_path, fresh_postgres_url, rabbitmq_url, service="recognition")
    async with running_service(settings) as service:
        pack = settings.model_pack
        path = service.add_photo(eval_dir / "identity" / "Al_Gore" / "Al_Gore_0001.jpg", "people")
        # Where the face is, as the detector sees it, and a box a person would draw around it.
        data = (eval_dir / "identity" / "Al_Gore" / "Al_Gore_0001.jpg").read_bytes()
        (face,) = (await service.adapters.analyzer.analyze_async(data)).faces
        x1, y1, x2, y2 = face.box
        drawn = (x1 - 5.0, y1 - 20.0, x2 + 5.0, y2 + 5.0)
        async with service.adapters.unit_of_work() as uow:
            # Stored as if the detector had found nothing in it; a person to give the face to.
            image = await uow.images.get_or_create("gore-1", path)
            await uow.save_analysis(image.id, "h1", len(data), ImageAnalysis(250, 250, pack, []), [])
            gone = await uow.images.get_or_create("gone-1", f"{settings.db_prefix}/people/none.jpg")
            await uow.save_analysis(gone.id, "h2", 1, ImageAnalysis(250, 250, pack, []), [])
            al = await uow.persons.create(name="Al")
            # A person of another pack's faces.
            other = await uow.images.get_or_create("other", "//nas/photos/other.jpg")
            analysis = ImageAnalysis(1000, 800, "other_pack", [_face(BOXES[0], 99)])
            (other_pack_face,) = await uow.save_analysis(other.id, "h3", 1, analysis, [None])
            elsewhere = await uow.persons.create()
            await uow.faces.assign_by_hand(other_pack_face, elsewhere)
            await uow.commit()

        command = AddFace(image_id=image.id, box=drawn, person_id=al)
        await service.bus.publish(command)
        await _until(lambda: len(service.bus.announced) == 1)
        kind, added = service.bus.announced[0]
        assert kind == "face.added"
        assert (added["image_id"], added["person_id"], added["model_pack"]) == (image.id, al, pack)
        row = (await _rows(service, select(faces).where(faces.c.id == added["face_id"])))[0]
        assert (row.added_by_hand, row.person_id, row.assigned_by) == (True, al, "manual")
        assert float(np.frombuffer(row.embedding, "<f4") @ face.embedding) > 0.9
        assert (tmp_path / row.thumbnail_path).is_file()
        await _until(
            lambda: any(
                update["changes"].get("faces")
                == [{"face_id": added["face_id"], "before": None, "after": al, "by": "hand"}]
                for update in service.bus.persons_updated
            )
        )
        await service.bus.wait_detected({"gore-1"})

        # Delivered again: nothing added, nothing published (the rename after it is the next event).
        await service.bus.publish(command)
        await service.bus.publish(RenamePerson(person_id=al, name="Al Gore"))
        await _until(
            lambda: any(update["changes"].get("renamed") == [al] for update in service.bus.persons_updated)
        )
        assert len(service.bus.announced) == 1
        assert (
            await _scalar(
                service, select(func.count()).select_from(faces).where(faces.c.image_id == image.id)
            )
            == 1
        )

        bad = [
            (AddFace(image_id=10**9, box=drawn), "unknown_image"),
            (
                AddFace(image_id=image.id, box=(100.0, 100.0, 300.0, 300.0)),
                "invalid_command",
            ),  # past the edge
            (AddFace(image_id=image.id, box=(10.0, 10.0, 60.0, 60.0), person_id=10**9), "unknown_person"),
            (
                AddFace(image_id=image.id, box=(10.0, 10.0, 60.0, 60.0), person_id=elsewhere),
                "model_pack_mismatch",
            ),
            (AddFace(image_id=gone.id, box=drawn), "image_not_found"),
        ]
        for each, _ in bad:
            await service.bus.publish(each)
        letters = await service.bus.dead_letters(len(bad))
        assert sorted(str(letter.headers[REASON_HEADER]) for letter in letters) == sorted(
            reason for _, reason in bad
        )
        assert (
            await _scalar(
                service, select(func.count()).select_from(faces).where(faces.c.added_by_hand == true())
            )
            == 1
        )


async def test_commands_across_libraries_are_dead_lettered_and_a_library_is_erased_through_the_bus(
    tmp_path: Path, fresh_postgres_url: str, rabbitmq_url: str
) -> None:
    settings = service_settings(tmp_path, fresh_postgres_url, rabbitmq_url, service="recognition")
    async with running_service(settings) as service:
        face_ids, (alice, bob, _carol) = await _library(service, settings.model_pack)  # the default library
        family = "family 7"
        # An edit in the other library works there.
        async with service.adapters.unit_of_work(family) as uow:
            image = await uow.images.get_or_create("theirs", "//nas/photos/0.jpg")  # the same path
            analysis = ImageAnalysis(1000, 800, settings.model_pack, [_face(BOXES[0], 5)])
            (their_face,) = await uow.save_analysis(image.id, "h", 1, analysis, [None])
            theirs = await uow.persons.create(cover_face_id=their_face)
            await uow.faces.set_persons({their_face: theirs})
            await uow.commit()
        renamed = await _updated_after(service, RenamePerson(library_id=family, person_id=theirs, name="Dee"))
        assert renamed["renamed"] == [theirs]
        assert service.bus.persons_updated[-1]["library_id"] == family
        bad = [
            RenamePerson(library_id=family, person_id=alice, name="X"),
            AssignFace(library_id=family, face_id=face_ids[0][0], person_id=theirs),
            AssignFace(face_id=their_face, person_id=bob),
            MergePersons(target_id=alice, source_ids=[theirs]),
            ForgetPerson(person_id=theirs),
        ]
        for command in bad:
            await service.bus.publish(command)
        letters = await service.bus.dead_letters(len(bad))
        assert [str(letter.headers[REASON_HEADER]) for letter in letters] == ["other_library"] * len(bad)
        assert await _scalar(service, select(persons.c.name).where(persons.c.id == alice)) is None
        assert await _scalar(service, select(faces.c.person_id).where(faces.c.id == their_face)) == theirs

        await service.bus.publish(LibraryDeleted(library_id=family))
        async with asyncio.timeout(30):
            while not service.bus.announced:  # noqa: ASYNC110 - polls what the observer collected
                await asyncio.sleep(0.1)
        kind, erased = service.bus.announced[0]
        assert kind == "library.erased"
        assert (
            erased["library_id"],
            erased["image_count"],
            erased["face_count"],
            erased["person_count"],
        ) == (
            family,
            1,
            1,
            1,
        )
        assert await _scalar(service, select(func.count()).where(persons.c.library_id == family)) == 0
        assert await _scalar(service, select(func.count()).select_from(images)) == 3  # the default's
        assert await _scalar(service, select(func.count()).select_from(faces)) == 9
