"""`load_model`: one entry point from a weights file to a ready backend."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from engine.backends.base import Backend
from engine.checkpoint import load_into, read_state_dict
from engine.modeling import EdgeSam
from engine.modeling.image_encoder import UpsampleMode

log = logging.getLogger(__name__)


def build_edge_sam(
    checkpoint: str | os.PathLike[str] | None = None, upsample_mode: UpsampleMode = "bicubic"
) -> EdgeSam:
    """The EdgeSAM module (eval mode), with the checkpoint's weights when one is given."""
    model = EdgeSam(upsample_mode=upsample_mode)
    if checkpoint is not None:
        load_into(model, read_state_dict(checkpoint), str(checkpoint))
    return model.eval()


def load_model(
    path: str | os.PathLike[str] | None,
    device: str = "cpu",
    backend: str | None = "torch",
    decoder_path: str | os.PathLike[str] | None = None,
    precision: str = "fp32",
    **options: object,
) -> Backend:
    """Load weights into a backend.

    path: an official `.pth`, a `.safetensors`, or an `<name>_encoder.onnx` (whose
    `<name>_decoder.onnx` is found beside it unless `decoder_path` is given). None builds
    randomly initialised weights (for tests and demos only).
    backend: "torch", "onnxruntime", "tensorrt", or "auto"/None to pick the fastest available.
    """
    if path is not None and Path(path).suffix == ".onnx":
        backend = "onnxruntime" if backend in (None, "auto", "torch") else backend
    if backend in (None, "auto"):
        from engine.backends.select import auto_backend_name

        backend = auto_backend_name(device)
    if backend == "torch":
        from engine.backends.torch_backend import TorchBackend

        model = build_edge_sam(path)
        return TorchBackend(model, device=device, precision=precision, **options)  # type: ignore[arg-type]
    if backend == "onnxruntime":
        from engine.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend.from_path(
            path, device=device, decoder_path=decoder_path, precision=precision, **options
        )
    if backend == "tensorrt":
        from engine.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend.from_path(path, device=device, precision=precision, **options)
    raise ValueError(f"unknown backend {backend!r}: use torch, onnxruntime, tensorrt or auto")
