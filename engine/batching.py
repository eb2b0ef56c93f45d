"""A batching front for the encoder.

Callers (asyncio handlers or threads) submit one image each: uint8 pixels with their input size
(`transforms.image_to_pixels`; the backend normalises them, on its device where it has one) or
an already normalised float tensor. A worker thread takes the first waiting request, gathers
more for up to `max_wait_ms` or until `max_batch` are in hand, runs one `backend.encode_pixels`
(or `encode`) on the stack, and hands every caller its own 1x256x64x64 slice.

The queue is bounded: when `max_queue` requests already wait, `encode` raises `Overloaded` at
once (the service answers 429/503), never an unbounded wait.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from engine.backends.base import Backend, BackendError

log = logging.getLogger(__name__)


class Overloaded(BackendError):
    """The encoder queue is full; retry later."""


class BatcherClosed(BackendError):
    """The batcher was shut down before the request ran."""


@dataclass
class _Request:
    image: torch.Tensor
    input_size: tuple[int, int] | None = None  # set for uint8 pixels
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class BatcherStats:
    """A snapshot for metrics: batch-size histogram {size: count}, queue depth and totals."""

    batch_sizes: dict[int, int]
    queue_depth: int
    max_queue: int
    submitted: int
    completed: int
    failed: int
    rejected: int
    batches: int


_STOP = object()


class EncoderBatcher:
    """Groups single-image encode requests into batches for one backend.

    max_batch: largest batch given to the backend; max_wait_ms: how long the first request of a
    batch may wait for company; max_queue: waiting requests beyond which callers are refused.
    """

    def __init__(
        self, backend: Backend, max_batch: int = 8, max_wait_ms: float = 5.0, max_queue: int = 64
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_ms >= 0")
        self.backend = backend
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1e3
        self.max_queue = int(max_queue)
        self._queue: queue.Queue = queue.Queue(maxsize=self.max_queue)
        self._lock = threading.Lock()
        self._closed = False
        self._hist: dict[int, int] = {}
        self._submitted = self._completed = self._failed = self._rejected = 0
        self._worker = threading.Thread(
            target=self._run, name="edgesam-encoder-batcher", daemon=True
        )
        self._worker.start()

    # -- submission ---------------------------------------------------------------------------

    def submit(self, image: torch.Tensor, input_size: tuple[int, int] | None = None) -> Future:
        """Queue one 1x3x1024x1024 image: uint8 pixels with their input size (h, w), or a
        normalised float tensor without; the future resolves to its 1x256x64x64 embedding."""
        if image.ndim == 3:
            image = image.unsqueeze(0)
        if image.ndim != 4 or tuple(image.shape) != (1, 3, 1024, 1024):
            raise ValueError(f"expected a 1x3x1024x1024 image tensor, got {tuple(image.shape)}")
        if (input_size is not None) != (image.dtype == torch.uint8):
            raise ValueError("uint8 pixels need their input_size; float images take none")
        request = _Request(image, input_size)
        with self._lock:
            if self._closed:
                raise BatcherClosed("the encoder batcher is shut down")
            try:
                self._queue.put_nowait(request)
            except queue.Full:
                self._rejected += 1
                raise Overloaded(
                    f"encoder queue full ({self.max_queue} waiting); retry later"
                ) from None
            self._submitted += 1
        return request.future

    def encode_sync(
        self,
        image: torch.Tensor,
        input_size: tuple[int, int] | None = None,
        timeout: float | None = None,
    ) -> torch.Tensor:
        """Blocking encode from a thread."""
        return self.submit(image, input_size).result(timeout)

    async def encode(
        self, image: torch.Tensor, input_size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Encode from asyncio without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(image, input_size))

    # -- worker -------------------------------------------------------------------------------

    def _gather(self, first: _Request) -> tuple[list[_Request], bool]:
        batch = [first]
        deadline = time.perf_counter() + self.max_wait
        stop = False
        while len(batch) < self.max_batch:
            remaining = deadline - time.perf_counter()
            try:
                item = (
                    self._queue.get_nowait()
                    if remaining <= 0
                    else self._queue.get(timeout=remaining)
                )
            except queue.Empty:
                break
            if item is _STOP:
                stop = True
                break
            batch.append(item)
        return batch, stop

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch, stop = self._gather(item)
            live = [r for r in batch if r.future.set_running_or_notify_cancel()]
            if live:
                self._run_batch(live)
            if stop:
                return

    def _run_batch(self, batch: list[_Request]) -> None:
        # Pixels and normalised images go to the backend as separate stacks (a service sends
        # one kind; tests and library callers may mix them).
        pixels = [r for r in batch if r.input_size is not None]
        floats = [r for r in batch if r.input_size is None]
        batch = pixels + floats
        try:
            parts = []
            if pixels:
                parts.append(
                    self.backend.encode_pixels(
                        torch.cat([r.image for r in pixels], dim=0),
                        [r.input_size for r in pixels],  # type: ignore[misc]
                    )
                )
            if floats:
                parts.append(self.backend.encode(torch.cat([r.image for r in floats], dim=0)))
            embeddings = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
            if embeddings.shape[0] != len(batch):
                raise BackendError(
                    f"backend returned {embeddings.shape[0]} embeddings for {len(batch)} images"
                )
        except BaseException as exc:  # every caller learns of the failure
            with self._lock:
                self._failed += len(batch)
                self._hist[len(batch)] = self._hist.get(len(batch), 0) + 1
            for r in batch:
                r.future.set_exception(exc)
            return
        with self._lock:
            self._completed += len(batch)
            self._hist[len(batch)] = self._hist.get(len(batch), 0) + 1
        for i, r in enumerate(batch):
            r.future.set_result(embeddings[i : i + 1].clone())

    # -- observability and shutdown -----------------------------------------------------------

    def stats(self) -> BatcherStats:
        with self._lock:
            return BatcherStats(
                batch_sizes=dict(sorted(self._hist.items())),
                queue_depth=self._queue.qsize(),
                max_queue=self.max_queue,
                submitted=self._submitted,
                completed=self._completed,
                failed=self._failed,
                rejected=self._rejected,
                batches=sum(self._hist.values()),
            )

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, drain: bool = True, timeout: float | None = 30.0) -> None:
        """Stop taking requests. drain=True runs what is queued first; drain=False fails the
        queued requests with BatcherClosed. Waits for the worker thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if not drain:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not _STOP and item.future.set_running_or_notify_cancel():
                    item.future.set_exception(BatcherClosed("the encoder batcher shut down"))
        self._queue.put(_STOP)  # blocks only while the worker drains a full queue
        self._worker.join(timeout)

    def __enter__(self) -> EncoderBatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
