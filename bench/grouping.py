"""Grouping: quality on real LFW embeddings and speed/memory on synthetic ones, against Immich's algorithm;
incremental assignment into a large library stored in PostgreSQL, read cold against the warm copy.

    .venv/bin/python bench/grouping.py [--sizes 10000,100000,1000000] [--reference-sizes 10000,100000]
    .venv/bin/python bench/grouping.py --skip-lfw --sizes '' --incremental 1000,1000000 [--batches 4]
    .venv/bin/python bench/grouping.py --skip-lfw --sizes '' --libraries 1000x1000

1. LFW (../shared/eval/identity, analysed by the production pipeline, cached in .bench/): BCubed and
   pairwise scores of our full recluster and of Immich's algorithm on the same embeddings, side by side.
2. Synthetic: identities sized like LFW's; identity centres drawn with the between-identity covariance
   measured on LFW, faces around them with the measured within-identity covariance (real face embeddings
   are far from isotropic); the genuine/impostor cosines of both are printed side by side. Each size runs
   in its own process so the peak memory (RSS, data included) is its own; our full grouping is timed at
   every size, Immich's at the reference sizes.
3. Incremental assignment (`--incremental`): for each library size, a PostgreSQL database
   (POSTGRES_ADMIN_DSN, default postgres@127.0.0.1) holding that many synthetic faces, grouped as a
   recluster would have left them (each identity of two faces or more a person, the others unassigned), stored
   a day ago. Then batches of 200 new faces (one `faces.detected` each, as the service groups them), timed
   in `handle_faces_detected` (read, decide, write, commit): once in a process that reads the library from
   the database for every batch (cold), once in a process with the warm copy (`WarmGroupingReader`, as the
   service runs: its first batch reads everything, the next ones only what changed). Each in its own
   process, for its own peak memory; the ratio cold / warm is of the batches after the first.
4. Libraries (`--libraries LxF`): L libraries of F faces each (each its own people) in one PostgreSQL
   database; every library reclustered, one after the other, by `handle_recluster_requested` as a grouping
   replica runs them (the warm reader of the service); total time and peak memory, beside the full
   recluster of the same number of faces as one library (in memory, as section 2 measures it).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import numpy as np

from image_grouping.bootstrap import grouping_params
from image_grouping.config import load_settings
from image_grouping.evaluation.grouping import clustering_scores, immich_reference, load_labelled_faces
from image_grouping.grouping import GroupingInput, GroupingParams, group_faces

EVAL = Path(__file__).resolve().parents[1].parent / "shared" / "eval"
SPREAD_FILE = Path(".bench/grouping-spread.npz")
POSTGRES_ADMIN_DSN = os.environ.get("POSTGRES_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
PACK = "buffalo_sc"
VACUUM_EVERY = 100  # libraries reclustered between two VACUUM ANALYZE where autovacuum is off
BATCH = 200  # faces of one incremental batch (GROUPING_BATCH_SIZE)


def real_spread(labels: np.ndarray, embeddings: np.ndarray) -> dict[str, np.ndarray]:
    """The real data's shape: mean, between- and within-identity covariance factors, identity sizes."""
    _, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    sums = np.zeros((len(sizes), embeddings.shape[1]))
    np.add.at(sums, inverse, embeddings)
    means = sums / sizes[:, None]
    several = sizes[inverse] >= 2
    # Residuals from a mean that includes the face shrink by sqrt((n-1)/n): undo that.
    correction = np.sqrt(sizes[inverse] / np.maximum(sizes[inverse] - 1, 1))
    residuals = ((embeddings - means[inverse]) * correction[:, None])[several]
    return {
        "mean": embeddings.mean(axis=0),
        "between": _factor(np.cov(means[sizes >= 2], rowvar=False)),
        "within": _factor(np.cov(residuals, rowvar=False)),
        "sizes": sizes,
    }


def _factor(covariance: np.ndarray) -> np.ndarray:
    """A square root F of a covariance (F @ F.T = C), for drawing correlated Gaussian vectors."""
    values, vectors = np.linalg.eigh(covariance)
    return (vectors * np.sqrt(values.clip(0))).astype(np.float32)


