"""EdgeSAM inference engine: model, checkpoint loading, pre/post-processing, backends,
predictor and automatic mask generator. Knows nothing of HTTP, gRPC or Redis."""

from engine.backends.base import Backend, BackendError, BackendInfo, UnsupportedPrompt
from engine.checkpoint import CheckpointError, convert_to_safetensors
from engine.core import DecodeResult, ImageEmbedding, decode, encode_images
from engine.loader import build_edge_sam, load_model
from engine.modeling import EdgeSam
from engine.predictor import EdgeSamPredictor


def __getattr__(name: str):  # noqa: ANN202 - lazy: the AMG pulls pycocotools and cv2
    if name == "EdgeSamAutomaticMaskGenerator":
        from engine.amg import EdgeSamAutomaticMaskGenerator

        return EdgeSamAutomaticMaskGenerator
    raise AttributeError(name)


__all__ = [
    "Backend",
    "BackendError",
    "BackendInfo",
    "CheckpointError",
    "DecodeResult",
    "EdgeSam",
    "EdgeSamAutomaticMaskGenerator",
    "EdgeSamPredictor",
    "ImageEmbedding",
    "UnsupportedPrompt",
    "build_edge_sam",
    "convert_to_safetensors",
    "decode",
    "encode_images",
    "load_model",
]
