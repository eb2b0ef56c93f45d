"""EdgeSAM client library: HTTP and gRPC, sync and async, no torch.

    from edgesam_client import connect
    with connect("grpc://localhost:50051") as es:          # or "http://localhost:8000"
        emb = es.embed("photo.jpg")
        res = es.segment(emb.image_id, points=[[320, 240]], labels=[1])
        mask = res.best.array                              # bool HxW numpy array
        with es.session("photo.jpg") as s:                 # interactive: one click at a time
            s.click(320, 240); s.click(100, 80, positive=False)

Answers of `embedding_not_found` are healed by embedding the image again (when this client
has its bytes); `overloaded` answers are retried with backoff. Given several replicas
(`connect(["http://a:8000", "http://b:8000"])` or "http://a:8000,http://b:8000"), a call
that cannot reach one goes to the next (edgesam_client.failover says which calls may).
"""

from __future__ import annotations

from collections.abc import Sequence

from edgesam_client._base import AsyncClient, AsyncSession, Session, SyncClient
from edgesam_client._common import ImageMemory, RetryPolicy
from edgesam_client.errors import (
    EdgeSamError,
    EmbeddingNotFound,
    Overloaded,
    Unauthenticated,
    Unavailable,
)
from edgesam_client.results import EmbedResult, EverythingResult, Mask, Rle, SegmentResult

__all__ = [
    "AsyncClient",
    "AsyncSession",
    "EdgeSamError",
    "EmbedResult",
    "EmbeddingNotFound",
    "EverythingResult",
    "ImageMemory",
    "Mask",
    "Overloaded",
    "RetryPolicy",
    "Rle",
    "SegmentResult",
    "Session",
    "SyncClient",
    "Unauthenticated",
    "Unavailable",
    "connect",
    "connect_async",
]


def _is_grpc(target: str) -> bool:
    return not target.startswith(("http://", "https://"))


def _targets(target: str | Sequence[str]) -> list[str]:
    from edgesam_client.failover import split_targets

    targets = split_targets(target)
    if len({_is_grpc(t) for t in targets}) > 1:
        raise ValueError("all targets must use one transport (http(s):// or gRPC)")
    return targets


def _failover_options(options: dict[str, object]) -> dict[str, object]:
    """The options the failover client takes itself (one retry policy and memory)."""
    return {k: options.pop(k) for k in ("retry", "memory", "cooldown_s") if k in options}


def connect(
    target: str | Sequence[str], api_key: str | None = None, **options: object
) -> SyncClient:
    """A blocking client: http(s)://host:port for HTTP, grpc://host:port (or any gRPC
    target such as dns:///host:50051) for gRPC. Several targets (a list, or one string
    separated by commas) give a client that fails over between them."""
    targets = _targets(target)
    if len(targets) > 1:
        from edgesam_client.failover import FailoverClient

        own = _failover_options(options)
        clients = [connect(t, api_key, **options) for t in targets]
        return FailoverClient(clients, **own)  # type: ignore[arg-type]
    (target,) = targets
    if _is_grpc(target):
        from edgesam_client.grpc_transport import GrpcClient

        return GrpcClient(target, api_key=api_key, **options)  # type: ignore[arg-type]
    from edgesam_client.http_transport import HttpClient

    return HttpClient(target, api_key=api_key, **options)  # type: ignore[arg-type]


def connect_async(
    target: str | Sequence[str], api_key: str | None = None, **options: object
) -> AsyncClient:
    """The awaitable client for `target` (see connect)."""
    targets = _targets(target)
    if len(targets) > 1:
        from edgesam_client.failover import AsyncFailoverClient

        own = _failover_options(options)
        clients = [connect_async(t, api_key, **options) for t in targets]
        return AsyncFailoverClient(clients, **own)  # type: ignore[arg-type]
    (target,) = targets
    if _is_grpc(target):
        from edgesam_client.grpc_transport import AsyncGrpcClient

        return AsyncGrpcClient(target, api_key=api_key, **options)  # type: ignore[arg-type]
    from edgesam_client.http_transport import AsyncHttpClient

    return AsyncHttpClient(target, api_key=api_key, **options)  # type: ignore[arg-type]
