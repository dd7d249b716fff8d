"""Nothing lost, nothing duplicated: the detection service under crashes, a broker restart, a database
outage and bad input.

    .venv/bin/python bench/faults.py --count 2000 [--libraries 4]

Publishes `--count` uploads of real photos, spread over `--libraries` libraries (upload i of library
i mod N), `--bad-share` of them bad input of every kind (malformed
JSON, a wrong schema version, a missing image, a corrupt image, an image bomb, a path outside the images
root), while at random moments of the run the worker is killed with SIGKILL three times and restarted,
RabbitMQ's app is stopped and started once, and PostgreSQL is stopped for 20 s. Both services are ALWAYS
started again when the script ends, whatever happens. To leave the machine's own services alone (others
use them), point it at a PostgreSQL cluster and a RabbitMQ node of its own: POSTGRES_ADMIN_DSN and
BENCH_POSTGRES_CLUSTER (default main), BENCH_RABBITMQ_URL and BENCH_RABBITMQ_NODE (rabbitmqctl -n).

After the queue drains it checks and prints:
every good image has exactly one set of faces, in its own library, every bad message is in the dead-letter
queue with its reason, nothing is lost or duplicated (dead letters, like all publishes, are at-least-once:
a fault between the broker storing one and the service seeing the confirm leaves an identical copy with
the same message id, which the script counts apart). Exit status 0 when all checks hold.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from service_harness import Bus, Harness, cycled, detection_photos
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from image_grouping.consumer.publisher import REASON_HEADER
from image_grouping.models.messages import ImageUploaded, new_event
from image_grouping.storage.schema import faces, images

POSTGRES_VERSION = next(Path("/etc/postgresql").iterdir()).name
POSTGRES_CLUSTER = os.environ.get("BENCH_POSTGRES_CLUSTER", "main")
START_POSTGRES = ["pg_ctlcluster", "--skip-systemctl-redirect", POSTGRES_VERSION, POSTGRES_CLUSTER, "start"]
STOP_POSTGRES = ["pg_ctlcluster", "--skip-systemctl-redirect", POSTGRES_VERSION, POSTGRES_CLUSTER, "stop"]
RABBITMQCTL = [
    "rabbitmqctl",
    *(["-n", os.environ["BENCH_RABBITMQ_NODE"]] if "BENCH_RABBITMQ_NODE" in os.environ else []),
]
POSTGRES_OUTAGE_SECONDS = 20
BROKER_OUTAGE_SECONDS = 5
BAD_KINDS = {
    "malformed_json": "invalid_message",
    "wrong_version": "unsupported_schema_version",
    "missing_image": "image_not_found",
    "corrupt_image": "image_corrupt",
    "image_bomb": "image_too_large",
    "outside_root": "path_outside_images_root",
}


def restore_services() -> None:
    """Start PostgreSQL and RabbitMQ's app, whatever state they are in (starting a running one is a no-op)."""
    subprocess.run(START_POSTGRES, capture_output=True, check=False)
    subprocess.run([*RABBITMQCTL, "start_app"], capture_output=True, check=False)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def png_bomb(width: int = 60_000, height: int = 60_000) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def bad_body(kind: str, key: str, harness: Harness, library: str) -> bytes:
    if kind == "malformed_json":
        return b'{"specversion": "1.0", "id": '
    paths = {
        "wrong_version": "whatever.jpg",
        "missing_image": harness.add_missing(key),
        "corrupt_image": harness.add_bytes(f"{key}.jpg", b"\xff\xd8\xff\xe0" + bytes(200)),
        "image_bomb": harness.add_bytes(f"{key}.png", png_bomb()),
        "outside_root": "//fileserver/photos/../../../etc/passwd",
    }
    upload = ImageUploaded(image_id=key, path=paths[kind], library_id=library)
    envelope = json.loads(new_event(upload).to_json())
    if kind == "wrong_version":
        envelope["dataversion"] = 2
    return json.dumps(envelope).encode()


