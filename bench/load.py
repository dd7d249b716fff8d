"""Sustained throughput and latency of the detection service on real photos, against the bare pipeline.

    .venv/bin/python bench/load.py --count 2000 --workers 1,2 [--photos detection|12mp]

The photos are the small detection photos as they are (where the fixed cost per message weighs most), or
the 12-megapixel set of the face analysis benchmark (bench/pipeline.py).

For each worker count W, in one run:
- reference: the bare `FaceAnalyzer` (read bytes, analyse; `MAX_IN_FLIGHT` images at once, as the
  service and bench/pipeline.py run it) over the same images in W processes, half before and half
  after the service run;
- service: W `image-grouping consume` processes on the real RabbitMQ and PostgreSQL; all uploads are
  queued before the workers start (so the uploader's CPU is not the service's), the faces.detected
  events wait on a queue that the broker only counts until all are there (so neither is the observer's),
  and throughput is uploads / (last faces.detected published - first worker up);
- rounds (`--rounds`, 3): the two sides alternate, bare, service, bare, in each round, and the ratio is
  pooled over all rounds (all images over all seconds, each side). The host's speed drifts by more than
  the service's overhead from minute to minute (see the README), so one round's ratio is printed but
  not judged;
- latency, upload published to faces.detected published: of that backlog, and paced at 70% of the
  measured throughput;
- the peak resident memory (VmHWM) of each worker process.
It prints the figures, the ratio service / bare (target >= 0.93), and where the CPU went per image:
the workers (event loop and other threads), RabbitMQ, PostgreSQL, the kernel's workers, this benchmark's
own process (counting the events), idle time, the time the host took from this machine (steal)
and the rest (other processes).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# The bench's modules, and its tree's `image_grouping` for the bare side too: the service's workers run
# from that tree (`python -m` in it), and both sides must be the same code whatever the installed package
# points at (a git worktree's bench would otherwise measure the bare side on another tree's code).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline import build_images
from service_harness import (
    CPU_GROUPS,
    Bus,
    Harness,
    cpu_reading,
    cpu_spent,
    cycled,
    detection_photos,
    percentile,
    queue_backlog,
)

from image_grouping.config import load_settings


def _bare_worker(paths: list[Path], ready: multiprocessing.Queue, start: multiprocessing.Event) -> None:
    """The bare pipeline at its best, as bench/pipeline.py drives it: the service's defaults, with
    `max_in_flight` images handed to the analyzer at once, and no broker or database."""
    from image_grouping.bootstrap import load_analyzer

    settings = load_settings()
    analyzer = load_analyzer(settings)
    analyzer.analyze(paths[0].read_bytes())  # warm-up: first-run allocations are not throughput

    async def analyse_all() -> None:
        slots = asyncio.Semaphore(settings.max_in_flight)

        async def analyse(path: Path) -> None:
            async with slots:
                await analyzer.analyze_async(await asyncio.to_thread(path.read_bytes))

        await asyncio.gather(*(analyse(path) for path in paths))

    ready.put(("ready", 0.0, 0.0))
    start.wait()
    started, cpu_started = time.perf_counter(), time.process_time()
    asyncio.run(analyse_all())
    ready.put(("done", time.perf_counter() - started, time.process_time() - cpu_started))


@dataclass
class ServiceRound:
    """One service run over the backlog: its seconds (first worker up to last `faces.detected`), the
    latencies of the backlog and of the paced uploads, each worker's peak memory, and the CPU seconds of
    each group (service_harness.CPU_GROUPS) and of the whole machine over the backlog."""

    seconds: float
    backlog_latency: list[float]
    paced_rate: float
    paced_latency: list[float]
    peak_rss_mib: list[float]
    cpu_seconds: dict[str, float]
    capacity_seconds: float


def bare_seconds(paths: list[Path], processes: int) -> tuple[float, float]:
    """Seconds the bare pipeline takes over `paths`, split between `processes` processes, and the CPU
    seconds of those processes."""
    context = multiprocessing.get_context("spawn")
    messages, start = context.Queue(), context.Event()
    workers = [
        context.Process(target=_bare_worker, args=(paths[index::processes], messages, start))
        for index in range(processes)
    ]
    for worker in workers:
        worker.start()
    for _ in workers:
        assert messages.get(timeout=300)[0] == "ready"
    start.set()
    results = [messages.get(timeout=3600) for _ in workers]
    for worker in workers:
        worker.join()
    return max(result[1] for result in results), sum(result[2] for result in results)


async def observe(bus: Bus, image_ids: list[str], within: float) -> None:
    """Wait until every image's `faces.detected` was published, and record them."""
    await bus.wait_announced(len(image_ids), within)
    await bus.collect()
    missing = sum(image_id not in bus.detected for image_id in image_ids)
    if missing:  # the count held a repeated event in place of one still to come: at least once
        await observe(bus, [image_id for image_id in image_ids if image_id not in bus.detected], within)


