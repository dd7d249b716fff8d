"""Face analysis: image bytes to detected, aligned and embedded faces (SCRFD + ArcFace on onnxruntime, or
the licence-clean YuNet + dlib ResNet)."""

from image_grouping.vision.analyzer import FaceAnalyzer
from image_grouping.vision.decode import DecodedImage, decode_image
from image_grouping.vision.model_pack import ModelPackError

__all__ = ["DecodedImage", "FaceAnalyzer", "ModelPackError", "decode_image"]
