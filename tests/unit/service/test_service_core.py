from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from service.config import Settings
from service.core import BoundedExecutor, SegmentationService, validate_prompts
from service.errors import InvalidPrompt, NotReady, Overloaded
from service.metrics import Metrics
from service.schemas import SegmentRequest
from tests.fake_backend import FakeBackend
from tests.integration.conftest import png_bytes

IMG = "a" * 64
SIZE = (100, 200)  # h, w


def _req(**kw: object) -> SegmentRequest:
    return SegmentRequest(image_id=IMG, **kw)  # type: ignore[arg-type]


def test_valid_prompts_pass_through() -> None:
    pts, labels, boxes = validate_prompts(
        _req(points=[[0, 0], [200, 100]], labels=[1, 0], box=[1, 2, 30, 40]), SIZE, 8, 8
    )
    assert pts is not None and pts.shape == (2, 2)
    assert labels is not None and labels.tolist() == [1, 0]
    assert boxes is not None and boxes.tolist() == [[1, 2, 30, 40]]
    _, _, many = validate_prompts(_req(boxes=[[1, 2, 3, 4], [5, 6, 7, 8]]), SIZE, 8, 8)
    assert many is not None and many.shape == (2, 4)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({}, "at least one prompt"),
        ({"points": [[1, 1]]}, "together"),
        ({"points": [[1, 1]], "labels": [1, 0]}, "one label per point"),
        ({"points": [[float("nan"), 1]], "labels": [1]}, "finite"),
        ({"points": [[float("inf"), 1]], "labels": [1]}, "finite"),
        ({"points": [[201, 1]], "labels": [1]}, "outside"),
        ({"points": [[-1, 1]], "labels": [1]}, "outside"),
        ({"points": [[1, 1]] * 9, "labels": [1] * 9}, "at most 8"),
        ({"box": [50, 10, 20, 40]}, "inverted"),
        ({"box": [10, 40, 20, 40]}, "inverted"),
        ({"box": [10, 10, 20, 400]}, "outside"),
        ({"box": [1, 2, 3, 4], "boxes": [[1, 2, 3, 4]]}, "not both"),
        ({"boxes": []}, "empty"),
        ({"boxes": [[1, 2, 3, 4]] * 9}, "at most 8"),
    ],
)
def test_bad_prompts_are_refused(kw: dict, match: str) -> None:
    with pytest.raises(InvalidPrompt, match=match):
        validate_prompts(_req(**kw), SIZE, 8, 8)


def test_bounded_executor_refuses_when_full() -> None:
    async def run() -> None:
        pool = BoundedExecutor("t", 1, 2, Metrics(), 3)
        import time

        jobs = [asyncio.ensure_future(pool.run(time.sleep, 0.2)) for _ in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded) as info:
            await pool.run(time.sleep, 0)
        assert info.value.retry_after == 3
        await asyncio.gather(*jobs)
        await pool.run(time.sleep, 0)  # room again
        pool.shutdown()

    asyncio.run(run())


def test_start_up_warms_the_largest_encoder_batch() -> None:
    """The encoder runs once at the configured batch size during start-up, so a runtime's
    per-shape memory shows in the idle RSS rather than mid-load; a decoder replica never
    encodes."""

    class Recording(FakeBackend):
        def __init__(self) -> None:
            super().__init__()
            self.batches: list[int] = []

        def encode(self, images: torch.Tensor) -> torch.Tensor:
            self.batches.append(images.shape[0])
            return super().encode(images)

    async def run(settings: Settings) -> list[int]:
        backend = Recording()
        svc = SegmentationService(settings, backend=backend, random_weights=False)
        await svc.start()
        await svc.close()
        return backend.batches

    assert asyncio.run(run(Settings(grpc_port=0, device="cpu"))) == [1, 2]
    assert asyncio.run(run(Settings(grpc_port=0, device="cpu", encode_max_batch=6))) == [1, 6]
    assert asyncio.run(run(Settings(grpc_port=0, device="cpu", encode_max_batch=1))) == [1]
    decoder = Settings(grpc_port=0, device="cpu", role="decoder", encoder_grpc_target="e:1")
    assert asyncio.run(run(decoder)) == []


def test_concurrent_embeds_of_one_image_run_the_encoder_once() -> None:
    async def run() -> None:
        backend = FakeBackend(encode_delay_s=0.3)
        svc = SegmentationService(Settings(grpc_port=0), backend=backend, random_weights=False)
        with pytest.raises(NotReady):
            await svc.embed(b"x", "image/png")
        await svc.start()
        calls_after_warmup = backend.encode_calls
        data = png_bytes(np.full((20, 30, 3), 7, np.uint8))
        results = await asyncio.gather(*(svc.embed(data, "image/png") for _ in range(5)))
        assert backend.encode_calls - calls_after_warmup == 1
        assert len({r.image_id for r in results}) == 1
        assert sum(not r.cached for r in results) == 1
        assert (results[0].width, results[0].height) == (30, 20)
        again = await svc.embed(data, "image/png")
        assert again.cached and backend.encode_calls - calls_after_warmup == 1
        await svc.close()

    asyncio.run(run())


