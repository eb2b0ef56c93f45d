"""TorchBackend's compiled warm-up: which batch buckets it compiles at start-up."""

from __future__ import annotations

import pytest
import torch

from engine.backends.torch_backend import TorchBackend
from engine.modeling import EdgeSam


@pytest.mark.parametrize(("largest", "buckets"), [(8, [2, 4, 8]), (6, [2, 4, 8]), (1, [])])
def test_compiled_warmup_compiles_every_bucket_the_batcher_sends(
    monkeypatch: pytest.MonkeyPatch, largest: int, buckets: list
) -> None:
    """On CUDA every power-of-two bucket up to the batcher's largest batch is run once at
    start-up (each compiles once); batch 1 comes from the base warm-up. Simulated: the
    encoder and decoder are recorders, the device says cuda."""
    backend = TorchBackend(EdgeSam(), "cpu", fingerprint="t", compile_warmup_batch=largest)
    backend._compiled = object()  # as after compile=True, without compiling
    backend.device = torch.device("cuda")
    sizes: list[int] = []

    def encode(images: torch.Tensor) -> torch.Tensor:
        sizes.append(images.shape[0])
        return torch.zeros(images.shape[0], 256, 64, 64)

    monkeypatch.setattr(backend, "encode", encode)
    monkeypatch.setattr(backend, "decode", lambda *a, **k: None)
    backend.warmup()
    assert sizes == [1, *buckets]


def test_uncompiled_and_cpu_warmups_run_batch_one_only(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = TorchBackend(EdgeSam(), "cpu", fingerprint="t", compile_warmup_batch=8)
    sizes: list[int] = []
    monkeypatch.setattr(backend, "encode", lambda x: sizes.append(x.shape[0]) or torch.zeros(1))
    monkeypatch.setattr(backend, "decode", lambda *a, **k: None)
    backend.warmup()  # not compiled
    backend._compiled = object()
    backend.warmup()  # compiled, but on the CPU buckets compile when first used
    assert sizes == [1, 1]
