"""What bench/load.py and bench/faults.py share: a throw-away PostgreSQL database and broker names,
worker processes of the real service (`image-grouping consume`), and a bus that publishes uploads and
records when each `faces.detected` arrives."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import aio_pika
import psycopg2
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from sqlalchemy import make_url

from image_grouping.config import Settings, load_settings
from image_grouping.consumer.topology import declared_names
from image_grouping.models.messages import ImageUploaded, new_event

REPO_ROOT = Path(__file__).resolve().parents[1]
EVAL_DIR = Path(os.environ.get("EVAL_DIR", REPO_ROOT.parent / "shared" / "eval"))
POSTGRES_ADMIN_DSN = os.environ.get("POSTGRES_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
RABBITMQ_URL = os.environ.get("BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
DB_PREFIX = "//fileserver/photos"


def detection_photos() -> list[Path]:
    return sorted((EVAL_DIR / "detection" / "images").rglob("*.jpg"))


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


@dataclass
class Harness:
    """One run's database, broker names, images root and worker processes; `close()` removes them (its
    folder only when it is in the system's temporary folder: see `parent`)."""

    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    # Where the run's folder goes. None: the system's temporary folder, removed by `close()`. A folder
    # of the caller's: left there, removed with it. A benchmark of several rounds keeps its rounds' files
    # until it ends: on an ext4 without a journal (this machine's) the kernel skips inodes deleted in the
    # last 60-360 s, and the thousands of thumbnails one round deleted made the next round's thumbnail
    # writes dearer (up to 0.6 ms an image on the 12 MP set: see the README).
    parent: Path | None = None
    work: Path = field(init=False)
    workers: dict[int, subprocess.Popen] = field(default_factory=dict)
    # The worker process: the real service, or (bench/overhead.py) the same with its analysis canned.
    worker_command: list[str] = field(
        default_factory=lambda: [sys.executable, "-m", "image_grouping.cli", "consume"]
    )

    def __post_init__(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="ig-bench-", dir=self.parent))
        self.database = f"bench_{self.run}"
        admin = psycopg2.connect(POSTGRES_ADMIN_DSN)
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{self.database}"')
        admin.close()
        self.images_root = self.work / "images"
        self.images_root.mkdir()
        self.environment = os.environ | {
            "DATABASE_URL": make_url(POSTGRES_ADMIN_DSN)
            .set(drivername="postgresql+asyncpg", database=self.database)
            .render_as_string(hide_password=False),
            "RABBITMQ_URL": RABBITMQ_URL,
            "EXCHANGE_NAME": f"bench-{self.run}",
            "UPLOAD_QUEUE": f"bench-{self.run}.image-uploaded",
            "RECLUSTER_QUEUE": f"bench-{self.run}.recluster",
            "DEAD_LETTER_EXCHANGE": f"bench-{self.run}.dlx",
            "DEAD_LETTER_QUEUE": f"bench-{self.run}.dead-letter",
            "DB_PREFIX": DB_PREFIX,
            "CONTAINER_IMAGES_ROOT": str(self.images_root),
            "SYSTEM_STORAGE": str(self.work),
            "THUMBNAIL_SAVE_PATH": str(self.work / "thumbnails"),
            "LOG_ROOT": str(self.work / "logs"),
            "SERVICE": "detection",
            "MODE": "loop",
            "LOG_FORMAT": "json",
            "LIVENESS_INTERVAL_SECONDS": "1",
        }
        self.observer_queue = f"bench-{self.run}.observer"

    def broker_settings(self) -> Settings:
        """The workers' settings of the broker's names (to remove what they declared)."""
        names = (
            "EXCHANGE_NAME",
            "UPLOAD_QUEUE",
            "RECLUSTER_QUEUE",
            "DEAD_LETTER_EXCHANGE",
            "DEAD_LETTER_QUEUE",
        )
        values = {
            name.lower(): self.environment[name]
            for name in (*names, "GROUPING_SHARDS")
            if name in self.environment
        }
        return load_settings(**values)

    @property
    def async_database_url(self) -> str:
        return self.environment["DATABASE_URL"]

    def add_image(self, source: Path, name: str) -> str:
        """Place `source` under the images root as `name` (a hard link where possible); its stored path."""
        target = self.images_root / name[:2] / name
        target.parent.mkdir(exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
        return f"{DB_PREFIX}/{name[:2]}/{name}"

    def add_bytes(self, name: str, data: bytes) -> str:
        """A file of these bytes under the images root; its stored path."""
        target = self.images_root / "bytes" / name
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(data)
        return f"{DB_PREFIX}/bytes/{name}"

    def add_missing(self, name: str) -> str:
        """The stored path of a file that does not exist."""
        return f"{DB_PREFIX}/missing/{name}.jpg"

    def start_worker(self, index: int) -> subprocess.Popen:
        environment = self.environment | {"LIVENESS_FILE": str(self.liveness_file(index))}
        log = (self.work / f"worker-{index}.log").open("ab")
        process = subprocess.Popen(
            self.worker_command,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )
        self.workers[index] = process
        return process

    def liveness_file(self, index: int) -> Path:
        return self.work / f"alive-{index}"

    def start_workers(self, count: int) -> None:
        """Start `count` workers side by side, then wait until each is ready."""
        for index in range(count):
            self.start_worker(index)
        for index in range(count):
            self.wait_ready(index)

    def wait_ready(self, index: int, timeout: float = 120) -> None:
        """Wait for the worker's first liveness touch (it comes once the models are loaded and the
        broker connected, just before consuming starts)."""
        deadline = time.monotonic() + timeout
        while not self.liveness_file(index).exists():
            if self.workers[index].poll() is not None:
                raise RuntimeError(f"worker {index} exited: see {self.work}/worker-{index}.log")
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker {index} not ready after {timeout}s")
            time.sleep(0.2)

    def ready_at(self, index: int) -> float:
        """When worker `index` first touched its liveness file (read right after `wait_ready`)."""
        return self.liveness_file(index).stat().st_mtime

    def stop_workers(self, timeout: float = 60) -> None:
        for process in self.workers.values():
            if process.poll() is None:
                process.terminate()
        for process in self.workers.values():
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
        for index in self.workers:
            self.liveness_file(index).unlink(missing_ok=True)

    def peak_rss_mib(self, index: int) -> float:
        """The worker's peak resident memory (VmHWM), read while it still runs."""
        status = Path(f"/proc/{self.workers[index].pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024

    def close(self) -> None:
        self.stop_workers()
        admin = psycopg2.connect(POSTGRES_ADMIN_DSN)
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        admin.close()
        if self.parent is None:
            shutil.rmtree(self.work, ignore_errors=True)


@dataclass
class Bus:
    """Publishes uploads with confirms and records each `faces.detected`: as it comes, from a durable
    quorum queue, so the record survives a broker restart; or (`durable_observer=False`) afterwards,
    from a classic exclusive queue that the broker only counts meanwhile (`wait_announced`, then
    `collect`), so that this process spends no CPU on each event on the machine the service is measured
    on. Either way an event is recorded at the time it was received or, collected afterwards, published."""

    harness: Harness
    durable_observer: bool = True
    published_at: dict[str, float] = field(default_factory=dict)
    detected: dict[str, list[tuple[float, dict]]] = field(default_factory=dict)

    async def connect(self) -> None:
        environment = self.harness.environment
        self.connection: AbstractRobustConnection = await aio_pika.connect_robust(RABBITMQ_URL)
        self.channel = await self.connection.channel(publisher_confirms=True)
        self.exchange = await self.channel.declare_exchange(
            environment["EXCHANGE_NAME"], aio_pika.ExchangeType.TOPIC, durable=True
        )
        if self.durable_observer:
            observer = await self.channel.declare_queue(
                self.harness.observer_queue, durable=True, arguments={"x-queue-type": "quorum"}
            )
        else:
            observer = await self.channel.declare_queue(self.harness.observer_queue, exclusive=True)
        await observer.bind(self.exchange, "faces.detected")
        self.observer = observer
        if self.durable_observer:
            await observer.consume(self._on_detected)

    async def _on_detected(self, message: AbstractIncomingMessage) -> None:
        data = json.loads(message.body)["data"]
        self.detected.setdefault(data["image_id"], []).append((time.time(), data))
        await message.ack()

    async def wait_announced(self, count: int, within: float) -> None:
        """Wait until the counted observer queue holds `count` events. A poll (a declare) costs this
        process about half a millisecond of CPU, so it polls seldom while many are still to come."""
        deadline = time.monotonic() + within
        while (waiting := count - (await self.observer.declare()).message_count) > 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{waiting} of {count} faces.detected missing after {within}s")
            await asyncio.sleep(min(1.0, max(0.05, waiting / 200)))

    async def collect(self) -> None:
        """Record the events waiting on the counted observer queue, each at the time it was published."""
        while (message := await self.observer.get(no_ack=True, fail=False)) is not None:
            event = json.loads(message.body)
            published = datetime.fromisoformat(event["time"]).timestamp()
            self.detected.setdefault(event["data"]["image_id"], []).append((published, event["data"]))

    async def upload(self, image_id: str, path: str) -> None:
        await self.publish_raw(new_event(ImageUploaded(image_id=image_id, path=path)).to_json(), image_id)

    async def publish_raw(self, body: bytes, key: str) -> None:
        message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=key)
        self.published_at[key] = time.time()
        delay = 0.2
        while True:  # the broker may be restarting (faults bench)
            try:
                await self.exchange.publish(message, "image.uploaded", timeout=15)
                return
            except Exception as error:
                print(f"  publish retry: {error!r}", file=sys.stderr)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5)

    async def queue_depth(self, name: str) -> int:
        channel = await self.connection.channel()
        try:
            declared = await channel.declare_queue(name, passive=True)
            return declared.declaration_result.message_count
        finally:
            await channel.close()

    async def delete_topology(self) -> None:
        await self.channel.close()  # stop observing before the observer queue goes
        channel = await self.connection.channel()
        queues, exchanges = declared_names(self.harness.broker_settings())
        for queue in queues:
            await channel.queue_delete(queue)
        await channel.queue_delete(self.harness.observer_queue)
        for exchange in exchanges:
            await channel.exchange_delete(exchange)
        await channel.close()
        await self.connection.close()


