"""`image-grouping eval grouping`: group labelled faces exactly as the service would, and score it.

Each labelled image is analysed by the production pipeline and the face nearest the image centre is kept
(LFW labels that face). The faces are stored in a throwaway SQLite database through the real unit of
work, fed in a shuffled order through incremental assignment in batches (as `faces.detected` messages
arrive), then a full recluster runs; both states are scored. Unassigned faces count as singletons.

The analysed faces are cached in `.bench/` (keyed by pack, file list and the files' contents), so tuning
never re-runs the several-minute analysis.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import structlog
from pydantic import SecretStr
from tqdm import tqdm

from image_grouping.config import Settings
from image_grouping.errors import BadInputError
from image_grouping.handlers.ports import UnitOfWorkFactory
from image_grouping.models.faces import DetectedFace, FaceQuality, ImageAnalysis
from image_grouping.models.messages import FacesDetected, ReclusterRequested
from image_grouping.models.records import ImageResult

log = structlog.get_logger(__name__)

CACHE_DIR = Path(".bench")
BATCH_SIZE = 32  # images per incremental assignment call


@dataclass(frozen=True)
class LabelledFaces:
    """The face nearest the centre of each labelled image that has one, as arrays."""

    paths: np.ndarray  # (n,) str
    labels: np.ndarray  # (n,) str
    embeddings: np.ndarray  # (n, d) float32
    det_score: np.ndarray
    size_px: np.ndarray
    sharpness: np.ndarray
    yaw: np.ndarray
    images_without_face: int

    def __len__(self) -> int:
        return len(self.paths)


@dataclass(frozen=True)
class GroupingEvaluation:
    model_pack: str
    faces: int
    images_without_face: int
    incremental: dict[str, float]
    recluster: dict[str, float]
    incremental_seconds: float
    recluster_seconds: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def _contingency(truth: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, ...]:
    """(true sizes, found sizes, joint sizes, per face: its identity's size, its group's size, the faces
    sharing both); -1 (unassigned): a singleton."""
    truth, predicted = np.asarray(truth), np.asarray(predicted, np.int64).copy()
    loose = predicted < 0
    predicted[loose] = predicted.max(initial=0) + 1 + np.arange(loose.sum())
    _, true_cluster = np.unique(truth, return_inverse=True)
    _, found_cluster = np.unique(predicted, return_inverse=True)
    _, joint, joint_sizes = np.unique(
        true_cluster * (found_cluster.max(initial=0) + 1) + found_cluster,
        return_inverse=True,
        return_counts=True,
    )
    true_sizes, found_sizes = np.bincount(true_cluster), np.bincount(found_cluster)
    return (
        true_sizes,
        found_sizes,
        joint_sizes,
        true_sizes[true_cluster],
        found_sizes[found_cluster],
        joint_sizes[joint],
    )


def bcubed_per_face(truth: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each face's BCubed precision and recall (their means are the scores): for scores over a subset of
    the faces (say, one kind of degraded photo) within one grouping of them all."""
    *_, identity_size, group_size, both = _contingency(truth, predicted)
    return both / group_size, both / identity_size


def clustering_scores(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """BCubed and pairwise precision/recall/F1, share assigned, person count; -1 (unassigned): a singleton."""
    predicted = np.asarray(predicted, np.int64)
    loose = predicted < 0
    true_sizes, found_sizes, joint_sizes, identity_size, group_size, both = _contingency(truth, predicted)
    bcubed_precision = float(np.mean(both / group_size))
    bcubed_recall = float(np.mean(both / identity_size))

    def pairs(sizes: np.ndarray) -> float:
        return float((sizes * (sizes - 1) / 2).sum())

    together = pairs(joint_sizes)
    pairwise_precision = together / pairs(found_sizes) if pairs(found_sizes) else 1.0
    pairwise_recall = together / pairs(true_sizes) if pairs(true_sizes) else 1.0
    return {
        "bcubed_precision": bcubed_precision,
        "bcubed_recall": bcubed_recall,
        "bcubed_f1": _f1(bcubed_precision, bcubed_recall),
        "pairwise_precision": pairwise_precision,
        "pairwise_recall": pairwise_recall,
        "pairwise_f1": _f1(pairwise_precision, pairwise_recall),
        "assigned": float(np.mean(~loose)) if len(loose) else 0.0,
        "persons": len(np.unique(predicted[~loose])),
    }


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def evaluate_grouping(
    settings: Settings, labels: Path, images: Path, *, limit: int | None = None, seed: int = 0
) -> GroupingEvaluation:
    faces = load_labelled_faces(settings, labels, images, limit=limit)
    return asyncio.run(_group_as_the_service(settings, faces, seed))


def format_grouping_report(result: GroupingEvaluation) -> str:
    lines = [
        f"model pack {result.model_pack}: {result.faces} faces "
        f"({result.images_without_face} labelled images without a face)",
        f"{'':14}{'BCubed P':>10}{'R':>8}{'F1':>8}{'pairs P':>10}{'R':>8}{'F1':>8}"
        f"{'assigned':>10}{'persons':>9}",
    ]
    for name, scores, seconds in (
        ("incremental", result.incremental, result.incremental_seconds),
        ("recluster", result.recluster, result.recluster_seconds),
    ):
        lines.append(
            f"{name:14}{scores['bcubed_precision']:>10.4f}{scores['bcubed_recall']:>8.4f}"
            f"{scores['bcubed_f1']:>8.4f}{scores['pairwise_precision']:>10.4f}{scores['pairwise_recall']:>8.4f}"
            f"{scores['pairwise_f1']:>8.4f}{scores['assigned']:>10.1%}{scores['persons']:>9}"
            f"   ({seconds:.1f} s)"
        )
    return "\n".join(lines)


def load_labelled_faces(
    settings: Settings, labels: Path, images: Path, *, limit: int | None = None
) -> LabelledFaces:
    """Analyse each labelled image (or read the cache) and keep the face nearest its centre."""
    with labels.open(newline="") as file:
        rows = [(row["path"], row["label"]) for row in csv.DictReader(file)]
    rows = rows[:limit] if limit is not None else rows
    key = _cache_key(images, rows)
    cache = CACHE_DIR / f"grouping-{settings.model_pack}-{key}.npz"
    if cache.exists():
        with np.load(cache) as stored:
            return _from_npz(stored)
    faces = _analyse(settings, images, rows)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **asdict(faces))
    return faces


