"""Automatic backend choice."""

import pytest
import torch

from engine.backends.base import BackendUnavailable
from engine.backends.select import CPU_PREFERENCE, auto_backend_name, choose_backend


def test_gpu_prefers_tensorrt_then_torch() -> None:
    assert choose_backend("cuda", True, True, True) == "tensorrt"
    assert choose_backend("cuda:1", True, False, True) == "torch"
    with pytest.raises(BackendUnavailable, match="no CUDA"):
        choose_backend("cuda", False, True, True)


def test_cpu_takes_the_measured_fastest() -> None:
    assert CPU_PREFERENCE[0] == "onnxruntime"
    assert choose_backend("cpu", False, False, True) == "onnxruntime"
    assert choose_backend("cpu", True, True, False) == "torch"  # TensorRT never on the CPU
    with pytest.raises(ValueError):
        choose_backend("tpu", False, False, True)


def test_auto_on_this_machine() -> None:
    assert auto_backend_name("cpu") == "onnxruntime"
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable):
            auto_backend_name("cuda")
