"""service.compat: to_thread and shutdown_now, including the paths Python 3.8 takes."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from concurrent.futures import CancelledError, ThreadPoolExecutor

import pytest

from service.compat import _shutdown_cancelling, shutdown_now, to_thread

REQUEST = contextvars.ContextVar("REQUEST", default="unset")


def test_to_thread_runs_elsewhere_with_the_callers_context() -> None:
    def work(a: int, *, b: int) -> tuple[int, str, str]:
        return a + b, threading.current_thread().name, REQUEST.get()

    async def main() -> tuple[int, str, str]:
        REQUEST.set("req-1")
        return await to_thread(work, 2, b=3)

    total, thread, seen = asyncio.run(main())
    assert total == 5
    assert thread != threading.current_thread().name
    assert seen == "req-1"


def test_to_thread_raises_the_functions_error() -> None:
    def boom() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        asyncio.run(to_thread(boom))


@pytest.mark.parametrize("shutdown", [shutdown_now, _shutdown_cancelling])
def test_shutdown_cancels_queued_jobs_and_lets_the_running_one_finish(shutdown) -> None:  # noqa: ANN001
    pool = ThreadPoolExecutor(max_workers=1)
    started, release = threading.Event(), threading.Event()

    def running() -> str:
        started.set()
        release.wait(10)
        return "done"

    first = pool.submit(running)
    assert started.wait(10)
    queued = [pool.submit(str, i) for i in range(3)]
    shutdown(pool)
    assert all(f.cancelled() for f in queued)
    with pytest.raises(RuntimeError):
        pool.submit(str, 0)
    release.set()
    assert first.result(10) == "done"
    for f in queued:
        with pytest.raises(CancelledError):
            f.result(0)
    pool.shutdown(wait=True)  # the worker saw the wake-up call and exits
