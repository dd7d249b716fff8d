"""Suggestions on LFW, and the people queries' speed on a library of 10,000 faces in 1,000 persons.

    .venv/bin/python bench/suggestions.py [--backends sqlite,postgresql] [--faces 10000 --persons 1000]

1. Quality. The 5,865 LFW faces (../shared/eval/identity, analysed by the production pipeline and cached
   in .bench/: `image-grouping eval grouping --labels ../shared/eval/identity_labels.csv --images
   ../shared/eval` fills the cache) are stored in a temporary SQLite database, regrouped by the recluster
   handler, and queried through image_grouping.handlers.queries, as the CLI and the web app do:
   - merge suggestions: precision at 20 and at 100, the share of the first 20 / 100 suggested pairs whose
     two persons have the same true identity (each person's identity: the majority label of its faces),
     beside how many pairs suggested and how many such pairs exist at all (the ceiling); also for the bare
     ranking, without the similarity floor;
   - unassigned faces: accuracy of the suggested person (its identity is the face's label), over the
     faces whose label has a person at all; coverage, the share of those that get a suggestion; and the
     share of the faces whose label has no person (strangers) that get one anyway, necessarily wrong.
   Side by side, the reference: the same measured with each person's nearest face instead of its
   centroid (single link for merges). After the default recluster LFW leaves few persons to merge, so
   the same is measured again after a recluster with stricter thresholds (GROUPING_LINK_SIMILARITY 0.55
   and the like): a library in which people were split.
2. Speed. A synthetic library of `--faces` faces in `--persons` persons (one of 500 faces, a tenth of the
   faces unassigned) on each backend: the persons list, the 500-face person page, a page of 50 unassigned
   faces with their suggestions, the merge suggestions; the best of three runs each.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import SecretStr

from image_grouping.bootstrap import bootstrap, grouping_params, suggestion_params
from image_grouping.config import Settings, load_settings
from image_grouping.evaluation.grouping import LabelledFaces, load_labelled_faces, store_labelled_faces
from image_grouping.grouping import GroupingParams
from image_grouping.handlers.ports import UnitOfWorkFactory
from image_grouping.handlers.queries import (
    SuggestionParams,
    list_persons,
    merge_suggestions,
    show_person,
    unassigned_faces,
)
from image_grouping.handlers.recognition import GroupingDeps, handle_recluster_requested
from image_grouping.models.faces import DetectedFace, FaceQuality, ImageAnalysis
from image_grouping.models.messages import DEFAULT_LIBRARY, ReclusterRequested
from image_grouping.models.records import ImageResult
from image_grouping.storage import SqlUnitOfWork, ensure_schema
from image_grouping.storage.database import async_url, engine_for_url

EVAL = Path(__file__).resolve().parents[1].parent / "shared" / "eval"
STRICT = 0.55  # the link similarity of the stricter recluster


@dataclass(frozen=True)
class Library:
    """What was stored: each face's true label, each person's majority label."""

    label_of_face: dict[int, str]
    label_of_person: dict[int, str]
    face_ids: np.ndarray
    person_ids: np.ndarray  # per stored face, -1 for none
    embeddings: np.ndarray


@dataclass(frozen=True)
class MergeScores:
    suggested: int
    precision_20: float
    precision_100: float
    right: int
    ceiling: int  # pairs of persons of one identity that exist


@dataclass(frozen=True)
class FaceScores:
    accuracy: float
    coverage: float
    strangers_suggested: float
    with_person: int
    strangers: int


# --- quality on LFW ------------------------------------------------------------------------------------


async def reclustered(
    unit_of_work: UnitOfWorkFactory, faces: LabelledFaces, pack: str, params: GroupingParams
) -> Library:
    face_ids = await store_labelled_faces(unit_of_work, pack, faces)
    deps = GroupingDeps(unit_of_work, params, pack, 900.0)
    (outcome,) = await handle_recluster_requested([ReclusterRequested(model_pack=pack, reason="bench")], deps)
    if not isinstance(outcome, list):
        raise RuntimeError(f"the recluster was refused: {outcome}")
    async with unit_of_work() as uow:
        stored = await uow.faces.load_for_grouping(pack)
    row_of = {face: row for row, face in enumerate(face_ids.tolist())}
    label_of_face = {face: str(faces.labels[row_of[face]]) for face in stored.face_ids.tolist()}
    members: dict[int, list[str]] = {}
    for face, person in zip(stored.face_ids.tolist(), stored.person_ids.tolist(), strict=True):
        if person >= 0:
            members.setdefault(person, []).append(label_of_face[face])
    label_of_person = {person: Counter(labels).most_common(1)[0][0] for person, labels in members.items()}
    return Library(label_of_face, label_of_person, stored.face_ids, stored.person_ids, stored.embeddings)


def merge_scores(pairs: list[tuple[int, int]], library: Library) -> MergeScores:
    right = [library.label_of_person[a] == library.label_of_person[b] for a, b in pairs]
    per_label = Counter(library.label_of_person.values())
    return MergeScores(
        suggested=len(pairs),
        precision_20=float(np.mean(right[:20])) if right else float("nan"),
        precision_100=float(np.mean(right[:100])) if right else float("nan"),
        right=sum(right[:100]),
        ceiling=sum(count * (count - 1) // 2 for count in per_label.values()),
    )


def face_scores(suggested: dict[int, int | None], library: Library) -> FaceScores:
    """`suggested`: unassigned face id -> suggested person (None: no suggestion)."""
    known = set(library.label_of_person.values())
    with_person = [face for face in suggested if library.label_of_face[face] in known]
    strangers = [face for face in suggested if library.label_of_face[face] not in known]
    answered = [face for face in with_person if suggested[face] is not None]
    right = [library.label_of_person[suggested[face]] == library.label_of_face[face] for face in answered]  # type: ignore[index]
    return FaceScores(
        accuracy=float(np.mean(right)) if right else float("nan"),
        coverage=len(answered) / len(with_person) if with_person else float("nan"),
        strangers_suggested=(
            sum(suggested[face] is not None for face in strangers) / len(strangers)
            if strangers
            else float("nan")
        ),
        with_person=len(with_person),
        strangers=len(strangers),
    )


def nearest_face_reference(
    library: Library, params: SuggestionParams
) -> tuple[list[tuple[int, int]], dict[int, int | None]]:
    """The reference measure: a person is as close as its nearest face. Merges ranked by the most similar
    pair of faces (single link), above the same floor; faces given the person of their nearest face."""
    assigned = library.person_ids >= 0
    persons, column = np.unique(library.person_ids[assigned], return_inverse=True)
    members = library.embeddings[assigned]
    order = np.argsort(column, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(column[order]) != 0])
    # best similarity of every face to every person: (faces, persons)
    to_person = np.maximum.reduceat(library.embeddings @ members[order].T, starts, axis=1)
    single_link = np.maximum.reduceat(to_person[assigned][order], starts, axis=0)
    np.fill_diagonal(single_link, -np.inf)
    upper = np.triu_indices(len(persons), 1)
    ranked = np.argsort(-single_link[upper], kind="stable")
    pairs = [
        (int(persons[upper[0][i]]), int(persons[upper[1][i]]))
        for i in ranked[:100]
        if single_link[upper][i] >= params.merge_similarity
    ]
    unassigned = np.flatnonzero(~assigned)
    best = np.argmax(to_person[unassigned], axis=1)
    similarity = to_person[unassigned, best]
    faces = {
        int(library.face_ids[row]): (
            int(persons[column_]) if similarity[i] >= params.face_similarity else None
        )
        for i, (row, column_) in enumerate(zip(unassigned.tolist(), best.tolist(), strict=True))
    }
    return pairs, faces


async def quality(settings: Settings, faces: LabelledFaces, name: str, params: GroupingParams) -> None:
    pack = settings.model_pack
    with tempfile.TemporaryDirectory() as folder:
        local = settings.model_copy(
            update={
                "database_url": SecretStr(f"sqlite+aiosqlite:///{folder}/bench.sqlite3"),
                "dry_run": False,
            }
        )
        async with bootstrap(local) as adapters:
            library = await reclustered(adapters.unit_of_work, faces, pack, params)
            floor = suggestion_params(local)
            bare = replace(floor, merge_similarity=-1.0)
            started = time.perf_counter()
            merges = await merge_suggestions(adapters.unit_of_work, floor, limit=100)
            merge_seconds = time.perf_counter() - started
            ranking = await merge_suggestions(adapters.unit_of_work, bare, limit=100)
            started = time.perf_counter()
            unassigned = await unassigned_faces(adapters.unit_of_work, floor)
            face_seconds = time.perf_counter() - started
            no_floor = await unassigned_faces(adapters.unit_of_work, replace(floor, face_similarity=-1.0))
    suggested = {face.id: face.suggestion.person_id if face.suggestion else None for face in unassigned}
    reference_pairs, reference_faces = nearest_face_reference(library, floor)
    _, bare_faces = nearest_face_reference(library, replace(floor, face_similarity=-1.0))
    persons = len(library.label_of_person)
    print(
        f"\n{name}: {len(library.face_ids)} faces, {persons} persons, {len(unassigned)} unassigned "
        f"(merge suggestions {merge_seconds:.2f} s, unassigned faces with suggestions {face_seconds:.2f} s)"
    )
    print(f"{'merge suggestions':44}{'suggested':>10}{'P@20':>7}{'P@100':>7}{'right':>7}{'exist':>7}")
    for label, pairs in (
        (f"centroid, similarity >= {floor.merge_similarity}", [(p.person_a, p.person_b) for p in merges]),
        ("centroid, bare ranking", [(p.person_a, p.person_b) for p in ranking]),
        (f"reference: nearest faces, >= {floor.merge_similarity}", reference_pairs),
    ):
        scores = merge_scores(pairs, library)
        print(
            f"{label:44}{scores.suggested:>10}{scores.precision_20:>7.2f}{scores.precision_100:>7.2f}"
            f"{scores.right:>7}{scores.ceiling:>7}"
        )
    print(
        f"{'suggested person of unassigned faces':44}{'accuracy':>10}{'coverage':>10}"
        f"{'strangers offered one':>23}"
    )
    bare_centroid = {face.id: face.suggestion.person_id if face.suggestion else None for face in no_floor}
    for label, answers in (
        (f"centroid, similarity >= {floor.face_similarity}", suggested),
        ("centroid, no floor", bare_centroid),
        (f"reference: nearest face, >= {floor.face_similarity}", reference_faces),
        ("reference: nearest face, no floor", bare_faces),
    ):
        scores = face_scores(answers, library)
        print(
            f"{label:44}{scores.accuracy:>10.3f}{scores.coverage:>10.3f}{scores.strangers_suggested:>23.3f}"
            f"   (of {scores.with_person} faces with a person, {scores.strangers} strangers)"
        )


# --- speed on a synthetic library ----------------------------------------------------------------------


async def synthetic_library(
    unit_of_work: UnitOfWorkFactory, pack: str, face_count: int, person_count: int
) -> int:
    """`face_count` faces of `person_count` persons (the first has 500 faces), a tenth unassigned, one
    face per photo; returns the 500-face person's id."""
    rng = np.random.default_rng(0)
    dim = 512
    centres = rng.standard_normal((person_count, dim)).astype(np.float32)
    assigned = face_count - face_count // 10
    sizes = np.full(person_count, (assigned - 500) // (person_count - 1))
    sizes[0] = 500
    sizes[1 : 1 + (assigned - int(sizes.sum()))] += 1
    person_of_face = np.r_[np.repeat(np.arange(person_count), sizes), np.full(face_count - assigned, -1)]
    noise = rng.standard_normal((face_count, dim)).astype(np.float32)
    base = np.where(person_of_face[:, None] >= 0, centres[np.maximum(person_of_face, 0)], 0)
    embeddings = base / np.sqrt(dim) * 1.2 + noise / np.sqrt(dim)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)

    def face(row: int) -> DetectedFace:
        quality = FaceQuality(
            det_score=float(0.6 + 0.4 * rng.random()), size_px=120.0, sharpness=80.0, yaw=0.0, pose="frontal"
        )
        return DetectedFace(
            (10.0, 10.0, 130.0, 130.0), np.zeros((5, 2), np.float32), quality, embeddings[row], b""
        )

    async with unit_of_work() as uow:
        images = await uow.images.get_or_create_many(
            [(f"upload-{row}", f"//nas/library/{row:06d}.jpg") for row in range(face_count)]
        )
        results = [
            ImageResult(
                image.id,
                f"{row:064d}",
                1,
                ImageAnalysis(640, 480, pack, [face(row)]),
                [f"thumbnails/{row}.jpg"],
            )
            for row, image in enumerate(images)
        ]
        face_ids = [ids[0] for ids in await uow.images.save_analyses(results)]
        person_ids = [await uow.persons.create(cover_face_id=None) for _ in range(person_count)]
        await uow.faces.set_persons(
            {
                face_id: person_ids[person]
                for face_id, person in zip(face_ids, person_of_face.tolist(), strict=True)
                if person >= 0
            }
        )
        first_of = {
            person: face_ids[int(np.argmax(person_of_face == person))] for person in range(person_count)
        }
        for person, person_id in enumerate(person_ids):
            await uow.persons.set_cover(person_id, first_of[person])
        await uow.commit()
    return person_ids[0]