def test_a_cancelled_embed_leaves_its_waiters_an_answer() -> None:
    """The first embed of an image is cancelled (a gRPC deadline) while a second request
    waits on it: the second computes the embedding itself instead of ending with the first
    one's CancelledError (over HTTP that was the server's plain-text 500)."""

    async def run() -> None:
        backend = FakeBackend(encode_delay_s=0.3)
        svc = SegmentationService(Settings(grpc_port=0), backend=backend, random_weights=False)
        await svc.start()
        data = png_bytes(np.full((20, 30, 3), 9, np.uint8))
        owner = asyncio.ensure_future(svc.embed(data, "image/png"))
        await asyncio.sleep(0.1)
        waiter = asyncio.ensure_future(svc.embed(data, "image/png"))
        await asyncio.sleep(0.05)
        owner.cancel()
        result = await asyncio.wait_for(waiter, 30)
        assert owner.cancelled()
        assert (result.width, result.height, result.cached) == (30, 20, False)
        assert (await svc.embed(data, "image/png")).cached
        await svc.close()

    asyncio.run(run())


@pytest.mark.parametrize("role", ["all", "encoder", "decoder"])
def test_only_replicas_that_encode_warm_the_encoder(role: str) -> None:
    async def run() -> None:
        backend = FakeBackend()
        svc = SegmentationService(
            Settings(grpc_port=0, role=role, device="cpu"), backend=backend, random_weights=False
        )
        await svc.start()
        assert svc.ready
        # one image, then one batch of the CPU's default size (2)
        assert backend.encode_calls == (0 if role == "decoder" else 2)
        await svc.close()

    asyncio.run(run())


def test_start_refuses_without_weights(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("EDGESAM_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.delenv("EDGESAM_CHECKPOINT", raising=False)
    svc = SegmentationService(Settings(grpc_port=0))
    assert svc.random_weights
    with pytest.raises(SystemExit, match="service.weights download"):
        svc.check_startable()
    allowed = SegmentationService(Settings(grpc_port=0, allow_random_weights=True))
    allowed.check_startable()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"backend": "auto"}, ("onnxruntime", "cpu", {"intra_op_num_threads": 1})),
        ({"backend": "torch"}, ("torch", "cpu", {"num_threads": 1})),
        (
            {"backend": "auto", "torch_compile": True, "encode_max_batch": 4},
            ("torch", "cpu", {"num_threads": 1, "compile": True, "compile_warmup_batch": 4}),
        ),
        (
            {"backend": "torch", "torch_triton_mixer": True},
            ("torch", "cpu", {"num_threads": 1, "triton_mixer": True}),
        ),
    ],
)
def test_load_backend_passes_the_resolved_runtime(
    monkeypatch: pytest.MonkeyPatch, extra: dict, expected: tuple
) -> None:
    """`auto` reaches the registry resolved (here: no GPU, so ONNX Runtime on the CPU, or
    PyTorch when a PyTorch-only option is on), and EDGESAM_TORCH_THREADS reaches whichever CPU
    runtime that is."""
    import torch

    import service.backend

    seen: list[tuple] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(
        service.backend,
        "create_backend",
        lambda args: seen.append((args.backend, args.device, dict(args.options))),
    )
    settings = Settings(grpc_port=0, torch_threads=1, **extra)
    SegmentationService(settings, random_weights=True)._load_backend()
    assert seen == [expected]


def test_the_precision_reaches_the_registry_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    """EDGESAM_PRECISION=auto is resolved with the backend (bf16 in PyTorch on a CPU with the
    units); a precision this CPU lacks the units for is refused before anything loads."""
    import torch

    import engine.precision
    from service.backend import backend_args

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    zen4 = frozenset({"avx2", "avx512_bf16", "avx512_vnni"})
    monkeypatch.setattr(engine.precision, "cpu_flags", lambda: zen4)
    args = backend_args(Settings(grpc_port=0, precision="auto", torch_threads=1), None)
    assert (args.backend, args.precision, dict(args.options)) == (
        "torch",
        "bf16",
        {"num_threads": 1},
    )
    assert args.chosen_by_auto and args.precision_chosen_by_auto
    monkeypatch.setattr(engine.precision, "cpu_flags", lambda: frozenset({"avx2"}))
    with pytest.raises(ValueError, match="EDGESAM_PRECISION=int8: .*slower than fp32"):
        backend_args(Settings(grpc_port=0, precision="int8"), None)


def test_knobs_are_translated_for_the_backend_actually_chosen(tmp_path) -> None:  # noqa: ANN001
    """An ONNX model asked of PyTorch runs in ONNX Runtime: EDGESAM_TORCH_THREADS becomes
    ONNX Runtime's intra-op threads, not a PyTorch keyword ONNX Runtime would refuse."""
    from service.backend import backend_args

    model = tmp_path / "m_encoder.onnx"
    model.write_bytes(b"")
    settings = Settings(grpc_port=0, backend="torch", device="cpu", torch_threads=2)
    args = backend_args(settings, model)
    assert (args.backend, dict(args.options), args.chosen_by_auto) == (
        "onnxruntime",
        {"intra_op_num_threads": 2},
        False,
    )