def latencies(bus: Bus, image_ids: list[str]) -> list[float]:
    return [bus.detected[image_id][0][0] - bus.published_at[image_id] for image_id in image_ids]


async def service_run(
    photos: list[Path], count: int, workers: int, paced_count: int, folder: Path
) -> ServiceRound:
    harness = Harness(parent=folder)  # its files stay until the benchmark ends (see Harness.parent)
    try:
        uploads = [
            (f"load-{index}", harness.add_image(photo, f"{index:06d}_{photo.name}"))
            for index, photo in cycled(photos, count + paced_count)
        ]
        backlog = uploads[:count]
        bus, started = await queue_backlog(harness, backlog, workers)
        worker_pids = [harness.workers[index].pid for index in range(workers)]
        cpu_before, window_start = cpu_reading(worker_pids), time.monotonic()
        await bus.wait_announced(count, within=3600)
        cpu_after, window = cpu_reading(worker_pids), time.monotonic() - window_start
        ids = [image_id for image_id, _ in backlog]
        await observe(bus, ids, within=600)
        last_detected = max(bus.detected[image_id][0][0] for image_id in ids)
        throughput = count / (last_detected - started)
        backlog_latency = latencies(bus, ids)

        paced = uploads[count:]
        interval = 1 / (0.7 * throughput)
        next_at = time.monotonic()
        for image_id, path in paced:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await bus.upload(image_id, path)
            next_at += interval
        await observe(bus, [image_id for image_id, _ in paced], within=600)
        paced_latency = latencies(bus, [image_id for image_id, _ in paced])

        peak_rss = [harness.peak_rss_mib(index) for index in range(workers)]
        harness.stop_workers()  # before the queues go, or their robust channels declare them again
        await bus.delete_topology()
        return ServiceRound(
            seconds=last_detected - started,
            backlog_latency=backlog_latency,
            paced_rate=0.7 * throughput,
            paced_latency=paced_latency,
            peak_rss_mib=peak_rss,
            cpu_seconds=cpu_spent(cpu_before, cpu_after),
            # The machine's CPU time over the same window: what no group above holds went elsewhere.
            capacity_seconds=window * (os.cpu_count() or 1),
        )
    finally:
        harness.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=2000, help="uploads in the throughput phase")
    parser.add_argument("--workers", default="1,2", help="worker process counts to measure, e.g. 1,2")
    parser.add_argument("--paced-count", type=int, default=200, help="uploads in the paced latency phase")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of bare, service, bare, pooled into the ratio"
    )
    parser.add_argument(
        "--photos",
        choices=["detection", "12mp"],
        default="detection",
        help="detection: the small FDDB/PASCAL photos as they are; 12mp: the 12-megapixel JPEGs of "
        "bench/pipeline.py (the face analysis benchmark's set)",
    )
    parser.add_argument("--distinct", type=int, default=61, help="12 MP photos to build (with --photos 12mp)")
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_load_") as folder:
        if arguments.photos == "12mp":
            photos = build_images(Path(folder), arguments.distinct, seed=0)
        else:
            photos = detection_photos()
        measure(photos, arguments, Path(folder))


