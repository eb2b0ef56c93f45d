"""Helpers shared by the benchmark scripts (imported as `bench._common`, repository root on
the path): the reference checkpoint and image, percentiles, a free loopback port."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def reference_dir() -> Path:
    """../shared/reference where the checkout has one, else the repository's own reference
    data (tests/reference), built once into .cache/reference: seeded weights and the
    official outputs, the same case A either way."""
    shared = REPO.parent / "shared" / "reference"
    if shared.is_dir():
        return shared
    built = REPO / ".cache" / "reference"
    if not (built / "case_a" / "weights.safetensors").is_file():
        from tests.reference.materialize import materialize

        materialize(built)
    return built


def pct(values: list[float], q: float) -> float:
    """q-th percentile of durations in seconds, in milliseconds."""
    return float(np.percentile(np.asarray(values), q)) * 1e3


def checkpoint(arg: str | None) -> Path | None:
    """--checkpoint, else EDGESAM_CHECKPOINT, else case A's weights."""
    if arg:
        return Path(arg)
    if os.environ.get("EDGESAM_CHECKPOINT"):
        return Path(os.environ["EDGESAM_CHECKPOINT"])
    return reference_dir() / "case_a" / "weights.safetensors"


def load_image() -> np.ndarray:
    """Case A's photo (512x512)."""
    with np.load(reference_dir() / "case_a" / "golden.npz") as z:
        return z["image"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
