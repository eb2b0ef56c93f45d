"""The one backend registry: each backend name -> its class, how it is built from a weights
file, and which options it takes; `auto` is resolved here, once, into a frozen `BackendArgs`
that is passed down whole (callers never string-match backend names).

    args = BackendArgs.resolve("edge_sam_3x.pth", backend="auto", device="cpu")
    backend = create_backend(args)

`auto` on a GPU: TensorRT where it imports, else PyTorch on CUDA. On a CPU: the fastest CPU
backend as measured by `bench/encoder.py` (docs/performance.md): ONNX Runtime, then PyTorch;
but an explicit CPU precision runs in the one backend that has it (bf16: PyTorch, int8: ONNX
Runtime), and `auto` precision moves to the backend of the reduced precision this CPU has the
units for (`engine.precision`). An `.onnx` model file asked of `auto` or `torch` runs in ONNX
Runtime, and `auto` precision takes the precision that file was written in.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable

import torch

from engine.backends.base import Backend, BackendUnavailable
from engine.backends.onnxruntime_backend import OnnxRuntimeBackend
from engine.backends.tensorrt_backend import TensorRTBackend
from engine.backends.torch_backend import TorchBackend
from engine.build_edge_sam import build_edge_sam
from engine.precision import (
    AUTO_BACKEND_FOR,
    auto_cpu_precision,
    check_cpu_precision,
    cpu_backend_for,
    resolve_precision,
)
from engine.quantize import onnx_precision

AUTO = "auto"
# Order measured with bench/encoder.py on the 2-core CPU (figures in docs/performance.md):
# ONNX Runtime encodes and decodes faster than PyTorch, and degrades less under load.
CPU_PREFERENCE: tuple[str, ...] = ("onnxruntime", "torch")


def _build_torch(args: BackendArgs) -> Backend:
    model = build_edge_sam(args.path)
    return TorchBackend(model, device=args.device, precision=args.precision, **args.options)


def _build_onnxruntime(args: BackendArgs) -> Backend:
    return OnnxRuntimeBackend.from_path(
        args.path,
        device=args.device,
        decoder_path=args.decoder_path,
        precision=args.precision,
        **args.options,
    )


def _build_tensorrt(args: BackendArgs) -> Backend:
    return TensorRTBackend.from_path(
        args.path, device=args.device, precision=args.precision, **args.options
    )


@dataclass(frozen=True)
class BackendSpec:
    """A backend: its class, the builder from `BackendArgs`, and the serving knobs it takes
    (generic knob name -> the keyword its builder takes; see `serving_options`)."""

    name: str
    cls: type[Backend]
    build: Callable[[BackendArgs], Backend]
    knobs: Mapping[str, str]


BACKENDS: Mapping[str, BackendSpec] = MappingProxyType(
    {
        "torch": BackendSpec(
            "torch",
            TorchBackend,
            _build_torch,
            {
                "threads": "num_threads",
                "compile": "compile",
                "compile_warmup_batch": "compile_warmup_batch",
                "triton_mixer": "triton_mixer",
                "decoder_precision": "decoder_precision",
            },
        ),
        "onnxruntime": BackendSpec(
            "onnxruntime",
            OnnxRuntimeBackend,
            _build_onnxruntime,
            {"threads": "intra_op_num_threads"},
        ),
        "tensorrt": BackendSpec(
            "tensorrt", TensorRTBackend, _build_tensorrt, {"engine_cache_dir": "cache_dir"}
        ),
    }
)
BACKEND_NAMES: tuple[str, ...] = tuple(BACKENDS)
# Knobs only PyTorch has: `auto` picks PyTorch when one is on.
TORCH_ONLY_KNOBS = ("compile", "triton_mixer", "decoder_precision")


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


def _is_onnx(path: str | os.PathLike[str] | None) -> bool:
    return path is not None and Path(path).suffix == ".onnx"


def _on_cpu(device: str) -> bool:
    return str(device).partition(":")[0] == "cpu"


def resolve_backend_name(
    backend: str | None,
    device: str = "cpu",
    path: str | os.PathLike[str] | None = None,
    needs_torch: bool = False,
    precision: str = "fp32",
) -> str:
    """A backend name from BACKEND_NAMES for `backend` (a name, "auto" or None).

    needs_torch: an option only the PyTorch model has is on (granularity priors, compile, the
    Triton kernel), so `auto` means PyTorch. precision: on a CPU an explicit bf16 or int8
    pins `auto` to the backend that runs it, and `auto` to the backend of the precision this
    CPU runs natively (`engine.precision.AUTO_BACKEND_FOR`)."""
    if backend is not None and backend != AUTO and backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: use {', '.join(BACKEND_NAMES)} or {AUTO}")
    if _is_onnx(path) and backend in (None, AUTO, "torch"):
        return "onnxruntime"
    if backend not in (None, AUTO):
        return backend
    if needs_torch:
        return "torch"
    if _on_cpu(device):
        if precision == AUTO:
            pinned = AUTO_BACKEND_FOR.get(auto_cpu_precision())
        else:
            pinned = cpu_backend_for(precision)
        if pinned is not None:
            return pinned
    return auto_backend_name(device)


def resolve_precision_name(
    precision: str,
    backend: str,
    device: str = "cpu",
    path: str | os.PathLike[str] | None = None,
    check_units: bool = False,
) -> str:
    """`precision` for the resolved `backend`, `auto` resolved: an ONNX file's own precision
    (an int8 encoder is an explicit choice), else `engine.precision.resolve_precision` (the
    backend's reduced precision where this CPU has its units, else fp32).

    check_units: on a CPU, refuse (ValueError) a precision the backend does not run there or
    this CPU lacks the units for (it would run slower than fp32); the service refuses them
    at start-up, while the library runs them (to measure them, as `engine.fidelity` does)."""
    if precision == AUTO and _is_onnx(path):
        precision = onnx_precision(path)  # type: ignore[arg-type]
    precision = resolve_precision(precision, backend, device)
    if check_units and _on_cpu(device):
        check_cpu_precision(precision, backend)
    return precision


def serving_options(backend: str, **knobs: object) -> dict[str, object]:
    """The service's generic knobs (threads, compile, compile_warmup_batch, triton_mixer,
    engine_cache_dir) as `backend`'s own keywords; knobs that are None, False or not taken by
    this backend are left out."""
    taken = BACKENDS[backend].knobs
    return {
        taken[name]: value
        for name, value in knobs.items()
        if name in taken and value is not None and value is not False
    }


@dataclass(frozen=True)
class BackendArgs:
    """Everything a backend is built from, resolved: `backend` is never `auto`."""

    backend: str
    device: str = "cpu"
    precision: str = "fp32"
    path: Path | None = None
    decoder_path: Path | None = None
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    chosen_by_auto: bool = False
    precision_chosen_by_auto: bool = False

    @classmethod
    def resolve(
        cls,
        path: str | os.PathLike[str] | None,
        backend: str | None = AUTO,
        device: str = "cpu",
        precision: str = "fp32",
        decoder_path: str | os.PathLike[str] | None = None,
        options: Mapping[str, Any] | None = None,
        needs_torch: bool = False,
        knobs: Mapping[str, object] | None = None,
        check_units: bool = False,
    ) -> BackendArgs:
        """Resolve `backend` (a name, "auto" or None) and `precision` (a name or "auto") once.
        `options` are the backend's own keywords; `knobs` the service's generic ones,
        translated for the backend chosen (`serving_options`); `check_units`: see
        `resolve_precision_name`."""
        name = resolve_backend_name(backend, device, path, needs_torch, precision)
        return cls(
            backend=name,
            device=device,
            precision=resolve_precision_name(precision, name, device, path, check_units),
            path=None if path is None else Path(path),
            decoder_path=None if decoder_path is None else Path(decoder_path),
            options=MappingProxyType({**serving_options(name, **(knobs or {})), **(options or {})}),
            chosen_by_auto=backend in (None, AUTO),
            precision_chosen_by_auto=precision == AUTO,
        )

    @property
    def spec(self) -> BackendSpec:
        return BACKENDS[self.backend]


def create_backend(args: BackendArgs) -> Backend:
    """The backend `args` names, loaded."""
    return args.spec.build(args)
