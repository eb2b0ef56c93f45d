"""Model construction, beside the modules (as segment-anything's `build_sam.py`).

    model = edge_sam_model_registry["edge_sam"](checkpoint="edge_sam_3x.pth")

One table from model name to builder; callers never string-match model names. Every builder
takes an optional checkpoint (an official `.pth` or a `.safetensors`; None: random weights,
for tests and demos) and returns the module in eval mode.
"""

from __future__ import annotations

import os
from typing import Callable

from engine.checkpoint import load_into, read_state_dict
from engine.modeling import EdgeSam
from engine.modeling.image_encoder import UpsampleMode


def build_edge_sam(
    checkpoint: str | os.PathLike[str] | None = None, upsample_mode: UpsampleMode = "bicubic"
) -> EdgeSam:
    """The EdgeSAM module (eval mode), with the checkpoint's weights when one is given.

    upsample_mode: the neck's stage-3 upsampling; the official PyTorch model is bicubic, the
    official ONNX export bilinear. Both load the same checkpoints (edge_sam.pth, edge_sam_3x.pth).
    """
    model = EdgeSam(upsample_mode=upsample_mode)
    if checkpoint is not None:
        load_into(model, read_state_dict(checkpoint), str(checkpoint))
    return model.eval()


def build_edge_sam_bilinear(checkpoint: str | os.PathLike[str] | None = None) -> EdgeSam:
    """EdgeSAM with the bilinear stage-3 upsampling of the official ONNX export."""
    return build_edge_sam(checkpoint, upsample_mode="bilinear")


edge_sam_model_registry: dict[str, Callable[..., EdgeSam]] = {
    "default": build_edge_sam,
    "edge_sam": build_edge_sam,
    "edge_sam_bilinear": build_edge_sam_bilinear,
}
