"""int8 encoder for PyTorch on a CPU: static post-training quantisation through torchao's PT2E
flow and the x86 inductor quantiser, compiled by inductor (oneDNN int8 convolutions on VNNI).

On a 2-core AMD EPYC (Zen 4, AVX-512 VNNI) it encoded a 1024x1024 image in about 210 ms of one
thread's CPU time against 390 ms for ONNX Runtime's QDQ int8 encoder and 330 ms for bf16
(docs/performance.md, "CPU reduced precision"). The price: quantising and compiling take about
a minute at each start (inductor caches compiled code on disk, so restarts are faster), and
the graph is specialised to one image per call (the backend encodes batches image by image).

Weights per channel (symmetric int8), activations per tensor (uint8, affine), calibrated with
min-max observers on images preprocessed as the service preprocesses them: by default
`engine.quantize.synthetic_images()`, the same procedural set the ONNX int8 export uses.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from engine.transforms import preprocess_image

log = logging.getLogger(__name__)

# torchao's release for torch 2.13 (its PT2E quantisation moved out of torch.ao)
TORCHAO_REQUIREMENT = "torchao==0.18.0"


def available() -> bool:
    """Whether torchao's PT2E quantiser imports here."""
    try:
        _import_pt2e()
    except ImportError:
        return False
    return True


def _import_pt2e() -> tuple[Any, Any, Any, Any]:
    try:
        # torchao logs a warning for each CUDA kernel library it cannot load on a CPU build
        logging.getLogger("torchao").setLevel(logging.ERROR)
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    except Exception as exc:  # ImportError, or a torchao built for another torch
        raise ImportError(
            f"int8 in the PyTorch backend needs {TORCHAO_REQUIREMENT} "
            f"(pip install '{TORCHAO_REQUIREMENT}'): {exc}"
        ) from exc
    return prepare_pt2e, convert_pt2e, xiq.X86InductorQuantizer, xiq


def calibration_batches(images: Sequence[np.ndarray]) -> list[torch.Tensor]:
    """HxWx3 uint8 images -> 1x3x1024x1024 float32 encoder inputs, as the service makes them."""
    return [preprocess_image(image)[0] for image in images]


def quantize_encoder(
    encoder: torch.nn.Module,
    images: Sequence[np.ndarray] | None = None,
    mixed_bf16: bool = False,
) -> torch.nn.Module:
    """A compiled int8 copy of a (re-parameterised, fp32) encoder, calibrated on `images`
    (default: the synthetic calibration set), for one 1x3x1024x1024 image per call.
    mixed_bf16: what stays float (activations between quantised convs, GELU, the neck's
    upsampling) runs in bf16 under autocast (for CPUs with AVX-512 BF16 or AMX)."""
    prepare_pt2e, convert_pt2e, quantizer_cls, xiq = _import_pt2e()
    if images is None:
        from engine.quantize import synthetic_images

        images = synthetic_images()
    batches = calibration_batches(images)
    if not batches:
        raise ValueError("int8 calibration needs at least one image")
    quantizer = quantizer_cls()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    with torch.no_grad():
        graph = torch.export.export(encoder.eval(), (batches[0],)).module()
        prepared = prepare_pt2e(graph, quantizer)
        for x in batches:
            prepared(x)
        quantized = convert_pt2e(prepared)
    log.info("int8 encoder calibrated on %d images", len(batches))
    return _FrozenInt8(torch.compile(quantized, dynamic=False), mixed_bf16)


class _FrozenInt8(torch.nn.Module):
    """Runs the compiled int8 graph with inductor's freezing on (it folds the quantised
    weights and prepacks them for oneDNN: the int8 speed) and autograd off, whatever mode
    the caller is in: compilation happens at the first call, and again on a guard miss."""

    def __init__(self, compiled: torch.nn.Module, mixed_bf16: bool = False) -> None:
        super().__init__()
        self.compiled = compiled
        self.mixed_bf16 = mixed_bf16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch._inductor.config as inductor_config

        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.mixed_bf16)
        with torch.inference_mode(False), torch.no_grad():
            with inductor_config.patch(freezing=True), autocast:
                out = self.compiled(x.clone() if x.is_inference() else x)
        return out.float()