def synthetic(count: int, spread: dict[str, np.ndarray], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, labels): `count` unit faces of identities sized like LFW's; centres drawn with the real
    between-identity covariance, faces around them with the real within-identity covariance."""
    rng = np.random.default_rng(seed)
    dim = len(spread["mean"])
    identity_sizes = rng.choice(spread["sizes"], size=count)  # more than enough identities
    labels = np.repeat(np.arange(len(identity_sizes)), identity_sizes)[:count]
    rng.shuffle(labels)
    identities = int(labels.max()) + 1
    centres = (
        spread["mean"].astype(np.float32)
        + rng.standard_normal((identities, dim), np.float32) @ spread["between"].T
    )
    embeddings = np.empty((count, dim), np.float32)
    for start in range(0, count, 100_000):
        part = slice(start, min(start + 100_000, count))
        noise = rng.standard_normal((part.stop - start, dim), np.float32) @ spread["within"].T
        block = centres[labels[part]] + noise
        embeddings[part] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return embeddings, labels


def describe(embeddings: np.ndarray, labels: np.ndarray, sample: int = 3000) -> str:
    """Genuine and impostor pair cosines of a sample, to compare the synthetic data with the real."""
    rng = np.random.default_rng(1)
    rows = rng.choice(len(labels), min(sample, len(labels)), replace=False)
    similarity = embeddings[rows] @ embeddings[rows].T
    upper = np.triu_indices(len(rows), 1)
    same = (labels[rows][:, None] == labels[rows][None, :])[upper]
    genuine, impostor = similarity[upper][same], similarity[upper][~same]
    return (
        f"genuine pairs mean {genuine.mean():.3f} (5th pct {np.percentile(genuine, 5):.3f}), "
        f"impostor pairs mean {impostor.mean():.3f} (99.9th pct {np.percentile(impostor, 99.9):.3f})"
    )


def run_one(count: int, reference: bool) -> dict[str, float]:
    """One size, in this process: generate, group (timed), optionally Immich (timed); peak RSS."""
    with np.load(SPREAD_FILE) as stored:
        embeddings, labels = synthetic(count, dict(stored))
    faces = GroupingInput(embeddings, np.arange(count), np.ones(count, bool))
    started = time.perf_counter()
    found = group_faces(faces, GroupingParams()).labels
    result = {"faces": count, "seconds": time.perf_counter() - started}
    result.update({f"ours_{key}": value for key, value in clustering_scores(labels, found).items()})
    if reference:
        started = time.perf_counter()
        immich = immich_reference(embeddings)
        result["immich_seconds"] = time.perf_counter() - started
        result.update({f"immich_{key}": value for key, value in clustering_scores(labels, immich).items()})
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return result


def lfw_section() -> None:
    settings = load_settings()
    faces = load_labelled_faces(settings, EVAL / "identity_labels.csv", EVAL)
    spread = real_spread(faces.labels, faces.embeddings)
    SPREAD_FILE.parent.mkdir(exist_ok=True)
    np.savez(SPREAD_FILE, **spread)
    fake, fake_labels = synthetic(len(faces), spread)
    print(f"LFW: {len(faces)} faces, {len(spread['sizes'])} identities")
    print(f"  real:      {describe(faces.embeddings, faces.labels)}")
    print(f"  synthetic: {describe(fake, fake_labels)}")
    order = np.random.default_rng(0).permutation(len(faces))  # arrival order matters to Immich
    embeddings, labels = faces.embeddings[order], faces.labels[order]
    from image_grouping.grouping import reliable_faces

    params = grouping_params(settings)
    reliable = reliable_faces(faces.det_score, faces.size_px, faces.sharpness, faces.yaw, params)[order]
    started = time.perf_counter()
    ours = group_faces(GroupingInput(embeddings, np.arange(len(faces)), reliable), params).labels
    ours_seconds = time.perf_counter() - started
    started = time.perf_counter()
    immich = immich_reference(embeddings)
    immich_seconds = time.perf_counter() - started
    keys = ["bcubed_precision", "bcubed_recall", "bcubed_f1", "pairwise_precision", "pairwise_recall"]
    keys += ["pairwise_f1", "assigned", "persons"]
    print(f"{'':18}" + "".join(f"{key:>19}" for key in keys) + f"{'seconds':>9}")
    for name, found, seconds in (
        ("ours (recluster)", ours, ours_seconds),
        ("immich", immich, immich_seconds),
    ):
        scores = clustering_scores(labels, found)
        print(f"{name:18}" + "".join(f"{scores[key]:>19.4f}" for key in keys) + f"{seconds:>9.2f}")


@contextmanager
def bench_database(label: str) -> Iterator[str]:
    """An empty PostgreSQL database for one library size; its async URL. Dropped afterwards."""
    import psycopg2

    name = f"bench_grouping_{label}_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(POSTGRES_ADMIN_DSN)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield f"{base}/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def library_faces(size: int, batches: int) -> tuple[np.ndarray, np.ndarray]:
    """The library's `size` faces, then two runs of `batches` batches of new faces (cold, warm)."""
    with np.load(SPREAD_FILE) as stored:
        return synthetic(size + 2 * batches * BATCH, dict(stored), seed=7)


