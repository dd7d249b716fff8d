"""Image bytes to detected, aligned, embedded faces with quality and thumbnails.

Speed comes from decoding no more pixels than needed: a JPEG is first decoded at the smallest DCT scale
that still fills the detector's input; only when a face found there would be enlarged by its 112x112
alignment is the image decoded again, at the scale that face needs. Recognition runs once per call over
all faces of all images handed in. The async methods run in the analyzer's executor, `analysis_workers`
images at a time sharing the sessions, so that one image is decoded while another is in a network.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
import structlog

from image_grouping.errors import BadInputError
from image_grouping.models.faces import DetectedFace, ImageAnalysis
from image_grouping.vision.align import ARCFACE_SIZE, alignment_matrix, matrix_scale
from image_grouping.vision.arcface import ArcFace
from image_grouping.vision.decode import DecodedImage, decode_image
from image_grouping.vision.model_pack import load_model_pack
from image_grouping.vision.params import VisionParams
from image_grouping.vision.quality import face_quality
from image_grouping.vision.scrfd import SCRFD, Detections
from image_grouping.vision.thumbnail import thumbnail_jpeg

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class _FoundFaces:
    """Detections of one image in full-resolution pixels, with their aligned crops, before embedding."""

    image: DecodedImage  # the decode the crops and thumbnails were taken from
    detections: Detections
    crops: list[np.ndarray]
    crop_landmarks: list[np.ndarray]  # landmarks in crop pixels, for the yaw


class FaceAnalyzer:
    """SCRFD + ArcFace on onnxruntime; load once, share between threads and tasks."""

    def __init__(self, params: VisionParams, model_pack: str, detector: SCRFD, recognizer: ArcFace) -> None:
        self.params = params
        self.model_pack = model_pack
        self.detector = detector
        self.recognizer = recognizer
        self.embedding_dim = recognizer.embedding_dim
        self._executor = ThreadPoolExecutor(params.analysis_workers, thread_name_prefix="face-analysis")

    @classmethod
    def load(cls, params: VisionParams) -> FaceAnalyzer:
        """The analyzer of the model pack `params` names."""
        pack = load_model_pack(params)
        detector = SCRFD(
            pack.detector,
            input_size=params.det_input_size,
            score_threshold=params.det_score_threshold,
            nms_threshold=params.det_nms_threshold,
            closeup_padding=params.det_closeup_padding,
        )
        return cls(params, pack.name, detector, ArcFace(pack.recognizer, pack.recognizer_path))

    def analyze(self, data: bytes) -> ImageAnalysis:
        """Faces of one image. Raises a BadInputError subclass for input that can never be analysed."""
        found = self._find_faces(data)
        return self._finish(found, self.recognizer.embed(found.crops))

    def detect(self, data: bytes) -> Detections:
        """Only the detector's boxes, scores and landmarks, in full-resolution pixels (for evaluation)."""
        return self._detect(self._decode(data, min_scale=0.0, min_long_side=self.detector.input_size))

    def analyze_batch(self, images: list[bytes]) -> list[ImageAnalysis | BadInputError]:
        """Faces of several images with one recognition batch; bad input is returned in its place."""
        found: list[_FoundFaces | BadInputError] = []
        for data in images:
            try:
                found.append(self._find_faces(data))
            except BadInputError as error:
                found.append(error)
        crops = [crop for item in found if isinstance(item, _FoundFaces) for crop in item.crops]
        embeddings = self.recognizer.embed(crops)
        results: list[ImageAnalysis | BadInputError] = []
        start = 0
        for item in found:
            if isinstance(item, BadInputError):
                results.append(item)
                continue
            results.append(self._finish(item, embeddings[start : start + len(item.crops)]))
            start += len(item.crops)
        return results

    async def analyze_async(self, data: bytes) -> ImageAnalysis:
        """`analyze` in the analyzer's executor, so the event loop never waits on the CPU work."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.analyze, data)

    async def analyze_batch_async(self, images: list[bytes]) -> list[ImageAnalysis | BadInputError]:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.analyze_batch, images)

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    # --- steps --------------------------------------------------------------------------------------

    def _decode(self, data: bytes, **scale: float) -> DecodedImage:
        return decode_image(
            data, max_pixels=self.params.max_image_pixels, max_bytes=self.params.max_image_bytes, **scale
        )

    def _find_faces(self, data: bytes) -> _FoundFaces:
        image = self._decode(data, min_scale=0.0, min_long_side=self.detector.input_size)
        detections = self._detect(image)
        matrices = [alignment_matrix(landmarks) for landmarks in detections.landmarks]
        # The decode scale at which no aligned crop is enlarged more than allowed.
        needed = max((matrix_scale(m) for m in matrices), default=0.0) / self.params.align_max_upscale
        if image.scale < min(needed, 1.0) * 0.999:
            image = self._decode(data, min_scale=min(needed, 1.0))
        to_decoded = np.diag([image.scale_x, image.scale_y, 1.0])
        crops, crop_landmarks = [], []
        for matrix, landmarks in zip(matrices, detections.landmarks, strict=True):
            # Full-resolution -> crop matrix, re-expressed for the decoded pixels.
            decoded_matrix = matrix @ np.linalg.inv(to_decoded)
            crops.append(
                cv2.warpAffine(image.pixels, decoded_matrix, (ARCFACE_SIZE, ARCFACE_SIZE), borderValue=0.0)
            )
            crop_landmarks.append(landmarks @ matrix[:, :2].T + matrix[:, 2])
        return _FoundFaces(image, detections, crops, crop_landmarks)

    def _detect(self, image: DecodedImage) -> Detections:
        """Faces in full-resolution pixels, small faces dropped.

        Small images are also searched in the close-up view, where a face that fills the frame fits the
        detector; larger images only when nothing was found at full scale. On small photos the close-up
        finds more than big faces: on FDDB it adds 0.47 points of recall, of which running it only when
        the first pass found nothing keeps 0.08, and also when that pass found a face of 0.3 of the
        frame or more, 0.16. So there it always runs, in its own smaller input.
        """
        small = max(image.pixels.shape[:2]) <= self.detector.input_size
        detections = self.detector.detect(image.pixels, closeup=small)
        if len(detections) == 0 and not small:
            detections = self.detector.detect_closeup(image.pixels)
        to_full = np.array([1 / image.scale_x, 1 / image.scale_y], dtype=np.float32)
        boxes = (detections.boxes.reshape(-1, 2, 2) * to_full).reshape(-1, 4)
        full = Detections(boxes, detections.scores, detections.landmarks * to_full)
        sizes = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        return full.take(np.flatnonzero(sizes >= self.params.min_face_size))

    def _finish(self, found: _FoundFaces, embeddings: np.ndarray) -> ImageAnalysis:
        image, detections, params = found.image, found.detections, self.params
        faces = []
        for index, embedding in enumerate(embeddings):
            box = detections.boxes[index]
            decoded_box = box * np.array([image.scale_x, image.scale_y] * 2, dtype=np.float32)
            faces.append(
                DetectedFace(
                    box=tuple(float(value) for value in box),
                    landmarks=detections.landmarks[index].astype(np.float32),
                    quality=face_quality(
                        det_score=float(detections.scores[index]),
                        box=box,
                        aligned_rgb=found.crops[index],
                        aligned_landmarks=found.crop_landmarks[index],
                    ),
                    embedding=embedding,
                    thumbnail_jpeg=thumbnail_jpeg(
                        image.pixels,
                        decoded_box,
                        size=params.thumbnail_size,
                        margin=params.thumbnail_margin,
                        quality=params.thumbnail_quality,
                    ),
                )
            )
        return ImageAnalysis(width=image.width, height=image.height, model_pack=self.model_pack, faces=faces)
