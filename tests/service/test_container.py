"""The image, built and run for real: containers of it against this machine's RabbitMQ and PostgreSQL.

`scripts/docker-e2e` builds the image and runs this module with IMAGE_GROUPING_IMAGE set (the module is
left out of a plain `pytest` run by the `container` marker: it needs a Docker engine and root). Containers
run as compose runs the worker: the settings of docker/.env.example, the worker's volumes of
docker-compose.yml (named volumes, and the images folder mounted in the mode compose gives it), the image's
own user, entrypoint and healthcheck, and `docker stop` with compose's stop_grace_period. `--network host`
reaches the services on 127.0.0.1; every test has its own queues and database, so nothing is shared with
other tests or the machine's other users.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aio_pika
import pytest
import yaml
from service_helpers import Bus, add_photo, delete_topology, service_settings
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from image_grouping.bootstrap import bootstrap
from image_grouping.config import Settings
from image_grouping.consumer.publisher import DETAIL_HEADER, REASON_HEADER
from image_grouping.storage.schema import faces, images, recluster_runs

pytestmark = [pytest.mark.container, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKER_ENV_FILE = REPO_ROOT / "docker" / ".env.example"
DOCKER = os.environ.get("DOCKER", "docker")
PHOTOS = ("face_recognition__two_people.jpg", "deepface__couple.jpg", "insightface__t1.jpg")
SERVICE_UID = "10001"
# Fast health probes for the test; the command stays the image's HEALTHCHECK.
HEALTH_OPTIONS = (
    "--health-interval=1s",
    "--health-timeout=20s",
    "--health-retries=2",
    "--health-start-period=180s",
)
LIVENESS = {"LIVENESS_INTERVAL_SECONDS": "1", "LIVENESS_MAX_AGE_SECONDS": "10"}


# --- Docker ------------------------------------------------------------------------------------------------


async def docker(*args: str, check: bool = True, within: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the docker client without blocking the event loop (the bus and the proxy live on it)."""
    process = await asyncio.create_subprocess_exec(
        DOCKER, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), within)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    result = subprocess.CompletedProcess([DOCKER, *args], process.returncode or 0, out.decode(), err.decode())
    if check and result.returncode:
        raise AssertionError(f"docker {' '.join(args)} exited {result.returncode}: {result.stderr[-3000:]}")
    return result


def compose_worker() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())["services"]["worker"]


def compose_mounts() -> dict[str, tuple[str, str]]:
    """The worker's volumes in docker-compose.yml: container path -> (source, mode)."""
    mounts = {}
    for volume in compose_worker()["volumes"]:
        source, target, mode = re.fullmatch(r"(.+?):(/[^:]+)(?::(ro|rw))?", volume).groups()
        mounts[target] = (source, mode or "rw")
    return mounts


def compose_stop_grace_seconds() -> int:
    grace = re.fullmatch(r"(\d+)s", str(compose_worker()["stop_grace_period"]))
    assert grace, "stop_grace_period: write it in seconds (e.g. 40s)"
    return int(grace.group(1))


def docker_env_default(name: str) -> str:
    """A setting's value in docker/.env.example, the container's defaults."""
    lines = DOCKER_ENV_FILE.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if re.match(r"[A-Z]", line))[name]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Container:
    """A container of the image and the named volumes compose would give the worker."""

    name: str
    volumes: dict[str, str]  # path in the container -> docker volume name

    async def inspect(self) -> dict:
        return json.loads((await docker("inspect", self.name)).stdout)[0]

    async def health(self) -> str:
        return (await self.inspect())["State"]["Health"]["Status"]

    async def wait_health(self, status: str, within: float) -> float:
        """Seconds until docker reports `status`; fails on a container that exited."""
        began = time.monotonic()
        async with asyncio.timeout(within):
            while True:
                state = (await self.inspect())["State"]
                if state["Health"]["Status"] == status:
                    return time.monotonic() - began
                assert state["Running"], f"the container exited {state['ExitCode']}:\n{await self.logs()}"
                await asyncio.sleep(0.2)

    async def logs(self) -> str:
        result = await docker("logs", self.name, check=False)
        return result.stdout + result.stderr

    async def volume(self, path: str) -> Path:
        """The host folder of the named volume mounted at `path` (the engine is local)."""
        assert path in self.volumes, f"no volume is mounted at {path}, only at {sorted(self.volumes)}"
        mountpoint = await docker("volume", "inspect", "-f", "{{.Mountpoint}}", self.volumes[path])
        return Path(mountpoint.stdout.strip())

    async def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        return await docker("exec", self.name, *command, check=False)


