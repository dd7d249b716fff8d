"""YuNet face detector (libfacedetection, BSD-3-Clause), compiled into the `yuface` wheel.

The network runs at whatever size it is given and finds faces of about 10 to 250 pixels, so a larger image
is shrunk to `input_size` on its long side, like SCRFD's input; a smaller one is never enlarged (its cost
grows with the pixels, and a face of 10 pixels is found as it is). A face that fills a small photo is
found in a close-up view, the image `closeup_padding` times smaller inside an empty border, as SCRFD's.
libfacedetection returns integer pixels: a score of 0-100, the box as x, y, width, height and five
landmarks (eyes, nose tip, mouth corners, the image's left one first). Its call holds the GIL; a lock
keeps its internal buffers to one caller at a time. It runs on OpenMP (yuface's own libgomp), whose
threads spin while they wait: with other work on the cores a run on two threads took ten times as long
as on one (1,070 against 104 ms at 640x443), so each run is given `threads` (1 when several images are
analysed at once).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from image_grouping.vision.scrfd import CLOSEUP_BORDER, Detections, merge_views

_EMPTY = Detections(np.empty((0, 4), np.float32), np.empty(0, np.float32), np.empty((0, 5, 2), np.float32))


def _openmp_threads_setter(package_folder: Path) -> Callable[[int], None] | None:
    """`omp_set_num_threads` of the libgomp that yuface's wheel bundles (None where it has none)."""
    libraries = sorted((package_folder.parent / "yuface.libs").glob("libgomp*.so*"))
    return ctypes.CDLL(str(libraries[0])).omp_set_num_threads if libraries else None


class YuNet:
    """`detect` is thread-safe (serialised)."""

    def __init__(
        self,
        *,
        input_size: int = 640,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        closeup_padding: float = 2.0,
        threads: int = 0,
    ) -> None:
        import yuface
        from yuface.yuface import detect  # the compiled network; its files were checked before

        self._detect_bgr = detect
        self._lock = threading.Lock()
        # OpenMP's thread count is per calling thread: set before each run (0: OpenMP's choice).
        self._set_threads = _openmp_threads_setter(Path(yuface.__file__).parent) if threads else None
        self.threads = threads
        self.input_size = input_size
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.closeup_padding = closeup_padding

    def detect(
        self, image: np.ndarray, *, closeup: bool = False, score_threshold: float | None = None
    ) -> Detections:
        """Faces in an RGB image. `closeup` also looks for faces that fill the frame (a second run);
        `score_threshold` replaces the detector's own for this call."""
        threshold = self.score_threshold if score_threshold is None else score_threshold
        views = [self._run(image, self.input_scale(*image.shape[:2]), threshold=threshold)]
        if closeup:
            views.append(self._closeup_view(image, threshold))
        return merge_views(views, self.nms_threshold)

    def detect_closeup(self, image: np.ndarray) -> Detections:
        """Only the close-up view's faces."""
        return merge_views([self._closeup_view(image)], self.nms_threshold)

    def input_scale(self, height: int, width: int) -> float:
        """Input pixels per image pixel: the long side fills the input, or stays as it is when smaller."""
        return min(1.0, self.input_size / max(height, width))

    def _closeup_view(self, image: np.ndarray, threshold: float | None = None) -> Detections:
        scale = self.input_scale(*image.shape[:2]) / self.closeup_padding
        return self._run(image, scale, CLOSEUP_BORDER, threshold)

    def _run(
        self, image: np.ndarray, scale: float, border: float = 0.0, threshold: float | None = None
    ) -> Detections:
        """One run on the image resized by `scale`; with a border it sits in the middle of an empty input."""
        height, width = image.shape[:2]
        new_width, new_height = max(1, round(width * scale)), max(1, round(height * scale))
        offset_x, offset_y = round(new_width * border), round(new_height * border)
        canvas = np.zeros((new_height + 2 * offset_y, new_width + 2 * offset_x, 3), dtype=np.uint8)
        resized = cv2.resize(image, (new_width, new_height), interpolation=cv2.INTER_AREA)
        canvas[offset_y : offset_y + new_height, offset_x : offset_x + new_width] = resized[..., ::-1]
        with self._lock:
            if self._set_threads is not None:
                self._set_threads(self.threads)
            rows = np.asarray(self._detect_bgr(canvas))
        if rows.size == 0:
            return _EMPTY
        # int16 rows: score, x, y, width, height, 10 landmark coordinates, and one column of no use.
        rows = rows.reshape(len(rows), -1)[:, :15].astype(np.float32)
        rows = rows[rows[:, 0] >= (self.score_threshold if threshold is None else threshold) * 100]
        if len(rows) == 0:
            return _EMPTY
        offset = np.array([offset_x, offset_y], dtype=np.float32)
        to_image = np.array([width / new_width, height / new_height], dtype=np.float32)
        corners = np.stack([rows[:, 1:3], rows[:, 1:3] + rows[:, 3:5]], axis=1)
        boxes = (corners - offset) * to_image
        landmarks = (rows[:, 5:15].reshape(-1, 5, 2) - offset) * to_image
        return Detections(boxes.reshape(-1, 4), rows[:, 0] / 100, landmarks.astype(np.float32))
