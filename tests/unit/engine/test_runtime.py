"""engine.runtime: the allocator tuning applies on glibc, is idempotent, and its mmap
threshold decides where a multi-megabyte block lives (the heap, or a mapping of its own that
goes back to the system on free)."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from engine.runtime import (
    ARENA_BACKEND_MMAP_THRESHOLD,
    MMAP_THRESHOLD,
    mmap_threshold_for,
    tune_allocator,
)
from service.metrics import _mallinfo2

REPO = Path(__file__).resolve().parents[3]
glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")


@glibc
def test_tune_allocator_applies_once() -> None:
    assert tune_allocator() is True
    assert tune_allocator() is True


def test_arena_backends_get_the_small_threshold() -> None:
    assert mmap_threshold_for("onnxruntime") == ARENA_BACKEND_MMAP_THRESHOLD
    assert mmap_threshold_for("tensorrt") == ARENA_BACKEND_MMAP_THRESHOLD
    assert mmap_threshold_for("torch") == MMAP_THRESHOLD
    assert mmap_threshold_for(None) == MMAP_THRESHOLD
    assert ARENA_BACKEND_MMAP_THRESHOLD < 4 * 2**20 < MMAP_THRESHOLD  # an embedding: 4 MiB


_PROBE = """
import sys
import numpy as np
from engine.runtime import tune_allocator
from service.metrics import _mallinfo2
assert tune_allocator(int(sys.argv[1]))
before = _mallinfo2()().hblkhd
block = np.empty(4 * 2**20, np.uint8)  # an embedding's size, through malloc
print(_mallinfo2()().hblkhd - before)
"""


def _mapped_growth(threshold: int) -> int:
    """Bytes newly mapped for one 4 MiB block in a fresh process (a fresh heap: glibc only
    weighs the threshold when the heap cannot serve a block from what it holds)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(threshold)],
        capture_output=True, text=True, check=True, env=env, cwd=REPO, timeout=120,
    )  # fmt: skip
    return int(out.stdout.strip().splitlines()[-1])


@glibc
def test_threshold_moves_embedding_sized_blocks() -> None:
    if _mallinfo2() is None:
        pytest.skip("glibc < 2.33 has no mallinfo2")
    assert _mapped_growth(ARENA_BACKEND_MMAP_THRESHOLD) >= 4 * 2**20  # its own mapping
    assert _mapped_growth(MMAP_THRESHOLD) == 0  # in the heap
