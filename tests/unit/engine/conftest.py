"""Fixtures for engine tests: the case A reference and a model loaded from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

REFERENCE = Path(__file__).resolve().parents[3].parent / "shared" / "reference"
CASE_A = REFERENCE / "case_a"


@pytest.fixture(scope="session")
def golden() -> dict[str, np.ndarray]:
    if not (CASE_A / "golden.npz").is_file():
        pytest.skip(f"reference data not found at {CASE_A}")
    with np.load(CASE_A / "golden.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def case_a_weights() -> Path:
    path = CASE_A / "weights.safetensors"
    if not path.is_file():
        pytest.skip(f"reference weights not found at {path}")
    return path


@pytest.fixture(scope="session")
def case_a_model(case_a_weights: Path):
    from engine import build_edge_sam

    return build_edge_sam(case_a_weights)


@pytest.fixture(scope="session")
def case_a_predictor(case_a_model, golden):
    """A predictor with case A's image set (one encoder run for the whole session)."""
    from engine import EdgeSamPredictor

    torch.set_num_threads(2)
    predictor = EdgeSamPredictor(case_a_model)
    predictor.set_image(golden["image"])
    return predictor
