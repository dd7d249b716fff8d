"""Switching the model pack: analyse the stored images again with the current pack, carry persons over.

Embeddings of two packs are never compared. Each image whose result is another pack's goes through the
detection handler again, read from its stored path; inside the transaction that stores its new faces,
each new face takes over what the old face at the same place (box IoU) had: its person, whether that was
set by hand, its cannot-links, its place as a person's cover. Persons are rows shared by the packs, so
names and hidden flags stay as they are. The old pack's faces are kept, so switching back is a repack
the other way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import structlog

from image_grouping.errors import BadInputError
from image_grouping.handlers.detection import AfterStore, DetectionDeps, StoredImage, handle_images_uploaded
from image_grouping.handlers.ports import UnitOfWork
from image_grouping.models.face_identity import match_boxes
from image_grouping.models.messages import ImageUploaded

log = structlog.get_logger(__name__)

PAGE_SIZE = 16  # images read, analysed and stored together


@dataclass
class RepackSummary:
    to_pack: str
    images: int = 0  # images found with another pack's result
    repacked: int = 0
    failed: int = 0
    faces: int = 0  # faces the current pack found in them
    matched: int = 0  # of those, faces at the place of an old face
    carried: int = 0  # of those, faces that got the old face's person or manual choice
    cannot_links: int = 0

    def __str__(self) -> str:
        return (
            f"{self.images} images to {self.to_pack}: {self.repacked} analysed, {self.failed} failed; "
            f"{self.faces} faces, {self.matched} where an old face was, {self.carried} persons or manual "
            f"choices and {self.cannot_links} cannot-links carried over"
        )


# Told after each page: the summary so far and a line for each image that failed.
PageReport = Callable[[RepackSummary, list[str]], None]


async def count_images_to_repack(deps: DetectionDeps, from_pack: str | None) -> int:
    async with deps.unit_of_work() as uow:
        return await uow.images.count_analysed_by_other_pack(deps.analyzer.model_pack, from_pack)


async def repack_images(
    deps: DetectionDeps, *, from_pack: str | None, limit: int | None, on_page: PageReport | None = None
) -> RepackSummary:
    """Bring every image analysed by another pack (or only by `from_pack`) to the current pack, at most
    `limit` images, a page at a time in id order; every page is its own transaction, so an interrupted
    run goes on where it stopped. Images that cannot be read are reported and left as they were."""
    pack = deps.analyzer.model_pack
    summary = RepackSummary(to_pack=pack)
    deps = dataclasses.replace(deps, after_store=_carry_over(summary), record_failures=False)
    after_id = 0
    while limit is None or summary.images < limit:
        async with deps.unit_of_work() as uow:
            size = PAGE_SIZE if limit is None else min(PAGE_SIZE, limit - summary.images)
            page = await uow.images.analysed_by_other_pack(pack, from_pack, after_id, size)
        if not page:
            break
        after_id = page[-1].id
        events = [
            ImageUploaded(
                library_id=image.library_id, image_id=image.source_id or str(image.id), path=image.source_path
            )
            for image in page
        ]
        outcomes = await handle_images_uploaded(events, deps)
        problems = [
            f"skipped {event.path}: {outcome.reason} ({outcome})"
            for event, outcome in zip(events, outcomes, strict=True)
            if isinstance(outcome, BadInputError)
        ]
        summary.images += len(page)
        summary.failed += len(problems)
        summary.repacked += len(page) - len(problems)
        if on_page is not None:
            on_page(summary, problems)
    log.info(
        "repack done",
        to_pack=pack,
        images=summary.images,
        repacked=summary.repacked,
        failed=summary.failed,
        carried=summary.carried,
    )
    return summary


def _carry_over(summary: RepackSummary) -> AfterStore:
    async def carry_over(uow: UnitOfWork, stored: Sequence[StoredImage]) -> None:
        """Each new face takes over the old pack's face at the same place, in the same transaction."""
        for each in stored:
            old_pack = each.image.model_pack  # as registered, before this analysis was stored
            summary.faces += len(each.face_ids)
            if old_pack is None or old_pack == each.analysis.model_pack:
                continue
            old_ids, old_boxes = await uow.faces.boxes_of_image(each.image.id, old_pack)
            new_boxes = np.array([face.box for face in each.analysis.faces], np.float64).reshape(-1, 4)
            pairs = match_boxes(old_boxes, new_boxes)
            carried, links = await uow.faces.carry_over(
                {old_ids[old]: each.face_ids[new] for new, old in pairs.items()}
            )
            summary.matched += len(pairs)
            summary.carried += carried
            summary.cannot_links += links
            log.debug("image repacked", db_image_id=each.image.id, matched=len(pairs), carried=carried)

    return carry_over