def _face_row(
    face_id: int, image_id: int, embedding: np.ndarray, person: int | None, moment: datetime
) -> tuple:
    return (
        face_id, image_id, PACK, 0, 40.0, 40.0, 140.0, 140.0, bytes(40), 0.9, 100.0, 100.0, 0.0, "frontal",
        None, embedding.astype("<f4").tobytes(), person, "auto", False, moment, moment,
    )  # fmt: skip


_FACE_COLUMNS = [
    "id", "image_id", "model_pack", "face_index", "box_x1", "box_y1", "box_x2", "box_y2", "landmarks",
    "det_score", "size_px", "sharpness", "yaw", "pose", "thumbnail_path", "embedding", "person_id",
    "assigned_by", "added_by_hand", "created_at", "updated_at",
]  # fmt: skip
_IMAGE_COLUMNS = ["id", "source_path", "path_key", "status", "model_pack", "created_at", "processed_at"]


def _image_row(image_id: int, moment: datetime) -> tuple:
    path = f"bench/{image_id}.jpg"
    return (image_id, path, hashlib.sha256(path.encode()).hexdigest(), "done", PACK, moment, moment)


async def populate(url: str, size: int, batches: int) -> None:
    """The library: `size` faces (one photo each) written a day ago, grouped as a recluster leaves them."""
    import asyncpg
    from sqlalchemy import make_url

    from image_grouping.storage import ensure_schema
    from image_grouping.storage.database import engine_for_url

    engine = engine_for_url(make_url(url))
    await ensure_schema(engine)
    await engine.dispose()
    embeddings, labels = library_faces(size, batches)
    stored = labels[:size]
    ids, counts = np.unique(stored, return_counts=True)
    person_of = {int(label): index + 1 for index, label in enumerate(ids[counts >= 2])}
    moment = datetime.now(UTC) - timedelta(days=1)
    person_rows = [person_of.get(int(label)) for label in stored]
    first_face: dict[int, int] = {}
    for row, person in enumerate(person_rows):
        if person is not None:
            first_face.setdefault(person, row + 1)
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        await connection.copy_records_to_table(  # persons first: faces refer to them
            "persons",
            records=[
                (person, None, False, first_face[person], moment, moment) for person in person_of.values()
            ],
            columns=["id", "name", "hidden", "cover_face_id", "created_at", "updated_at"],
        )
        for start in range(0, size, 50_000):
            rows = range(start, min(start + 50_000, size))
            await connection.copy_records_to_table(
                "images", records=[_image_row(row + 1, moment) for row in rows], columns=_IMAGE_COLUMNS
            )
            await connection.copy_records_to_table(
                "faces",
                records=[
                    _face_row(row + 1, row + 1, embeddings[row], person_rows[row], moment) for row in rows
                ],
                columns=_FACE_COLUMNS,
            )
        for table in ("images", "faces", "persons"):
            await connection.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
            )
        await connection.execute("VACUUM ANALYZE")
    finally:
        await connection.close()
    print(f"  {size:,} faces stored, {len(person_of):,} persons", file=sys.stderr, flush=True)


