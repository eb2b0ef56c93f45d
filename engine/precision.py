"""Which reduced precisions a CPU runs natively, and what `precision="auto"` resolves to.

bf16 pays on a CPU only where oneDNN has bf16 arithmetic (AVX-512 BF16 or AMX): elsewhere it
converts to fp32 and back around every kernel and runs slower than fp32. int8 pays where the
integer dot-product units exist (AVX-512 VNNI, AVX-VNNI or AMX): without them ONNX Runtime's
u8s8 products can saturate and are not faster. The decision is a pure function of the CPU
flags (unit-tested); `cpu_flags` reads them from /proc/cpuinfo, falling back to PyTorch's
dispatch level where that file does not exist.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
BF16_UNITS = ("avx512_bf16", "amx_bf16")
INT8_UNITS = ("avx512_vnni", "avx_vnni", "amx_int8")
# What `auto` picks on a CPU with the units, per backend. bf16 (PyTorch): about half fp32's
# compute time and mask IoU >= 0.98 against fp32 on case A. int8 (ONNX Runtime) is faster
# than fp32 too, but its masks moved more (mean IoU 0.91-0.97 on case A's random weights), so
# it stays an explicit choice, to be checked with `python -m engine.fidelity` on your weights
# (docs/performance.md, "CPU reduced precision (bf16, int8)").
CPU_AUTO_ORDER: dict[str, tuple[str, ...]] = {"torch": ("bf16",)}
# The backend `auto` moves to for its precision when both backend and precision are auto.
AUTO_BACKEND_FOR = {"bf16": "torch"}


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of this machine (lower case)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    # no /proc (macOS, Windows): PyTorch's dispatch level tells AVX-512 apart, not its
    # extensions; assume none, so `auto` stays fp32 there
    return frozenset()


def has_units(precision: str, flags: Iterable[str] | None = None) -> bool:
    """Whether a CPU with `flags` (default: this one) computes `precision` natively."""
    present = cpu_flags() if flags is None else frozenset(flags)
    if precision == "fp32":
        return True
    if precision == "bf16":
        return any(f in present for f in BF16_UNITS)
    if precision == "int8":
        return any(f in present for f in INT8_UNITS)
    return False  # fp16: no CPU path here


def cpu_units(flags: Iterable[str] | None = None) -> list[str]:
    """The reduced-precision units present, for logs and `/readyz` details."""
    present = cpu_flags() if flags is None else frozenset(flags)
    return [f for f in (*BF16_UNITS, *INT8_UNITS) if f in present]


def check_cpu_precision(precision: str, backend: str, flags: Iterable[str] | None = None) -> None:
    """Refuse a precision the CPU path cannot run well: ValueError naming what is missing."""
    if precision == "fp32":
        return
    if precision == "fp16":
        raise ValueError("fp16 runs on a GPU only; on a CPU use bf16 (PyTorch) or int8")
    if precision == "bf16" and backend != "torch":
        raise ValueError("bf16 on a CPU runs in the PyTorch backend (EDGESAM_BACKEND=torch)")
    if precision == "int8" and backend not in ("onnxruntime", "torch"):
        raise ValueError(
            "int8 runs in the ONNX Runtime backend (EDGESAM_BACKEND=onnxruntime) or, with "
            "torchao installed, in the PyTorch backend (EDGESAM_BACKEND=torch)"
        )
    if not has_units(precision, flags):
        units = BF16_UNITS if precision == "bf16" else INT8_UNITS
        raise ValueError(
            f"{precision} on this CPU would be slower than fp32: it has none of {list(units)}"
        )


def cpu_backend_for(precision: str) -> str | None:
    """The CPU backend `auto` runs `precision` in (None: any). int8 also runs in PyTorch
    (engine.torch_int8), by explicit choice: it compiles for about a minute at each start."""
    return {"bf16": "torch", "int8": "onnxruntime"}.get(precision)


def auto_cpu_precision(flags: Iterable[str] | None = None) -> str:
    """The precision `auto` runs on this CPU when the backend is also `auto`."""
    for precision in AUTO_BACKEND_FOR:
        if has_units(precision, flags):
            return precision
    return "fp32"


def resolve_precision(
    precision: str, backend: str, device: str, flags: Iterable[str] | None = None
) -> str:
    """`auto` -> the precision to run; other values pass through.

    CPU: the backend's reduced precision where this CPU has its units, else fp32.
    CUDA: fp32; reduced precision on a GPU stays an explicit choice (fp16/bf16)."""
    if precision != "auto":
        return precision
    if str(device).partition(":")[0] != "cpu":
        return "fp32"
    for candidate in CPU_AUTO_ORDER.get(backend, ()):
        if has_units(candidate, flags):
            return candidate
    return "fp32"
