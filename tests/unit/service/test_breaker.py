"""The circuit breaker's bookkeeping, on a fake clock."""

from __future__ import annotations

import pytest

from service.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_only_after_consecutive_failures() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=3, open_seconds=2.0, clock=clock)
    assert b.allow() and not b.failure()
    assert b.allow() and not b.failure()
    assert b.state == CLOSED
    assert b.allow() and b.failure()  # the third in a row opens it
    assert b.state == OPEN and not b.allow()


def test_a_success_resets_the_count() -> None:
    b = CircuitBreaker(failures=2, open_seconds=2.0, clock=Clock())
    for _ in range(10):  # failure, success, failure, ...: never two in a row
        b.failure()
        b.success()
    assert b.state == CLOSED and b.allow()


def test_half_open_lets_one_probe_through() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=1, open_seconds=2.0, clock=clock)
    b.failure()
    clock.now += 1.9
    assert not b.allow()
    clock.now += 0.2
    assert b.state == HALF_OPEN
    assert b.allow()  # the probe
    assert not b.allow()  # everyone else waits for its answer
    assert not b.failure()  # the probe failed: open again (no new transition)
    assert b.state == OPEN and not b.allow()
    clock.now += 2.1
    assert b.allow()
    assert b.success()  # recovered: closed, a transition
    assert b.state == CLOSED and b.allow() and b.allow()


def test_a_cancelled_probe_frees_the_slot() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=1, open_seconds=1.0, clock=clock)
    b.failure()
    clock.now += 1.5
    assert b.allow()
    b.release()
    assert b.allow()


def test_failures_must_be_positive() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failures=0)
