"""Refinement masks in Redis: at most 64 KiB per click (Redis' own MEMORY USAGE), a TTL of
their own, and values within the stated quantisation error of what the decoder gave."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import redis
import torch

from service.cache import (
    MASK_MAX_BLOB_BYTES,
    MASK_STEPS,
    CorruptEntry,
    TensorCache,
    deserialize,
    serialize_mask,
)
from service.metrics import Metrics

BUDGET = 64 * 1024  # issue 15: bytes of Redis memory per click


def _cache(redis_url: str | None, prefix: str, **kw: object) -> TensorCache:
    return TensorCache(
        Metrics(),
        fingerprint="fp-mask",
        ttl_seconds=kw.pop("ttl", 3600),  # type: ignore[arg-type]
        lru_max_bytes=64 << 20,
        redis_url=redis_url,
        key_prefix=prefix,
        **kw,  # type: ignore[arg-type]
    )


def _smooth_logits(seed: int) -> torch.Tensor:
    """What a trained decoder gives: smooth logits of large magnitude around a blob."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float32)
    cx, cy, r = rng.uniform(60, 200, size=3)
    dist = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    logits = (r / 2 - dist) * 0.4 + rng.normal(0, 0.05, size=(256, 256))
    return torch.from_numpy(np.clip(logits, -40, 25).astype(np.float32)).reshape(1, 256, 256)


LOGITS = {
    "smooth": _smooth_logits,
    "noise": lambda seed: (
        torch.randn(1, 256, 256, generator=torch.Generator().manual_seed(seed)) * 6
    ),
    "constant": lambda seed: torch.full((1, 256, 256), -20.0),
}


@pytest.mark.parametrize("kind", sorted(LOGITS))
def test_a_mask_costs_at_most_64_kib_in_redis(redis_url: str, redis_prefix: str, kind: str) -> None:
    async def run() -> None:
        cache = _cache(redis_url, redis_prefix)
        logits = LOGITS[kind](3)
        await cache.put_mask("a" * 32, "img", logits)
        client = redis.Redis.from_url(redis_url)
        key = cache.mask_key("a" * 32)
        assert key.startswith(f"{redis_prefix}mask:")
        used = client.memory_usage(key)
        assert used is not None and used <= BUDGET, used
        assert len(client.get(key)) <= MASK_MAX_BLOB_BYTES  # type: ignore[arg-type]
        client.close()
        await cache.close()

    asyncio.run(run())


def test_smooth_logits_keep_the_finest_step() -> None:
    """A trained model's logits fit at 1/32 logit: an error of at most 1/64."""
    logits = _smooth_logits(1)
    blob, stored = serialize_mask(logits, {"kind": "mask"})
    entry = deserialize(blob)
    assert torch.equal(entry.tensor, stored)
    assert (stored - logits).abs().max().item() <= MASK_STEPS[0] / 2 + 1e-6
    # the sign (the mask itself) never changes where the logit is farther than the error
    far = logits.abs() > MASK_STEPS[0]
    assert torch.equal((stored > 0)[far], (logits > 0)[far])


def test_noise_takes_a_coarser_step_but_stays_within_half_of_it() -> None:
    logits = LOGITS["noise"](2)
    blob, stored = serialize_mask(logits, {"kind": "mask"})
    step = deserialize_step(blob)
    assert step > MASK_STEPS[0]
    assert len(blob) <= MASK_MAX_BLOB_BYTES
    assert (stored - logits).abs().max().item() <= step / 2 + 1e-6


def deserialize_step(blob: bytes) -> float:
    import json
    import struct

    (hlen,) = struct.unpack_from("<I", blob, 5)
    return float(json.loads(blob[9 : 9 + hlen])["step"])


def test_a_damaged_mask_is_refused() -> None:
    blob, _ = serialize_mask(_smooth_logits(0), {"kind": "mask"})
    with pytest.raises(CorruptEntry):
        deserialize(blob[:-10] + bytes(10))
    with pytest.raises(CorruptEntry):
        deserialize(blob[:-1])


def test_masks_expire_before_embeddings(redis_url: str, redis_prefix: str) -> None:
    async def run() -> None:
        cache = _cache(redis_url, redis_prefix, ttl=3600, mask_ttl_seconds=120)
        await cache.put_mask("b" * 32, "img", _smooth_logits(0))
        client = redis.Redis.from_url(redis_url)
        ttl = client.ttl(cache.mask_key("b" * 32))
        assert 0 < ttl <= 120
        # a read renews it by the mask TTL, not the embeddings'
        other = _cache(redis_url, redis_prefix, ttl=3600, mask_ttl_seconds=120)
        assert await other.get_mask("b" * 32) is not None
        assert 0 < client.ttl(cache.mask_key("b" * 32)) <= 120
        client.close()
        await cache.close()
        await other.close()

    asyncio.run(run())


def test_the_mask_ttl_setting_defaults_well_below_the_embeddings() -> None:
    from service.config import Settings

    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.mask_ttl_seconds * 4 <= s.cache_ttl_seconds
