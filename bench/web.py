"""The People web app on a library of 10,000 faces in 1,000 persons: how fast the pages render in Chromium,
and how many persons listings the API serves a second.

    .venv/bin/python bench/web.py [--backends sqlite,postgresql] [--faces 10000 --persons 1000] [--rounds 5]

The library is synthetic rows (bench/suggestions.py's: one person of 500 faces, a tenth of the faces
unassigned), each face with a real JPEG thumbnail file. `image-grouping serve` runs in its own process, as a
user starts it; Debian's Chromium (through Playwright) opens

- the persons grid (`/`: the first 100 persons, their covers loaded lazily),
- the page of the 500-face person (`/persons/ID`: its first 200 faces),

each `--rounds` times after one warm-up, in a fresh browser context (no cache), and reports the median
first contentful paint (the page's first render) and the median load event (the HTML, script, styles and
the thumbnails in view). Target: under 1 s each. Side by side, the query each page stands on, timed in
this process (the floor a page cannot go under). Then GET /api/persons (100 persons a page) from 8
concurrent clients for `--seconds`: requests/s, beside GET /static/people.css (no database: the server's
own ceiling on this machine).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from image_grouping.models.messages import DEFAULT_LIBRARY

sys.path.insert(0, str(Path(__file__).resolve().parent))
from suggestions import synthetic_library

from image_grouping.handlers.queries import list_persons, show_person
from image_grouping.storage import SqlUnitOfWork, ensure_schema
from image_grouping.storage.database import async_url, engine_for_url

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CLIENTS = 8

TIMING = """async () => {
  const navigation = performance.getEntriesByType("navigation")[0];
  const fcp = await new Promise((resolve) => {
    new PerformanceObserver((list) => {
      const paint = list.getEntriesByName("first-contentful-paint")[0];
      if (paint) resolve(paint.startTime);
    }).observe({ type: "paint", buffered: true });
    setTimeout(() => resolve(null), 10000);
  });
  // The thumbnails in view, loaded (or failed): the page as a person first sees it, complete.
  const inView = [...document.images].filter((img) => {
    const box = img.getBoundingClientRect();
    return box.top < innerHeight && box.bottom > 0;
  });
  await Promise.all(inView.map((img) => img.complete ? null : new Promise((done) => {
    img.addEventListener("load", done);
    img.addEventListener("error", done);
  })));
  return {fcp, load: navigation.loadEventEnd, shown: performance.now(), images: document.images.length,
          decoded: inView.filter((img) => img.naturalWidth > 0).length, inView: inView.length};
}"""


def thumbnail_jpeg() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (160, 160, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=80)
    return out.getvalue()


async def build(url: str, storage: Path, faces: int, persons: int) -> int:
    """The library's rows and a thumbnail file per face; returns the 500-face person's id."""
    engine = engine_for_url(async_url(url))
    try:
        await ensure_schema(engine)
        big = await synthetic_library(partial(SqlUnitOfWork, engine), "buffalo_sc", faces, persons)
    finally:
        await engine.dispose()
    folder = storage / "thumbnails"
    folder.mkdir(parents=True, exist_ok=True)
    first = folder / "0.jpg"
    first.write_bytes(thumbnail_jpeg())
    for row in range(1, faces):
        os.link(first, folder / f"{row}.jpg")  # the stored paths are thumbnails/<row>.jpg
    return big


async def query_floor(url: str, big: int) -> tuple[float, float]:
    """The queries behind the two pages, best of three, in seconds."""
    engine = engine_for_url(async_url(url))

    def unit_of_work(library_id: str = DEFAULT_LIBRARY) -> SqlUnitOfWork:
        return SqlUnitOfWork(engine, library_id)

    async def best(run: object) -> float:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            await run()  # type: ignore[operator]
            times.append(time.perf_counter() - started)
        return min(times)

    try:
        grid = await best(lambda: list_persons(unit_of_work, include_hidden=False, offset=0, limit=100))
        person = await best(lambda: show_person(unit_of_work, big, offset=0, limit=200))
    finally:
        await engine.dispose()
    return grid, person


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(url: str, storage: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    environment = os.environ | {
        "SYSTEM_STORAGE": str(storage),
        "LOG_ROOT": str(storage / "logs"),
        "LOG_LEVEL": "WARNING",
    }
    environment.pop("API_TOKEN", None)
    command = [Path(sys.executable).with_name("image-grouping"), "serve", "--db", url, "--port", str(port)]
    server = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/static/people.css", timeout=2).status_code == 200:
                return server, base
        except httpx.TransportError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("the web app did not start")


@dataclass(frozen=True)
class Render:
    first_paint_ms: float  # medians over the rounds
    load_ms: float
    shown_ms: float  # the thumbnails in view loaded
    in_view: int
    decoded: int
    images: int


def render_times(base: str, paths: list[str], rounds: int) -> list[Render]:
    """Per path, the medians of `rounds` fresh page loads after a warm-up."""
    from playwright.sync_api import sync_playwright

    results = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        for path in paths:
            timings = []
            for _ in range(rounds + 1):  # the first is a warm-up
                context = browser.new_context(viewport={"width": 1280, "height": 900})
                page = context.new_page()
                page.goto(base + path, wait_until="load")
                timing = page.evaluate(TIMING)
                context.close()
                if timing["fcp"] is None:
                    raise RuntimeError(f"{path}: Chromium reported no first contentful paint")
                timings.append(timing)
            measured = timings[1:]
            results.append(
                Render(
                    statistics.median(t["fcp"] for t in measured),
                    statistics.median(t["load"] for t in measured),
                    statistics.median(t["shown"] for t in measured),
                    measured[-1]["inView"],
                    measured[-1]["decoded"],
                    measured[-1]["images"],
                )
            )
        browser.close()
    return results


async def requests_per_second(url: str, seconds: float) -> float:
    done = 0
    deadline = time.monotonic() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal done
        while time.monotonic() < deadline:
            response = await http.get(url)
            response.raise_for_status()
            done += 1

    async with httpx.AsyncClient(timeout=30) as http:
        await http.get(url)
        started = time.monotonic()
        await asyncio.gather(*(client(http) for _ in range(CLIENTS)))
        return done / (time.monotonic() - started)


def bench(name: str, url: str, faces: int, persons: int, rounds: int, seconds: float) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-web-") as folder:
        storage = Path(folder)
        started = time.perf_counter()
        big = asyncio.run(build(url, storage, faces, persons))
        print(f"\n{name}: {faces} faces in {persons} persons stored in {time.perf_counter() - started:.1f} s")
        grid_query, person_query = asyncio.run(query_floor(url, big))
        server, base = start_server(url, storage)
        try:
            times = render_times(base, ["/", f"/persons/{big}"], rounds)
            listing = asyncio.run(requests_per_second(base + "/api/persons", seconds))
            static = asyncio.run(requests_per_second(base + "/static/people.css", seconds))
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"{'page':36}{'first paint':>12}{'load':>9}{'in view':>10}{'thumbnails':>16}{'its query':>11}")
    labels = ("persons grid (100 a page)", "person page (500 faces, 200 a page)")
    for label, render, query in zip(labels, times, (grid_query, person_query), strict=True):
        thumbnails = f"{render.decoded}/{render.in_view} of {render.images}"
        print(
            f"{label:36}{render.first_paint_ms:>9.0f} ms{render.load_ms:>6.0f} ms{render.shown_ms:>7.0f} ms"
            f"{thumbnails:>16}{query * 1000:>8.0f} ms"
        )
    print(
        f"GET /api/persons: {listing:.0f} requests/s ({CLIENTS} clients, {seconds:.0f} s); "
        f"GET /static/people.css: {static:.0f} requests/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite", help="sqlite, postgresql or both (comma-separated)")
    parser.add_argument("--faces", type=int, default=10_000)
    parser.add_argument("--persons", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    arguments = parser.parse_args()
    if CHROMIUM is None:
        sys.exit("chromium is not installed (scripts/install-system-packages)")
    with os.popen("uptime") as uptime:
        print(f"load: {uptime.read().strip()}")
    for backend in arguments.backends.split(","):
        if backend == "sqlite":
            with tempfile.TemporaryDirectory() as folder:
                url = f"sqlite:///{folder}/bench.sqlite3"
                bench("SQLite", url, arguments.faces, arguments.persons, arguments.rounds, arguments.seconds)
        elif backend == "postgresql":
            import psycopg2

            name = f"bench_web_{uuid.uuid4().hex[:8]}"
            admin = psycopg2.connect(arguments.postgres)
            admin.autocommit = True
            with admin.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
            try:
                url = f"postgresql://postgres@127.0.0.1:5432/{name}"
                bench(
                    "PostgreSQL", url, arguments.faces, arguments.persons, arguments.rounds, arguments.seconds
                )
            finally:
                with admin.cursor() as cursor:
                    cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                admin.close()
        else:
            sys.exit(f"unknown backend {backend!r}")
    with os.popen("uptime") as uptime:
        print(f"load: {uptime.read().strip()}")


if __name__ == "__main__":
    main()
