"""ArcFace recogniser (insightface `model_zoo/arcface_onnx.py`): aligned 112x112 crops to unit embeddings."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort

from image_grouping.vision.align import ARCFACE_SIZE, alignment_matrix

# Faces per run. Larger batches are no faster per face on CPU, and each face holds its intermediate
# tensors (5-10 MB in buffalo_sc's recogniser) until the run ends: a detection batch of group photos
# would otherwise hold hundreds of megabytes at once.
MAX_BATCH = 8


def _input_normalisation(model_path: Path) -> tuple[float, float]:
    """Mean and std the network expects: models converted from MXNet subtract and scale inside the graph."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    first_nodes = [node.name for node in graph.node[:8]]
    subtracts = any(name.startswith(("Sub", "_minus")) for name in first_nodes)
    multiplies = any(name.startswith(("Mul", "_mul")) for name in first_nodes)
    return (0.0, 1.0) if subtracts and multiplies else (127.5, 127.5)


class ArcFace:
    """One ArcFace ONNX session; `align` and `embed` are thread-safe (onnxruntime sessions are)."""

    crop_size = ARCFACE_SIZE

    def __init__(self, session: ort.InferenceSession, model_path: Path) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name
        self.input_size = int(session.get_inputs()[0].shape[2])
        self.embedding_dim = int(session.get_outputs()[0].shape[1])
        self.input_mean, self.input_std = _input_normalisation(model_path)

    def alignment_matrix(self, landmarks: np.ndarray) -> np.ndarray:
        """Image pixels to crop pixels: the detector's five landmarks on ArcFace's template."""
        return alignment_matrix(landmarks)

    def align(
        self, pixels: np.ndarray, matrix: np.ndarray, box: np.ndarray, landmarks: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The aligned crop of the face `matrix` (pixels to crop) maps, and that matrix."""
        del box, landmarks  # the matrix already holds the landmarks
        crop = cv2.warpAffine(pixels, matrix, (ARCFACE_SIZE, ARCFACE_SIZE), borderValue=0.0)
        return crop, matrix

    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        """L2-normalised float32 embeddings (n, dim) of aligned RGB crops, `MAX_BATCH` at a time."""
        if not crops:
            return np.empty((0, self.embedding_dim), dtype=np.float32)
        return np.concatenate(
            [self._embed(crops[start : start + MAX_BATCH]) for start in range(0, len(crops), MAX_BATCH)]
        )

    def _embed(self, crops: list[np.ndarray]) -> np.ndarray:
        blob = cv2.dnn.blobFromImages(
            crops,
            1.0 / self.input_std,
            (self.input_size, self.input_size),
            (self.input_mean,) * 3,
            swapRB=False,
        )
        embeddings = self.session.run([self.output_name], {self.input_name: blob})[0]
        return embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
