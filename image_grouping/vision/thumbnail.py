"""Face thumbnails: a square crop around the box with a margin, as JPEG bytes."""

from __future__ import annotations

import cv2
import numpy as np


def thumbnail_jpeg(image: np.ndarray, box: np.ndarray, *, size: int, margin: float, quality: int) -> bytes:
    """JPEG of the square around `box` (x1, y1, x2, y2 in `image` pixels) grown by `margin` of its side.

    The square is shifted to stay inside the image where it can, and clipped where it cannot.
    """
    height, width = image.shape[:2]
    side = max(box[2] - box[0], box[3] - box[1]) * (1 + 2 * margin)
    side = min(side, max(width, height))
    centre_x, centre_y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    left = round(float(np.clip(centre_x - side / 2, 0, max(0, width - side))))
    top = round(float(np.clip(centre_y - side / 2, 0, max(0, height - side))))
    crop = image[top : top + round(side), left : left + round(side)]
    scale = size / max(crop.shape[:2])
    target = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    resized = cv2.resize(crop, target, interpolation=interpolation)
    ok, encoded = cv2.imencode(
        ".jpg", cv2.cvtColor(resized, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise RuntimeError("JPEG encoding of a thumbnail failed")
    return encoded.tobytes()
