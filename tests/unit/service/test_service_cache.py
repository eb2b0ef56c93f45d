from __future__ import annotations

import asyncio
import time

import pytest
import redis
import torch

from engine.core import ImageEmbedding
from service.cache import (
    MASK_STEPS,
    ByteLRU,
    CorruptEntry,
    Entry,
    TensorCache,
    deserialize,
    serialize,
)
from service.metrics import Metrics
from tests.conftest import free_port


def _emb(seed: int = 0) -> ImageEmbedding:
    g = torch.Generator().manual_seed(seed)
    return ImageEmbedding(torch.randn(1, 256, 64, 64, generator=g), (480, 640), (768, 1024))


def _cache(metrics: Metrics, redis_url: str | None, prefix: str, **kw: object) -> TensorCache:
    return TensorCache(
        metrics,
        fingerprint=kw.pop("fingerprint", "fp-test"),  # type: ignore[arg-type]
        ttl_seconds=kw.pop("ttl", 60),  # type: ignore[arg-type]
        lru_max_bytes=kw.pop("lru", 64 << 20),  # type: ignore[arg-type]
        redis_url=redis_url,
        key_prefix=prefix,
        socket_timeout=0.3,
        connect_timeout=0.3,
        **kw,  # type: ignore[arg-type]
    )


def test_serialize_roundtrip_and_checksum() -> None:
    t = torch.randn(1, 256, 64, 64)
    blob = serialize(t, {"kind": "embedding", "fingerprint": "abc", "original_size": [3, 4]})
    assert len(blob) < t.numel() * 2 + 512  # stored as float16
    entry = deserialize(blob, {"fingerprint": "abc"})
    assert entry.tensor.dtype == torch.float32
    torch.testing.assert_close(entry.tensor, t.half().float())
    assert entry.meta["original_size"] == [3, 4]
    flipped = bytearray(blob)
    flipped[-5] ^= 0xFF
    with pytest.raises(CorruptEntry, match="checksum"):
        deserialize(bytes(flipped))
    with pytest.raises(CorruptEntry, match="fingerprint"):
        deserialize(blob, {"fingerprint": "other"})
    with pytest.raises(CorruptEntry):
        deserialize(blob[:-2])
    with pytest.raises(CorruptEntry):
        deserialize(b"garbage")
    exact = deserialize(serialize(t, {}, "float32"))
    torch.testing.assert_close(exact.tensor, t, rtol=0, atol=0)


def test_lru_is_bounded_by_bytes_and_expires() -> None:
    one = Entry(torch.zeros(1000), {})  # ~4 KB
    lru = ByteLRU(max_bytes=3 * one.nbytes)
    for key in "abcd":
        lru.put(key, one, ttl=60)
    assert len(lru) == 3 and lru.get("a") is None  # oldest evicted
    lru.get("b")  # b is now the most recent
    lru.put("e", one, ttl=60)
    assert lru.get("c") is None and lru.get("b") is not None
    assert lru.nbytes <= lru.max_bytes
    lru.put("short", one, ttl=0.05)
    time.sleep(0.1)
    assert lru.get("short") is None
    lru.put("huge", Entry(torch.zeros(10_000), {}), ttl=60)
    assert lru.get("huge") is None  # larger than the whole cache: not kept


def test_redis_shares_embeddings_between_instances(redis_url: str, redis_prefix: str) -> None:
    async def run() -> None:
        a = _cache(Metrics(), redis_url, redis_prefix)
        b_metrics = Metrics()
        b = _cache(b_metrics, redis_url, redis_prefix)
        emb = _emb()
        await a.put_embedding("img1", emb)
        got = await b.get_embedding("img1")
        assert got is not None
        e, ttl = got
        assert e.original_size == (480, 640) and e.input_size == (768, 1024)
        torch.testing.assert_close(e.embedding, emb.embedding.half().float())
        assert ttl == 60
        assert b_metrics.cache_hits.labels("redis", "embedding")._value.get() == 1
        # now in b's LRU: no Redis round trip
        await b.get_embedding("img1")
        assert b_metrics.cache_hits.labels("lru", "embedding")._value.get() == 1
        # TTL is set in Redis
        r = redis.Redis.from_url(redis_url)
        assert 0 < r.ttl(a.embedding_key("img1")) <= 60
        # another model fingerprint never sees it
        c = _cache(Metrics(), redis_url, redis_prefix, fingerprint="other")
        assert await c.get_embedding("img1") is None
        assert await b.delete_embedding("img1")
        assert await a.has_embedding("img1")  # a's LRU still has it (documented)
        assert not await c.has_embedding("img1")
        assert r.exists(a.embedding_key("img1")) == 0
        r.close()
        for cache in (a, b, c):
            await cache.close()

    asyncio.run(run())


