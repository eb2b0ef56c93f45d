"""The automatic backend choice.

GPU: TensorRT where it imports and a GPU is present, else PyTorch on CUDA.
CPU: the fastest CPU backend as measured by `bench/encoder.py` on the 2-core development
machine (figures in docs/performance.md, "CPU"): ONNX Runtime, then PyTorch.
"""

from __future__ import annotations

import importlib.util

import torch

from engine.backends.base import BackendUnavailable

# Order measured with bench/encoder.py (2 threads, case-A weights): ONNX Runtime encodes a
# little faster and predicts as fast with its split decoder. Both halves stay in ONNX Runtime:
# a PyTorch decoder beside its encoder was once slowed by the other runtime's idle threads and,
# though faster on a quiet machine, degrades badly when another process is busy on a core
# where ONNX Runtime does not (docs/performance.md, "CPU", "Click latency", "Under load").
CPU_PREFERENCE: tuple[str, ...] = ("onnxruntime", "torch")


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def choose_backend(
    device: str, cuda_available: bool, has_tensorrt: bool, has_onnxruntime: bool
) -> str:
    """Pure decision over what is present (unit-tested)."""
    kind = str(device).partition(":")[0]
    if kind == "cuda":
        if not cuda_available:
            raise BackendUnavailable(f"device {device!r} asked for, but torch sees no CUDA GPU")
        return "tensorrt" if has_tensorrt else "torch"
    if kind != "cpu":
        raise ValueError(f"device must be cpu or cuda[:N], got {device!r}")
    present = {"onnxruntime": has_onnxruntime, "torch": True}
    return next(name for name in CPU_PREFERENCE if present[name])


def auto_backend_name(device: str = "cpu") -> str:
    """'tensorrt', 'torch' or 'onnxruntime' for this machine and device."""
    kind = str(device).partition(":")[0]
    cuda = torch.cuda.is_available() if kind == "cuda" else False
    return choose_backend(
        device,
        cuda_available=cuda,
        has_tensorrt=kind == "cuda" and _has_module("tensorrt"),
        has_onnxruntime=_has_module("onnxruntime"),
    )
