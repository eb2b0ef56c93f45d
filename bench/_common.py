"""Helpers shared by the benchmark scripts (imported as `bench._common`, repository root on
the path): the reference checkpoint and image, percentiles, a free loopback port."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CASE_A = REPO.parent / "shared" / "reference" / "case_a"


def pct(values: list[float], q: float) -> float:
    """q-th percentile of durations in seconds, in milliseconds."""
    return float(np.percentile(np.asarray(values), q)) * 1e3


def checkpoint(arg: str | None) -> Path | None:
    """--checkpoint, else EDGESAM_CHECKPOINT, else case A's weights when present."""
    if arg:
        return Path(arg)
    if os.environ.get("EDGESAM_CHECKPOINT"):
        return Path(os.environ["EDGESAM_CHECKPOINT"])
    ref = CASE_A / "weights.safetensors"
    return ref if ref.is_file() else None


def load_image() -> np.ndarray:
    """Case A's photo when present, else a fixed random 768x1024 image."""
    ref = CASE_A / "golden.npz"
    if ref.is_file():
        with np.load(ref) as z:
            return z["image"]
    return np.random.default_rng(0).integers(0, 256, (768, 1024, 3), dtype=np.uint8)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