class Faults:
    """Fires each fault once the share of announced good images passes its random threshold."""

    def __init__(self, harness: Harness, bus: Bus, good: list[str], rng: random.Random) -> None:
        self.harness, self.bus, self.good = harness, bus, good
        kinds = ["kill", "kill", "kill", "broker", "postgres"]
        rng.shuffle(kinds)
        self.schedule = sorted(zip((rng.uniform(0.05, 0.85) for _ in kinds), kinds, strict=True))
        self.rng = rng
        self.log: list[str] = []

    def progress(self) -> float:
        return sum(image_id in self.bus.detected for image_id in self.good) / len(self.good)

    async def run(self) -> None:
        for threshold, kind in self.schedule:
            while self.progress() < threshold:  # noqa: ASYNC110 - polling the progress
                await asyncio.sleep(0.1)
            await getattr(self, kind)()
            self.log.append(f"{kind} at {self.progress():.0%} done")
            print(f"  fault: {self.log[-1]}", flush=True)

    async def kill(self) -> None:
        index = self.rng.choice(list(self.harness.workers))
        self.harness.workers[index].send_signal(signal.SIGKILL)
        self.harness.workers[index].wait()
        await asyncio.sleep(self.rng.uniform(0.1, 2))
        self.harness.start_worker(index)

    async def broker(self) -> None:
        await asyncio.to_thread(subprocess.run, [*RABBITMQCTL, "stop_app"], capture_output=True, check=True)
        await asyncio.sleep(BROKER_OUTAGE_SECONDS)
        await asyncio.to_thread(subprocess.run, [*RABBITMQCTL, "start_app"], capture_output=True, check=True)

    async def postgres(self) -> None:
        await asyncio.to_thread(subprocess.run, STOP_POSTGRES, capture_output=True, check=True)
        await asyncio.sleep(POSTGRES_OUTAGE_SECONDS)
        await asyncio.to_thread(subprocess.run, START_POSTGRES, capture_output=True, check=True)


async def dead_letters(bus: Bus) -> list[tuple[str, str]]:
    """(message id, reason) of every message in the dead-letter queue, which this empties."""
    channel = await bus.connection.channel()
    queue = await channel.get_queue(bus.harness.environment["DEAD_LETTER_QUEUE"])
    letters = []
    while (message := await queue.get(fail=False)) is not None:
        letters.append((message.message_id, (message.headers or {}).get(REASON_HEADER, "")))
        await message.ack()
    await channel.close()
    return letters


async def stored_faces(harness: Harness) -> tuple[dict[str, tuple[str, list[int]]], dict[str, set[str]]]:
    """source id -> (status, face indexes) of every image row; source id -> the libraries of its image and
    of its faces."""
    engine = create_async_engine(harness.async_database_url)
    query = select(
        images.c.source_id, images.c.status, images.c.library_id, faces.c.face_index, faces.c.library_id
    ).select_from(images.outerjoin(faces, faces.c.image_id == images.c.id))
    rows: dict[str, tuple[str, list[int]]] = {}
    libraries: dict[str, set[str]] = {}
    async with engine.connect() as connection:
        for source_id, status, image_library, face_index, face_library in await connection.execute(query):
            indexes = rows.setdefault(source_id, (status, []))[1]
            libraries.setdefault(source_id, set()).add(image_library)
            if face_index is not None:
                indexes.append(face_index)
                libraries[source_id].add(face_library)
    await engine.dispose()
    return rows, libraries


