"""Embedding and mask-logit cache: a bounded in-process LRU (by bytes) in front of Redis.

Redis values carry a small header (shape, dtype, original/input size, model fingerprint,
CRC32 of the payload) before the tensor bytes, stored as float16 by default. Keys include the
model fingerprint, so replicas running different weights never share embeddings.

Refinement masks (the previous answer's 256x256 low-resolution logits) are stored quantised
(a step of 1/32 logit, coarser only where the result would not fit), delta-coded and
compressed: at most MASK_MAX_BLOB_BYTES per click, with their own, shorter TTL.

Redis is optional and never fatal. Every call has a socket timeout sized for its payload
(small calls: `socket_timeout`; embeddings of megabytes: `bulk_socket_timeout`, on a pool of
their own). A circuit breaker (service.breaker) takes Redis out of rotation after
`breaker_failures` consecutive failures, not one slow read: then Redis is degraded (a metric,
one log line per transition) and requests go on with the in-process cache alone (a miss is
recomputed). After `retry_seconds` one request probes Redis again, so the cache recovers by
itself.

With tenant isolation (service.tenancy) every key carries the caller's tenant id.
"""

from __future__ import annotations

import json
import logging
import struct
import time
import zlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from threading import Lock
from typing import Any, TypeVar

import numpy as np
import torch
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from engine.core import ImageEmbedding
from service import tenancy
from service.breaker import CircuitBreaker
from service.compat import to_thread
from service.metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")

MAGIC = b"ESAM"
FORMAT_VERSION = 1
_HEADER_LEN = struct.Struct("<4sBI")  # magic, version, json length
_DTYPES = {"float16": (np.float16, torch.float16), "float32": (np.float32, torch.float32)}


# The in-process cache's share (1/N of EDGESAM_LRU_MAX_BYTES) kept for refinement masks.
MASK_LRU_SHARE = 8

# Refinement masks: quantisation steps tried in turn (in logits) until the stored value fits
# MASK_MAX_BLOB_BYTES. Smooth logits of a trained model fit at the first; noisy ones (random
# weights) take a coarser step. The bound keeps Redis' MEMORY USAGE of one mask key under
# 64 KiB (jemalloc's 56 KiB size class plus the key and object headers).
MASK_STEPS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)
MASK_MAX_BLOB_BYTES = 56 * 1024 - 512
MASK_CODEC = "q16dz"  # int16 multiples of `step`, delta-coded along rows, byte-shuffled, zlib
_ZLIB_LEVEL = 6


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


def _quantise(tensor: torch.Tensor, step: float) -> np.ndarray:
    """int16 multiples of `step` (saturating: far beyond any logit a mask decoder gives)."""
    values = np.rint(tensor.detach().cpu().float().numpy() / step)
    return np.clip(values, -32767, 32767).astype(np.int16)


def _pack_q16(q: np.ndarray) -> bytes:
    """Delta along the last axis (mod 2**16), low bytes then high bytes, zlib."""
    u = q.view(np.uint16)
    delta = np.diff(u, axis=-1, prepend=np.zeros(u.shape[:-1] + (1,), np.uint16))
    shuffled = delta.astype("<u2").view(np.uint8).reshape(-1, 2).T.tobytes()
    return zlib.compress(shuffled, _ZLIB_LEVEL)


def _unpack_q16(payload: bytes | memoryview, shape: list[int]) -> np.ndarray:
    count = int(np.prod(shape))
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(payload, 2 * count)  # bounded: never more than the shape
    except zlib.error as exc:
        raise CorruptEntry(f"mask payload does not inflate: {exc}") from exc
    if len(raw) != 2 * count or inflater.unconsumed_tail:
        raise CorruptEntry("mask payload length does not match the header")
    planes = np.frombuffer(raw, dtype=np.uint8).reshape(2, count)
    delta = np.ascontiguousarray(planes.T).view("<u2").reshape(shape)
    return np.cumsum(delta, axis=-1, dtype=np.uint16).view(np.int16)


