"""Several replicas behind one client: `connect(["http://a:8000", "http://b:8000"])` (or
"http://a:8000,http://b:8000") sends each call to the replica that answered last and, when it
cannot be reached, to the next one.

What moves to another replica:
- a request that certainly never reached a server (connection refused): any operation;
- a broken connection, UNAVAILABLE or a timeout, where the server may have received it:
  only operations that are safe to repeat. embed, segment, everything and has_embedding are
  (an embedding is addressed by its content, a segment reads and writes nothing else);
  delete_embedding is not, and is not repeated;
- the answers `not_ready` (starting or draining) and `encoder_unavailable` (a decoder whose
  encoders are gone): that replica did nothing.
Everything else (bad input, embedding_not_found, overloaded) is the answer; the retry policy
and the re-embed of the base client apply on top, across replicas. A replica that failed is
tried last for `cooldown_s`. A gRPC interactive session stays on the replica that opened it
(the session lives there); opening one fails over like an embed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from edgesam_client._base import AsyncClient, Outputs, SyncClient
from edgesam_client._common import ImageLike, ImageMemory, RetryPolicy
from edgesam_client.errors import EdgeSamError, Unavailable
from edgesam_client.results import EmbedResult, EverythingResult, SegmentResult

T = TypeVar("T")
# Safe to send twice: the answer depends only on the request and content-addressed state.
IDEMPOTENT = frozenset({"embed", "segment", "everything", "has", "session"})
# Answers with which a replica says it did nothing and another one may serve.
NOT_SERVING = frozenset({"not_ready", "encoder_unavailable"})
DEFAULT_COOLDOWN_S = 5.0


def split_targets(target: str | Sequence[str]) -> list[str]:
    """["a", "b"] from "a,b", "a" or ["a", "b"] (blank entries dropped)."""
    items = target.split(",") if isinstance(target, str) else list(target)
    out = [t.strip() for t in items if t and t.strip()]
    if not out:
        raise ValueError("no target given")
    return out


def may_fail_over(operation: str, exc: EdgeSamError) -> bool:
    """Whether `exc` from one replica lets `operation` be sent to another."""
    if exc.code in NOT_SERVING:
        return True
    if isinstance(exc, Unavailable) and not exc.sent:
        return True
    return operation in IDEMPOTENT and exc.code in ("unavailable", "deadline_exceeded")


class Rotation:
    """Which replica to try first: the last one that answered; failed ones go last until
    their cooldown passes. Thread-safe."""

    def __init__(self, count: int, cooldown_s: float = DEFAULT_COOLDOWN_S) -> None:
        self.count = count
        self.cooldown_s = cooldown_s
        self.current = 0
        self._down_until = [0.0] * count
        self._lock = threading.Lock()

    def order(self) -> list[int]:
        with self._lock:
            now = time.monotonic()
            ring = [(self.current + k) % self.count for k in range(self.count)]
            up = [i for i in ring if self._down_until[i] <= now]
            return up + [i for i in ring if self._down_until[i] > now]

    def failed(self, index: int) -> None:
        with self._lock:
            self._down_until[index] = time.monotonic() + self.cooldown_s

    def answered(self, index: int) -> None:
        with self._lock:
            self.current = index
            self._down_until[index] = 0.0


class FailoverClient(SyncClient):
    """A SyncClient over one client per replica (all of one transport). `failovers` counts
    requests sent again to another replica."""

    def __init__(
        self,
        clients: Sequence[SyncClient],
        retry: RetryPolicy | None = None,
        memory: ImageMemory | None = None,
        cooldown_s: float = DEFAULT_COOLDOWN_S,
    ) -> None:
        super().__init__(retry, memory)
        if not clients:
            raise ValueError("no replica")
        self.clients = list(clients)
        for client in self.clients:
            client.memory = self.memory  # one memory: a re-embed may go to any replica
        self.rotation = Rotation(len(self.clients), cooldown_s)
        self.failovers = 0
        self._lock = threading.Lock()

    def _call(self, operation: str, call: Callable[[SyncClient], T]) -> T:
        error: EdgeSamError | None = None
        for attempt, index in enumerate(self.rotation.order()):
            if attempt:
                with self._lock:
                    self.failovers += 1
            try:
                result = call(self.clients[index])
            except EdgeSamError as exc:
                if not may_fail_over(operation, exc):
                    raise
                self.rotation.failed(index)
                error = exc
                continue
            self.rotation.answered(index)
            return result
        assert error is not None
        raise error

    def _embed_raw(self, data: bytes, content_type: str) -> EmbedResult:
        return self._call("embed", lambda c: c._embed_raw(data, content_type))

    def _segment_raw(self, fields: dict[str, Any]) -> SegmentResult:
        return self._call("segment", lambda c: c._segment_raw(fields))

    def _everything_raw(self, fields: dict[str, Any]) -> EverythingResult:
        return self._call("everything", lambda c: c._everything_raw(fields))

    def _has_raw(self, image_id: str) -> bool:
        return self._call("has", lambda c: c._has_raw(image_id))

    def _delete_raw(self, image_id: str) -> bool:
        return self._call("delete", lambda c: c._delete_raw(image_id))

    def session(
        self, image: ImageLike | str, num_masks: int = 1, outputs: Outputs = ("rle",)
    ) -> Any:
        """A session on one replica: the transport's own (gRPC: a stream, opened with
        failover) or, over HTTP, unary segments that each fail over."""
        if type(self.clients[0]).session is SyncClient.session:
            return super().session(image, num_masks, outputs)
        return self._call("session", lambda c: c.session(image, num_masks, outputs))

    def close(self) -> None:
        for client in self.clients:
            client.close()


class AsyncFailoverClient(AsyncClient):
    """The awaitable FailoverClient."""

    def __init__(
        self,
        clients: Sequence[AsyncClient],
        retry: RetryPolicy | None = None,
        memory: ImageMemory | None = None,
        cooldown_s: float = DEFAULT_COOLDOWN_S,
    ) -> None:
        super().__init__(retry, memory)
        if not clients:
            raise ValueError("no replica")
        self.clients = list(clients)
        for client in self.clients:
            client.memory = self.memory
        self.rotation = Rotation(len(self.clients), cooldown_s)
        self.failovers = 0

    async def _call(self, operation: str, call: Callable[[AsyncClient], Awaitable[T]]) -> T:
        error: EdgeSamError | None = None
        for attempt, index in enumerate(self.rotation.order()):
            if attempt:
                self.failovers += 1
            try:
                result = await call(self.clients[index])
            except EdgeSamError as exc:
                if not may_fail_over(operation, exc):
                    raise
                self.rotation.failed(index)
                error = exc
                continue
            self.rotation.answered(index)
            return result
        assert error is not None
        raise error

    async def _embed_raw(self, data: bytes, content_type: str) -> EmbedResult:
        return await self._call("embed", lambda c: c._embed_raw(data, content_type))

    async def _segment_raw(self, fields: dict[str, Any]) -> SegmentResult:
        return await self._call("segment", lambda c: c._segment_raw(fields))

    async def _everything_raw(self, fields: dict[str, Any]) -> EverythingResult:
        return await self._call("everything", lambda c: c._everything_raw(fields))

    async def _has_raw(self, image_id: str) -> bool:
        return await self._call("has", lambda c: c._has_raw(image_id))

    async def _delete_raw(self, image_id: str) -> bool:
        return await self._call("delete", lambda c: c._delete_raw(image_id))

    async def session(
        self, image: ImageLike | str, num_masks: int = 1, outputs: Outputs = ("rle",)
    ) -> Any:
        if type(self.clients[0]).session is AsyncClient.session:
            return await super().session(image, num_masks, outputs)
        return await self._call("session", lambda c: c.session(image, num_masks, outputs))

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