async def run(
    count: int, bad_share: float, workers: int, *, seed: int, drain_seconds: float, libraries: int
) -> bool:
    rng = random.Random(seed)
    harness = Harness()
    try:
        photos = detection_photos()
        bad_count = round(count * bad_share)
        bad_positions = set(rng.sample(range(count), bad_count))
        kinds = list(BAD_KINDS)
        messages: list[tuple[str, bytes]] = []
        good: dict[str, Path] = {}
        bad: dict[str, str] = {}
        library_of: dict[str, str] = {}
        for index, photo in cycled(photos, count):
            key = f"fault-{index}"
            library_of[key] = library = f"library-{index % libraries}"
            if index in bad_positions:
                kind = kinds[len(bad) % len(kinds)]
                bad[key] = BAD_KINDS[kind]
                messages.append((key, bad_body(kind, key, harness, library)))
            else:
                good[key] = photo
                path = harness.add_image(photo, f"{index:06d}_{photo.name}")
                upload = ImageUploaded(image_id=key, path=path, library_id=library)
                messages.append((key, new_event(upload).to_json()))

        harness.start_workers(workers)
        bus = Bus(harness)
        await bus.connect()
        started = time.monotonic()
        for key, body in messages:
            await bus.publish_raw(body, key)
        print(f"published {count} uploads ({len(bad)} bad) in {time.monotonic() - started:.1f}s", flush=True)

        faults = Faults(harness, bus, list(good), rng)
        await faults.run()
        deadline = time.monotonic() + drain_seconds
        environment = harness.environment
        while time.monotonic() < deadline and (  # noqa: ASYNC110 - polling the broker
            any(key not in bus.detected for key in good)
            or await bus.queue_depth(environment["UPLOAD_QUEUE"])
            or await bus.queue_depth(environment["DEAD_LETTER_QUEUE"]) < len(bad)
        ):
            await asyncio.sleep(0.5)
        elapsed = time.monotonic() - started
        harness.stop_workers()

        letters = await dead_letters(bus)
        rows, stored_in = await stored_faces(harness)
        await bus.delete_topology()
    finally:
        restore_services()  # the database is dropped below
        harness.close()

    # --- checks ------------------------------------------------------------------------------------
    announced = sum(key in bus.detected for key in good)
    done = [key for key in good if rows.get(key, ("", []))[0] == "done"]
    one_set = [key for key in done if sorted(rows[key][1]) == list(range(len(rows[key][1])))]
    in_its_library = [key for key in done if stored_in[key] == {library_of[key]}]
    matches_event = [
        key
        for key in one_set
        if key in bus.detected and bus.detected[key][-1][1]["face_count"] == len(rows[key][1])
    ]
    per_photo: dict[Path, set[int]] = {}
    for key in done:
        per_photo.setdefault(good[key], set()).add(len(rows[key][1]))
    inconsistent_photos = sum(len(counts) > 1 for counts in per_photo.values())
    letter_ids = Counter(message_id for message_id, _ in letters)
    reasons = dict(letters)
    bad_lettered = [key for key in bad if key in letter_ids]
    right_reason = [key for key in bad_lettered if reasons[key] == bad[key]]
    good_lettered = [key for key in good if key in letter_ids]
    duplicated_letters = sum(n - 1 for n in letter_ids.values())
    lost = (len(good) - len(done)) + (len(bad) - len(bad_lettered))
    redelivered = sum(len(events) > 1 for events in bus.detected.values())

    print(f"\nfaults: {', '.join(faults.log)}; drained in {elapsed:.0f}s")
    print(f"good uploads                        {len(good)}")
    print(f"  stored (status done)              {len(done)}")
    print(f"  exactly one set of faces          {len(one_set)}")
    print(f"  in its library (of {libraries:>3})        {len(in_its_library)}")
    print(f"  faces.detected seen               {announced}  (more than once: {redelivered})")
    print(f"  stored faces == last announced    {len(matches_event)}")
    print(f"  photos with differing face counts {inconsistent_photos} of {len(per_photo)}")
    print(f"  dead-lettered by mistake          {len(good_lettered)}")
    print(f"bad uploads                         {len(bad)}  {dict(Counter(bad.values()))}")
    print(f"  in the dead-letter queue          {len(bad_lettered)}")
    print(f"  with the right reason             {len(right_reason)}")
    # Dead letters are at-least-once, like every publish: a broker restart between the broker storing a
    # copy and the service seeing the confirm (or the ack) makes a second, identical copy (same message id).
    print(f"  extra identical copies            {duplicated_letters}  (same message id; at-least-once)")
    print(f"lost                                {lost}")
    return (
        len(done) == len(one_set) == len(matches_event) == len(in_its_library) == len(good)
        and len(right_reason) == len(bad)
        and not good_lettered
        and not inconsistent_photos
        and lost == 0
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=2000, help="uploads, bad ones included")
    parser.add_argument("--bad-share", type=float, default=0.05, help="share of bad uploads")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bad positions and fault moments")
    parser.add_argument("--drain-seconds", type=float, default=3600, help="most to wait for the drain")
    parser.add_argument("--libraries", type=int, default=4, help="libraries the uploads are spread over")
    arguments = parser.parse_args()

    atexit.register(restore_services)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    try:
        passed = asyncio.run(
            run(
                arguments.count,
                arguments.bad_share,
                arguments.workers,
                seed=arguments.seed,
                drain_seconds=arguments.drain_seconds,
                libraries=arguments.libraries,
            )
        )
    finally:
        restore_services()
    print("PASS" if passed else "FAIL")
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