def serialize_mask(tensor: torch.Tensor, meta: dict[str, Any]) -> tuple[bytes, torch.Tensor]:
    """(stored bytes, the float32 logits they decode to): the finest step of MASK_STEPS whose
    value fits MASK_MAX_BLOB_BYTES. The largest error is step / 2 (1/64 logit at the first)."""
    blob = b""
    q = None
    step = MASK_STEPS[0]
    for step in MASK_STEPS:
        q = _quantise(tensor, step)
        payload = _pack_q16(q)
        header = dict(meta)
        header.update(
            shape=list(tensor.shape),
            dtype=MASK_CODEC,
            step=step,
            crc32=zlib.crc32(payload),
            nbytes=len(payload),
        )
        hdr = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
        blob = _HEADER_LEN.pack(MAGIC, FORMAT_VERSION, len(hdr)) + hdr + payload
        if len(blob) <= MASK_MAX_BLOB_BYTES:
            break
    assert q is not None  # MASK_STEPS is not empty
    values = torch.from_numpy(q.astype(np.float32) * np.float32(step))
    return blob, values


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
        codec = header["dtype"]
        step = float(header["step"]) if codec == MASK_CODEC else 0.0
        np_dtype = None if codec == MASK_CODEC else _DTYPES[codec][0]
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptEntry(f"unreadable header: {exc}") from exc
    payload = memoryview(blob)[start + hlen :]
    if np_dtype is None:
        if header.get("nbytes") != len(payload) or not (0 < step <= 1024) or len(shape) > 8:
            raise CorruptEntry("mask payload length or step does not match the header")
        if zlib.crc32(payload) != header.get("crc32"):
            raise CorruptEntry("payload checksum mismatch")
        _check_expected(header, expect)
        array = _unpack_q16(payload, shape).astype(np.float32) * np.float32(step)
        return Entry(torch.from_numpy(array), _meta_of(header))
    expected_bytes = int(np.prod(shape)) * np.dtype(np_dtype).itemsize
    if len(payload) != expected_bytes or header.get("nbytes") != expected_bytes:
        raise CorruptEntry("payload length does not match the header")
    if zlib.crc32(payload) != header.get("crc32"):
        raise CorruptEntry("payload checksum mismatch")
    _check_expected(header, expect)
    array = np.frombuffer(payload, dtype=np_dtype).reshape(shape).astype(np.float32)
    return Entry(torch.from_numpy(array), _meta_of(header))


def _check_expected(header: dict[str, Any], expect: dict[str, Any] | None) -> None:
    for key, value in (expect or {}).items():
        if header.get(key) != value:
            raise CorruptEntry(f"header field {key!r} does not match")


