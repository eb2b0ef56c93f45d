"""Fixtures for engine tests: the case A reference and a model loaded from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session")
def golden(reference_dir: Path) -> dict[str, np.ndarray]:
    with np.load(reference_dir / "case_a" / "golden.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def case_a_weights(reference_dir: Path) -> Path:
    return reference_dir / "case_a" / "weights.safetensors"


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
