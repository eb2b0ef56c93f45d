"""A circuit breaker for the shared cache: Redis leaves rotation only after `failures`
consecutive failed calls (one slow read under load is not an outage), stays out for
`open_seconds`, then lets exactly one probe call through (half-open): its success closes the
breaker, its failure opens it again.

Pure bookkeeping (no I/O, a clock that tests can replace), shared by every coroutine of one
replica's event loop; the lock only guards against the odd call from a worker thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from threading import Lock

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        failures: int = 3,
        open_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures < 1:
            raise ValueError("failures must be at least 1")
        self.failures = failures
        self.open_seconds = open_seconds
        self._clock = clock
        self._state = CLOSED
        self._consecutive = 0
        self._open_until = 0.0
        self._probing = False
        self._lock = Lock()

    @property
    def state(self) -> str:
        """closed, open, or half_open (the open period is over: the next call probes)."""
        with self._lock:
            if self._state == OPEN and self._clock() >= self._open_until:
                return HALF_OPEN
            return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive

    def allow(self) -> bool:
        """May a call go to Redis now? While half-open only the one probe may (its caller
        must report `success()` or `failure()`, or `release()` when it did not run)."""
        with self._lock:
            if self._state == CLOSED:
                return True
            if self._state == OPEN:
                if self._clock() < self._open_until:
                    return False
                self._state = HALF_OPEN
            if self._probing:
                return False
            self._probing = True
            return True

    def release(self) -> None:
        """The call `allow()` admitted did not reach Redis after all."""
        with self._lock:
            self._probing = False

    def success(self) -> bool:
        """Record a call that answered; True when this closed an open breaker."""
        with self._lock:
            was_open = self._state != CLOSED
            self._state = CLOSED
            self._consecutive = 0
            self._probing = False
            return was_open

    def failure(self) -> bool:
        """Record a failed call; True when this opened the breaker (a transition)."""
        with self._lock:
            self._consecutive += 1
            self._probing = False
            if self._state == HALF_OPEN or (
                self._state == CLOSED and self._consecutive >= self.failures
            ):
                opened = self._state == CLOSED
                self._state = OPEN
                self._open_until = self._clock() + self.open_seconds
                return opened
            if self._state == OPEN:  # a call admitted before it opened, failing late
                self._open_until = self._clock() + self.open_seconds
            return False
