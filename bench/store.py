"""Data layer speed: faces written per second and the time to load every embedding back for grouping.

Writes N synthetic faces (512-d float32 embeddings, the real write path: one transaction per image with
`save_analysis`) into SQLite and PostgreSQL, then loads them all with `load_for_grouping`. Side by side in
the same run, the same rows are fetched with the bare driver (sqlite3 / asyncpg), so the ratio shows what
the data layer adds. Targets: load 100k embeddings in under 2 s on PostgreSQL; write at least 10x the
pipeline's ~30 faces/s.

    .venv/bin/python bench/store.py                    # 100,000 faces, sqlite and postgresql
    .venv/bin/python bench/store.py --faces 20000 --backends sqlite
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from image_grouping.models.faces import DetectedFace, FaceQuality, ImageAnalysis
from image_grouping.storage import SqlUnitOfWork, ensure_schema
from image_grouping.storage.database import async_url, engine_for_url

PACK = "bench_pack"
DIM = 512
PIPELINE_FACES_PER_SECOND = 30.0  # the fastest the analysis pipeline runs on this machine
LOAD_TARGET_SECONDS = 2.0
WRITE_TARGET_RATIO = 10.0


def synthetic_analyses(faces: int, per_image: int, seed: int = 0) -> list[ImageAnalysis]:
    rng = np.random.default_rng(seed)
    embeddings = rng.standard_normal((faces, DIM)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    landmarks = rng.uniform(0, 100, (5, 2)).astype(np.float32)
    analyses = []
    for start in range(0, faces, per_image):
        detected = [
            DetectedFace(
                box=(float(120 * i), 10.0, float(120 * i + 100), 130.0),
                landmarks=landmarks,
                quality=FaceQuality(det_score=0.9, size_px=100.0, sharpness=50.0, yaw=0.1, pose="frontal"),
                embedding=embeddings[start + i],
                thumbnail_jpeg=b"",
            )
            for i in range(min(per_image, faces - start))
        ]
        analyses.append(ImageAnalysis(width=4000, height=3000, model_pack=PACK, faces=detected))
    return analyses


async def write(new_uow: Callable[[], SqlUnitOfWork], analyses: list[ImageAnalysis]) -> float:
    """Seconds to store every analysis the way the detection handler does: one transaction per image."""
    started = time.perf_counter()
    for number, analysis in enumerate(analyses):
        async with new_uow() as uow:
            image = await uow.images.get_or_create(None, f"//bench/images/{number}.jpg")
            thumbnails = [f"thumbnails/{image.id}_{index}.jpg" for index in range(len(analysis.faces))]
            await uow.save_analysis(image.id, f"{number:064x}", 1_000_000, analysis, thumbnails)
            await uow.commit()
    return time.perf_counter() - started


async def load(new_uow: Callable[[], SqlUnitOfWork]) -> tuple[float, int]:
    started = time.perf_counter()
    async with new_uow() as uow:
        faces = await uow.faces.load_for_grouping(PACK)
    seconds = time.perf_counter() - started
    assert faces.embeddings.shape[1] == DIM
    return seconds, len(faces)


async def load_bare(url: str) -> float:
    """The reference: the same columns fetched with the bare driver into the same arrays."""
    query = (
        "SELECT id, image_id, embedding, person_id, assigned_by, det_score, size_px, sharpness, yaw "
        "FROM faces WHERE model_pack = {} ORDER BY id"
    )
    started = time.perf_counter()
    if url.startswith("sqlite"):
        with sqlite3.connect(url.split("///", 1)[1]) as connection:
            rows = connection.execute(query.format("?"), (PACK,)).fetchall()
    else:
        import asyncpg

        connection = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
        try:
            rows = await connection.fetch(query.format("$1"), PACK)
        finally:
            await connection.close()
    ids, image_ids, blobs, person_ids, assigned_by, *qualities = zip(*rows, strict=True)
    arrays = [
        np.frombuffer(b"".join(blobs), np.float32).reshape(len(rows), DIM).copy(),
        np.array(ids, np.int64),
        np.array(image_ids, np.int64),
        np.array([-1 if person is None else person for person in person_ids], np.int64),
        np.array([value == "manual" for value in assigned_by], bool),
        *(np.array(values, np.float32) for values in qualities),
    ]
    assert arrays[0].shape == (len(rows), DIM)
    return time.perf_counter() - started


async def bench_backend(name: str, url: str, faces: int, per_image: int) -> None:
    engine = engine_for_url(async_url(url))
    try:
        await ensure_schema(engine)
        analyses = synthetic_analyses(faces, per_image)

        def new_uow() -> SqlUnitOfWork:
            return SqlUnitOfWork(engine)

        write_seconds = await write(new_uow, analyses)
        rate = faces / write_seconds
        verdict = "ok" if rate >= WRITE_TARGET_RATIO * PIPELINE_FACES_PER_SECOND else "MISSED"
        print(
            f"{name:10s} write: {faces} faces in {write_seconds:.1f} s = {rate:,.0f} faces/s "
            f"({len(analyses) / write_seconds:,.0f} images/s of {per_image} faces); "
            f"{rate / PIPELINE_FACES_PER_SECOND:.0f}x the pipeline's {PIPELINE_FACES_PER_SECOND:.0f} faces/s "
            f"(target >= {WRITE_TARGET_RATIO:.0f}x: {verdict})"
        )
        loads, bares = [], []
        for _ in range(3):  # best of three, alternating, so both see the same cache state
            seconds, count = await load(new_uow)
            loads.append(seconds)
            bares.append(await load_bare(url))
        best, bare = min(loads), min(bares)
        verdict = "ok" if best < LOAD_TARGET_SECONDS else "MISSED"
        if name != "postgresql":
            verdict = "the target is set for PostgreSQL"
        print(
            f"{name:10s} load: {count} embeddings in {best:.2f} s (bare driver {bare:.2f} s, "
            f"ratio {best / bare:.2f}); {best / LOAD_TARGET_SECONDS:.2f} of the "
            f"{LOAD_TARGET_SECONDS:.0f} s target ({verdict})"
        )
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--faces", type=int, default=100_000)
    parser.add_argument("--faces-per-image", type=int, default=10)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--postgres-admin-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # quiet: warnings only
    backends = args.backends.split(",")
    print(f"{args.faces} faces of {DIM}-d float32, {args.faces_per_image} per image")
    if "sqlite" in backends:
        with tempfile.TemporaryDirectory() as folder:
            url = f"sqlite:///{Path(folder) / 'bench.sqlite3'}"
            asyncio.run(bench_backend("sqlite", url, args.faces, args.faces_per_image))
    if "postgresql" in backends:
        import psycopg2

        name = f"bench_store_{uuid.uuid4().hex[:8]}"
        admin = psycopg2.connect(args.postgres_admin_dsn)
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        try:
            base = args.postgres_admin_dsn.rsplit("/", 1)[0]
            url = f"{base}/{name}".replace("postgresql://", "postgresql+asyncpg://")
            asyncio.run(bench_backend("postgresql", url, args.faces, args.faces_per_image))
        finally:
            with admin.cursor() as cursor:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.close()


if __name__ == "__main__":
    main()
