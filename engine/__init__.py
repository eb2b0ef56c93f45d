"""EdgeSAM inference engine: model, checkpoint loading, pre/post-processing, backends,
predictor and automatic mask generator. Knows nothing of HTTP, gRPC or Redis."""

from engine.amg import EdgeSamAutomaticMaskGenerator
from engine.backends.base import Backend, BackendError, BackendInfo, UnsupportedPrompt
from engine.build_edge_sam import build_edge_sam, edge_sam_model_registry
from engine.checkpoint import CheckpointError, convert_to_safetensors
from engine.core import DecodeResult, ImageEmbedding, decode, encode_images
from engine.loader import load_model
from engine.modeling import EdgeSam
from engine.predictor import EdgeSamPredictor

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
    "edge_sam_model_registry",
    "encode_images",
    "load_model",
]