async def run_batches(url: str, size: int, batches: int, warm: bool) -> dict[str, object]:
    """Time `batches` incremental batches of 200 new faces each, in this process."""
    from sqlalchemy import insert, make_url, select

    from image_grouping.handlers.recognition import ColdGroupingReader, GroupingDeps, handle_faces_detected
    from image_grouping.models.messages import FacesDetected
    from image_grouping.storage import SqlUnitOfWork
    from image_grouping.storage.database import engine_for_url
    from image_grouping.storage.grouping_cache import WarmGroupingReader
    from image_grouping.storage.schema import faces, images

    embeddings, _ = library_faces(size, batches)
    first = size + (batches * BATCH if warm else 0)
    new = embeddings[first : first + batches * BATCH].copy()
    del embeddings
    engine = engine_for_url(make_url(url))
    reader = WarmGroupingReader(max_faces=2 * size + 10_000) if warm else ColdGroupingReader()
    params = grouping_params(load_settings(), PACK)
    deps = GroupingDeps(partial(SqlUnitOfWork, engine), params, PACK, 900.0, reader=reader)
    seconds, joined = [], 0
    async with engine.connect() as connection:
        next_id = (
            int(
                (
                    await connection.execute(select(faces.c.id).order_by(faces.c.id.desc()).limit(1))
                ).scalar_one()
            )
            + 1
        )
    for batch in range(batches):
        moment = datetime.now(UTC)
        face_ids = list(range(next_id, next_id + BATCH))
        next_id += BATCH
        async with engine.begin() as connection:  # what detection commits before it announces the faces
            await connection.execute(
                insert(images),
                [dict(zip(_IMAGE_COLUMNS, _image_row(face_id, moment), strict=True)) for face_id in face_ids],
            )
            await connection.execute(
                insert(faces),
                [
                    dict(
                        zip(
                            _FACE_COLUMNS,
                            _face_row(face_id, face_id, new[batch * BATCH + row], None, moment),
                            strict=True,
                        )
                    )
                    for row, face_id in enumerate(face_ids)
                ],
            )
        event = FacesDetected(image_id=str(face_ids[0]), face_ids=face_ids, face_count=BATCH, model_pack=PACK)
        started = time.perf_counter()
        (outcome,) = await handle_faces_detected([event], deps)
        seconds.append(time.perf_counter() - started)
        joined += outcome[0].changes["faces_assigned"] if outcome else 0  # type: ignore[index, union-attr]
    await engine.dispose()
    return {
        "seconds": seconds,
        "assigned": joined,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def incremental_section(sizes: list[int], batches: int) -> None:
    print(
        f"\nincremental assignment, batches of {BATCH} new faces, PostgreSQL "
        f"(cold: the library read for every batch; warm: the copy kept between batches)"
    )
    print(
        f"{'library':>10}{'cold s/batch':>14}{'cold GB':>9}{'warm 1st s':>12}{'warm s/batch':>14}"
        f"{'warm GB':>9}{'cold/warm':>11}{'assigned c/w':>14}"
    )
    for size in sizes:
        with bench_database(str(size)) as url:
            subprocess.run(
                [sys.executable, __file__, "--populate", url, "--one", str(size), "--batches", str(batches)],
                check=True,
            )
            results = {}
            for mode in ("cold", "warm"):
                command = [
                    sys.executable,
                    __file__,
                    "--assign",
                    mode,
                    url,
                    "--one",
                    str(size),
                    "--batches",
                    str(batches),
                ]
                output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
                results[mode] = json.loads(output.strip().splitlines()[-1])
        cold, warm = results["cold"], results["warm"]
        cold_batch = statistics.median(cold["seconds"])
        warm_batch = statistics.median(warm["seconds"][1:])
        print(
            f"{size:>10,}{cold_batch:>14.2f}{cold['peak_rss_gb']:>9.2f}{warm['seconds'][0]:>12.2f}"
            f"{warm_batch:>14.2f}{warm['peak_rss_gb']:>9.2f}{cold_batch / warm_batch:>10.1f}x"
            f"{cold['assigned']:>7}/{warm['assigned']}",
            flush=True,
        )
        print(
            f"{'':>10}  per batch: cold {_seconds(cold['seconds'])}; warm {_seconds(warm['seconds'])}",
            flush=True,
        )


def _seconds(values: list[float]) -> str:
    return " ".join(f"{value:.2f}" for value in values)


async def populate_libraries(url: str, libraries: int, per_library: int) -> None:
    """`libraries` libraries of `per_library` synthetic faces each (one photo a face), unassigned."""
    import asyncpg
    from sqlalchemy import make_url

    from image_grouping.storage import ensure_schema
    from image_grouping.storage.database import engine_for_url

    engine = engine_for_url(make_url(url))
    await ensure_schema(engine)
    await engine.dispose()
    with np.load(SPREAD_FILE) as stored:
        spread = dict(stored)
    moment = datetime.now(UTC) - timedelta(days=1)
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        next_id = 1
        for first in range(0, libraries, 50):
            image_rows, face_rows = [], []
            for library in range(first, min(first + 50, libraries)):
                embeddings, _ = synthetic(per_library, spread, seed=100 + library)
                for embedding in embeddings:
                    image_rows.append((*_image_row(next_id, moment), f"library-{library}"))
                    face_rows.append(
                        (*_face_row(next_id, next_id, embedding, None, moment), f"library-{library}")
                    )
                    next_id += 1
            await connection.copy_records_to_table(
                "images", records=image_rows, columns=[*_IMAGE_COLUMNS, "library_id"]
            )
            await connection.copy_records_to_table(
                "faces", records=face_rows, columns=[*_FACE_COLUMNS, "library_id"]
            )
        for table in ("images", "faces"):
            await connection.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
            )
        await connection.execute("VACUUM ANALYZE")
    finally:
        await connection.close()
    print(f"  {libraries:,} libraries of {per_library:,} faces stored", file=sys.stderr, flush=True)