def _cache_key(images: Path, rows: list[tuple[str, str]]) -> str:
    """Paths, labels and each file's bytes: a folder rebuilt with other pixels (bench/degraded.py) never
    reuses the analyses of the old ones."""
    digest = hashlib.sha256()
    for path, label in rows:
        digest.update(f"{path},{label}\n".encode())
        file = images / path
        digest.update(hashlib.sha256(file.read_bytes()).digest() if file.is_file() else b"missing")
    return digest.hexdigest()[:16]


def _from_npz(stored: np.lib.npyio.NpzFile) -> LabelledFaces:
    values = {name: stored[name] for name in stored.files}
    values["images_without_face"] = int(values["images_without_face"])
    return LabelledFaces(**values)


def _analyse(settings: Settings, images: Path, rows: list[tuple[str, str]]) -> LabelledFaces:
    from image_grouping.bootstrap import load_analyzer

    analyzer = load_analyzer(settings)
    kept: list[tuple[str, str, DetectedFace]] = []
    missing = 0
    try:
        for path, label in tqdm(rows, desc="analysing", unit="image", disable=None):
            try:
                analysis = analyzer.analyze((images / path).read_bytes())
            except BadInputError:
                missing += 1
                continue
            face = _nearest_centre(analysis)
            if face is None:
                missing += 1
                continue
            kept.append((path, label, face))
    finally:
        analyzer.close()
    return LabelledFaces(
        paths=np.array([path for path, _, _ in kept]),
        labels=np.array([label for _, label, _ in kept]),
        embeddings=np.stack([face.embedding for _, _, face in kept]).astype(np.float32),
        det_score=np.array([face.quality.det_score for _, _, face in kept], np.float32),
        size_px=np.array([face.quality.size_px for _, _, face in kept], np.float32),
        sharpness=np.array([face.quality.sharpness for _, _, face in kept], np.float32),
        yaw=np.array([face.quality.yaw for _, _, face in kept], np.float32),
        images_without_face=missing,
    )


def _nearest_centre(analysis: ImageAnalysis) -> DetectedFace | None:
    if not analysis.faces:
        return None
    centre = np.array([analysis.width / 2, analysis.height / 2])

    def distance(face: DetectedFace) -> float:
        x1, y1, x2, y2 = face.box
        return float(np.hypot((x1 + x2) / 2 - centre[0], (y1 + y2) / 2 - centre[1]))

    return min(analysis.faces, key=distance)


@dataclass(frozen=True)
class ServiceGrouping:
    """Each face's person (-1: none) after the incremental assignment and after the recluster."""

    incremental: np.ndarray
    recluster: np.ndarray
    incremental_seconds: float
    recluster_seconds: float


async def _group_as_the_service(settings: Settings, faces: LabelledFaces, seed: int) -> GroupingEvaluation:
    grouped = await group_as_the_service(settings, faces, seed)
    return GroupingEvaluation(
        model_pack=settings.model_pack,
        faces=len(faces),
        images_without_face=faces.images_without_face,
        incremental=clustering_scores(faces.labels, grouped.incremental),
        recluster=clustering_scores(faces.labels, grouped.recluster),
        incremental_seconds=grouped.incremental_seconds,
        recluster_seconds=grouped.recluster_seconds,
    )


