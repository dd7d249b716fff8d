"""Plain InsightFace, the reference the benchmarks compare against, loaded without any download."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any


def insightface_app(allowed_modules: list[str]) -> Any:
    """`FaceAnalysis` on buffalo_sc as a user would write it (det_size 640, onnxruntime's defaults).

    FaceAnalysis only accepts a folder, and loads from it lazily: the bundled files are copied into a
    temporary one that lives as long as the app and is removed with it (or at exit).
    """
    from insightface.app import FaceAnalysis

    from image_grouping.vision.model_pack import BUNDLED_MODEL_FOLDER, BUNDLED_PACKS

    folder = tempfile.TemporaryDirectory(prefix="buffalo_sc_")
    for name in BUNDLED_PACKS["buffalo_sc"]:
        shutil.copy(BUNDLED_MODEL_FOLDER / name, Path(folder.name) / name)
    app = FaceAnalysis(name=folder.name, allowed_modules=allowed_modules, providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=-1, det_size=(640, 640))
    app.model_folder = folder  # keeps the files as long as the app
    return app
