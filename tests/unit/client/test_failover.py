"""Failover between replicas without a server: which failures move a call to another
replica (only what is safe to repeat), the order replicas are tried in, and connect()'s
several-target forms."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from edgesam_client import (
    EdgeSamError,
    RetryPolicy,
    SyncClient,
    Unavailable,
    connect,
    connect_async,
)
from edgesam_client._base import AsyncClient
from edgesam_client.errors import make_error
from edgesam_client.failover import (
    AsyncFailoverClient,
    FailoverClient,
    may_fail_over,
    split_targets,
)
from edgesam_client.http_transport import AsyncHttpClient, HttpClient
from edgesam_client.results import EmbedResult, SegmentResult

OK = SegmentResult("a" * 64, 4, 3, [])


def refused() -> Unavailable:
    return Unavailable("unavailable", "connection refused", sent=False)


def broken() -> Unavailable:
    return Unavailable("unavailable", "server disconnected", sent=True)


class Replica(SyncClient):
    """One scripted replica: each raw call pops its next outcome (exception or value);
    an empty script answers."""

    def __init__(self, *outcomes: Any) -> None:
        super().__init__(RetryPolicy(max_retries=0))
        self.outcomes = list(outcomes)
        self.calls: list[str] = []

    def _next(self, name: str, value: Any) -> Any:
        self.calls.append(name)
        if self.outcomes:
            outcome = self.outcomes.pop(0)
            if isinstance(outcome, BaseException):
                raise outcome
        return value

    def _embed_raw(self, data: bytes, content_type: str) -> EmbedResult:
        return self._next("embed", EmbedResult("b" * 64, 4, 3, False, 60))

    def _segment_raw(self, fields: dict[str, Any]) -> SegmentResult:
        return self._next("segment", OK)

    def _has_raw(self, image_id: str) -> bool:
        return self._next("has", True)

    def _delete_raw(self, image_id: str) -> bool:
        return self._next("delete", True)

    def close(self) -> None:
        self.calls.append("close")


def failover(*replicas: Replica) -> FailoverClient:
    return FailoverClient(replicas, retry=RetryPolicy(max_retries=0), cooldown_s=60)


def test_split_targets() -> None:
    assert split_targets("http://a:1") == ["http://a:1"]
    assert split_targets("http://a:1, http://b:2,") == ["http://a:1", "http://b:2"]
    assert split_targets(["grpc://a:1", "grpc://b:2"]) == ["grpc://a:1", "grpc://b:2"]
    with pytest.raises(ValueError):
        split_targets(" , ")


def test_which_failures_fail_over() -> None:
    timeout = EdgeSamError("deadline_exceeded", "slow")
    for op in ("embed", "segment", "everything", "has", "delete"):
        assert may_fail_over(op, refused())  # never sent: anything may go elsewhere
        assert may_fail_over(op, make_error("not_ready", "draining", 503))
    for op in ("embed", "segment", "everything", "has"):
        assert may_fail_over(op, broken()) and may_fail_over(op, timeout)
    assert not may_fail_over("delete", broken())
    assert not may_fail_over("delete", timeout)
    for code in ("invalid_prompt", "embedding_not_found", "overloaded", "internal_error"):
        assert not may_fail_over("segment", make_error(code, "no", 500))


def test_a_refused_replica_is_skipped_and_the_answering_one_kept() -> None:
    a, b = Replica(refused()), Replica()
    client = failover(a, b)
    assert client.segment("a" * 64, points=[[1, 1]]) is OK
    assert (a.calls, b.calls, client.failovers) == (["segment"], ["segment"], 1)
    client.segment("a" * 64, points=[[1, 1]])  # b answered last: it goes first now
    assert (a.calls, b.calls, client.failovers) == (["segment"], ["segment"] * 2, 1)


def test_a_failed_replica_goes_last_during_its_cooldown() -> None:
    a, b, c = Replica(), Replica(broken()), Replica()
    client = failover(a, b, c)
    client.rotation.current = 1
    client.has_embedding("a" * 64)
    assert (b.calls, c.calls) == (["has"], ["has"])
    client.rotation.current = 1  # even when asked to start at b, b waits for its cooldown
    client.has_embedding("a" * 64)
    assert (a.calls, b.calls, c.calls) == ([], ["has"], ["has", "has"])


def test_delete_is_not_repeated_when_it_may_have_been_received() -> None:
    a, b = Replica(broken()), Replica()
    with pytest.raises(Unavailable):
        failover(a, b).delete_embedding("a" * 64)
    assert b.calls == []
    a, b = Replica(refused()), Replica()
    assert failover(a, b).delete_embedding("a" * 64) is True
    assert b.calls == ["delete"]


def test_an_answer_is_not_sent_elsewhere() -> None:
    a, b = Replica(make_error("invalid_prompt", "bad", 422)), Replica()
    with pytest.raises(EdgeSamError) as info:
        failover(a, b).segment("a" * 64, points=[[1, 1]])
    assert info.value.code == "invalid_prompt" and b.calls == []


def test_every_replica_down_raises_the_last_error() -> None:
    a, b = Replica(refused()), Replica(broken())
    client = failover(a, b)
    with pytest.raises(Unavailable) as info:
        client.embed(b"\xff\xd8\xff" + b"0" * 10)
    assert info.value.sent is True and client.failovers == 1


def test_a_decoder_without_encoder_passes_the_embed_on() -> None:
    a, b = Replica(make_error("encoder_unavailable", "no encoder", 503)), Replica()
    assert failover(a, b).embed(b"\xff\xd8\xff" + b"0" * 10).image_id == "b" * 64
    assert b.calls == ["embed"]


def test_healing_and_overload_retries_work_across_replicas() -> None:
    gone = make_error("embedding_not_found", "expired", 404)
    a, b = Replica(refused()), Replica(gone)
    client = FailoverClient([a, b], retry=RetryPolicy(max_retries=2, base_s=0, cap_s=0))
    data = b"\xff\xd8\xff" + b"1" * 10
    client.memory.put("c" * 64, data, "image/jpeg")  # embedded earlier by this client
    assert client.segment("c" * 64, points=[[1, 1]]) is OK
    assert b.calls == ["segment", "embed", "segment"]  # re-embedded, then answered
    assert a.memory is client.memory is b.memory


def test_close_closes_every_replica() -> None:
    a, b = Replica(), Replica()
    with failover(a, b):
        pass
    assert a.calls == b.calls == ["close"]


def test_connect_takes_a_list_or_a_comma_string() -> None:
    with connect("http://127.0.0.1:1,http://127.0.0.1:2", timeout=3) as client:
        assert isinstance(client, FailoverClient)
        assert [type(c) for c in client.clients] == [HttpClient, HttpClient]
        assert [str(c.http.base_url) for c in client.clients] == [  # type: ignore[attr-defined]
            "http://127.0.0.1:1",
            "http://127.0.0.1:2",
        ]
    with connect(["http://127.0.0.1:1"]) as single:
        assert isinstance(single, HttpClient)
    with pytest.raises(ValueError):
        connect(["http://127.0.0.1:1", "grpc://127.0.0.1:2"])


def test_connect_async_with_several_targets() -> None:
    async def run() -> None:
        client = connect_async(["http://127.0.0.1:1", "http://127.0.0.1:2"])
        assert isinstance(client, AsyncFailoverClient)
        assert all(isinstance(c, AsyncHttpClient) for c in client.clients)
        await client.close()

    asyncio.run(run())


class AsyncReplica(AsyncClient):
    def __init__(self, *outcomes: Any) -> None:
        super().__init__(RetryPolicy(max_retries=0))
        self.outcomes = list(outcomes)
        self.calls = 0

    async def _segment_raw(self, fields: dict[str, Any]) -> SegmentResult:
        self.calls += 1
        if self.outcomes:
            raise self.outcomes.pop(0)
        return OK

    async def close(self) -> None:
        pass


def test_the_async_client_fails_over_too() -> None:
    a, b = AsyncReplica(broken()), AsyncReplica()
    client = AsyncFailoverClient([a, b], retry=RetryPolicy(max_retries=0))
    result = asyncio.run(client.segment("a" * 64, points=[[1, 1]]))
    assert result is OK and (a.calls, b.calls, client.failovers) == (1, 1, 1)
