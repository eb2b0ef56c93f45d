"""Process-level tuning for CPU inference.

glibc serves allocations above its mmap threshold with fresh mappings and unmaps them on
free, so every multi-megabyte activation of the encoder page-faults its memory in again:
on a 2-core machine that was a fifth of the encoder's time. `tune_allocator` keeps such
blocks in the heap for reuse. It is called by the service's entry point and the benchmarks,
never on import: it changes the whole process. No effect (and no error) off glibc.
"""

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
# glibc caps the mmap threshold at 32 MiB on 64-bit; the largest activation is ~25 MiB.
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 512 * 1024 * 1024
TOP_PAD = 64 * 1024 * 1024

_tuned = False


def tune_allocator() -> bool:
    """Keep large blocks in the heap (glibc only). Returns True when applied."""
    global _tuned
    if _tuned:
        return True
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = all(
        mallopt(param, value)
        for param, value in (
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (_M_TOP_PAD, TOP_PAD),
        )
    )
    _tuned = bool(ok)
    log.debug("malloc tuning %s", "applied" if ok else "refused")
    return _tuned
