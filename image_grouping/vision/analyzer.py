"""Image bytes to detected, aligned, embedded faces with quality and thumbnails.

Speed comes from decoding no more pixels than needed: a JPEG is first decoded at the smallest DCT scale
that still fills the detector's input; only when a face found there would be enlarged by its 112x112
alignment is the image decoded again, at the scale that face needs. Recognition runs once per call over
all faces of all images handed in. The async methods run in the analyzer's executor, `analysis_workers`
images at a time sharing the sessions, so that one image is decoded while another is in a network.

Faces added by hand (`HandBox`) are analysed where a person put them, like a detected face: the detector
looks again in the region around the box, in the decode the alignment uses, with a low score threshold
(a person says a face is there), and the detection that best overlaps the box gives the 5 landmarks; when
it finds none, the landmarks are where SCRFD puts them in its box on average. A detection of the whole
image at a hand face's place is that face, and is not reported twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import structlog

from image_grouping.errors import BadInputError
from image_grouping.models.face_identity import box_iou, match_boxes
from image_grouping.models.faces import DetectedFace, HandBox, ImageAnalysis
from image_grouping.vision.align import matrix_scale
from image_grouping.vision.decode import DecodedImage, decode_image
from image_grouping.vision.model_pack import load_analysis_models
from image_grouping.vision.params import VisionParams
from image_grouping.vision.quality import face_quality
from image_grouping.vision.scrfd import Detections
from image_grouping.vision.thumbnail import thumbnail_jpeg

log = structlog.get_logger(__name__)

# The region searched around a face added by hand: its box grown by at least this share of its longer
# side on each side, so that a face a little outside a sloppy box is still seen whole.
HAND_SEARCH_MARGIN = 0.5
HAND_SCORE_THRESHOLD = 0.1  # in that region, a weaker detection than usual is believed
HAND_MIN_IOU = 0.3  # ... if its box overlaps the drawn box this much
# The region is grown, first, to the detector's whole input, so the face is seen at the photo's own scale
# and gets the landmarks the detector would give it there; if nothing is found, it is searched again in
# the region alone, enlarged to the input (tiny faces). bench/hand_faces.py: of 33 FDDB faces the detector
# misses, the first alone finds 22, the second alone 24, both 26; the embedding of a detected face added
# back by its box has a median cosine of 0.987 to the detector's with both, 0.978 with the second alone.
HAND_SEARCH_REGIONS = (1.0, 0.0)  # the least share of the detector's input the region fills
# Where SCRFD (buffalo_sc) puts the 5 landmarks in its box, as shares of the box's width and height: the
# mean over the faces it finds in 400 FDDB photos (bench/hand_faces.py). The landmarks of a face added by
# hand that the detector cannot find at all.
BOX_LANDMARKS = np.array(
    [[0.29, 0.39], [0.70, 0.38], [0.50, 0.57], [0.33, 0.74], [0.67, 0.74]], dtype=np.float32
)


def landmarks_in_box(box: np.ndarray) -> np.ndarray:
    """(5, 2) landmarks where SCRFD puts them, on average, in a box of this place and size."""
    x1, y1, x2, y2 = (float(value) for value in box)
    return (np.array([x1, y1], np.float32) + BOX_LANDMARKS * np.array([x2 - x1, y2 - y1], np.float32)).astype(
        np.float32
    )


def _concatenate(first: Detections, second: Detections) -> Detections:
    return Detections(
        np.concatenate([first.boxes, second.boxes]).astype(np.float32),
        np.concatenate([first.scores, second.scores]).astype(np.float32),
        np.concatenate([first.landmarks, second.landmarks]).astype(np.float32),
    )


class Detector(Protocol):
    """A face detector with five landmarks (SCRFD, YuNet): RGB pixels in, detections out."""

    input_size: int  # long side of the network input, pixels
    score_threshold: float

    def detect(
        self, image: np.ndarray, *, closeup: bool = False, score_threshold: float | None = None
    ) -> Detections: ...

    def detect_closeup(self, image: np.ndarray) -> Detections: ...


class Recognizer(Protocol):
    """A recogniser with its own alignment (ArcFace, dlib's ResNet): aligned crops to unit embeddings."""

    crop_size: int
    embedding_dim: int

    def alignment_matrix(self, landmarks: np.ndarray) -> np.ndarray:
        """Image pixels to crop pixels from the detector's landmarks (sizes the decode)."""
        ...

    def align(
        self, pixels: np.ndarray, matrix: np.ndarray, box: np.ndarray, landmarks: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The crop and the pixels-to-crop matrix it was cut with (`matrix`, or a better one)."""
        ...

    def embed(self, crops: list[np.ndarray]) -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class _FoundFaces:
    """Detections of one image in full-resolution pixels, with their aligned crops, before embedding."""

    image: DecodedImage  # the decode the crops and thumbnails were taken from
    detections: Detections
    crops: list[np.ndarray]
    crop_landmarks: list[np.ndarray]  # landmarks in crop pixels, for the yaw
    hand_faces: int = 0  # the last this many faces are faces added by hand


class FaceAnalyzer:
    """A model pack's detector and recogniser; load once, share between threads and tasks."""

    def __init__(
        self, params: VisionParams, model_pack: str, detector: Detector, recognizer: Recognizer
    ) -> None:
        self.params = params
        self.model_pack = model_pack
        self.detector = detector
        self.recognizer = recognizer
        self.embedding_dim = recognizer.embedding_dim
        self._executor = ThreadPoolExecutor(params.analysis_workers, thread_name_prefix="face-analysis")

    @classmethod
    def load(cls, params: VisionParams) -> FaceAnalyzer:
        """The analyzer of the model pack `params` names."""
        models = load_analysis_models(params)
        return cls(params, models.name, models.detector, models.recognizer)

    def analyze(self, data: bytes, hand: Sequence[HandBox] = ()) -> ImageAnalysis:
        """Faces of one image: the detector's, then those added by hand (`hand`, in that order). Raises a
        BadInputError subclass for input that can never be analysed."""
        found = self._find_faces(data, hand)
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

    async def analyze_async(self, data: bytes, hand: Sequence[HandBox] = ()) -> ImageAnalysis:
        """`analyze` in the analyzer's executor, so the event loop never waits on the CPU work."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.analyze, data, hand)

    async def analyze_batch_async(self, images: list[bytes]) -> list[ImageAnalysis | BadInputError]:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.analyze_batch, images)

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    # --- steps --------------------------------------------------------------------------------------

    def _decode(self, data: bytes, **scale: float) -> DecodedImage:
        return decode_image(
            data, max_pixels=self.params.max_image_pixels, max_bytes=self.params.max_image_bytes, **scale
        )

    def _find_faces(self, data: bytes, hand: Sequence[HandBox] = ()) -> _FoundFaces:
        image = self._decode(data, min_scale=0.0, min_long_side=self.detector.input_size)
        detections = self._detect(image)
        guessed = [landmarks_in_box(np.array(each.box)) for each in hand]
        alignment = self.recognizer.alignment_matrix
        matrices = [alignment(landmarks) for landmarks in [*detections.landmarks, *guessed]]
        # The decode scale at which no aligned crop is enlarged more than allowed.
        needed = max((matrix_scale(m) for m in matrices), default=0.0) / self.params.align_max_upscale
        if image.scale < min(needed, 1.0) * 0.999:
            image = self._decode(data, min_scale=min(needed, 1.0))
        if hand:
            located = self._locate_hand_faces(image, hand)
            # A detection at a hand face's place is that face.
            covered = set(match_boxes(located.boxes, detections.boxes))
            detections = detections.take(
                np.array([index for index in range(len(detections)) if index not in covered], np.int64)
            )
            detections = _concatenate(detections, located)
            matrices = [alignment(landmarks) for landmarks in detections.landmarks]
        to_decoded = np.diag([image.scale_x, image.scale_y, 1.0])
        to_decoded_points = np.array([image.scale_x, image.scale_y], dtype=np.float64)
        crops, crop_landmarks = [], []
        for matrix, box, landmarks in zip(matrices, detections.boxes, detections.landmarks, strict=True):
            # Full-resolution -> crop matrix, re-expressed for the decoded pixels.
            crop, decoded_matrix = self.recognizer.align(
                image.pixels,
                matrix @ np.linalg.inv(to_decoded),
                (box.reshape(2, 2) * to_decoded_points).reshape(4),
                landmarks * to_decoded_points,
            )
            crops.append(crop)
            matrix = decoded_matrix @ to_decoded  # the matrix the crop was cut with, from full resolution
            crop_landmarks.append(landmarks @ matrix[:, :2].T + matrix[:, 2])
        return _FoundFaces(image, detections, crops, crop_landmarks, len(hand))

    def _locate_hand_faces(self, image: DecodedImage, hand: Sequence[HandBox]) -> Detections:
        """Box, score and landmarks of each face added by hand, in full-resolution pixels, in `hand`'s
        order: from the detector run again around the box, else from the box alone (score 0). A drawn box
        first becomes the detector's box of the face in it; the face is then analysed at that box as any
        later analysis of the photo will analyse it, so analysing it again gives the same embedding."""
        boxes, scores, landmarks = [], [], []
        for each in hand:
            box = np.array(each.box, np.float32)
            if each.drawn and (snapped := self._detection_at(image, box)) is not None:
                box = snapped[0]
            found = self._detection_at(image, box)
            boxes.append(box)
            scores.append(found[1] if found else 0.0)
            landmarks.append(found[2] if found else landmarks_in_box(box))
        return Detections(
            np.array(boxes, np.float32).reshape(-1, 4),
            np.array(scores, np.float32),
            np.array(landmarks, np.float32).reshape(-1, 5, 2),
        )

    def _detection_at(
        self, image: DecodedImage, box: np.ndarray
    ) -> tuple[np.ndarray, float, np.ndarray] | None:
        """The box, score and landmarks of the detection that overlaps `box` best, if one overlaps it
        enough: looked for at the scale of the photo, then, if none, enlarged."""
        for min_region in HAND_SEARCH_REGIONS:
            found = self._search_around(image, box, min_region)
            if not len(found):
                continue
            overlap = box_iou(found.boxes, box)[:, 0]
            best = int(np.argmax(overlap))
            if overlap[best] >= HAND_MIN_IOU:
                return found.boxes[best], float(found.scores[best]), found.landmarks[best]
        return None

    def _search_around(self, image: DecodedImage, box: np.ndarray, min_region: float) -> Detections:
        """The detector's faces in the region around `box` (full-resolution pixels in and out): the box
        grown by HAND_SEARCH_MARGIN, and to at least `min_region` of the detector's input."""
        side = float(max(box[2] - box[0], box[3] - box[1]))
        scale = np.array([image.scale_x, image.scale_y], np.float64)
        smallest = self.detector.input_size * min_region / float(scale.min())
        margin = max(HAND_SEARCH_MARGIN * side, (smallest - side) / 2)
        height, width = image.pixels.shape[:2]
        left, top = np.floor((box[:2] - margin) * scale).astype(int)
        right, bottom = np.ceil((box[2:] + margin) * scale).astype(int)
        left, top = max(left, 0), max(top, 0)
        right, bottom = min(right, width), min(bottom, height)
        if right - left < 2 or bottom - top < 2:
            return Detections(
                np.empty((0, 4), np.float32), np.empty(0, np.float32), np.empty((0, 5, 2), np.float32)
            )
        found = self.detector.detect(
            np.ascontiguousarray(image.pixels[top:bottom, left:right]),
            closeup=True,
            score_threshold=HAND_SCORE_THRESHOLD,
        )
        offset = np.array([left, top], np.float32)
        to_full = scale.astype(np.float32)
        boxes = (found.boxes.reshape(-1, 2, 2) + offset) / to_full
        return Detections(boxes.reshape(-1, 4), found.scores, (found.landmarks + offset) / to_full)

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
        first_by_hand = len(embeddings) - found.hand_faces
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
                    added_by_hand=index >= first_by_hand,
                )
            )
        return ImageAnalysis(width=image.width, height=image.height, model_pack=self.model_pack, faces=faces)
