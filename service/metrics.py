"""Prometheus metrics, one registry per service instance (several may share a process)."""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: N811
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class _MallInfo2(ctypes.Structure):
    _fields_ = [  # noqa: RUF012 - ctypes' declaration, glibc >= 2.33 `struct mallinfo2`
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
            "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def _mallinfo2() -> ctypes._CFuncPtr | None:
    name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name).mallinfo2 if name else None
    except (OSError, AttributeError):  # not glibc, or glibc < 2.33
        return None
    if fn is not None:
        fn.restype = _MallInfo2
        fn.argtypes = []
    return fn


class HeapCollector(Collector):
    """`edgesam_heap_bytes{state}` from glibc's allocator: `in_use` (live allocations),
    `free` (held by the heap but unused: retention and fragmentation) and `mmapped` (large
    blocks mapped on their own). RSS growing with `in_use` is memory the process holds on
    to; growing with `free` is the allocator's. Nothing is exported off glibc."""

    def __init__(self) -> None:
        self._fn = _mallinfo2()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self._fn is None:
            return
        info = self._fn()
        family = GaugeMetricFamily(
            "edgesam_heap_bytes", "glibc heap bytes by state", labels=["state"]
        )
        family.add_metric(["in_use"], float(info.uordblks + info.hblkhd))
        family.add_metric(["free"], float(info.fordblks))
        family.add_metric(["mmapped"], float(info.hblkhd))
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_latency = Histogram(
            "edgesam_request_duration_seconds",
            "Request latency per route, method and status",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.encoder_batch_size = Histogram(
            "edgesam_encoder_batch_size",
            "Images per encoder call",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.encoder_latency = Histogram(
            "edgesam_encoder_duration_seconds",
            "Encoder call latency",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.decoder_latency = Histogram(
            "edgesam_decoder_duration_seconds",
            "Decoder call latency",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.cache_hits = Counter(
            "edgesam_cache_hits_total", "Cache hits", ["layer", "kind"], registry=r
        )
        self.cache_misses = Counter(
            "edgesam_cache_misses_total", "Cache misses (all layers)", ["kind"], registry=r
        )
        self.cache_errors = Counter(
            "edgesam_cache_errors_total",
            "Redis errors and rejected cache entries",
            ["operation", "reason"],
            registry=r,
        )
        self.lru_bytes = Gauge(
            "edgesam_lru_bytes", "Bytes held by the in-process cache", registry=r
        )
        self.redis_up = Gauge(
            "edgesam_redis_up", "1 while Redis answers, 0 while degraded", registry=r
        )
        self.redis_breaker_opens = Counter(
            "edgesam_redis_breaker_opens_total",
            "Times the Redis circuit breaker opened (consecutive failures)",
            registry=r,
        )
        self.rate_limited = Counter(
            "edgesam_rate_limited_total",
            "Requests refused by the per-key rate limit",
            ["transport"],
            registry=r,
        )
        self.rejected = Counter(
            "edgesam_rejected_total",
            "Requests refused because a queue was full",
            ["queue"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "edgesam_queue_depth", "Requests waiting or running", ["queue"], registry=r
        )
        self.ready = Gauge("edgesam_ready", "1 when ready to serve", registry=r)
        # process_resident_memory_bytes and friends (Linux): memory per replica, for the
        # dashboard and the memory alert (deploy/monitoring)
        ProcessCollector(registry=r)
        r.register(HeapCollector())
        self.backend_info = Gauge(
            "edgesam_backend_info",
            "1 for the backend serving, its device and the precision its encoder computes in",
            ["backend", "device", "precision"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


__all__ = ["CONTENT_TYPE", "Metrics"]
