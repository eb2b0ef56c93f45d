"""EncoderBatcher over a deterministic fake backend (no model needed)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from engine.backends.base import Backend, BackendError, BackendInfo
from engine.batching import BatcherClosed, EncoderBatcher, Overloaded


class FakeBackend(Backend):
    """embedding[i] is filled with images[i, 0, 0, 0]; records batch sizes; can be held."""

    def __init__(self, fail: bool = False) -> None:
        self.info = BackendInfo("fake", "cpu", "fp32", "fake")
        self.sizes: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail = fail

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.entered.set()
        self.gate.wait(10)
        self.sizes.append(images.shape[0])
        if self.fail:
            raise BackendError("device lost")
        return images[:, :1, :1, :1].expand(-1, 256, 64, 64).clone()

    def decode(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        raise NotImplementedError


def image(value: float) -> torch.Tensor:
    x = torch.zeros((1, 3, 1024, 1024))
    x[0, 0, 0, 0] = value
    return x


def test_requests_are_grouped_and_each_caller_gets_its_own() -> None:
    backend = FakeBackend()
    backend.gate.clear()
    with EncoderBatcher(backend, max_batch=4, max_wait_ms=50, max_queue=16) as batcher:
        first = batcher.submit(image(0))
        assert backend.entered.wait(5)  # the worker holds request 0 in the backend
        futures = [batcher.submit(image(i)) for i in range(1, 10)]
        backend.gate.set()
        results = [f.result(10) for f in [first, *futures]]
    for i, emb in enumerate(results):
        assert emb.shape == (1, 256, 64, 64)
        assert float(emb[0, 0, 0, 0]) == i
    assert backend.sizes[0] == 1 and max(backend.sizes) == 4 and sum(backend.sizes) == 10
    stats = batcher.stats()
    assert stats.completed == 10 and stats.submitted == 10
    assert sum(k * v for k, v in stats.batch_sizes.items()) == 10
    assert stats.batches == len(backend.sizes)


def test_full_queue_is_refused_at_once() -> None:
    backend = FakeBackend()
    backend.gate.clear()
    batcher = EncoderBatcher(backend, max_batch=1, max_wait_ms=0, max_queue=2)
    try:
        held = batcher.submit(image(0))
        assert backend.entered.wait(5)
        queued = [batcher.submit(image(1)), batcher.submit(image(2))]
        start = time.perf_counter()
        with pytest.raises(Overloaded, match="queue full"):
            batcher.submit(image(3))
        assert time.perf_counter() - start < 0.5
        assert batcher.stats().rejected == 1 and batcher.stats().queue_depth == 2
        assert issubclass(Overloaded, BackendError)
        backend.gate.set()
        assert [float(f.result(10)[0, 0, 0, 0]) for f in [held, *queued]] == [0, 1, 2]
    finally:
        backend.gate.set()
        batcher.close()


def test_asyncio_callers() -> None:
    backend = FakeBackend()

    async def main() -> list[torch.Tensor]:
        with EncoderBatcher(backend, max_batch=8, max_wait_ms=20, max_queue=32) as batcher:
            return await asyncio.gather(*(batcher.encode(image(i)) for i in range(6)))

    results = asyncio.run(main())
    assert [float(r[0, 0, 0, 0]) for r in results] == list(range(6))
    assert sum(backend.sizes) == 6 and len(backend.sizes) < 6  # some were batched together


def test_sync_encode_and_input_validation() -> None:
    with EncoderBatcher(FakeBackend(), max_batch=2, max_wait_ms=1) as batcher:
        assert float(batcher.encode_sync(image(7), timeout=10)[0, 0, 0, 0]) == 7
        assert batcher.encode_sync(image(3)[0], timeout=10).shape == (1, 256, 64, 64)  # CHW ok
        with pytest.raises(ValueError, match="1x3x1024x1024"):
            batcher.submit(torch.zeros((2, 3, 1024, 1024)))


def test_backend_errors_reach_every_caller_in_the_batch() -> None:
    backend = FakeBackend(fail=True)
    with EncoderBatcher(backend, max_batch=4, max_wait_ms=20) as batcher:
        futures = [batcher.submit(image(i)) for i in range(3)]
        for f in futures:
            with pytest.raises(BackendError, match="device lost"):
                f.result(10)
    assert batcher.stats().failed == 3


def test_close_drains_or_fails_pending() -> None:
    backend = FakeBackend()
    backend.gate.clear()
    batcher = EncoderBatcher(backend, max_batch=1, max_wait_ms=0, max_queue=8)
    held = batcher.submit(image(0))
    assert backend.entered.wait(5)
    pending = [batcher.submit(image(i)) for i in (1, 2)]
    threading.Timer(0.2, backend.gate.set).start()
    batcher.close(drain=False)
    assert float(held.result(10)[0, 0, 0, 0]) == 0  # the running batch finishes
    for f in pending:
        with pytest.raises(BatcherClosed):
            f.result(10)
    with pytest.raises(BatcherClosed):
        batcher.submit(image(5))
    assert batcher.closed

    drained = EncoderBatcher(FakeBackend(), max_batch=2, max_wait_ms=5)
    futures = [drained.submit(image(i)) for i in range(5)]
    drained.close(drain=True)
    assert [float(f.result(1)[0, 0, 0, 0]) for f in futures] == list(range(5))


def test_bad_settings() -> None:
    with pytest.raises(ValueError):
        EncoderBatcher(FakeBackend(), max_batch=0)
    with pytest.raises(ValueError):
        EncoderBatcher(FakeBackend(), max_queue=0)


class PixelBackend(FakeBackend):
    """Records what reaches encode_pixels; the default path normalises and calls encode."""

    def __init__(self) -> None:
        super().__init__()
        self.pixel_calls: list[list[tuple[int, int]]] = []

    def encode_pixels(self, pixels, input_sizes):  # noqa: ANN001, ANN201
        assert pixels.dtype == torch.uint8
        self.pixel_calls.append(list(input_sizes))
        return super().encode_pixels(pixels, input_sizes)


def pixels(value: int) -> torch.Tensor:
    x = torch.zeros((1, 3, 1024, 1024), dtype=torch.uint8)
    x[0, 0, 0, 0] = value
    return x


def test_pixels_are_normalised_by_the_backend_and_may_mix_with_floats() -> None:
    from engine.transforms import PIXEL_MEAN, PIXEL_STD

    backend = PixelBackend()
    backend.gate.clear()
    with EncoderBatcher(backend, max_batch=8, max_wait_ms=200) as batcher:
        futures = [
            batcher.submit(pixels(200), (1024, 700)),
            batcher.submit(image(5.0)),
            batcher.submit(pixels(10), (500, 1024)),
        ]
        backend.gate.set()
        out = [float(f.result(10)[0, 0, 0, 0]) for f in futures]
    assert backend.pixel_calls == [[(1024, 700), (500, 1024)]]
    assert sorted(backend.sizes) == [1, 2]  # one stack of pixels, one of floats
    mean, std = float(PIXEL_MEAN[0]), float(PIXEL_STD[0])
    assert out[0] == pytest.approx((200 - mean) / std)
    assert out[1] == 5.0
    assert out[2] == pytest.approx((10 - mean) / std)


def test_pixels_need_their_input_size() -> None:
    with EncoderBatcher(FakeBackend(), max_batch=2, max_wait_ms=1) as batcher:
        with pytest.raises(ValueError, match="input_size"):
            batcher.submit(pixels(1))
        with pytest.raises(ValueError, match="input_size"):
            batcher.submit(image(1.0), (1024, 1024))