def _meta_of(header: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v for k, v in header.items() if k not in ("shape", "dtype", "crc32", "nbytes", "step")
    }


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
        mask_ttl_seconds: int | None = None,
        bulk_socket_timeout: float | None = None,
        breaker_failures: int = 3,
        redis_tls: dict[str, Any] | None = None,
    ) -> None:
        self.metrics = metrics
        self.with_priors = with_priors
        self.fingerprint = fingerprint
        self.ttl = ttl_seconds
        self.mask_ttl = min(mask_ttl_seconds or ttl_seconds, ttl_seconds)
        # Refinement masks get their own share of the budget: a request with 64 boxes stores
        # 64 of them, which must not push the embeddings they refine out of the cache.
        mask_bytes = lru_max_bytes // MASK_LRU_SHARE
        self.lru = ByteLRU(lru_max_bytes - mask_bytes)
        self.mask_lru = ByteLRU(mask_bytes)
        self.prefix = key_prefix
        self.dtype = dtype
        self.retry_seconds = retry_seconds
        self.redis_url = redis_url
        self.breaker = CircuitBreaker(breaker_failures, retry_seconds)
        self._redis: Redis | None = None
        self._bulk: Redis | None = None
        if redis_url:
            options: dict[str, Any] = dict(
                socket_connect_timeout=connect_timeout,
                retry=Retry(NoBackoff(), 0),
                max_connections=max_connections,
            )
            if redis_url.startswith("rediss://"):
                options.update({k: v for k, v in (redis_tls or {}).items() if v is not None})
            self._redis = Redis.from_url(redis_url, socket_timeout=socket_timeout, **options)
            # Megabytes per embedding: a read that waits on a busy event loop is slow, not
            # lost; it gets its own pool, so small calls never queue behind it.
            bulk = max(bulk_socket_timeout or socket_timeout, socket_timeout)
            self._bulk = Redis.from_url(redis_url, socket_timeout=bulk, **options)
        self._degraded_reason: str | None = None
        metrics.redis_up.set(1 if redis_url else 0)

    # -- keys -----------------------------------------------------------------------------
    def _scope(self) -> str:
        tenant = tenancy.current()
        return f"{self.prefix}t:{tenant}:" if tenant else self.prefix

    def embedding_key(self, image_id: str) -> str:
        return f"{self._scope()}emb:{self.fingerprint}:{image_id}"

    def priors_key(self, image_id: str) -> str:
        return f"{self._scope()}priors:{self.fingerprint}:{image_id}"

    def mask_key(self, mask_id: str) -> str:
        return f"{self._scope()}mask:{self.fingerprint}:{mask_id}"

    # -- Redis health ---------------------------------------------------------------------
    @property
    def has_redis(self) -> bool:
        return self._redis is not None

    @property
    def degraded(self) -> str | None:
        """Why Redis is being skipped, or None while it is in rotation."""
        return self._degraded_reason

    def _client(self, kind: str) -> Redis | None:
        """The pool for `kind`'s payload, when the breaker lets a call through."""
        if self._redis is None or not self.breaker.allow():
            return None
        return self._bulk if kind in ("embedding", "priors") else self._redis

    def _redis_failed(self, operation: str, exc: BaseException) -> None:
        reason = type(exc).__name__
        self.metrics.cache_errors.labels(operation, reason).inc()
        if self.breaker.failure():
            self.metrics.redis_breaker_opens.inc()
            self.metrics.redis_up.set(0)
            log.warning(
                "redis unavailable (%s during %s: %s; %d consecutive failures); serving from "
                "the in-process cache and recomputing misses until it answers again",
                reason,
                operation,
                exc,
                self.breaker.consecutive_failures,
            )
        if self.breaker.state != "closed":
            self._degraded_reason = f"{reason} during {operation}"

    async def _redis_call(
        self, kind: str, operation: str, call: Callable[[Redis], Awaitable[T]]
    ) -> tuple[bool, T | None]:
        """(answered, result) of `call` on the pool for `kind`; (False, None) when the breaker
        keeps Redis out of rotation or the call failed (counted by the breaker)."""
        client = self._client(kind)
        if client is None:
            return False, None
        try:
            result = await call(client)
        except (TimeoutError, RedisError, OSError) as exc:
            self._redis_failed(operation, exc)
            return False, None
        except BaseException:  # cancelled: neither an answer nor a failure of Redis
            self.breaker.release()
            raise
        self._redis_ok()
        return True, result

    def _redis_ok(self) -> None:
        self.breaker.success()
        if self._degraded_reason is not None:
            log.warning("redis answers again; cache no longer degraded")
            self.metrics.redis_up.set(1)
        self._degraded_reason = None

    async def check(self) -> str | None:
        """Ping Redis (a probe whatever the breaker's state); None when fine or not
        configured, else why it failed (one failure counts towards opening the breaker)."""
        if self._redis is None:
            return None
        try:
            await self._redis.ping()
        except (TimeoutError, RedisError, OSError) as exc:
            self._redis_failed("ping", exc)
            return self._degraded_reason or f"{type(exc).__name__} during ping"
        self._redis_ok()
        return None

    # -- generic get/put ------------------------------------------------------------------
    def _lru_of(self, kind: str) -> ByteLRU:
        return self.mask_lru if kind == "mask" else self.lru

    def _ttl_of(self, kind: str) -> int:
        return self.mask_ttl if kind == "mask" else self.ttl

    async def _get(self, kind: str, key: str, expect: dict[str, Any]) -> tuple[Entry, int] | None:
        ttl = self._ttl_of(kind)
        lru = self._lru_of(kind)
        hit = lru.get(key, slide_ttl=None if self._redis else ttl)
        if hit is not None:
            self.metrics.cache_hits.labels("lru", kind).inc()
            return hit[0], max(int(hit[1]), 0)
        answered, blob = await self._redis_call(
            kind, "get", lambda client: client.getex(key, ex=ttl)
        )
        if answered and blob is not None:
            try:
                entry = deserialize(blob, expect)
            except CorruptEntry as exc:
                self.metrics.cache_errors.labels("get", "corrupt").inc()
                log.warning("dropping corrupt cache entry %s: %s", key, exc)
                await self._redis_delete(key)
            else:
                self.metrics.cache_hits.labels("redis", kind).inc()
                lru.put(key, entry, ttl)
                self._update_lru_bytes()
                return entry, ttl
        self.metrics.cache_misses.labels(kind).inc()
        return None

    async def _put(self, kind: str, key: str, entry: Entry, blob: bytes) -> None:
        ttl = self._ttl_of(kind)
        self._lru_of(kind).put(key, entry, ttl)
        self._update_lru_bytes()
        await self._redis_call(kind, "set", lambda client: client.set(key, blob, ex=ttl))

    async def _exists(self, kind: str, key: str) -> bool:
        if self._lru_of(kind).get(key) is not None:
            return True
        answered, found = await self._redis_call("exists", "exists", lambda c: c.exists(key))
        return bool(answered and found)

    async def _delete(self, kind: str, key: str) -> bool:
        found = self._lru_of(kind).delete(key)
        self._update_lru_bytes()
        return await self._redis_delete(key) or found

    async def _redis_delete(self, key: str) -> bool:
        _, removed = await self._redis_call("delete", "delete", lambda c: c.delete(key))
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
            await self._delete("embedding", self.embedding_key(image_id))
            return None
        return emb, ttl

    async def put_embedding(self, image_id: str, emb: ImageEmbedding) -> None:
        meta = {
            **self._expect("embedding"),
            "original_size": list(emb.original_size),
            "input_size": list(emb.input_size),
        }
        tensor = self._as_stored(emb.embedding)
        blob = serialize(tensor, meta, self.dtype) if self._redis is not None else b""
        await self._put("embedding", self.embedding_key(image_id), Entry(tensor, meta), blob)
        if emb.proposals is not None:
            # a few boxes: float32, whose pixel coordinates float16 would round by up to 0.5
            boxes = emb.proposals.detach().float().reshape(-1, 5).contiguous()
            priors_meta = self._expect("priors")
            blob = serialize(boxes, priors_meta, "float32") if self._redis is not None else b""
            await self._put("priors", self.priors_key(image_id), Entry(boxes, priors_meta), blob)

    async def has_embedding(self, image_id: str) -> bool:
        return await self._exists("embedding", self.embedding_key(image_id))

    async def delete_embedding(self, image_id: str) -> bool:
        if self.with_priors:
            await self._delete("priors", self.priors_key(image_id))
        return await self._delete("embedding", self.embedding_key(image_id))

    # -- mask logits (for refinement) -----------------------------------------------------
    async def get_mask(self, mask_id: str) -> tuple[torch.Tensor, str] | None:
        """(1x256x256 float32 low-res logits, image_id they came from) or None."""
        got = await self._get("mask", self.mask_key(mask_id), self._expect("mask"))
        if got is None:
            return None
        entry, _ = got
        return entry.tensor.reshape(1, 256, 256), str(entry.meta.get("image_id", ""))

    async def put_mask(self, mask_id: str, image_id: str, logits: torch.Tensor) -> None:
        """Store one answer's best low-res logits, quantised (serialize_mask): the LRU keeps
        the very values Redis gives back, so every replica refines alike."""
        meta = {**self._expect("mask"), "image_id": image_id}
        # quantising and compressing take milliseconds (zlib releases the GIL): off the loop
        blob, stored = await to_thread(serialize_mask, logits.reshape(1, 256, 256), meta)
        await self._put("mask", self.mask_key(mask_id), Entry(stored, meta), blob)

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
        for client in (self._redis, self._bulk):
            if client is not None:
                try:
                    await client.aclose()
                except (RedisError, OSError):
                    pass