async def best_of_three(run: Callable[[], Awaitable[Any]]) -> float:
    times = []
    for _ in range(3):
        started = time.perf_counter()
        await run()
        times.append(time.perf_counter() - started)
    return min(times)


async def speed(name: str, url: str, face_count: int, person_count: int) -> None:
    engine = engine_for_url(async_url(url))
    try:
        await ensure_schema(engine)

        def unit_of_work(library_id: str = DEFAULT_LIBRARY) -> SqlUnitOfWork:
            return SqlUnitOfWork(engine, library_id)

        pack = "bench_pack"
        started = time.perf_counter()
        large = await synthetic_library(unit_of_work, pack, face_count, person_count)
        stored = time.perf_counter() - started
        params = SuggestionParams(model_pack=pack)
        timings = {
            "persons list (all)": await best_of_three(lambda: list_persons(unit_of_work)),
            "persons list (page of 100)": await best_of_three(
                lambda: list_persons(unit_of_work, offset=500, limit=100)
            ),
            "500-face person page": await best_of_three(lambda: show_person(unit_of_work, large)),
            "50 unassigned faces + suggestions": await best_of_three(
                lambda: unassigned_faces(unit_of_work, params, limit=50)
            ),
            "merge suggestions (100)": await best_of_three(lambda: merge_suggestions(unit_of_work, params)),
        }
        print(f"\n{name}: {face_count} faces in {person_count} persons (stored in {stored:.1f} s); best of 3")
        for label, seconds in timings.items():
            print(f"  {label:40}{seconds * 1000:>9.0f} ms")
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--labels", type=Path, default=EVAL / "identity_labels.csv")
    parser.add_argument("--images", type=Path, default=EVAL)
    parser.add_argument("--faces", type=int, default=10_000)
    parser.add_argument("--persons", type=int, default=1_000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--postgres-admin-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--skip-quality", action="store_true")
    args = parser.parse_args()

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # quiet: warnings only
    settings = load_settings()
    if not args.skip_quality:
        faces = load_labelled_faces(settings, args.labels, args.images)
        default = grouping_params(settings)
        strict = replace(
            default,
            link_similarity=STRICT,
            merge_similarity=STRICT - 0.02,
            vote_similarity=STRICT,
            cohesion_similarity=STRICT - 0.01,
        )
        asyncio.run(quality(settings, faces, "LFW after a recluster", default))
        asyncio.run(
            quality(settings, faces, f"LFW after a stricter recluster (link {STRICT}): people split", strict)
        )
    backends = args.backends.split(",")
    if "sqlite" in backends:
        with tempfile.TemporaryDirectory() as folder:
            asyncio.run(
                speed("sqlite", f"sqlite:///{Path(folder) / 'bench.sqlite3'}", args.faces, args.persons)
            )
    if "postgresql" in backends:
        import psycopg2

        name = f"bench_people_{uuid.uuid4().hex[:8]}"
        admin = psycopg2.connect(args.postgres_admin_dsn)
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        try:
            base = args.postgres_admin_dsn.rsplit("/", 1)[0]
            url = f"{base}/{name}".replace("postgresql://", "postgresql+asyncpg://")
            asyncio.run(speed("postgresql", url, args.faces, args.persons))
        finally:
            with admin.cursor() as cursor:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.close()


if __name__ == "__main__":
    main()
