"""Per-face quality signals that grouping can weigh."""

from __future__ import annotations

import cv2
import numpy as np

from image_grouping.models.faces import FaceQuality, Pose

# |yaw| above this (nose past ~half the way to an eye) counts as a profile.
PROFILE_YAW = 0.5


def sharpness(aligned_rgb: np.ndarray) -> float:
    """Variance of the Laplacian of the grey aligned crop: low for blurred faces."""
    grey = cv2.cvtColor(aligned_rgb, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def estimate_yaw(aligned_landmarks: np.ndarray) -> float:
    """Rough yaw in [-1, 1] from the landmarks in the upright aligned crop: the nose between the eyes.

    0 is frontal; +-1 means the nose has reached the line of an eye, i.e. a full profile.
    """
    left_eye, right_eye, nose = aligned_landmarks[0], aligned_landmarks[1], aligned_landmarks[2]
    half_eye_distance = max(abs(right_eye[0] - left_eye[0]) / 2, 1e-6)
    eye_centre = (left_eye[0] + right_eye[0]) / 2
    return float(np.clip((nose[0] - eye_centre) / half_eye_distance, -1.0, 1.0))


def face_quality(
    *, det_score: float, box: np.ndarray, aligned_rgb: np.ndarray, aligned_landmarks: np.ndarray
) -> FaceQuality:
    yaw = estimate_yaw(aligned_landmarks)
    pose: Pose = "profile" if abs(yaw) > PROFILE_YAW else "frontal"
    size_px = float(min(box[2] - box[0], box[3] - box[1]))
    return FaceQuality(
        det_score=float(det_score), size_px=size_px, sharpness=sharpness(aligned_rgb), yaw=yaw, pose=pose
    )
