"""EdgeSAM client library: HTTP and gRPC, sync and async, no torch.

    from edgesam_client import connect
    with connect("grpc://localhost:50051") as es:          # or "http://localhost:8000"
        emb = es.embed("photo.jpg")
        res = es.segment(emb.image_id, points=[[320, 240]], labels=[1])
        mask = res.best.array                              # bool HxW numpy array
        with es.session("photo.jpg") as s:                 # interactive: one click at a time
            s.click(320, 240); s.click(100, 80, positive=False)

Answers of `embedding_not_found` are healed by embedding the image again (when this client
has its bytes); `overloaded` answers are retried with backoff; nothing else is retried.
"""

from __future__ import annotations

from edgesam_client._base import AsyncClient, AsyncSession, Session, SyncClient
from edgesam_client._common import ImageMemory, RetryPolicy
from edgesam_client.errors import EdgeSamError, EmbeddingNotFound, Overloaded, Unauthenticated
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
    "connect",
    "connect_async",
]


def _is_grpc(target: str) -> bool:
    return not target.startswith(("http://", "https://"))


def connect(target: str, api_key: str | None = None, **options: object) -> SyncClient:
    """A blocking client: http(s)://host:port for HTTP, grpc://host:port (or any gRPC
    target such as dns:///host:50051) for gRPC."""
    if _is_grpc(target):
        from edgesam_client.grpc_transport import GrpcClient

        return GrpcClient(target, api_key=api_key, **options)  # type: ignore[arg-type]
    from edgesam_client.http_transport import HttpClient

    return HttpClient(target, api_key=api_key, **options)  # type: ignore[arg-type]


def connect_async(target: str, api_key: str | None = None, **options: object) -> AsyncClient:
    """The awaitable client for `target` (see connect)."""
    if _is_grpc(target):
        from edgesam_client.grpc_transport import AsyncGrpcClient

        return AsyncGrpcClient(target, api_key=api_key, **options)  # type: ignore[arg-type]
    from edgesam_client.http_transport import AsyncHttpClient

    return AsyncHttpClient(target, api_key=api_key, **options)  # type: ignore[arg-type]
