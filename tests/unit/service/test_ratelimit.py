"""The token bucket, on a fake clock."""

from __future__ import annotations

import pytest

from service.errors import ERROR_TABLE, RateLimited
from service.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(2.0, burst=3, clock=clock)
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a") == pytest.approx(0.5)  # one token every 0.5 s
    clock.now += 0.5
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("b") == 0.0  # buckets are per key


def test_refused_requests_take_no_token() -> None:
    clock = Clock()
    limiter = RateLimiter(1.0, burst=1, clock=clock)
    limiter.acquire("a")
    for _ in range(5):
        assert limiter.acquire("a") > 0
    clock.now += 1.0
    assert limiter.acquire("a") == 0.0


def test_check_raises_with_retry_after() -> None:
    clock = Clock()
    limiter = RateLimiter(0.1, burst=1, clock=clock)
    limiter.check("a")
    with pytest.raises(RateLimited) as err:
        limiter.check("a")
    assert err.value.retry_after == 10
    assert err.value.code == "rate_limited"
    spec = ERROR_TABLE["rate_limited"]
    assert (spec.http_status, spec.grpc_status) == (429, "RESOURCE_EXHAUSTED")


def test_bucket_memory_is_bounded() -> None:
    limiter = RateLimiter(1.0, burst=1, max_buckets=100, clock=Clock())
    for i in range(10_000):
        limiter.acquire(f"client-{i}")
    assert len(limiter) == 100


def test_burst_defaults_to_a_second_of_requests() -> None:
    assert RateLimiter(5.0).burst == 5
    assert RateLimiter(0.2).burst == 1
    with pytest.raises(ValueError):
        RateLimiter(0)
