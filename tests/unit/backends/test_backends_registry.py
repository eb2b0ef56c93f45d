"""The backend registry: names, the automatic choice, options, one resolved args object."""

from pathlib import Path

import pytest
import torch

from engine.backends.base import BackendUnavailable
from engine.backends.registry import CPU_PREFERENCE, auto_backend_name, choose_backend


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


def test_every_backend_is_registered_with_its_class() -> None:
    from engine.backends.onnxruntime_backend import OnnxRuntimeBackend
    from engine.backends.registry import BACKEND_NAMES, BACKENDS
    from engine.backends.tensorrt_backend import TensorRTBackend
    from engine.backends.torch_backend import TorchBackend

    assert BACKEND_NAMES == ("torch", "onnxruntime", "tensorrt")
    assert BACKENDS["torch"].cls is TorchBackend
    assert BACKENDS["onnxruntime"].cls is OnnxRuntimeBackend
    assert BACKENDS["tensorrt"].cls is TensorRTBackend


def test_the_service_accepts_exactly_the_registered_names() -> None:
    """EDGESAM_BACKEND's choices (validated before torch loads) are the registry's names."""
    import typing

    from engine.backends.registry import AUTO, BACKEND_NAMES
    from service.config import Settings

    choices = typing.get_args(Settings.model_fields["backend"].annotation)
    assert set(choices) == {*BACKEND_NAMES, AUTO}


def test_names_are_resolved_once_into_frozen_args(monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from engine.backends import registry

    monkeypatch.setattr(registry, "_has_module", lambda name: name == "onnxruntime")
    args = registry.BackendArgs.resolve("w.pth", backend="auto", device="cpu")
    assert (args.backend, args.chosen_by_auto) == ("onnxruntime", True)
    assert registry.BackendArgs.resolve("w.pth", "auto", needs_torch=True).backend == "torch"
    assert registry.BackendArgs.resolve(None, None).backend == "onnxruntime"
    # an ONNX file asked of auto or torch runs in ONNX Runtime; tensorrt stays tensorrt
    assert registry.BackendArgs.resolve("m_encoder.onnx", "torch").backend == "onnxruntime"
    assert registry.BackendArgs.resolve("m_encoder.onnx", "tensorrt").backend == "tensorrt"
    explicit = registry.BackendArgs.resolve("w.pth", "torch", options={"num_threads": 2})
    assert (explicit.backend, explicit.chosen_by_auto) == ("torch", False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        explicit.backend = "onnxruntime"  # type: ignore[misc]
    with pytest.raises(TypeError):
        explicit.options["num_threads"] = 4  # type: ignore[index]
    with pytest.raises(ValueError, match="unknown backend 'tflite'"):
        registry.BackendArgs.resolve("w.pth", "tflite")


def test_serving_knobs_become_each_backends_own_options() -> None:
    from engine.backends.registry import serving_options

    knobs = {
        "threads": 2,
        "compile": False,
        "compile_warmup_batch": None,
        "triton_mixer": True,
        "engine_cache_dir": "/engines",
    }
    assert serving_options("torch", **knobs) == {"num_threads": 2, "triton_mixer": True}
    assert serving_options("onnxruntime", **knobs) == {"intra_op_num_threads": 2}
    assert serving_options("tensorrt", **knobs) == {"cache_dir": "/engines"}


def test_load_model_builds_the_registered_backend() -> None:
    from engine.backends.torch_backend import TorchBackend
    from engine.loader import load_model

    backend = load_model(None, backend="torch", optimize=False)
    assert isinstance(backend, TorchBackend) and backend.info.name == "torch"
    with pytest.raises(ValueError, match="unknown backend"):
        load_model(None, backend="tflite")


def test_precision_is_resolved_with_the_backend(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """On a CPU an explicit bf16/int8 pins `auto` to the backend that runs it; `auto`
    precision is bf16 (PyTorch) where the CPU has the units, else fp32; an ONNX file's `auto`
    is the precision it was written in; `check_units` refuses what this CPU lacks."""
    import onnx

    import engine.precision
    from engine.backends.registry import BackendArgs

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    zen4 = frozenset({"avx2", "avx512_bf16", "avx512_vnni"})
    monkeypatch.setattr(engine.precision, "cpu_flags", lambda: zen4)

    def resolved(*args: object, **kwargs: object) -> tuple:
        a = BackendArgs.resolve(*args, **kwargs)  # type: ignore[arg-type]
        return a.backend, a.precision, a.precision_chosen_by_auto

    assert resolved("w.pth", "auto", "cpu", "auto") == ("torch", "bf16", True)
    assert resolved("w.pth", "auto", "cpu", "int8") == ("onnxruntime", "int8", False)
    assert resolved("w.pth", "auto", "cpu", "bf16") == ("torch", "bf16", False)
    assert resolved("w.pth", "onnxruntime", "cpu", "auto") == ("onnxruntime", "fp32", True)
    assert resolved("w.pth", "auto", "cpu") == ("onnxruntime", "fp32", False)  # the default
    with pytest.raises(ValueError, match="bf16 on a CPU runs in the PyTorch backend"):
        BackendArgs.resolve("w.pth", "onnxruntime", "cpu", "bf16", check_units=True)

    int8_file = tmp_path / "m_int8_encoder.onnx"
    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    entry = model.metadata_props.add()
    entry.key, entry.value = "edgesam.precision", "int8"
    onnx.save(model, str(int8_file))
    assert resolved(int8_file, "auto", "cpu", "auto") == ("onnxruntime", "int8", True)

    monkeypatch.setattr(engine.precision, "cpu_flags", lambda: frozenset({"avx2"}))
    assert resolved("w.pth", "auto", "cpu", "auto") == ("onnxruntime", "fp32", True)
    # the library runs an explicit precision (to measure it); the service refuses it
    assert resolved("w.pth", "auto", "cpu", "bf16") == ("torch", "bf16", False)
    with pytest.raises(ValueError, match="slower than fp32"):
        BackendArgs.resolve("w.pth", "auto", "cpu", "bf16", check_units=True)
