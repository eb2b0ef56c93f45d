"""Fixtures for the backend tests: case-A weights exported to ONNX once per session (through
the `python -m engine.export onnx` entry point), and ONNX Runtime backends over our export and
over the official-format pair."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.backends.onnxruntime_backend import OnnxRuntimeBackend
from engine.loader import build_edge_sam
from engine.modeling import EdgeSam

ORT_THREADS = 2


@pytest.fixture(scope="session")
def case_a_dir(reference_dir: Path) -> Path:
    return reference_dir / "case_a"


@pytest.fixture(scope="session")
def case_a_onnx_dir(reference_dir: Path) -> Path:
    return reference_dir / "case_a_onnx"


@pytest.fixture(scope="session")
def golden(case_a_dir: Path) -> dict[str, np.ndarray]:
    with np.load(case_a_dir / "golden.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def golden_onnx(case_a_onnx_dir: Path) -> dict[str, np.ndarray]:
    with np.load(case_a_onnx_dir / "golden_onnx.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def case_a_model(case_a_dir: Path) -> EdgeSam:
    return build_edge_sam(case_a_dir / "weights.safetensors")


@pytest.fixture(scope="session")
def exported(case_a_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Our ONNX pair for case A, written by the CLI; returns paths and what it printed."""
    from engine.export.__main__ import main

    out_dir = tmp_path_factory.mktemp("onnx")
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = main(
            [
                "onnx",
                "--checkpoint",
                str(case_a_dir / "weights.safetensors"),
                "--out-dir",
                str(out_dir),
                "--name",
                "case_a",
                "--no-verify",
            ]
        )
    return {
        "code": code,
        "stdout": buffer.getvalue(),
        "encoder": out_dir / "case_a_encoder.onnx",
        "decoder": out_dir / "case_a_decoder.onnx",
    }


@pytest.fixture(scope="session")
def ort_ours(exported: dict[str, object]) -> Iterator[OnnxRuntimeBackend]:
    backend = OnnxRuntimeBackend(exported["encoder"], intra_op_num_threads=ORT_THREADS)
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def ort_official(case_a_onnx_dir: Path) -> Iterator[OnnxRuntimeBackend]:
    backend = OnnxRuntimeBackend(
        case_a_onnx_dir / "edge_sam_case_a_encoder.onnx", intra_op_num_threads=ORT_THREADS
    )
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def ours_embedding(ort_ours: OnnxRuntimeBackend, golden: dict[str, np.ndarray]) -> torch.Tensor:
    """ONNX Runtime's embedding of case A's input tensor (computed once)."""
    return ort_ours.encode(torch.from_numpy(golden["input_tensor"]))
