"""What the detection service costs besides the analysis, an image: its worker's CPU, RabbitMQ's and
PostgreSQL's, with the analysis taken out.

    .venv/bin/python bench/overhead.py [--count 4000] [--workers 1] [--photos 12mp|detection]

bench/load.py's ratio moves from run to run by more than the service's own work, because the analysis
(95% of the CPU) costs more or less with the host's mood. Here every photo is analysed once beforehand
by the real analyzer, timed one at a time; the workers are the real `image-grouping consume` whose
analyzer hands those analyses back from memory after sleeping as long as each took
(bench/canned_worker.py), so the service runs at its real pace and the CPU it uses is its own: reading
and hashing the file, the thumbnails, the database, the broker, the event loop.

As bench/load.py: the backlog is queued before the workers start, and the window runs from the first
worker up to the last `faces.detected` counted on the benchmark's queue. Printed: each group's CPU an
image, and its sum against the analysis's own CPU an image. The cores are idle while the analysis
sleeps, so each wake-up of the service's threads costs more than on cores the analysis keeps busy: the
figures run higher than what the service adds in bench/load.py. Compare them from one code to the next.
"""

from __future__ import annotations

import argparse
import asyncio
import pickle
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

# The bench's modules, and its tree's `image_grouping` (as bench/load.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from canned_worker import CannedAnalyses, content_key
from pipeline import build_images
from service_harness import Harness, cpu_reading, cpu_spent, cycled, detection_photos, queue_backlog

from image_grouping.bootstrap import load_analyzer
from image_grouping.config import load_settings

SERVICE_GROUPS = ("event loop", "other threads", "RabbitMQ", "PostgreSQL", "kernel workers")


def analyse_once(photos: list[Path], count: int) -> tuple[CannedAnalyses, float]:
    """Each photo's analysis with its CPU seconds (one photo at a time), and those seconds averaged over
    the uploads as they cycle through the photos."""
    analyzer = load_analyzer(load_settings())
    analyzer.analyze(photos[0].read_bytes())  # warm-up: first-run allocations are not the analysis
    analyses: CannedAnalyses = {}
    seconds: dict[Path, float] = {}
    for photo in photos:
        data = photo.read_bytes()
        started = time.process_time()
        analysis = analyzer.analyze(data)
        seconds[photo] = time.process_time() - started
        analyses[content_key(data)] = analysis, seconds[photo]
    analyzer.close()
    uses = Counter(photo for _, photo in cycled(photos, count))
    return analyses, sum(seconds[photo] * times for photo, times in uses.items()) / count


async def service_cpu(
    photos: list[Path], count: int, workers: int, canned: Path, folder: Path
) -> tuple[float, dict]:
    """Seconds from the first canned worker up to the last `faces.detected`, and each group's CPU
    seconds over them (service_harness.CPU_GROUPS)."""
    harness = Harness(
        parent=folder, worker_command=[sys.executable, str(Path(__file__).with_name("canned_worker.py"))]
    )
    harness.environment["CANNED_ANALYSES"] = str(canned)
    try:
        uploads = [
            (f"overhead-{index}", harness.add_image(photo, f"{index:06d}_{photo.name}"))
            for index, photo in cycled(photos, count)
        ]
        bus, started = await queue_backlog(harness, uploads, workers)
        worker_pids = [harness.workers[index].pid for index in range(workers)]
        before = cpu_reading(worker_pids)
        await bus.wait_announced(count, within=3600)
        after = cpu_reading(worker_pids)
        await bus.collect()
        last_detected = max(events[0][0] for events in bus.detected.values())
        harness.stop_workers()  # before the queues go, or their robust channels declare them again
        await bus.delete_topology()
        return last_detected - started, cpu_spent(before, after)
    finally:
        harness.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=2000, help="uploads queued")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument(
        "--photos",
        choices=["12mp", "detection"],
        default="12mp",
        help="12mp: bench/pipeline.py's 12-megapixel JPEGs; detection: the small FDDB/PASCAL photos",
    )
    parser.add_argument("--distinct", type=int, default=61, help="distinct photos the uploads cycle through")
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_overhead_") as folder:
        if arguments.photos == "12mp":
            photos = build_images(Path(folder), arguments.distinct, seed=0)
        else:
            photos = detection_photos()[: arguments.distinct]
        analyses, analysis_seconds = analyse_once(photos, arguments.count)
        canned = Path(folder) / "analyses.pickle"
        canned.write_bytes(pickle.dumps(analyses))
        seconds, cpu = asyncio.run(
            service_cpu(photos, arguments.count, arguments.workers, canned, Path(folder))
        )

    per_image = {group: 1000 * spent / arguments.count for group, spent in cpu.items()}
    own = sum(per_image[group] for group in SERVICE_GROUPS)
    analysis = 1000 * analysis_seconds
    faces = sum(len(each.faces) for each, _ in analyses.values()) / len(analyses)
    print(
        f"{arguments.count} uploads of {len(photos)} distinct {arguments.photos} photos "
        f"({faces:.1f} faces a photo), {arguments.workers} worker(s), analysis canned (slept): "
        f"{arguments.count / seconds:.1f} images/s"
    )
    print(
        "the service's own CPU an image: "
        + ", ".join(f"{group} {per_image[group]:.2f} ms" for group in SERVICE_GROUPS)
        + f"; in all {own:.2f} ms"
    )
    print(f"(besides: this benchmark {per_image['benchmark']:.2f} ms, idle {per_image['idle']:.2f} ms)")
    print(f"the analysis's CPU an image, one photo at a time: {analysis:.1f} ms")
    print(f"the service's own CPU is {own / analysis:.1%} of the analysis's")


if __name__ == "__main__":
    main()
