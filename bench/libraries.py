"""What the periodic recluster's choice of libraries costs: the query of the libraries that changed since
their last recluster, on PostgreSQL, with `--faces` faces (two a photo) in `--libraries` libraries, one in
ten of them changed (no completed recluster run). Writes into a database it creates and drops.

    .venv/bin/python bench/libraries.py [--url postgresql://postgres@127.0.0.1:5432/test] \
        [--faces 1000000 --libraries 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from sqlalchemy import make_url, text

from image_grouping.storage import SqlUnitOfWork, ensure_schema
from image_grouping.storage.database import async_url, engine_for_url


async def measure(url: str, faces: int, libraries: int) -> str:
    """Fill a new database, time the query (best of three), drop the database; one line of figures."""
    name = f"bench_libraries_{uuid.uuid4().hex[:8]}"
    admin = engine_for_url(async_url(url))
    async with admin.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine = engine_for_url(async_url(make_url(url).set(database=name)))
    try:
        await ensure_schema(engine)
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO images (source_path, path_key, status, model_pack, created_at, library_id)"
                    " SELECT 'p' || i, md5(i::text) || md5(i::text), 'done', 'buffalo_sc', now(),"
                    f" 'lib' || (i % {libraries}) FROM generate_series(1, {faces // 2}) i"
                )
            )
            await connection.execute(
                text(
                    "INSERT INTO faces (image_id, model_pack, face_index, box_x1, box_y1, box_x2, box_y2,"
                    " landmarks, det_score, size_px, sharpness, yaw, pose, embedding, assigned_by,"
                    " added_by_hand, created_at, updated_at, library_id)"
                    " SELECT images.id, 'buffalo_sc', k, 0, 0, 1, 1, '\\x00', 0.9, 80, 50, 0, 'frontal',"
                    " '\\x00', 'auto', false, now() - interval '1 hour', now(), images.library_id"
                    " FROM images, generate_series(0, 1) k"
                )
            )
            await connection.execute(
                text(
                    "INSERT INTO recluster_runs (kind, status, started_at, library_id, model_pack)"
                    " SELECT 'recluster', 'done', now(), 'lib' || i, 'buffalo_sc'"
                    f" FROM generate_series(0, {libraries - 1}) i WHERE i % 10 <> 0"
                )
            )
            await connection.execute(text("ANALYZE"))
        times = []
        for _ in range(3):
            async with SqlUnitOfWork(engine) as uow:
                started = time.perf_counter()
                changed = await uow.runs.changed_libraries("recluster", "buffalo_sc")
                times.append(time.perf_counter() - started)
    finally:
        await engine.dispose()
        async with admin.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(text(f'DROP DATABASE "{name}"'))
        await admin.dispose()
    return (
        f"{faces} faces in {libraries} libraries: {len(changed)} changed, found in {min(times) * 1000:.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--faces", type=int, default=1_000_000)
    parser.add_argument("--libraries", type=int, default=10_000)
    arguments = parser.parse_args()
    print(asyncio.run(measure(arguments.url, arguments.faces, arguments.libraries)))


if __name__ == "__main__":
    main()
