from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.config import Settings


def test_defaults_work_on_a_laptop(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("EDGESAM_HTTP_PORT", "EDGESAM_GRPC_PORT", "EDGESAM_REDIS_URL", "EDGESAM_API_KEYS"):
        monkeypatch.delenv(name, raising=False)
    s = Settings()
    assert s.http_port == 8000
    assert s.grpc_port == 50051
    assert s.redis_url is None
    assert s.api_keys == []
    assert s.role == "all"
    assert s.drain_seconds == 20
    assert (s.backend, s.device) == ("auto", "auto")


def test_auto_resolves_to_the_fastest_backend_here(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No GPU and ONNX Runtime installed (as in CI): ONNX Runtime on the CPU. Priors run on the
    PyTorch model, so they pin auto to torch; explicit values pass through."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert Settings().runtime() == ("onnxruntime", "cpu")
    priors = tmp_path / "priors.pth"
    priors.write_bytes(b"x")
    assert Settings(priors_checkpoint=priors).runtime() == ("torch", "cpu")
    assert Settings(backend="torch", device="cpu").runtime() == ("torch", "cpu")
    with pytest.raises(ValueError, match="EDGESAM_PRECISION=fp16 needs a GPU"):
        Settings(precision="fp16").runtime()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert Settings().runtime() == ("torch", "cuda")  # no tensorrt module here
    assert Settings(device="cuda:1").runtime() == ("torch", "cuda:1")


def test_contract_names_are_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ckpt = tmp_path / "edge_sam.pth"
    ckpt.write_bytes(b"x")
    monkeypatch.setenv("EDGESAM_CHECKPOINT", str(ckpt))
    monkeypatch.setenv("EDGESAM_HTTP_PORT", "9001")
    monkeypatch.setenv("EDGESAM_GRPC_PORT", "9002")
    monkeypatch.setenv("EDGESAM_REDIS_URL", "redis://example:6379/1")
    monkeypatch.setenv("EDGESAM_BACKEND", "onnxruntime")
    monkeypatch.setenv("EDGESAM_API_KEYS", "key-one-123, key-two-456")
    s = Settings()
    assert s.checkpoint == ckpt
    assert s.resolved_checkpoint() == ckpt
    assert (s.http_port, s.grpc_port) == (9001, 9002)
    assert s.redis_url == "redis://example:6379/1"
    assert s.backend == "onnxruntime"
    assert s.api_key_values() == [b"key-one-123", b"key-two-456"]
    assert "key-one" not in repr(s)  # secrets are not printed


@pytest.mark.parametrize(
    "env",
    [
        {"EDGESAM_HTTP_PORT": "0"},
        {"EDGESAM_HTTP_PORT": "eighty"},
        {"EDGESAM_BACKEND": "cuda-magic"},
        {"EDGESAM_DEVICE": "gpu"},
        {"EDGESAM_BACKEND": "onnxruntime", "EDGESAM_TORCH_COMPILE": "1"},
        {"EDGESAM_BACKEND": "tensorrt", "EDGESAM_TORCH_TRITON_MIXER": "true"},
        {"EDGESAM_REDIS_URL": "http://localhost"},
        {"EDGESAM_API_KEYS": "short"},
        {"EDGESAM_CHECKPOINT": "/nonexistent/edge_sam.pth"},
        {"EDGESAM_ROLE": "both"},
        {"EDGESAM_HTTP_PORT": "7000", "EDGESAM_GRPC_PORT": "7000"},
        {"EDGESAM_CACHE_TTL_SECONDS": "0"},
        {"EDGESAM_PRECISION": "fp16", "EDGESAM_DEVICE": "cpu"},
        {"EDGESAM_ENCODER_FORWARD_TIMEOUT_S": "0"},
        {"EDGESAM_ENCODER_FORWARD_ATTEMPTS": "0"},
    ],
)
def test_bad_values_fail_fast(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError):
        Settings()


def test_empty_redis_url_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGESAM_REDIS_URL", "")
    assert Settings().redis_url is None


def test_downloaded_checkpoint_is_found(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("EDGESAM_CHECKPOINT", raising=False)
    monkeypatch.setenv("EDGESAM_WEIGHTS_DIR", str(tmp_path))
    assert Settings().resolved_checkpoint() is None
    (tmp_path / "edge_sam.pth").write_bytes(b"x")
    assert Settings().resolved_checkpoint() == tmp_path / "edge_sam.pth"


def test_forwarder_takes_its_timeout_and_attempts_from_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from service.roles import make_forwarder

    monkeypatch.setenv("EDGESAM_ROLE", "decoder")
    monkeypatch.setenv("EDGESAM_ENCODER_GRPC_TARGET", "dns:///edgesam-encoder:50051")
    monkeypatch.setenv("EDGESAM_ENCODER_FORWARD_TIMEOUT_S", "7.5")
    monkeypatch.setenv("EDGESAM_ENCODER_FORWARD_ATTEMPTS", "2")
    forwarder = make_forwarder(Settings())
    assert forwarder is not None
    assert (forwarder.timeout_s, forwarder.attempts) == (7.5, 2)
    monkeypatch.setenv("EDGESAM_ROLE", "all")
    assert make_forwarder(Settings()) is None


def test_auto_cache_dtype_follows_the_encoder_precision() -> None:
    """The cache never rounds what the encoder computed: float32 for fp32, float16 (exact for
    fp16, and for bf16 within float16's range) otherwise; explicit values pass through."""
    auto = Settings()
    assert auto.cache_dtype == "auto"
    assert auto.cache_storage_dtype("fp32") == "float32"
    assert auto.cache_storage_dtype("fp16") == "float16"
    assert auto.cache_storage_dtype("bf16") == "float16"
    assert auto.cache_storage_dtype("int8") == "float16"
    assert Settings(cache_dtype="float16").cache_storage_dtype("fp32") == "float16"
    assert Settings(cache_dtype="float32").cache_storage_dtype("fp16") == "float32"
    with pytest.raises(ValueError, match="cache_dtype"):
        Settings(cache_dtype="int8")


def test_cpu_precisions_resolve_to_the_backend_that_runs_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """bf16 runs in PyTorch, int8 in ONNX Runtime; `auto` is bf16 where the CPU has the
    units and fp32 elsewhere; fp32 stays the default; a precision the CPU lacks the units for
    is refused at start-up."""
    import torch

    import engine.precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    zen4 = frozenset({"avx2", "avx512_bf16", "avx512_vnni"})
    monkeypatch.setattr(engine.precision, "cpu_flags", lambda: zen4)
    assert Settings().runtime_precision() == ("onnxruntime", "cpu", "fp32")
    assert Settings(precision="auto").runtime_precision() == ("torch", "cpu", "bf16")
    assert Settings(precision="bf16").runtime_precision() == ("torch", "cpu", "bf16")
    assert Settings(precision="int8").runtime_precision() == ("onnxruntime", "cpu", "int8")
    assert Settings(precision="auto", backend="onnxruntime").runtime_precision() == (
        "onnxruntime",
        "cpu",
        "fp32",
    )
    with pytest.raises(ValueError, match="bf16 on a CPU runs in the PyTorch backend"):
        Settings(precision="bf16", backend="onnxruntime").runtime_precision()
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        Settings(precision="fp16", device="cpu")
    avx2 = frozenset({"avx2"})
    monkeypatch.setattr(engine.precision, "cpu_flags", lambda: avx2)
    assert Settings(precision="auto").runtime_precision() == ("onnxruntime", "cpu", "fp32")
    with pytest.raises(ValueError, match="EDGESAM_PRECISION=bf16: .*slower than fp32"):
        Settings(precision="bf16").runtime_precision()
    with pytest.raises(ValueError, match="EDGESAM_PRECISION=int8: .*slower than fp32"):
        Settings(precision="int8").runtime_precision()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert Settings(precision="auto").runtime_precision() == ("torch", "cuda", "fp32")
    with pytest.raises(ValueError, match="int8 runs on the CPU"):
        Settings(precision="int8").runtime()


def test_bf16_decoder_is_the_cpus_pytorch_option(monkeypatch: pytest.MonkeyPatch) -> None:
    """EDGESAM_DECODER_PRECISION=bf16 moves `auto` to PyTorch (the only backend that runs
    it), reaches the backend as its option, and is refused elsewhere: with another backend, on
    a GPU, or on a CPU without the units."""
    import torch

    import engine.precision
    from service.backend import backend_args

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(engine.precision, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    settings = Settings(decoder_precision="bf16")
    assert settings.runtime_precision() == ("torch", "cpu", "fp32")
    args = backend_args(settings, None)
    assert args.backend == "torch" and args.options["decoder_precision"] == "bf16"
    assert "decoder_precision" not in backend_args(Settings(backend="torch"), None).options
    with pytest.raises(ValueError, match="EDGESAM_DECODER_PRECISION=bf16"):
        Settings(decoder_precision="bf16", backend="onnxruntime")
    with pytest.raises(ValueError, match="EDGESAM_DECODER_PRECISION=bf16"):
        Settings(decoder_precision="bf16", device="cuda")
    with pytest.raises(ValueError, match="decoder_precision"):
        Settings(decoder_precision="fp16")
    monkeypatch.setattr(engine.precision, "cpu_flags", lambda: frozenset({"avx2"}))
    with pytest.raises(ValueError, match="EDGESAM_DECODER_PRECISION=bf16: .*slower than fp32"):
        backend_args(Settings(decoder_precision="bf16"), None)