def measure(photos: list[Path], arguments: argparse.Namespace, folder: Path) -> None:
    paths = [photo for _, photo in cycled(photos, arguments.count)]
    distinct = min(len(photos), arguments.count)
    print(f"{arguments.count} uploads of {distinct} distinct {arguments.photos} photos")
    for photo in photos:  # into the page cache, so the first side measured does not read from disk
        photo.read_bytes()
    half = len(paths) // 2
    for workers in (int(value) for value in arguments.workers.split(",")):
        print(f"\n== {workers} worker process(es), {arguments.rounds} round(s) ==")
        bare_total = bare_cpu = 0.0
        rounds: list[ServiceRound] = []
        for number in range(1, arguments.rounds + 1):
            # Half the reference before the service and half after, so drifting load on the machine
            # weighs on both sides alike.
            before, cpu_before = bare_seconds(paths[:half], workers)
            service = asyncio.run(
                service_run(photos, arguments.count, workers, arguments.paced_count, folder)
            )
            after, cpu_after = bare_seconds(paths[half:], workers)
            bare_total, bare_cpu = bare_total + before + after, bare_cpu + cpu_before + cpu_after
            rounds.append(service)
            bare_rate, service_rate = len(paths) / (before + after), arguments.count / service.seconds
            print(
                f"round {number}: bare {bare_rate:.2f} images/s (first half {half / before:.2f}/s before "
                f"the service, second half {(len(paths) - half) / after:.2f}/s after), service "
                f"{service_rate:.2f} images/s, ratio {service_rate / bare_rate:.3f}"
            )
        report(rounds, arguments.count, bare=len(paths) * len(rounds) / bare_total, bare_cpu_seconds=bare_cpu)


def report(rounds: list[ServiceRound], count: int, bare: float, bare_cpu_seconds: float) -> None:
    """The rounds pooled: every side's images over its seconds, latencies and CPU over all uploads."""
    uploads = count * len(rounds)
    throughput = uploads / sum(service.seconds for service in rounds)
    backlog = [latency for service in rounds for latency in service.backlog_latency]
    paced = [latency for service in rounds for latency in service.paced_latency]
    print(f"bare pipeline      {bare:8.2f} images/s")
    print(f"service            {throughput:8.2f} images/s")
    print(f"ratio service/bare {throughput / bare:8.3f}  (all rounds pooled; target >= 0.93)")
    print(
        f"latency, backlog of {count}: p50 {percentile(backlog, 0.50):.2f}s  "
        f"p95 {percentile(backlog, 0.95):.2f}s  p99 {percentile(backlog, 0.99):.2f}s"
    )
    paced_rates = ", ".join(f"{service.paced_rate:.1f}" for service in rounds)
    print(
        f"latency, paced at {paced_rates}/s: p50 {percentile(paced, 0.50):.3f}s  "
        f"p95 {percentile(paced, 0.95):.3f}s  p99 {percentile(paced, 0.99):.3f}s"
    )
    print(
        f"peak memory: per worker {max(max(service.peak_rss_mib) for service in rounds):.0f} MiB, "
        f"all workers {max(sum(service.peak_rss_mib) for service in rounds):.0f} MiB"
    )
    cpu = {
        group: 1000 * sum(service.cpu_seconds[group] for service in rounds) / uploads for group in CPU_GROUPS
    }
    capacity = 1000 * sum(service.capacity_seconds for service in rounds) / uploads
    bare_cpu_ms = 1000 * bare_cpu_seconds / uploads
    service_cpu = cpu["event loop"] + cpu["other threads"]
    print(
        f"CPU per image: bare pipeline {bare_cpu_ms:.1f} ms; service workers {service_cpu:.1f} ms "
        f"({service_cpu / bare_cpu_ms:.3f} of bare: event loop {cpu['event loop']:.1f}, "
        f"other threads {cpu['other threads']:.1f}), RabbitMQ {cpu['RabbitMQ']:.1f}, "
        f"PostgreSQL {cpu['PostgreSQL']:.1f}, kernel workers {cpu['kernel workers']:.1f}, "
        f"this benchmark {cpu['benchmark']:.1f}, idle {cpu['idle']:.1f}, "
        f"stolen by the host {cpu['steal']:.1f}, "
        f"other processes {capacity - sum(cpu.values()):.1f} (of {capacity:.1f})"
    )


if __name__ == "__main__":
    main()
