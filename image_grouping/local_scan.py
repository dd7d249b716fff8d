"""`image-grouping scan DIR`: analyse a folder of photos into the local database through the detection
handler, a batch at a time, as the service stores uploads.

Images already analysed with the same bytes (sha256) and model pack are skipped, so a second run only
hashes files. Bad images are reported and skipped; nothing about one image aborts the scan.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from image_grouping.errors import BadInputError
from image_grouping.handlers.detection import DetectionDeps, handle_images_uploaded
from image_grouping.models.messages import DEFAULT_LIBRARY, FacesDetected, ImageUploaded

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".heic", ".heif"}
# Batches handled at once: one is analysed while another is read or stored, keeping the models busy.
BATCHES_IN_FLIGHT = 2


@dataclass
class ScanSummary:
    images: int = 0
    analysed: int = 0
    skipped: int = 0
    failed: int = 0
    faces: int = 0

    def __str__(self) -> str:
        return (
            f"{self.images} images: {self.analysed} analysed ({self.faces} faces), "
            f"{self.skipped} already done, {self.failed} failed"
        )


# Told after each batch: the summary so far and a line for each image that failed.
BatchReport = Callable[[ScanSummary, list[str]], None]


def find_images(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively, as absolute paths (their keys in the database), in a
    stable order; hidden files and folders are left out."""
    folder = folder.resolve()
    return sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


async def scan_files(
    files: list[Path],
    deps: DetectionDeps,
    batch_size: int,
    on_batch: BatchReport | None = None,
    *,
    library_id: str = DEFAULT_LIBRARY,
) -> ScanSummary:
    """Every file through the detection handler (`deps` skipping known content), `batch_size` at a time,
    into the library."""
    summary = ScanSummary()
    batches = iter([files[start : start + batch_size] for start in range(0, len(files), batch_size)])

    async def work(shared: Iterator[list[Path]]) -> None:
        for batch in shared:  # the workers share one iterator: each batch is taken once
            paths = [path.as_posix() for path in batch]
            # A scanned file has no uploader's id: the sha256 of its path stands in (paths can be longer
            # than an id may be).
            events = [
                ImageUploaded(
                    library_id=library_id, image_id=hashlib.sha256(path.encode()).hexdigest(), path=path
                )
                for path in paths
            ]
            outcomes = await handle_images_uploaded(events, deps)
            problems = []
            for path, outcome in zip(paths, outcomes, strict=True):
                summary.images += 1
                if isinstance(outcome, BadInputError):
                    summary.failed += 1
                    problems.append(f"skipped {path}: {outcome.reason} ({outcome})")
                elif not outcome:
                    summary.skipped += 1
                else:
                    summary.analysed += 1
                    summary.faces += sum(e.face_count for e in outcome if isinstance(e, FacesDetected))
            if on_batch is not None:
                on_batch(summary, problems)

    await asyncio.gather(*(work(batches) for _ in range(BATCHES_IN_FLIGHT)))
    return summary
