"""What each precision needs from a CPU, and what `auto` resolves to (pure decisions over CPU
flags, so every machine runs them)."""

from __future__ import annotations

import pytest

from engine.precision import (
    auto_cpu_precision,
    check_cpu_precision,
    cpu_flags,
    cpu_units,
    has_units,
    resolve_precision,
)

ZEN4 = {"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}
SAPPHIRE_RAPIDS = {"avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile"}
ALDER_LAKE = {"avx2", "avx_vnni"}
AVX2_ONLY = {"avx", "avx2", "fma"}


def test_units_per_precision() -> None:
    assert has_units("bf16", ZEN4) and has_units("int8", ZEN4)
    assert has_units("bf16", SAPPHIRE_RAPIDS) and has_units("int8", SAPPHIRE_RAPIDS)
    assert not has_units("bf16", ALDER_LAKE) and has_units("int8", ALDER_LAKE)
    assert not has_units("bf16", AVX2_ONLY) and not has_units("int8", AVX2_ONLY)
    assert has_units("fp32", AVX2_ONLY) and not has_units("fp16", ZEN4)
    assert cpu_units(ZEN4) == ["avx512_bf16", "avx512_vnni"]


def test_auto_takes_bf16_only_where_the_cpu_has_it() -> None:
    assert auto_cpu_precision(ZEN4) == "bf16"
    assert auto_cpu_precision(SAPPHIRE_RAPIDS) == "bf16"
    # int8 stays explicit (its masks move more): VNNI alone leaves auto at fp32
    assert auto_cpu_precision(ALDER_LAKE) == "fp32"
    assert auto_cpu_precision(AVX2_ONLY) == "fp32"
    assert resolve_precision("auto", "torch", "cpu", ZEN4) == "bf16"
    assert resolve_precision("auto", "torch", "cpu", AVX2_ONLY) == "fp32"
    assert resolve_precision("auto", "onnxruntime", "cpu", ZEN4) == "fp32"
    assert resolve_precision("auto", "torch", "cuda:0", ZEN4) == "fp32"
    assert resolve_precision("int8", "onnxruntime", "cpu", AVX2_ONLY) == "int8"  # explicit


def test_explicit_cpu_precisions_are_checked() -> None:
    check_cpu_precision("fp32", "onnxruntime", AVX2_ONLY)
    check_cpu_precision("bf16", "torch", ZEN4)
    check_cpu_precision("int8", "onnxruntime", ALDER_LAKE)
    with pytest.raises(ValueError, match="slower than fp32.*avx512_bf16"):
        check_cpu_precision("bf16", "torch", AVX2_ONLY)
    with pytest.raises(ValueError, match="slower than fp32.*avx512_vnni"):
        check_cpu_precision("int8", "onnxruntime", AVX2_ONLY)
    with pytest.raises(ValueError, match="PyTorch backend"):
        check_cpu_precision("bf16", "onnxruntime", ZEN4)
    check_cpu_precision("int8", "torch", ZEN4)  # PT2E (engine.torch_int8)
    with pytest.raises(ValueError, match="ONNX Runtime backend .* PyTorch backend"):
        check_cpu_precision("int8", "tensorrt", ZEN4)
    with pytest.raises(ValueError, match="slower than fp32.*avx512_vnni"):
        check_cpu_precision("int8", "torch", AVX2_ONLY)
    with pytest.raises(ValueError, match="GPU only"):
        check_cpu_precision("fp16", "torch", ZEN4)


def test_this_machine_flags_are_read() -> None:
    """On Linux /proc/cpuinfo names the flags; every x86-64 CPU has sse2."""
    import platform

    flags = cpu_flags()
    if platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64"):
        assert "sse2" in flags
