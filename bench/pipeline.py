"""Throughput, embedding agreement and peak memory: this project's pipeline versus plain InsightFace.

Two sets of photos, in a temporary folder:
- 12 MP: 12-megapixel JPEGs (4032x3024, quality 90) built by upscaling all group photos of
  ../shared/eval and a sample of its detection photos;
- small: a sample of the FDDB / PASCAL detection photos (about 450x340) and as many LFW crops (250x250),
  as they are.
Each side runs in its own subprocess on the same files, alternating which side goes first over the
rounds (and the sets within a round) so that both see the same machine load:

- insightface, as a user would write it: `cv2.imread` + `FaceAnalysis(name=<buffalo_sc folder>).get(img)`
  at det_size 640, onnxruntime's default threads (all cores), one image after the other;
- ours, as the service runs it: the default settings (one image in flight per core, one onnxruntime
  thread per run), `max_in_flight` images handed to `FaceAnalyzer.analyze_async` at once (decode,
  detect, align, embed, quality, thumbnails).

    .venv/bin/python bench/pipeline.py --images 61 --small 150 --rounds 2

Another model pack: `--pack yunet_dlib` runs ours with that pack; `--reference-pack buffalo_sc` makes the
reference our own pipeline with that pack instead of InsightFace (two packs side by side, no insightface
needed). Embedding agreement is printed only when both sides make embeddings of one kind.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # ours is this tree's `image_grouping`, whatever the installed one points at
EVAL = REPO.parent / "shared" / "eval"
LANDSCAPE = (4032, 3024)


def build_images(folder: Path, count: int, seed: int) -> list[Path]:
    """Upscale real photos to 12 MP (cover the frame, centre-crop), all group photos first."""
    from PIL import Image

    sources = sorted((EVAL / "groups").glob("*.jpg"))
    detection = sorted((EVAL / "detection" / "images").rglob("*.jpg"))
    sources += random.Random(seed).sample(detection, max(0, count - len(sources)))
    paths = []
    for index, source in enumerate(sources[:count]):
        image = Image.open(source).convert("RGB")
        width, height = LANDSCAPE if image.width >= image.height else LANDSCAPE[::-1]
        scale = max(width / image.width, height / image.height)
        resized = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
        left, top = (resized.width - width) // 2, (resized.height - height) // 2
        path = folder / f"{index:03d}_{source.stem}.jpg"
        resized.crop((left, top, left + width, top + height)).save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def link_small_photos(folder: Path, count: int, seed: int) -> list[Path]:
    """`count` detection photos and `count` LFW crops, linked into `folder` as they are."""
    rng = random.Random(seed)
    detection = sorted((EVAL / "detection" / "images").rglob("*.jpg"))
    identity = sorted((EVAL / "identity").glob("*/*.jpg"))
    sources = rng.sample(detection, min(count, len(detection))) + rng.sample(
        identity, min(count, len(identity))
    )
    paths = []
    for index, source in enumerate(sources):
        path = folder / f"{index:04d}_{source.name}"
        path.symlink_to(source)
        paths.append(path)
    return paths


Result = tuple[list[np.ndarray], list[np.ndarray], list[float], float]


def run_ours(paths: list[Path], pack: str | None = None) -> Result:
    from image_grouping.bootstrap import load_analyzer
    from image_grouping.config import load_settings

    settings = load_settings(**({"model_pack": pack} if pack else {}))
    analyzer = load_analyzer(settings)
    analyzer.analyze(paths[0].read_bytes())  # warm-up, like the reference's
    size = analyzer.embedding_dim
    print(
        f"ours ({settings.model_pack}): {settings.analysis_workers} analysis workers, "
        f"{settings.max_in_flight} images in flight",
        flush=True,
    )

    async def analyse(path: Path, slots: asyncio.Semaphore) -> tuple[np.ndarray, np.ndarray, float]:
        async with slots:
            started = time.perf_counter()
            data = await asyncio.to_thread(path.read_bytes)
            faces = (await analyzer.analyze_async(data)).faces
            latency = time.perf_counter() - started
        boxes = np.array([face.box for face in faces], dtype=np.float32).reshape(-1, 4)
        embeddings = np.array([face.embedding for face in faces], dtype=np.float32).reshape(-1, size)
        return boxes, embeddings, latency

    async def analyse_all() -> list[tuple[np.ndarray, np.ndarray, float]]:
        slots = asyncio.Semaphore(settings.max_in_flight)
        return await asyncio.gather(*(analyse(path, slots) for path in paths))

    started = time.perf_counter()
    results = asyncio.run(analyse_all())
    seconds = time.perf_counter() - started
    analyzer.close()
    boxes, embeddings, latencies = (list(column) for column in zip(*results, strict=True))
    return boxes, embeddings, latencies, seconds


def run_insightface(paths: list[Path]) -> Result:
    import cv2
    from reference import insightface_app

    app = insightface_app(["detection", "recognition"])
    app.get(cv2.imread(str(paths[0])))

    boxes, embeddings, latencies = [], [], []
    started = time.perf_counter()
    for path in paths:
        image_started = time.perf_counter()
        faces = app.get(cv2.imread(str(path)))
        latencies.append(time.perf_counter() - image_started)
        boxes.append(np.array([face.bbox for face in faces], dtype=np.float32).reshape(-1, 4))
        embeddings.append(
            np.array([face.normed_embedding for face in faces], dtype=np.float32).reshape(-1, 512)
        )
    return boxes, embeddings, latencies, time.perf_counter() - started


def side(name: str, folder: Path, out: Path, pack: str | None) -> None:
    paths = sorted(folder.glob("*.jpg"))
    if name == "ours" or pack:
        boxes, embeddings, latencies, seconds = run_ours(paths, pack)
    else:
        boxes, embeddings, latencies, seconds = run_insightface(paths)
    np.savez(
        out,
        seconds=seconds,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        latencies=np.array(latencies),
        counts=np.array([len(b) for b in boxes]),
        boxes=np.concatenate(boxes),
        embeddings=np.concatenate(embeddings),
    )


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    width = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = width * height
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / (area(box) + area(boxes) - inter)


def agreement(ours: dict, reference: dict) -> tuple[list[float], int, int]:
    """Cosine of the embeddings of the same faces (matched by box IoU >= 0.5), and the unmatched counts."""
    cosines, only_ours, only_reference = [], 0, 0
    ours_start = reference_start = 0
    for ours_count, reference_count in zip(ours["counts"], reference["counts"], strict=True):
        ours_boxes = ours["boxes"][ours_start : ours_start + ours_count]
        reference_boxes = reference["boxes"][reference_start : reference_start + reference_count]
        matched = set()
        for index, box in enumerate(ours_boxes):
            overlaps = iou(box, reference_boxes) if reference_count else np.zeros(0)
            best = int(np.argmax(overlaps)) if overlaps.size else -1
            if best < 0 or overlaps[best] < 0.5 or best in matched:
                only_ours += 1
                continue
            matched.add(best)
            cosines.append(
                float(
                    ours["embeddings"][ours_start + index] @ reference["embeddings"][reference_start + best]
                )
            )
        only_reference += reference_count - len(matched)
        ours_start += ours_count
        reference_start += reference_count
    return cosines, only_ours, only_reference


def run_side(name: str, folder: Path, out: Path, pack: str | None) -> dict:
    command = [sys.executable, __file__, "--side", name, "--folder", str(folder), "--out", str(out)]
    subprocess.run(command + (["--side-pack", pack] if pack else []), check=True)
    return dict(np.load(out))


def report(results: dict, images: int, labels: dict[str, str]) -> None:
    for name in ("insightface", "ours"):
        result = results[name]
        faces, seconds = int(result["counts"].sum()), float(result["seconds"])
        print(
            f"{labels[name]:12s} {images / seconds:6.2f} images/s {faces / seconds:7.2f} faces/s "
            f"({faces} faces)  latency median {1000 * np.median(result['latencies']):.0f} ms "
            f"p95 {1000 * np.percentile(result['latencies'], 95):.0f} ms  "
            f"peak RSS {float(result['peak_rss_mb']):.0f} MB"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--images", type=int, default=61, help="12 MP images to build (21 group photos first)."
    )
    parser.add_argument(
        "--small", type=int, default=150, help="Small photos: this many detection photos and LFW crops each."
    )
    parser.add_argument("--rounds", type=int, default=2, help="Runs of each side, alternating.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pack", help="Model pack of ours (default MODEL_PACK).")
    parser.add_argument(
        "--reference-pack", help="The reference is ours with this pack instead of InsightFace."
    )
    parser.add_argument("--side", choices=["ours", "insightface"], help=argparse.SUPPRESS)
    parser.add_argument("--side-pack", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        side(args.side, args.folder, args.out, args.side_pack)
        return

    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as temporary:
        folders = {"12 MP": Path(temporary) / "12mp", "small": Path(temporary) / "small"}
        for folder in folders.values():
            folder.mkdir()
        sizes = {
            "12 MP": len(build_images(folders["12 MP"], args.images, args.seed)),
            "small": len(link_small_photos(folders["small"], args.small, args.seed)),
        }
        print(f"{sizes['12 MP']} images of 12 MP, {sizes['small']} small photos, {os.cpu_count()} CPUs")
        # Each round's seconds of each set: (insightface, ours).
        seconds: dict[str, list[tuple[float, float]]] = {name: [] for name in folders}
        last: dict[str, dict] = {}
        for round_index in range(args.rounds):
            order = ("insightface", "ours") if round_index % 2 == 0 else ("ours", "insightface")
            labels = {
                "insightface": f"ours ({args.reference_pack})" if args.reference_pack else "insightface",
                "ours": f"ours ({args.pack})" if args.pack else "ours",
            }
            for set_name, folder in folders.items():
                packs = {"ours": args.pack, "insightface": args.reference_pack}
                results = {
                    name: run_side(name, folder, Path(temporary) / f"{name}.npz", packs[name])
                    for name in order
                }
                sequence = " then ".join(labels[name] for name in order)
                print(f"--- {set_name}, round {round_index + 1} ({sequence})")
                report(results, sizes[set_name], labels)
                reference, ours = (float(results[name]["seconds"]) for name in ("insightface", "ours"))
                seconds[set_name].append((reference, ours))
                print(f"throughput ratio {labels['ours']} / {labels['insightface']}: {reference / ours:.2f}x")
                last[set_name] = results

    for set_name, results in last.items():
        print(f"=== {set_name}")
        # One side's run of a set lasts seconds, so a burst of load on the machine moves a round's ratio;
        # all rounds' images over all their seconds weigh every round by its length.
        rounds = seconds[set_name]
        pooled = sum(reference for reference, _ in rounds) / sum(ours for _, ours in rounds)
        print(
            f"throughput ratio over {len(rounds)} rounds: "
            + ", ".join(f"{reference / ours:.2f}x" for reference, ours in rounds)
            + f"; all rounds together {pooled:.2f}x"
        )
        same_kind = results["ours"]["embeddings"].shape[1:] == results["insightface"]["embeddings"].shape[1:]
        cosines, only_ours, only_reference = (
            agreement(results["ours"], results["insightface"]) if same_kind else ([], 0, 0)
        )
        if not same_kind:
            print("embeddings of two packs: no agreement to measure")
        elif cosines:
            median, fifth = np.median(cosines), np.percentile(cosines, 5)
            print(
                f"embedding agreement over {len(cosines)} matched faces: median cosine {median:.4f}, "
                f"5th percentile {fifth:.4f}, min {min(cosines):.4f}"
            )
        if same_kind:
            print(f"faces found only by ours: {only_ours}, only by the reference: {only_reference}")


if __name__ == "__main__":
    main()
