"""Embedding and mask-logit cache: a bounded in-process LRU (by bytes) in front of Redis.

Redis values carry a small header (shape, dtype, original/input size, model fingerprint,
CRC32 of the payload) before the tensor bytes, stored as float16 by default. Keys include the
model fingerprint, so replicas running different weights never share embeddings.

Redis is optional and never fatal: every call has a socket timeout; an error marks Redis
degraded (a metric, one log line per transition) and requests go on with the in-process
cache alone (a miss is recomputed). After `retry_seconds` the next request tries Redis again,
so the cache recovers by itself.
"""

from __future__ import annotations

import json
import logging
import struct
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from threading import Lock
from typing import Any

import numpy as np
import torch
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from engine.core import ImageEmbedding
from service.metrics import Metrics

log = logging.getLogger(__name__)

MAGIC = b"ESAM"
FORMAT_VERSION = 1
_HEADER_LEN = struct.Struct("<4sBI")  # magic, version, json length
_DTYPES = {"float16": (np.float16, torch.float16), "float32": (np.float32, torch.float32)}


# The in-process cache's share (1/N of EDGESAM_LRU_MAX_BYTES) kept for refinement masks.
MASK_LRU_SHARE = 8


class CorruptEntry(ValueError):
    """A cached value whose header or checksum does not hold."""


@dataclass(frozen=True)
class Entry:
    """What the cache holds: a float32 tensor plus its metadata."""

    tensor: torch.Tensor
    meta: dict[str, Any]

    @property
    def nbytes(self) -> int:
        return self.tensor.numel() * self.tensor.element_size() + 256


def serialize(tensor: torch.Tensor, meta: dict[str, Any], dtype: str = "float16") -> bytes:
    """Header + tensor bytes in `dtype`."""
    np_dtype, _ = _DTYPES[dtype]
    payload = tensor.detach().cpu().float().numpy().astype(np_dtype, copy=False).tobytes()
    header = dict(meta)
    header.update(
        shape=list(tensor.shape), dtype=dtype, crc32=zlib.crc32(payload), nbytes=len(payload)
    )
    hdr = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    return _HEADER_LEN.pack(MAGIC, FORMAT_VERSION, len(hdr)) + hdr + payload


