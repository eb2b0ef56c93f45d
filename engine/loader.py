"""`load_model`: one entry point from a weights file to a ready backend."""

from __future__ import annotations

import os

from engine.backends.base import Backend
from engine.backends.registry import BackendArgs, create_backend
from engine.build_edge_sam import build_edge_sam

__all__ = ["build_edge_sam", "load_model"]


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
    backend: "torch", "onnxruntime", "tensorrt", or "auto"/None to pick the fastest available
    (`engine.backends.registry`).
    """
    args = BackendArgs.resolve(
        path,
        backend=backend,
        device=device,
        precision=precision,
        decoder_path=decoder_path,
        options=options,
    )
    return create_backend(args)