async def group_as_the_service(settings: Settings, faces: LabelledFaces, seed: int) -> ServiceGrouping:
    """The faces arrive in a shuffled order, in `faces.detected` batches, through the service's own
    grouping handlers (on a temporary SQLite database, with the settings' grouping parameters); then one
    recluster."""
    from image_grouping.bootstrap import bootstrap
    from image_grouping.handlers.recognition import handle_faces_detected, handle_recluster_requested

    pack = settings.model_pack
    with tempfile.TemporaryDirectory() as folder:
        settings = settings.model_copy(
            update={"database_url": SecretStr(f"sqlite+aiosqlite:///{folder}/eval.sqlite3"), "dry_run": False}
        )
        async with bootstrap(settings) as adapters:
            deps = adapters.grouping_deps()
            face_ids = await store_labelled_faces(adapters.unit_of_work, pack, faces)
            order = np.random.default_rng(seed).permutation(len(faces))
            started = time.perf_counter()
            for start in tqdm(
                range(0, len(order), BATCH_SIZE), desc="incremental", unit="batch", disable=None
            ):
                batch = face_ids[order[start : start + BATCH_SIZE]].tolist()
                detected = FacesDetected(
                    image_id="eval", face_ids=batch, face_count=len(batch), model_pack=pack
                )
                await handle_faces_detected([detected], deps)
            incremental_seconds = time.perf_counter() - started
            incremental = await _persons_of(adapters.unit_of_work, pack, face_ids)
            started = time.perf_counter()
            await handle_recluster_requested([ReclusterRequested(model_pack=pack, reason="eval")], deps)
            recluster_seconds = time.perf_counter() - started
            reclustered = await _persons_of(adapters.unit_of_work, pack, face_ids)
    return ServiceGrouping(incremental, reclustered, incremental_seconds, recluster_seconds)


async def store_labelled_faces(
    unit_of_work: UnitOfWorkFactory, model_pack: str, faces: LabelledFaces
) -> np.ndarray:
    """One image row per labelled face, written with the detection handler's own `save_analyses`."""
    results = []
    async with unit_of_work() as uow:
        for row, path in enumerate(faces.paths.tolist()):
            image = await uow.images.get_or_create(None, path)
            face = DetectedFace(
                box=(0.0, 0.0, float(faces.size_px[row]), float(faces.size_px[row])),
                landmarks=np.zeros((5, 2), np.float32),
                quality=FaceQuality(
                    det_score=float(faces.det_score[row]),
                    size_px=float(faces.size_px[row]),
                    sharpness=float(faces.sharpness[row]),
                    yaw=float(faces.yaw[row]),
                    pose="profile" if abs(faces.yaw[row]) > 0.5 else "frontal",
                ),
                embedding=faces.embeddings[row],
                thumbnail_jpeg=b"",
            )
            analysis = ImageAnalysis(width=250, height=250, model_pack=model_pack, faces=[face])
            content_hash = hashlib.sha256(path.encode()).hexdigest()
            results.append(ImageResult(image.id, content_hash, 0, analysis, [None]))
        face_ids = await uow.images.save_analyses(results)
        await uow.commit()
    return np.array([ids[0] for ids in face_ids], np.int64)


async def _persons_of(unit_of_work: UnitOfWorkFactory, model_pack: str, face_ids: np.ndarray) -> np.ndarray:
    async with unit_of_work() as uow:
        stored = await uow.faces.load_for_grouping(model_pack)
    person_of = dict(zip(stored.face_ids.tolist(), stored.person_ids.tolist(), strict=True))
    return np.array([person_of[face_id] for face_id in face_ids.tolist()], np.int64)


def immich_reference(
    embeddings: np.ndarray, *, max_distance: float = 0.5, min_faces: int = 3, search_depth: int = 64
) -> np.ndarray:
    """Immich's facial recognition (person.service.ts, handleRecognizeFaces), faces taken in array order.

    A face with at least `min_faces` faces (itself included) within cosine distance `max_distance` is a
    core face: it joins the person of its nearest assigned neighbour within that distance, or founds a new
    person. Other faces are deferred to a second pass, where they join the nearest assigned neighbour's
    person if there is one. Neighbours come from the same index as ours (Immich queries its own vector
    index per face); the nearest assigned face is looked for among the `search_depth` nearest.
    """
    from image_grouping.grouping import nearest_neighbours

    count = len(embeddings)
    near = nearest_neighbours(embeddings, search_depth)
    within = near.similarities >= 1 - max_distance
    matches = 1 + within[:, : min_faces - 1].sum(axis=1)  # itself plus its nearest within the distance
    labels = np.full(count, -1, np.int64)
    next_person = 0

    def nearest_person(face: int) -> int:
        for neighbour, close in zip(near.indices[face].tolist(), within[face].tolist(), strict=True):
            if not close:
                return -1
            if labels[neighbour] >= 0:
                return int(labels[neighbour])
        return -1

    deferred = []
    for face in range(count):
        if min_faces > 1 and matches[face] <= 1:
            continue
        person = nearest_person(face)
        if person < 0 and matches[face] >= min_faces:
            person, next_person = next_person, next_person + 1
        if person >= 0:
            labels[face] = person
        else:
            deferred.append(face)
    for face in deferred:
        labels[face] = nearest_person(face)
    return labels
