"""`image-grouping consume` with the analysis taken out, for bench/overhead.py: its analyzer hands back
each photo's analysis, computed beforehand and read from the pickle CANNED_ANALYSES names, after
sleeping as long as the analysis took (so the service runs at its real pace, using no CPU for it).
Everything else is the service's own code: reading and hashing the file, thumbnails, the database, the
broker.

    CANNED_ANALYSES=analyses.pickle python bench/canned_worker.py   (with the service's environment)
"""

from __future__ import annotations

import asyncio
import os
import pickle
import sys
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# This tree's `image_grouping`, whatever the installed package points at (as bench/load.py's workers).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from image_grouping import bootstrap
from image_grouping.cli import main
from image_grouping.config import Settings
from image_grouping.models.faces import HandBox, ImageAnalysis

# By photo (`content_key`): its analysis and the seconds the analysis took.
CannedAnalyses = dict[tuple[int, int], tuple[ImageAnalysis, float]]


def content_key(data: bytes) -> tuple[int, int]:
    """A photo's key: its size and the CRC of its head (far cheaper than the sha256 the service takes)."""
    return len(data), zlib.crc32(data[:4096])


class CannedAnalyzer:
    """Hands back stored analyses in an executor of its own, as FaceAnalyzer hands its work to its threads,
    each after the time its analysis took."""

    def __init__(self, model_pack: str, analyses: CannedAnalyses, workers: int) -> None:
        self.model_pack = model_pack
        self._analyses = analyses
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="face-analysis")

    async def analyze_async(self, data: bytes, hand: Sequence[HandBox] = ()) -> ImageAnalysis:
        if hand:
            raise NotImplementedError("faces added by hand are not canned")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._analysis, data)

    def _analysis(self, data: bytes) -> ImageAnalysis:
        analysis, seconds = self._analyses[content_key(data)]
        time.sleep(seconds)
        return analysis

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def load_canned(settings: Settings) -> CannedAnalyzer:
    with open(os.environ["CANNED_ANALYSES"], "rb") as file:
        analyses: CannedAnalyses = pickle.load(file)
    model_pack = next(iter(analyses.values()))[0].model_pack
    return CannedAnalyzer(model_pack, analyses, settings.analysis_workers)


if __name__ == "__main__":
    bootstrap.load_analyzer = load_canned  # what every entry point loads as its analyzer
    sys.argv = [sys.argv[0], "consume"]
    main()
