"""A bounded thread pool: overload is an answer (429 with Retry-After), never a queue
without end."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from service.compat import shutdown_now
from service.errors import Overloaded
from service.metrics import Metrics

T = TypeVar("T")


class BoundedExecutor:
    """A thread pool that refuses work at once (Overloaded) when `max_pending` jobs are
    already waiting or running, instead of queueing without bound."""

    def __init__(
        self, name: str, workers: int, max_pending: int, metrics: Metrics, retry_after: int
    ) -> None:
        self.name = name
        self.max_pending = max_pending
        self.retry_after = retry_after
        self._metrics = metrics
        self._pending = 0
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"edgesam-{name}")

    @property
    def pending(self) -> int:
        return self._pending

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        if self._pending >= self.max_pending:
            self._metrics.rejected.labels(self.name).inc()
            raise Overloaded(
                f"the {self.name} queue is full ({self.max_pending}); retry shortly",
                retry_after=self.retry_after,
            )
        self._pending += 1
        self._metrics.queue_depth.labels(self.name).set(self._pending)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            self._pending -= 1
            self._metrics.queue_depth.labels(self.name).set(self._pending)

    def shutdown(self) -> None:
        shutdown_now(self._pool)