def log_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def files_in(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


@contextlib.asynccontextmanager
async def volumes_for(run: str) -> AsyncIterator[dict[str, str]]:
    """A docker volume for each named volume of compose's worker, removed afterwards."""
    declared = yaml.safe_load(COMPOSE_FILE.read_text())["volumes"]
    named = {
        target: f"{run}-{source}" for target, (source, _) in compose_mounts().items() if source in declared
    }
    for name in named.values():
        await docker("volume", "create", name)
    try:
        yield named
    finally:
        for name in named.values():
            await docker("volume", "rm", "-f", name, check=False)


def container_environment(settings: Settings, rabbitmq_url: str, **overrides: str) -> dict[str, str]:
    """The test's queues, database and images prefix, over docker/.env.example (as compose's environment)."""
    return {
        "DATABASE_URL": settings.database_url.get_secret_value(),
        "RABBITMQ_URL": rabbitmq_url,
        "EXCHANGE_NAME": settings.exchange_name,
        "UPLOAD_QUEUE": settings.upload_queue,
        "RECLUSTER_QUEUE": settings.recluster_queue,
        "DEAD_LETTER_EXCHANGE": settings.dead_letter_exchange,
        "DEAD_LETTER_QUEUE": settings.dead_letter_queue,
        "DB_PREFIX": settings.db_prefix or "",
        "METRICS_PORT": str(free_port()),  # the host's network: 9100 may be taken
        **overrides,
    }


def run_arguments(
    image: str, name: str, volumes: dict[str, str], images_dir: Path, environment: dict[str, str]
) -> list[str]:
    mounts = compose_mounts()
    arguments = ["--name", name, "--network", "host", "--env-file", str(DOCKER_ENV_FILE)]
    for key, value in environment.items():
        arguments += ["--env", f"{key}={value}"]
    for target, volume in volumes.items():
        arguments += ["--volume", f"{volume}:{target}"]
    images_root = docker_env_default("CONTAINER_IMAGES_ROOT")
    arguments += ["--volume", f"{images_dir}:{images_root}:{mounts[images_root][1]}"]
    return [*arguments, image]


def readable_images_root(settings: Settings) -> Path:
    """The images root, readable by the container's user (pytest makes its folders private)."""
    root = settings.container_images_root
    for folder in [root, *(path for path in root.rglob("*") if path.is_dir())]:
        folder.chmod(0o755)
    for photo in (path for path in root.rglob("*") if path.is_file()):
        photo.chmod(0o644)
    return root


async def ready_count(connection: aio_pika.abc.AbstractRobustConnection, queue: str) -> int:
    channel = await connection.channel()
    declared = await channel.declare_queue(queue, passive=True)
    await channel.close()
    return declared.declaration_result.message_count


async def count_rows(engine: AsyncEngine, table, *where) -> int:
    async with engine.connect() as connection:
        return await connection.scalar(select(func.count()).select_from(table).where(*where))


# --- A broker connection that can be cut -----------------------------------------------------------------


class BrokerProxy:
    """Forwards a local port to RabbitMQ until `cut()`, which closes it and every connection through it,
    as a network partition would; the shared RabbitMQ itself is never touched."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {writer, upstream_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        self._writers -= {writer, upstream_writer}


# --- Fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def image() -> str:
    name = os.environ.get("IMAGE_GROUPING_IMAGE")
    if not name:
        pytest.fail("IMAGE_GROUPING_IMAGE is not set: run scripts/docker-e2e, which builds the image first")
    return name


@dataclass
class LoopService:
    """A container of SERVICE=both MODE=loop, its broker reached through a proxy that can be cut."""

    container: Container
    settings: Settings
    bus: Bus
    proxy: BrokerProxy
    engine: AsyncEngine
    uploaded: dict[str, str] = field(default_factory=dict)  # image id -> path as the uploader stores it


@pytest.fixture(scope="module")
async def loop_service(
    image: str,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_url: str,
    rabbitmq_url: str,
    eval_dir: Path,
    figures: dict[str, str],
) -> AsyncIterator[LoopService]:
    settings = service_settings(tmp_path_factory.mktemp("loop"), postgres_url, rabbitmq_url, service="both")
    photos = {
        f"img-{uuid.uuid4().hex[:8]}": add_photo(settings, eval_dir / "groups" / name, "up")
        for name in PHOTOS
    }
    proxy = BrokerProxy(urlsplit(rabbitmq_url).port or 5672)
    await proxy.start()
    environment = container_environment(
        settings, f"amqp://guest:guest@127.0.0.1:{proxy.port}/", SERVICE="both", MODE="loop", **LIVENESS
    )
    connection = await aio_pika.connect_robust(rabbitmq_url)
    engine = create_async_engine(postgres_url)
    name = f"ig-e2e-loop-{uuid.uuid4().hex[:8]}"
    async with volumes_for(name) as volumes:
        container = Container(name, volumes)
        try:
            began = time.monotonic()
            await docker(
                "run",
                "--detach",
                *HEALTH_OPTIONS,
                *run_arguments(image, name, volumes, readable_images_root(settings), environment),
            )
            await container.wait_health("healthy", within=240)
            figures["start-up (docker run -> healthy; migrate, model load, broker)"] = (
                f"{time.monotonic() - began:.1f} s"
            )
            bus = Bus(settings, connection)
            await bus.start()
            yield LoopService(container, settings, bus, proxy, engine, photos)
        finally:
            await docker("rm", "--force", "--volumes", name, check=False)
            await delete_topology(connection, settings)
            await connection.close()
            await engine.dispose()
            with contextlib.suppress(Exception):
                await proxy.cut()


# --- MODE=loop ---------------------------------------------------------------------------------------------


async def test_the_service_runs_as_uid_10001_with_the_images_mounted_read_only(
    loop_service: LoopService,
) -> None:
    container = loop_service.container
    # The service itself (PID 1, the entrypoint exec'd into it), not only what `docker exec` gets.
    status = (await container.exec("cat", "/proc/1/status")).stdout
    status = "\n".join(line for line in status.splitlines() if line.startswith(("Name:", "Uid:", "Gid:")))
    assert re.search(rf"^Uid:\s+{SERVICE_UID}\s+{SERVICE_UID}\s", status, re.M), status
    assert re.search(rf"^Gid:\s+{SERVICE_UID}\s+{SERVICE_UID}\s", status, re.M), status
    assert "image-grouping" in (await container.exec("cat", "/proc/1/cmdline")).stdout

    write = await container.exec("touch", "/images/written-by-the-service")
    assert write.returncode != 0
    assert "Read-only file system" in write.stderr
    mount = next(each for each in (await container.inspect())["Mounts"] if each["Destination"] == "/images")
    assert mount["RW"] is False


async def test_uploads_of_real_photos_give_faces_detected_rows_thumbnails_and_logs_in_their_volumes(
    loop_service: LoopService,
) -> None:
    service, container = loop_service, loop_service.container
    for image_id, path in service.uploaded.items():
        await service.bus.upload(image_id, path)
    await service.bus.wait_detected(set(service.uploaded), within=180)

    announced = {image_id: events[0]["face_count"] for image_id, events in service.bus.detected.items()}
    assert sum(announced.values()) >= len(PHOTOS)  # every photo shows people
    async with service.engine.connect() as connection:
        stored = dict(
            (
                await connection.execute(
                    select(images.c.source_id, func.count(faces.c.id))
                    .join(faces, faces.c.image_id == images.c.id)
                    .where(images.c.source_id.in_(list(service.uploaded)), images.c.status == "done")
                    .group_by(images.c.source_id)
                )
            ).all()
        )
        thumbnails = [
            row.thumbnail_path
            for row in await connection.execute(
                select(faces.c.thumbnail_path)
                .join(images, faces.c.image_id == images.c.id)
                .where(images.c.source_id.in_(list(service.uploaded)))
            )
        ]
    assert stored == announced

    # Thumbnails in the thumbnails volume (paths are stored relative to SYSTEM_STORAGE=/data), written by
    # the service's user.
    thumbnail_volume = await container.volume(docker_env_default("THUMBNAIL_SAVE_PATH"))
    assert len(thumbnails) == sum(announced.values())
    for stored_path in thumbnails:
        relative = Path(stored_path).relative_to("thumbnails")
        thumbnail = thumbnail_volume / relative
        assert thumbnail.is_file(), f"{stored_path} is not in the thumbnails volume"
        assert thumbnail.read_bytes()[:2] == b"\xff\xd8"
        assert str(thumbnail.stat().st_uid) == SERVICE_UID

    # Both log folders of the original service, each in its volume: detection's lines in one, grouping's
    # (the faces.detected it consumed) in the other.
    detection_log = await container.volume("/app/image_face_detection/logs") / "detection.log"
    recognition_log = await container.volume("/app/person_recognition/logs") / "recognition.log"
    handled = [line for line in log_lines(detection_log.read_text()) if line["event"] == "message handled"]
    assert {line["image_id"] for line in handled} >= set(service.uploaded)
    async with asyncio.timeout(60):
        while not any(  # noqa: ASYNC110 - grouping runs after a short batch wait
            line["event"] == "message handled" and line.get("service") == "recognition"
            for line in log_lines(recognition_log.read_text())
        ):
            await asyncio.sleep(0.5)


async def test_a_malformed_message_is_dead_lettered_with_its_reason(loop_service: LoopService) -> None:
    await loop_service.bus.publish_raw(b"{not json")
    (letter,) = await loop_service.bus.dead_letters(1, within=60)
    assert letter.body == b"{not json"
    assert letter.headers[REASON_HEADER] == "invalid_message"
    assert letter.headers[DETAIL_HEADER]
    assert await loop_service.container.health() == "healthy"  # bad input does not hurt the service


async def test_docker_reports_unhealthy_once_the_broker_connection_is_cut(
    loop_service: LoopService, figures: dict[str, str]
) -> None:
    """Last of the module: the broker stays cut for this container."""
    container = loop_service.container
    assert await container.health() == "healthy"
    await loop_service.proxy.cut()
    took = await container.wait_health("unhealthy", within=90)
    figures["broker cut -> unhealthy (LIVENESS_MAX_AGE_SECONDS=10, probes every 1 s)"] = f"{took:.1f} s"
    probes = (await container.inspect())["State"]["Health"]["Log"]
    assert probes[-1]["ExitCode"] != 0
    assert "unhealthy" in probes[-1]["Output"]
    assert "broker connection is down" in await container.logs()


# --- docker stop -------------------------------------------------------------------------------------------


async def test_docker_stop_drains_in_flight_work_and_the_unfinished_uploads_are_redelivered(
    image: str,
    tmp_path: Path,
    fresh_postgres_url: str,
    rabbitmq_url: str,
    eval_dir: Path,
    figures: dict[str, str],
) -> None:
    settings = service_settings(tmp_path, fresh_postgres_url, rabbitmq_url)
    # More than a quiet machine analyses between the first faces.detected and the stop (about a second).
    uploads = {
        f"img-{index:02d}-{uuid.uuid4().hex[:6]}": add_photo(
            settings, eval_dir / "groups" / PHOTOS[index % len(PHOTOS)], f"batch-{index:02d}"
        )
        for index in range(30)
    }
    environment = container_environment(
        settings,
        rabbitmq_url,
        SERVICE="detection",
        MODE="loop",
        MAX_IN_FLIGHT="2",
        PREFETCH_COUNT="4",
        DETECTION_BATCH_SIZE="2",
        **LIVENESS,
    )
    grace = float(docker_env_default("SHUTDOWN_GRACE_SECONDS"))
    stop_timeout = compose_stop_grace_seconds()
    assert stop_timeout > grace, "compose must give the service its grace period before it kills it"
    name = f"ig-e2e-stop-{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect_robust(rabbitmq_url)
    engine = create_async_engine(fresh_postgres_url)
    async with volumes_for(name) as volumes:
        container = Container(name, volumes)
        try:
            await docker(
                "run",
                "--detach",
                *HEALTH_OPTIONS,
                *run_arguments(image, name, volumes, readable_images_root(settings), environment),
            )
            await container.wait_health("healthy", within=240)
            bus = Bus(settings, connection)
            await bus.start()
            for image_id, path in uploads.items():
                await bus.upload(image_id, path)
            async with asyncio.timeout(120):
                while not bus.detected:  # noqa: ASYNC110 - until work is under way
                    await asyncio.sleep(0.05)

            began = time.monotonic()
            await docker("stop", "--time", str(stop_timeout), name, within=stop_timeout + 30)
            took = time.monotonic() - began
            figures["docker stop with work in flight -> exited"] = f"{took:.1f} s (grace {grace:.0f} s)"
            state = (await container.inspect())["State"]
            output = await container.logs()
            assert state["ExitCode"] == 0, output[-3000:]  # not killed: 137
            assert took < grace
            assert any(line["event"] == "draining" for line in log_lines(output))
            await asyncio.sleep(1)  # the last faces.detected reaches the observer

            # None lost: each upload was finished (announced once) or is back in the queue, unfinished.
            finished = set(bus.detected)
            waiting = await ready_count(connection, settings.upload_queue)
            assert all(len(events) == 1 for events in bus.detected.values())
            assert len(finished) + waiting == len(uploads)
            assert waiting > 0, "all work finished before the stop: nothing was left to redeliver"

            # Started again (restart: unless-stopped would), it takes the rest.
            await docker("start", name)
            await bus.wait_detected(set(uploads), within=240)
            assert await ready_count(connection, settings.upload_queue) == 0
            assert all(len(bus.detected[image_id]) == 1 for image_id in finished)
            assert await count_rows(
                engine, images, images.c.source_id.in_(list(uploads)), images.c.status == "done"
            ) == len(uploads)
        finally:
            await docker("rm", "--force", "--volumes", name, check=False)
            await delete_topology(connection, settings)
            await connection.close()
            await engine.dispose()


# --- MODE=oneshot and DRY_RUN ------------------------------------------------------------------------------


async def run_to_exit(
    image: str, name: str, volumes: dict[str, str], images_dir: Path, environment: dict[str, str]
) -> tuple[int, str, float]:
    """`docker run` in the foreground: exit code, output, seconds."""
    began = time.monotonic()
    try:
        result = await docker(
            "run", *run_arguments(image, name, volumes, images_dir, environment), check=False, within=600
        )
    finally:
        await docker("rm", "--force", "--volumes", name, check=False)
    return result.returncode, result.stdout + result.stderr, time.monotonic() - began


async def test_oneshot_dry_run_writes_nothing_then_oneshot_processes_what_is_pending_and_exits_0(
    image: str,
    tmp_path: Path,
    fresh_postgres_url: str,
    rabbitmq_url: str,
    eval_dir: Path,
    figures: dict[str, str],
) -> None:
    settings = service_settings(tmp_path, fresh_postgres_url, rabbitmq_url)
    paths = [add_photo(settings, eval_dir / "groups" / name, "pending") for name in PHOTOS[:2]]
    missing = f"{settings.db_prefix}/pending/gone.jpg"
    async with bootstrap(settings) as adapters, adapters.unit_of_work() as uow:  # migrates, as production
        for path in [*paths, missing]:
            await uow.images.get_or_create(None, path)
        await uow.commit()
    engine = create_async_engine(fresh_postgres_url)
    environment = container_environment(settings, rabbitmq_url, SERVICE="both", MODE="oneshot")
    images_dir = readable_images_root(settings)

    async def statuses() -> dict[str, str]:
        async with engine.connect() as connection:
            rows = await connection.execute(select(images.c.source_path, images.c.status))
            return dict(rows.all())

    async def volume_files(container: Container) -> list[Path]:
        return [path for target in container.volumes for path in files_in(await container.volume(target))]

    name = f"ig-e2e-oneshot-{uuid.uuid4().hex[:8]}"
    try:
        async with volumes_for(name) as volumes:
            container = Container(name, volumes)
            code, output, took = await run_to_exit(
                image, f"{name}-dry", volumes, images_dir, environment | {"DRY_RUN": "true"}
            )
            figures["MODE=oneshot DRY_RUN=true, 3 pending (docker run -> exit)"] = f"{took:.1f} s"
            assert code == 0, output[-3000:]
            (processed,) = [line for line in log_lines(output) if line["event"] == "pending images processed"]
            assert processed["images"] == 3  # it did the work ...
            assert processed["faces"] >= 2
            assert set((await statuses()).values()) == {"pending"}  # ... and wrote none of it
            assert await count_rows(engine, faces) == 0
            assert await count_rows(engine, recluster_runs) == 0
            assert await volume_files(container) == []  # no thumbnail, no log file

            code, output, took = await run_to_exit(image, name, volumes, images_dir, environment)
            figures["MODE=oneshot, 3 pending (docker run -> exit)"] = f"{took:.1f} s"
            assert code == 0, output[-3000:]
            assert await statuses() == {paths[0]: "done", paths[1]: "done", missing: "failed"}
            stored_faces = await count_rows(engine, faces)
            assert stored_faces >= 2
            assert await count_rows(engine, recluster_runs) == 1  # RECOGNIZER_ARGS=--recluster: regrouped
            thumbnails = files_in(await container.volume(docker_env_default("THUMBNAIL_SAVE_PATH")))
            assert len(thumbnails) == stored_faces
    finally:
        await engine.dispose()
