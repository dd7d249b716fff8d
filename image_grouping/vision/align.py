"""5-point similarity alignment to the ArcFace 112x112 template (insightface `face_align.norm_crop`)."""

from __future__ import annotations

import cv2
import numpy as np

ARCFACE_SIZE = 112
# Eyes, nose tip and mouth corners of the template, in pixels of the 112x112 crop.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation mapping `source` onto `target` (Umeyama 1991).

    The same estimate as scikit-image's `SimilarityTransform.estimate`, which insightface uses. Returns
    the 2x3 matrix for `cv2.warpAffine`.
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    source_centered, target_centered = source - source_mean, target - target_mean
    covariance = target_centered.T @ source_centered / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.ones(2)
    if np.linalg.det(covariance) < 0:
        sign[1] = -1
    rotation = u @ np.diag(sign) @ vt
    scale = (singular * sign).sum() / source_centered.var(axis=0).sum()
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = target_mean - matrix[:, :2] @ source_mean
    return matrix


def alignment_matrix(landmarks: np.ndarray) -> np.ndarray:
    """The 2x3 matrix taking image pixels to the 112x112 crop for these 5 landmarks."""
    return similarity_transform(landmarks, ARCFACE_TEMPLATE)


def matrix_scale(matrix: np.ndarray) -> float:
    """Crop pixels per image pixel: above 1 the crop is an enlargement."""
    return float(np.hypot(matrix[0, 0], matrix[0, 1]))


def norm_crop(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The aligned 112x112 crop of the face with these landmarks (same channel order as `image`)."""
    return cv2.warpAffine(image, alignment_matrix(landmarks), (ARCFACE_SIZE, ARCFACE_SIZE), borderValue=0.0)
