"""Process-level tuning for CPU inference.

glibc serves allocations above its mmap threshold with fresh mappings and unmaps them on
free, so every multi-megabyte activation of the encoder page-faults its memory in again:
on a 2-core machine that was a fifth of the PyTorch encoder's time. `tune_allocator` keeps
such blocks in the heap for reuse. It is called by the service's entry point and the
benchmarks, never on import: it changes the whole process. No effect (and no error) off glibc.

The price is memory: megabyte blocks that live in the heap fragment it as they come and go
(the in-process embedding cache's 4 MiB entries, Redis payloads, decoded images), and a long
soak saw RSS creep up by 10-20% over half an hour with live memory flat. ONNX Runtime and
TensorRT keep their activations in their own arenas, so for them nothing pays for the heap's
large blocks: `mmap_threshold_for` gives them a 1 MiB threshold, which returns those blocks
to the system on free (docs/reliability.md, "30-minute soak").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
# glibc caps the mmap threshold at 32 MiB on 64-bit; the largest activation is ~25 MiB.
MMAP_THRESHOLD = 32 * 1024 * 1024
# For backends whose activations live in their own arena (ONNX Runtime, TensorRT).
ARENA_BACKEND_MMAP_THRESHOLD = 1024 * 1024
TRIM_THRESHOLD = 512 * 1024 * 1024
TOP_PAD = 64 * 1024 * 1024
ARENA_BACKENDS = frozenset({"onnxruntime", "tensorrt"})

_tuned: int | None = None


def mmap_threshold_for(backend: str | None) -> int:
    """The mmap threshold for the backend that computes in this process (None: unknown,
    PyTorch's)."""
    return ARENA_BACKEND_MMAP_THRESHOLD if backend in ARENA_BACKENDS else MMAP_THRESHOLD


def tune_allocator(mmap_threshold: int = MMAP_THRESHOLD) -> bool:
    """Keep large blocks in the heap (glibc only). Returns True when applied. A second call
    with another threshold moves it (blocks allocated before stay where they are)."""
    global _tuned
    if _tuned == mmap_threshold:
        return True
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    # glibc's own tunables, where the operator set them, win over ours
    ok = all(
        mallopt(param, value)
        for param, value, env in (
            (_M_MMAP_THRESHOLD, mmap_threshold, "MALLOC_MMAP_THRESHOLD_"),
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_"),
            (_M_TOP_PAD, TOP_PAD, "MALLOC_TOP_PAD_"),
        )
        if env not in os.environ
    )
    _tuned = mmap_threshold if ok else None
    log.debug(
        "malloc tuning %s (mmap threshold %d)", "applied" if ok else "refused", mmap_threshold
    )
    return ok
