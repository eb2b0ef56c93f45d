"""Redis stays in rotation while it is healthy: against real redis-server processes, frozen
with SIGSTOP where a slow or hung Redis is needed."""

from __future__ import annotations

import asyncio
import signal
import time

import torch

from engine.core import ImageEmbedding
from service.cache import TensorCache
from service.metrics import Metrics


def _cache(url: str, **kw: object) -> TensorCache:
    options: dict[str, object] = dict(
        socket_timeout=0.3,
        connect_timeout=0.3,
        bulk_socket_timeout=3.0,
        breaker_failures=3,
        retry_seconds=0.5,
    )
    options.update(kw)
    return TensorCache(
        Metrics(),
        fingerprint="fp-breaker",
        ttl_seconds=60,
        lru_max_bytes=1 << 20,  # too small for an embedding: every read goes to Redis
        redis_url=url,
        key_prefix="breaker:",
        dtype="float32",
        **options,  # type: ignore[arg-type]
    )


def _emb() -> ImageEmbedding:
    g = torch.Generator().manual_seed(0)
    return ImageEmbedding(torch.randn(1, 256, 64, 64, generator=g), (480, 640), (768, 1024))


def _errors(cache: TensorCache) -> float:
    return sum(
        s.value
        for m in cache.metrics.cache_errors.collect()
        for s in m.samples
        if s.name.endswith("_total")
    )


async def _frozen_for(proc, seconds: float) -> None:  # type: ignore[no-untyped-def]
    proc.send_signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(seconds)
    finally:
        proc.send_signal(signal.SIGCONT)


def test_a_slow_embedding_read_is_not_a_failure(redis_process) -> None:  # type: ignore[no-untyped-def]
    """An embedding read that takes longer than the small calls' timeout (the issue: a 5 MB
    GET on a busy replica) still answers: embeddings have a timeout sized for megabytes."""
    server = redis_process()

    async def run() -> None:
        cache = _cache(server.url)
        await cache.put_embedding("img", _emb())
        freeze = asyncio.ensure_future(_frozen_for(server.proc, 0.8))
        await asyncio.sleep(0.05)
        start = time.perf_counter()
        got = await cache.get_embedding("img")
        took = time.perf_counter() - start
        await freeze
        assert got is not None
        assert took > 0.3  # slower than a small call may be
        assert _errors(cache) == 0 and cache.degraded is None
        assert cache.breaker.state == "closed"
        await cache.close()

    asyncio.run(run())


def test_one_failed_call_keeps_redis_in_rotation(redis_process) -> None:  # type: ignore[no-untyped-def]
    server = redis_process()

    async def run() -> None:
        cache = _cache(server.url)
        freeze = asyncio.ensure_future(_frozen_for(server.proc, 0.5))
        await asyncio.sleep(0.05)
        assert await cache.has_embedding("nothing") is False  # times out after 0.3 s
        await freeze
        assert _errors(cache) == 1
        assert cache.degraded is None and cache.metrics.redis_up._value.get() == 1
        await cache.put_embedding("img", _emb())  # Redis is still used
        assert cache.breaker.consecutive_failures == 0
        await cache.close()

    asyncio.run(run())


def test_consecutive_failures_open_then_a_probe_closes(redis_process) -> None:  # type: ignore[no-untyped-def]
    server = redis_process()

    async def run() -> None:
        cache = _cache(server.url)
        await cache.put_embedding("img", _emb())
        server.proc.send_signal(signal.SIGSTOP)
        try:
            for _ in range(3):
                assert await cache.has_embedding("nothing") is False
            assert cache.degraded is not None
            assert cache.breaker.state == "open"
            assert cache.metrics.redis_up._value.get() == 0
            assert cache.metrics.redis_breaker_opens._value.get() == 1
            start = time.perf_counter()
            assert await cache.get_embedding("img") is None  # skipped, not waited for
            assert time.perf_counter() - start < 0.1
            await asyncio.sleep(0.6)
            # half-open: this probe fails (still frozen) and opens it again
            assert await cache.has_embedding("nothing") is False
            assert cache.breaker.state == "open"
        finally:
            server.proc.send_signal(signal.SIGCONT)
        await asyncio.sleep(0.6)
        got = await cache.get_embedding("img")  # the probe answers: back in rotation
        assert got is not None
        assert cache.degraded is None and cache.breaker.state == "closed"
        assert cache.metrics.redis_up._value.get() == 1
        assert cache.metrics.redis_breaker_opens._value.get() == 1
        await cache.close()

    asyncio.run(run())


def test_a_stopped_redis_opens_and_a_restarted_one_closes(redis_process) -> None:  # type: ignore[no-untyped-def]
    server = redis_process()

    async def run() -> None:
        cache = _cache(server.url, breaker_failures=2)
        await cache.put_embedding("img", _emb())
        server.stop()
        for _ in range(2):
            assert await cache.get_embedding("img") is None  # refused: a miss, no error
        assert cache.breaker.state == "open"
        server.start()
        await asyncio.sleep(0.6)
        await cache.put_embedding("img2", _emb())  # the probe: stored, closed again
        assert cache.breaker.state == "closed"
        assert await cache.get_embedding("img2") is not None
        await cache.close()

    asyncio.run(run())