async def queue_backlog(harness: Harness, uploads: list[tuple[str, str]], workers: int) -> tuple[Bus, float]:
    """Start the workers once (they declare the topology) and stop them, queue `uploads`, and start them
    again: the uploader is not the service (on 2 cores its publishing would take their CPU), so the clock
    starts when the first worker is up. The bus counts the events until all are published (they are read
    after); returned with that start time."""
    harness.start_workers(workers)
    harness.stop_workers()
    bus = Bus(harness, durable_observer=False)
    await bus.connect()
    for image_id, path in uploads:
        await bus.upload(image_id, path)
    harness.start_workers(workers)
    return bus, min(harness.ready_at(index) for index in range(workers))


_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
# Processes by name whose CPU the service's work costs on this machine besides its own.
_PROCESS_GROUPS = {"beam.smp": "RabbitMQ", "postgres": "PostgreSQL"}
CPU_GROUPS = (
    "event loop",
    "other threads",
    "RabbitMQ",
    "PostgreSQL",
    "kernel workers",
    "benchmark",
    "idle",
    "steal",
)


def cpu_reading(worker_pids: list[int]) -> dict[tuple[str, str], float]:
    """CPU seconds so far of each thread of the workers (their event loop, their other threads), of each
    RabbitMQ, PostgreSQL and kernel worker process (file writeback), of this benchmark's process (its
    observer of the events), and the machine's idle and stolen time."""
    reading: dict[tuple[str, str], float] = {("benchmark", ""): time.process_time()}
    for pid in worker_pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            group = "event loop" if task.name == str(pid) else "other threads"
            with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
                reading[group, task.name] = _stat_cpu_seconds(task / "stat")
    for process in Path("/proc").iterdir():
        if not process.name.isdigit():
            continue
        try:
            name = (process / "comm").read_text().strip()
            group = "kernel workers" if name.startswith("kworker") else _PROCESS_GROUPS.get(name)
            if group is not None:
                reading[group, process.name] = _stat_cpu_seconds(process / "stat")
        except (FileNotFoundError, ProcessLookupError):  # it ended meanwhile
            continue
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    reading["idle", ""] = (int(fields[4]) + int(fields[5])) / _TICKS_PER_SECOND  # idle + iowait
    # A virtual machine's CPUs taken by the host: the same work then costs more of this machine's time.
    reading["steal", ""] = int(fields[8]) / _TICKS_PER_SECOND
    return reading


def cpu_spent(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]) -> dict[str, float]:
    """Seconds each group spent between two readings. What started in between counts whole; what ended in
    between cannot be read any more and is left out."""
    spent = dict.fromkeys(CPU_GROUPS, 0.0)
    for key, seconds in after.items():
        spent[key[0]] += seconds - before.get(key, 0.0)
    return spent


def _stat_cpu_seconds(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_SECOND  # utime + stime


def cycled(photos: list[Path], count: int) -> Iterator[tuple[int, Path]]:
    for index in range(count):
        yield index, photos[index % len(photos)]
