"""The interceptor's wrapper (service.grpc_server._guarded): the guard runs first, in the
call, for every kind of method handler, and the behaviour's answer comes back unchanged."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from service.grpc_server import _guarded


def _run(handler: grpc.RpcMethodHandler, attr: str, request: Any) -> tuple[list[str], Any]:
    events: list[str] = []

    async def guard(context: Any) -> None:
        events.append("guard")

    wrapped = _guarded(handler, guard)
    behaviour = getattr(wrapped, attr)

    async def call() -> Any:
        result = behaviour(request, object())
        if hasattr(result, "__aiter__"):
            return [item async for item in result]
        return await result

    return events, asyncio.run(call())


def test_unary_unary() -> None:
    async def unary(request: Any, context: Any) -> str:
        return f"answer to {request}"

    events, result = _run(grpc.unary_unary_rpc_method_handler(unary), "unary_unary", "q")
    assert events == ["guard"] and result == "answer to q"


def test_streams_written_or_yielded() -> None:
    async def gen(request: Any, context: Any) -> Any:
        for i in range(3):
            yield i

    written: list[int] = []

    async def writer(request: Any, context: Any) -> None:
        written.append(1)

    for make, attr in (
        (grpc.unary_stream_rpc_method_handler, "unary_stream"),
        (grpc.stream_stream_rpc_method_handler, "stream_stream"),
    ):
        events, items = _run(make(gen), attr, "q")
        assert events == ["guard"] and items == [0, 1, 2]
        events, result = _run(make(writer), attr, "q")
        assert events == ["guard"] and result is None
    assert written == [1, 1]


def test_stream_unary() -> None:
    async def collect(requests: Any, context: Any) -> str:
        return "done"

    events, result = _run(grpc.stream_unary_rpc_method_handler(collect), "stream_unary", None)
    assert events == ["guard"] and result == "done"
