"""Shims for Python 3.8, the system Python of JetPack 5 (L4T r35) that the Jetson image runs
on. Each names the Python version that makes it unnecessary. Standard library only: the
settings and schemas import it before anything heavy is loaded."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import queue
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

if sys.version_info >= (3, 9):
    from typing import Annotated
else:  # 3.9 moved Annotated into typing; pydantic depends on typing_extensions
    from typing_extensions import Annotated

T = TypeVar("T")

__all__ = ["Annotated", "shutdown_now", "to_thread"]


async def to_thread(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`asyncio.to_thread` (3.9+): `func` on the loop's default executor, seeing the
    caller's context variables."""
    loop = asyncio.get_running_loop()
    call = functools.partial(contextvars.copy_context().run, func, *args, **kwargs)
    return await loop.run_in_executor(None, call)


def shutdown_now(pool: ThreadPoolExecutor) -> None:
    """Shut `pool` down without waiting and cancel the jobs that have not started
    (`shutdown(cancel_futures=True)`, 3.9+)."""
    if sys.version_info >= (3, 9):
        pool.shutdown(wait=False, cancel_futures=True)
    else:
        _shutdown_cancelling(pool)


def _shutdown_cancelling(pool: ThreadPoolExecutor) -> None:
    """What 3.9's cancel_futures does, for 3.8: refuse new work, cancel every queued job,
    then queue again the wake-up call for idle workers that shutdown() sent."""
    pool.shutdown(wait=False)
    work: queue.SimpleQueue[Any] = pool._work_queue  # type: ignore[attr-defined]
    while True:
        try:
            item = work.get_nowait()
        except queue.Empty:
            break
        if item is not None:
            item.future.cancel()
    work.put(None)