async def recluster_libraries(url: str, libraries: int) -> dict[str, object]:
    """Recluster every library, one after the other, as a grouping replica does; timed, peak memory."""
    from sqlalchemy import make_url, text

    from image_grouping.handlers.recognition import GroupingDeps, handle_recluster_requested
    from image_grouping.models.messages import ReclusterRequested
    from image_grouping.storage import SqlUnitOfWork
    from image_grouping.storage.database import engine_for_url
    from image_grouping.storage.grouping_cache import WarmGroupingReader

    settings = load_settings()
    engine = engine_for_url(make_url(url))
    reader = WarmGroupingReader(
        max_faces=settings.grouping_cache_faces, window_seconds=settings.grouping_cache_window_seconds
    )

    def unit_of_work(library_id: str = "default") -> SqlUnitOfWork:
        return SqlUnitOfWork(engine, library_id)

    deps = GroupingDeps(unit_of_work, grouping_params(settings, PACK), PACK, 900.0, reader=reader)
    # Each recluster leaves the rows it rewrote dead. A production server's autovacuum clears them and keeps
    # the planner's statistics; where autovacuum is off (as on some test machines) the tables bloat and the
    # figures drift with it, so the bench vacuums every VACUUM_EVERY libraries itself, outside the timings.
    maintenance = engine.execution_options(isolation_level="AUTOCOMMIT")
    async with maintenance.connect() as connection:
        autovacuum = (await connection.execute(text("SHOW autovacuum"))).scalar_one()
    seconds, persons = [], 0
    started, vacuuming = time.perf_counter(), 0.0
    for library in range(libraries):
        request = ReclusterRequested(library_id=f"library-{library}", model_pack=PACK)
        begun = time.perf_counter()
        (outcome,) = await handle_recluster_requested([request], deps)
        seconds.append(time.perf_counter() - begun)
        persons += len(outcome[0].changes["created"])  # type: ignore[index, union-attr]
        if autovacuum != "on" and (library + 1) % VACUUM_EVERY == 0:
            begun = time.perf_counter()
            async with maintenance.connect() as connection:
                await connection.execute(text("VACUUM ANALYZE faces, persons"))
            vacuuming += time.perf_counter() - begun
    total = time.perf_counter() - started - vacuuming
    await engine.dispose()
    return {
        "seconds": total,
        "per_library": seconds,
        "persons": persons,
        "faces_held": reader.faces_held,
        "autovacuum": autovacuum,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def libraries_section(libraries: int, per_library: int) -> None:
    print(
        f"\nfull recluster of {libraries:,} libraries of {per_library:,} faces (PostgreSQL), "
        "one after the other"
    )
    with bench_database(f"libraries_{libraries}") as url:
        command = [sys.executable, __file__, "--populate-libraries", url, "--one", str(per_library)]
        subprocess.run([*command, "--batches", str(libraries)], check=True)
        command = [sys.executable, __file__, "--recluster-libraries", url, "--one", str(libraries)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        result = json.loads(output.strip().splitlines()[-1])
    total_faces = libraries * per_library
    command = [sys.executable, __file__, "--one", str(total_faces)]
    reference = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    per = sorted(result["per_library"])
    hundreds = [
        statistics.median(result["per_library"][start : start + VACUUM_EVERY])
        for start in range(0, libraries, VACUUM_EVERY)
    ]
    print(
        f"  {libraries:,} libraries: {result['seconds']:.1f} s in all "
        f"(a library: median {statistics.median(per):.2f} s, slowest {per[-1]:.2f} s), "
        f"{result['persons']:,} persons, peak RSS {result['peak_rss_gb']:.2f} GB "
        f"(warm copies held at the end: {result['faces_held']:,} faces)"
    )
    print(
        f"  median a library per {VACUUM_EVERY}: "
        + " ".join(f"{value:.2f}" for value in hundreds)
        + f" s (autovacuum {result['autovacuum']}"
        + ("" if result["autovacuum"] == "on" else f"; VACUUM ANALYZE every {VACUUM_EVERY}, not timed")
        + ")"
    )
    print(
        f"  the same {total_faces:,} faces as one library (group_faces alone, in memory): "
        f"{reference['seconds']:.1f} s, peak RSS {reference['peak_rss_gb']:.2f} GB: "
        f"{reference['seconds'] / result['seconds']:.1f}x the time of the {libraries:,} libraries",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--reference-sizes", default="10000,100000")
    parser.add_argument(
        "--skip-lfw",
        action="store_true",
        help="Reuse the spread measured last time (measured anyway when missing).",
    )
    parser.add_argument("--incremental", default="", help="Library sizes for incremental assignment.")
    parser.add_argument("--batches", type=int, default=4, help="Incremental batches per process.")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child process: one size
    parser.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--populate", help=argparse.SUPPRESS)  # child: store the library at this URL
    parser.add_argument("--assign", nargs=2, help=argparse.SUPPRESS)  # child: cold|warm URL
    parser.add_argument("--libraries", default="", help="LxF: L libraries of F faces, all reclustered.")
    parser.add_argument("--populate-libraries", help=argparse.SUPPRESS)  # child: store them at this URL
    parser.add_argument("--recluster-libraries", help=argparse.SUPPRESS)  # child: recluster them
    args = parser.parse_args()
    if args.populate_libraries:
        asyncio.run(populate_libraries(args.populate_libraries, args.batches, args.one))
        return
    if args.recluster_libraries:
        print(json.dumps(asyncio.run(recluster_libraries(args.recluster_libraries, args.one))))
        return
    if args.populate:
        asyncio.run(populate(args.populate, args.one, args.batches))
        return
    if args.assign:
        mode, url = args.assign
        print(json.dumps(asyncio.run(run_batches(url, args.one, args.batches, mode == "warm"))))
        return
    if args.one:
        print(json.dumps(run_one(args.one, args.reference)))
        return
    if not args.skip_lfw or not SPREAD_FILE.exists():
        if args.skip_lfw:
            print(f"{SPREAD_FILE} is missing: measuring it on LFW first")
        lfw_section()
    references = {int(size) for size in args.reference_sizes.split(",") if size}
    print(
        f"\n{'faces':>9}{'ours s':>9}{'peak GB':>9}{'BCubed F1':>11}"
        f"{'immich s':>10}{'immich F1':>11}{'speed-up':>10}"
    )
    for size in (int(size) for size in args.sizes.split(",") if size):
        command = [sys.executable, __file__, "--one", str(size)] + (
            ["--reference"] if size in references else []
        )
        result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        immich = (
            f"{result['immich_seconds']:>10.1f}{result['immich_bcubed_f1']:>11.4f}"
            f"{result['immich_seconds'] / result['seconds']:>9.1f}x"
            if "immich_seconds" in result
            else f"{'-':>10}{'-':>11}{'-':>10}"
        )
        print(
            f"{size:>9}{result['seconds']:>9.1f}{result['peak_rss_gb']:>9.2f}{result['ours_bcubed_f1']:>11.4f}{immich}",
            flush=True,
        )
    if args.incremental:
        incremental_section([int(size) for size in args.incremental.split(",")], args.batches)
    if args.libraries:
        libraries, per_library = (int(part) for part in args.libraries.split("x"))
        libraries_section(libraries, per_library)


if __name__ == "__main__":
    main()