def test_corrupt_redis_entry_is_a_miss(redis_url: str, redis_prefix: str) -> None:
    async def run() -> None:
        metrics = Metrics()
        cache = _cache(metrics, redis_url, redis_prefix)
        r = redis.Redis.from_url(redis_url)
        r.set(cache.embedding_key("bad"), b"ESAM junk")
        assert await cache.get_embedding("bad") is None
        assert metrics.cache_errors.labels("get", "corrupt")._value.get() == 1
        assert r.exists(cache.embedding_key("bad")) == 0
        r.close()
        await cache.close()

    asyncio.run(run())


def test_mask_logits_roundtrip(redis_url: str, redis_prefix: str) -> None:
    async def run() -> None:
        a = _cache(Metrics(), redis_url, redis_prefix)
        b = _cache(Metrics(), redis_url, redis_prefix)
        logits = torch.randn(256, 256) * 8  # noise: the worst case for the mask codec
        await a.put_mask("m" * 32, "img", logits)
        got = await b.get_mask("m" * 32)
        assert got is not None
        # quantised (service.cache.serialize_mask): at most half of the coarsest step off
        error = (got[0] - logits.reshape(1, 256, 256)).abs().max().item()
        assert error <= max(MASK_STEPS) / 2
        assert got[1] == "img"
        await a.close()
        await b.close()

    asyncio.run(run())


def test_unreachable_redis_degrades_without_failing() -> None:
    async def run() -> None:
        metrics = Metrics()
        cache = _cache(
            metrics,
            f"redis://127.0.0.1:{free_port()}/0",
            "x:",
            retry_seconds=60,
            breaker_failures=1,  # test_redis_breaker.py covers several
        )
        emb = _emb()
        await cache.put_embedding("img", emb)  # goes to the LRU; Redis error counted
        got = await cache.get_embedding("img")
        assert got is not None
        assert cache.degraded is not None
        assert metrics.redis_up._value.get() == 0
        errors = sum(
            s.value
            for m in metrics.cache_errors.collect()
            for s in m.samples
            if s.name.endswith("_total")
        )
        assert errors >= 1
        start = time.perf_counter()
        assert await cache.get_embedding("missing") is None  # back-off: Redis not tried
        assert time.perf_counter() - start < 0.1
        assert await cache.check() is not None
        await cache.close()

    asyncio.run(run())


def test_no_redis_uses_lru_with_sliding_ttl() -> None:
    async def run() -> None:
        cache = _cache(Metrics(), None, "x:", ttl=1)
        await cache.put_embedding("img", _emb())
        assert not cache.has_redis and await cache.check() is None
        for _ in range(3):
            time.sleep(0.4)
            assert await cache.get_embedding("img") is not None  # each hit renews the TTL

    asyncio.run(run())


def test_refinement_masks_never_evict_embeddings() -> None:
    """Without Redis the LRU is all there is: masks (256 KB each, up to 64 per request) have
    their own share of the byte budget, so a burst of them evicts older masks, never an
    embedding; both together stay within EDGESAM_LRU_MAX_BYTES."""

    async def run() -> None:
        budget = 20 << 20  # 4 MB fp32 embeddings: room for 4 beside the masks' 2.5 MB
        cache = _cache(Metrics(), None, "x:", lru=budget)
        for i in range(4):
            await cache.put_embedding(f"img{i}", _emb(i))
        for i in range(64):
            await cache.put_mask(f"m{i}", "img0", torch.randn(1, 256, 256))
        for i in range(4):
            assert await cache.get_embedding(f"img{i}") is not None, i
        assert await cache.get_mask("m63") is not None  # the newest masks stay
        assert await cache.get_mask("m0") is None  # the oldest went, not an embedding
        assert cache.lru.nbytes + cache.mask_lru.nbytes <= budget

    asyncio.run(run())


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_every_tier_answers_what_redis_keeps(redis_url: str, redis_prefix: str, dtype: str) -> None:
    """The replica that encoded (LRU), another replica (Redis), and the same replica after
    an eviction must decode from the same numbers: the LRU holds what Redis keeps."""

    async def run() -> None:
        a = _cache(Metrics(), redis_url, redis_prefix, dtype=dtype, with_priors=True)
        b = _cache(Metrics(), redis_url, redis_prefix, dtype=dtype, with_priors=True)
        emb = _emb(7)
        boxes = torch.tensor([[10.3, 20.7, 1000.1, 1023.9, 0.83]])
        emb = ImageEmbedding(emb.embedding, emb.original_size, emb.input_size, boxes)
        await a.put_embedding("img", emb)
        here = (await a.get_embedding("img"))[0]  # type: ignore[index]
        there = (await b.get_embedding("img"))[0]  # type: ignore[index]
        assert torch.equal(here.embedding, there.embedding)
        want = emb.embedding.half().float() if dtype == "float16" else emb.embedding
        assert torch.equal(here.embedding, want)
        # priors are a few boxes in pixels: kept in float32 whatever the dtype
        assert torch.equal(there.proposals, boxes)  # type: ignore[arg-type]
        logits = torch.randn(1, 256, 256)
        await a.put_mask("m", "img", logits)
        assert torch.equal((await a.get_mask("m"))[0], (await b.get_mask("m"))[0])  # type: ignore[index]
        await a.close()
        await b.close()

    asyncio.run(run())
