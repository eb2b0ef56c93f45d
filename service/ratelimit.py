"""Per-key rate limits (EDGESAM_RATE_LIMIT_PER_SECOND, EDGESAM_RATE_LIMIT_BURST): a token
bucket per API key (per client address where no keys are configured), shared by HTTP and
gRPC in one replica. Off by default.

Memory is bounded: at most `max_buckets` buckets, least recently used dropped first (a
dropped bucket comes back full, which only ever errs towards letting a request through).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from threading import Lock
from weakref import WeakKeyDictionary

from service.errors import RateLimited

MAX_BUCKETS = 10_000
# one limiter per service instance, whichever transport asks first: a key's requests over
# HTTP and gRPC draw from the same bucket
_SHARED: WeakKeyDictionary[object, RateLimiter] = WeakKeyDictionary()
_SHARED_LOCK = Lock()


class RateLimiter:
    def __init__(
        self,
        per_second: float,
        burst: int = 0,
        max_buckets: int = MAX_BUCKETS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_second <= 0:
            raise ValueError("per_second must be positive")
        self.rate = float(per_second)
        # burst 0: one second's worth, at least one request
        self.burst = float(burst or max(1, math.ceil(per_second)))
        self.max_buckets = max_buckets
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def acquire(self, who: str) -> float:
        """Take one token for `who`: 0.0 when granted, else the seconds until one is there."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.pop(who, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                tokens -= 1.0
                wait = 0.0
            else:
                wait = (1.0 - tokens) / self.rate
            self._buckets[who] = (tokens, now)
            while len(self._buckets) > self.max_buckets:
                self._buckets.popitem(last=False)
            return wait

    def check(self, who: str) -> None:
        """Raise RateLimited (with Retry-After, whole seconds, at least 1) when `who` is over
        its rate."""
        wait = self.acquire(who)
        if wait > 0:
            raise RateLimited(
                f"rate limit exceeded ({self.rate:g} requests/s, bursts of {self.burst:g}); "
                "retry later",
                retry_after=max(1, math.ceil(wait)),
            )


def shared_limiter(owner: object, per_second: float, burst: int) -> RateLimiter | None:
    """The rate limiter of `owner` (a SegmentationService), made on first use; None when
    `per_second` is 0 (off)."""
    if per_second <= 0:
        return None
    with _SHARED_LOCK:
        limiter = _SHARED.get(owner)
        if limiter is None:
            limiter = _SHARED[owner] = RateLimiter(per_second, burst)
        return limiter
