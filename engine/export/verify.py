"""An exported pair checked against the PyTorch model it came from, in ONNX Runtime."""

from __future__ import annotations

import torch

from engine.backends.onnxruntime_backend import OnnxRuntimeBackend
from engine.export.to_onnx import OnnxPair, Progress
from engine.modeling import EdgeSam


def _quiet(_: str) -> None:
    pass


def verify_onnx(model: EdgeSam, pair: OnnxPair, progress: Progress = _quiet) -> dict[str, float]:
    """Run the exported pair in ONNX Runtime (CPU) on random inputs and report the largest
    difference from the PyTorch model."""
    torch.manual_seed(0)
    images = torch.randn((1, 3, 1024, 1024))
    backend = OnnxRuntimeBackend(pair.encoder, pair.decoder, device="cpu")
    with torch.inference_mode():
        ref_emb = model.encode(images)
        coords = torch.tensor([[[300.0, 400.0], [0.0, 0.0]]])
        labels = torch.tensor([[1, -1]])
        ref_logits, ref_iou = model.decode(ref_emb, coords, labels)
    emb = backend.encode(images)
    logits, iou = backend.decode(ref_emb, coords, labels)
    diffs = {
        "embedding_max_abs": float((emb - ref_emb).abs().max()),
        "logits_max_abs": float((logits - ref_logits).abs().max()),
        "iou_max_abs": float((iou - ref_iou).abs().max()),
    }
    progress(
        "verified against PyTorch (ONNX Runtime CPU): "
        + ", ".join(f"{k}={v:.2e}" for k, v in diffs.items())
    )
    return diffs
