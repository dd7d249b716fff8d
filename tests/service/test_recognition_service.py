"""End to end with SERVICE=both: detected faces are grouped into persons, and a recluster on request."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from service_helpers import running_service, service_settings
from sqlalchemy import func, select

from image_grouping.models.messages import ReclusterRequested
from image_grouping.storage.schema import faces, images

pytestmark = pytest.mark.slow

# Two photos of the same couple-free set of people would be ideal; any photos with faces show the flow.
PHOTOS = ("face_recognition__obama_and_biden.jpg", "face_recognition__two_people.jpg")


async def test_detected_faces_are_grouped_and_a_requested_recluster_runs(
    tmp_path: Path, postgres_url: str, rabbitmq_url: str, eval_dir: Path
) -> None:
    settings = service_settings(tmp_path, postgres_url, rabbitmq_url, service="both")
    async with running_service(settings) as service:
        image_ids = [f"img-{uuid.uuid4().hex[:8]}" for _ in PHOTOS]
        for image_id, name in zip(image_ids, PHOTOS, strict=True):
            await service.bus.upload(image_id, service.add_photo(eval_dir / "groups" / name, image_id))
        await service.bus.wait_detected(set(image_ids))
        # One persons.updated per faces.detected with faces: the recluster queue's consumer handled them.
        await service.bus.wait_persons_updated(len(image_ids))
        incremental = service.bus.persons_updated[: len(image_ids)]
        assert all(event["model_pack"] == service.adapters.analyzer.model_pack for event in incremental)

        await service.bus.publish(ReclusterRequested(reason="test"))
        await service.bus.wait_persons_updated(len(image_ids) + 1)
        recluster = service.bus.persons_updated[-1]
        assert recluster["changes"]["kind"] == "recluster"

        async with service.adapters.engine.connect() as connection:
            stored = await connection.scalar(
                select(func.count()).select_from(faces.join(images)).where(images.c.source_id.in_(image_ids))
            )
        announced = sum(service.bus.detected[image_id][0]["face_count"] for image_id in image_ids)
        assert stored == announced > 0