def deserialize(blob: bytes, expect: dict[str, Any] | None = None) -> Entry:
    """Inverse of serialize; float32 tensor. Raises CorruptEntry on any mismatch."""
    if len(blob) < _HEADER_LEN.size:
        raise CorruptEntry("value shorter than its header")
    magic, version, hlen = _HEADER_LEN.unpack_from(blob)
    if magic != MAGIC or version != FORMAT_VERSION:
        raise CorruptEntry("unknown magic or format version")
    start = _HEADER_LEN.size
    try:
        header = json.loads(blob[start : start + hlen])
        shape = [int(s) for s in header["shape"]]
        np_dtype, _ = _DTYPES[header["dtype"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptEntry(f"unreadable header: {exc}") from exc
    payload = memoryview(blob)[start + hlen :]
    expected_bytes = int(np.prod(shape)) * np.dtype(np_dtype).itemsize
    if len(payload) != expected_bytes or header.get("nbytes") != expected_bytes:
        raise CorruptEntry("payload length does not match the header")
    if zlib.crc32(payload) != header.get("crc32"):
        raise CorruptEntry("payload checksum mismatch")
    for key, value in (expect or {}).items():
        if header.get(key) != value:
            raise CorruptEntry(f"header field {key!r} does not match")
    array = np.frombuffer(payload, dtype=np_dtype).reshape(shape).astype(np.float32)
    meta = {k: v for k, v in header.items() if k not in ("shape", "dtype", "crc32", "nbytes")}
    return Entry(torch.from_numpy(array), meta)


class ByteLRU:
    """Thread-safe LRU bounded by total bytes, with per-entry expiry (monotonic seconds)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[Entry, float]] = OrderedDict()
        self._bytes = 0
        self._lock = Lock()

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str, slide_ttl: float | None = None) -> tuple[Entry, float] | None:
        """(entry, seconds left) or None; `slide_ttl` renews the expiry on a hit."""
        now = time.monotonic()
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            entry, expires = item
            if expires <= now:
                self._drop(key)
                return None
            if slide_ttl is not None:
                expires = now + slide_ttl
                self._items[key] = (entry, expires)
            self._items.move_to_end(key)
            return entry, expires - now

    def put(self, key: str, entry: Entry, ttl: float) -> None:
        size = entry.nbytes
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                self._drop(key)
            self._items[key] = (entry, time.monotonic() + ttl)
            self._bytes += size
            while self._bytes > self.max_bytes and self._items:
                self._drop(next(iter(self._items)))

    def delete(self, key: str) -> bool:
        with self._lock:
            if key in self._items:
                self._drop(key)
                return True
            return False

    def _drop(self, key: str) -> None:
        entry, _ = self._items.pop(key)
        self._bytes -= entry.nbytes


class TensorCache:
    """Embeddings and mask logits by id: LRU first, then Redis (when configured)."""

    def __init__(
        self,
        metrics: Metrics,
        fingerprint: str,
        ttl_seconds: int,
        lru_max_bytes: int,
        redis_url: str | None = None,
        key_prefix: str = "edgesam:",
        socket_timeout: float = 0.5,
        connect_timeout: float = 0.5,
        retry_seconds: float = 2.0,
        max_connections: int = 32,
        dtype: str = "float16",
        with_priors: bool = False,
    ) -> None:
        self.metrics = metrics
        self.with_priors = with_priors
        self.fingerprint = fingerprint
        self.ttl = ttl_seconds
        # Refinement masks get their own share of the budget: a request with 64 boxes stores
        # 16 MB of them, which must not push the embeddings they refine out of the cache.
        mask_bytes = lru_max_bytes // MASK_LRU_SHARE
        self.lru = ByteLRU(lru_max_bytes - mask_bytes)
        self.mask_lru = ByteLRU(mask_bytes)
        self.prefix = key_prefix
        self.dtype = dtype
        self.retry_seconds = retry_seconds
        self.redis_url = redis_url
        self._redis: Redis | None = None
        if redis_url:
            self._redis = Redis.from_url(
                redis_url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=connect_timeout,
                retry=Retry(NoBackoff(), 0),
                max_connections=max_connections,
            )
        self._down_until = 0.0
        self._degraded_reason: str | None = None
        metrics.redis_up.set(1 if redis_url else 0)

    # -- keys -----------------------------------------------------------------------------
    def embedding_key(self, image_id: str) -> str:
        return f"{self.prefix}emb:{self.fingerprint}:{image_id}"

    def priors_key(self, image_id: str) -> str:
        return f"{self.prefix}priors:{self.fingerprint}:{image_id}"

    def mask_key(self, mask_id: str) -> str:
        return f"{self.prefix}mask:{self.fingerprint}:{mask_id}"

    # -- Redis health ---------------------------------------------------------------------
    @property
    def has_redis(self) -> bool:
        return self._redis is not None

    @property
    def degraded(self) -> str | None:
        """Why Redis is being skipped, or None while it answers."""
        return self._degraded_reason

    def _redis_usable(self) -> bool:
        return self._redis is not None and time.monotonic() >= self._down_until

    def _redis_failed(self, operation: str, exc: BaseException) -> None:
        reason = type(exc).__name__
        self.metrics.cache_errors.labels(operation, reason).inc()
        self._down_until = time.monotonic() + self.retry_seconds
        if self._degraded_reason is None:
            log.warning(
                "redis unavailable (%s during %s: %s); serving from the in-process cache and "
                "recomputing misses until it answers again",
                reason,
                operation,
                exc,
            )
            self.metrics.redis_up.set(0)
        self._degraded_reason = f"{reason} during {operation}"

    def _redis_ok(self) -> None:
        if self._degraded_reason is not None:
            log.warning("redis answers again; cache no longer degraded")
            self.metrics.redis_up.set(1)
        self._degraded_reason = None

    async def check(self) -> str | None:
        """Ping Redis (ignoring the back-off); None when fine or not configured."""
        if self._redis is None:
            return None
        try:
            await self._redis.ping()
        except (TimeoutError, RedisError, OSError) as exc:
            self._redis_failed("ping", exc)
            return self._degraded_reason
        self._down_until = 0.0
        self._redis_ok()
        return None

    # -- generic get/put ------------------------------------------------------------------
    def _lru_of(self, key: str) -> ByteLRU:
        return self.mask_lru if key.startswith(f"{self.prefix}mask:") else self.lru

    async def _get(self, kind: str, key: str, expect: dict[str, Any]) -> tuple[Entry, int] | None:
        hit = self._lru_of(key).get(key, slide_ttl=None if self._redis else self.ttl)
        if hit is not None:
            self.metrics.cache_hits.labels("lru", kind).inc()
            return hit[0], max(int(hit[1]), 0)
        if self._redis_usable():
            try:
                blob = await self._redis.getex(key, ex=self.ttl)  # type: ignore[union-attr]
            except (TimeoutError, RedisError, OSError) as exc:
                self._redis_failed("get", exc)
            else:
                self._redis_ok()
                if blob is not None:
                    try:
                        entry = deserialize(blob, expect)
                    except CorruptEntry as exc:
                        self.metrics.cache_errors.labels("get", "corrupt").inc()
                        log.warning("dropping corrupt cache entry %s: %s", key, exc)
                        await self._redis_delete(key)
                    else:
                        self.metrics.cache_hits.labels("redis", kind).inc()
                        self._lru_of(key).put(key, entry, self.ttl)
                        self._update_lru_bytes()
                        return entry, self.ttl
        self.metrics.cache_misses.labels(kind).inc()
        return None

    async def _put(self, key: str, entry: Entry, dtype: str | None = None) -> None:
        self._lru_of(key).put(key, entry, self.ttl)
        self._update_lru_bytes()
        if self._redis_usable():
            blob = serialize(entry.tensor, entry.meta, dtype or self.dtype)
            try:
                await self._redis.set(key, blob, ex=self.ttl)  # type: ignore[union-attr]
            except (TimeoutError, RedisError, OSError) as exc:
                self._redis_failed("set", exc)
            else:
                self._redis_ok()

    async def _exists(self, key: str) -> bool:
        if self._lru_of(key).get(key) is not None:
            return True
        if self._redis_usable():
            try:
                found = await self._redis.exists(key)  # type: ignore[union-attr]
            except (TimeoutError, RedisError, OSError) as exc:
                self._redis_failed("exists", exc)
            else:
                self._redis_ok()
                return bool(found)
        return False

    async def _delete(self, key: str) -> bool:
        found = self._lru_of(key).delete(key)
        self._update_lru_bytes()
        return await self._redis_delete(key) or found

    async def _redis_delete(self, key: str) -> bool:
        if not self._redis_usable():
            return False
        try:
            removed = await self._redis.delete(key)  # type: ignore[union-attr]
        except (TimeoutError, RedisError, OSError) as exc:
            self._redis_failed("delete", exc)
            return False
        self._redis_ok()
        return bool(removed)

    def _update_lru_bytes(self) -> None:
        self.metrics.lru_bytes.set(self.lru.nbytes + self.mask_lru.nbytes)

    # -- embeddings -----------------------------------------------------------------------
    async def get_embedding(self, image_id: str) -> tuple[ImageEmbedding, int] | None:
        """(embedding, seconds until it expires) or None."""
        got = await self._get("embedding", self.embedding_key(image_id), self._expect("embedding"))
        if got is None:
            return None
        entry, ttl = got
        proposals = None
        if self.with_priors:
            found = await self._get("priors", self.priors_key(image_id), self._expect("priors"))
            proposals = None if found is None else found[0].tensor.reshape(-1, 5)
        try:
            tensor = entry.tensor
            if tuple(tensor.shape) != (1, 256, 64, 64):
                tensor = tensor.reshape(1, 256, 64, 64)
            # the same tensor object on every LRU hit: the decoder keys its per-image cache on it
            emb = ImageEmbedding(
                tensor,
                tuple(entry.meta["original_size"]),  # type: ignore[arg-type]
                tuple(entry.meta["input_size"]),  # type: ignore[arg-type]
                proposals,
            )
        except (KeyError, RuntimeError, TypeError) as exc:
            self.metrics.cache_errors.labels("get", "corrupt").inc()
            log.warning("cache entry for %s has a bad header: %s", image_id, exc)
            await self._delete(self.embedding_key(image_id))
            return None
        return emb, ttl

    async def put_embedding(self, image_id: str, emb: ImageEmbedding) -> None:
        meta = {
            **self._expect("embedding"),
            "original_size": list(emb.original_size),
            "input_size": list(emb.input_size),
        }
        tensor = self._as_stored(emb.embedding)
        await self._put(self.embedding_key(image_id), Entry(tensor, meta))
        if emb.proposals is not None:
            # a few boxes: float32, whose pixel coordinates float16 would round by up to 0.5
            boxes = emb.proposals.detach().float().reshape(-1, 5).contiguous()
            entry = Entry(boxes, self._expect("priors"))
            await self._put(self.priors_key(image_id), entry, "float32")

    async def has_embedding(self, image_id: str) -> bool:
        return await self._exists(self.embedding_key(image_id))

    async def delete_embedding(self, image_id: str) -> bool:
        if self.with_priors:
            await self._delete(self.priors_key(image_id))
        return await self._delete(self.embedding_key(image_id))

    # -- mask logits (for refinement) -----------------------------------------------------
    async def get_mask(self, mask_id: str) -> tuple[torch.Tensor, str] | None:
        """(1x256x256 float32 low-res logits, image_id they came from) or None."""
        got = await self._get("mask", self.mask_key(mask_id), self._expect("mask"))
        if got is None:
            return None
        entry, _ = got
        return entry.tensor.reshape(1, 256, 256), str(entry.meta.get("image_id", ""))

    async def put_mask(self, mask_id: str, image_id: str, logits: torch.Tensor) -> None:
        meta = {**self._expect("mask"), "image_id": image_id}
        tensor = self._as_stored(logits.reshape(1, 256, 256))
        await self._put(self.mask_key(mask_id), Entry(tensor, meta))

    def _as_stored(self, tensor: torch.Tensor) -> torch.Tensor:
        """float32 holding exactly what Redis keeps (`dtype`): the LRU and Redis then give
        the same answer, on this replica and every other, before and after an eviction."""
        tensor = tensor.detach().float()
        if self.dtype == "float16":
            tensor = tensor.half().float()
        return tensor.contiguous()

    def _expect(self, kind: str) -> dict[str, Any]:
        return {"kind": kind, "fingerprint": self.fingerprint}

    async def close(self) -> None:
        if self._redis is not None:
            try:
                await self._redis.aclose()
            except (RedisError, OSError):
                pass
