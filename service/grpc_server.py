"""gRPC transport: edgesam.v1.Segmentation over `SegmentationService`, beside HTTP in the
same process and event loop (service.__main__ starts it through `serve_grpc`).

- errors: through the one table (service.errors), as a status code, a sentence, and the
  stable code in the trailing metadata (service.grpc_errors);
- grpc.health.v1: NOT_SERVING while the model loads, SERVING when ready, NOT_SERVING again
  while draining (SIGTERM) and at shutdown; open without an API key;
- server reflection; bounded message sizes (the image limit for Embed and session starts,
  the JSON limit for every other message: RESOURCE_EXHAUSTED with edgesam-error-code
  payload_too_large beyond). gRPC itself refuses any message over the image limit plus
  ENVELOPE_BYTES plus OVERSIZE_MARGIN_BYTES before our code runs: RESOURCE_EXHAUSTED without
  the edgesam-error-code trailer, for messages far beyond every limit;
- API keys from "authorization: Bearer <key>" or "x-api-key" metadata (UNAUTHENTICATED);
- deadlines: a call past its deadline is cancelled, and a forwarded embed (decoder role)
  gets the caller's remaining time.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import ValidationError

from edgesam_client.grpc_stubs import segmentation_pb2 as pb
from edgesam_client.grpc_stubs import segmentation_pb2_grpc as pb_grpc
from service import roles
from service.auth import matching_key
from service.config import Settings
from service.core import SegmentationService
from service.errors import (
    EmbeddingNotFound,
    InvalidRequest,
    Overloaded,
    PayloadTooLarge,
    ServiceError,
)
from service.grpc_convert import (
    embed_result_to_pb,
    everything_request_from_pb,
    everything_result_to_pb,
    segment_request_from_pb,
    segment_result_to_pb,
)
from service.grpc_errors import status_of
from service.grpc_session import InteractiveSession
from service.metrics import Metrics
from service.ratelimit import RateLimiter, shared_limiter
from service.schemas import IMAGE_ID, EmbedResult
from service.tenancy import TENANT, tenant_id

log = logging.getLogger(__name__)
T = TypeVar("T")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Segmentation"].full_name  # edgesam.v1.Segmentation
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)
RANDOM_WEIGHTS_KEY = "x-edgesam-random-weights"
ENVELOPE_BYTES = 64 * 1024  # room for the fields around an image in one message
# Messages up to this much over the limits still reach the servicer, which refuses them with
# our own code (payload_too_large); gRPC refuses larger ones itself, with no code of ours.
OVERSIZE_MARGIN_BYTES = 1024 * 1024
MAX_GRPC_MESSAGE = 2**31 - 1  # gRPC's channel arguments are C ints
MAX_SEND_BYTES = 256 * 1024 * 1024  # answers are ours; bounded all the same
HEALTH_POLL_S = 0.2
MAX_SESSIONS = 256  # concurrent InteractiveSegment streams (each holds one embedding)


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without a configured key (constant-time compare of every key); the
    health service stays open. Where configured, it also applies the per-key rate limit
    (RESOURCE_EXHAUSTED, code rate_limited) and runs the call in the key's tenant namespace
    (service.tenancy), as the HTTP middleware does."""

    def __init__(
        self,
        keys: list[bytes],
        tenant_isolation: bool = False,
        limiter: RateLimiter | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.keys = keys
        self.isolate = tenant_isolation
        self.limiter = limiter
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        key = self._matching(details.invocation_metadata) if self.keys else None
        if self.keys and key is None:
            return _refusal(handler)
        tenant = tenant_id(key) if key is not None else None
        if self.limiter is None and not (self.isolate and tenant is not None):
            return handler
        return _guarded(handler, self._guard(tenant))

    def _guard(self, tenant: str | None) -> Callable[[grpc.aio.ServicerContext], Awaitable[object]]:
        """What runs first in the call's own task: the rate limit, then the tenant."""

        async def guard(context: grpc.aio.ServicerContext) -> object:
            if self.limiter is not None:
                try:
                    self.limiter.check(tenant or f"addr:{_peer_host(context.peer())}")
                except ServiceError as exc:
                    if self.metrics is not None:
                        self.metrics.rate_limited.labels("grpc").inc()
                    code, details, trailing = status_of(exc)
                    await context.abort(code, details, trailing_metadata=trailing)
            if self.isolate and tenant is not None:
                TENANT.set(tenant)  # this call's task only: every RPC runs in its own
            return None

        return guard

    def _matching(self, metadata: Any) -> bytes | None:
        given = None
        auth = None
        for key, value in metadata or ():
            if key == "x-api-key":
                given = value
            elif key == "authorization":
                auth = value
        return matching_key(given, auth, self.keys)


def _peer_host(peer: str) -> str:
    """'ipv4:127.0.0.1:5555' -> '127.0.0.1' (the port changes per connection)."""
    kind, _, rest = (peer or "").partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rsplit(":", 1)[0]
    return peer or "unknown"


def _guarded(
    handler: grpc.RpcMethodHandler,
    guard: Callable[[grpc.aio.ServicerContext], Awaitable[object]],
) -> grpc.RpcMethodHandler:
    """`handler` with `guard(context)` awaited before its behaviour, in the call's task."""
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        unary = handler.unary_unary

        async def unary_call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await guard(context)
            return await unary(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_call, **kwargs)
    streaming = handler.stream_stream or handler.unary_stream or handler.stream_unary
    if handler.stream_unary is not None:

        async def stream_unary_call(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            await guard(context)
            return await streaming(requests, context)

        return grpc.stream_unary_rpc_method_handler(stream_unary_call, **kwargs)

    if not inspect.isasyncgenfunction(streaming):  # writes with context.write, returns None

        async def written(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await guard(context)
            return await streaming(request, context)

        make = (
            grpc.stream_stream_rpc_method_handler
            if handler.stream_stream is not None
            else grpc.unary_stream_rpc_method_handler
        )
        return make(written, **kwargs)

    async def streamed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await guard(context)
        async for item in streaming(request, context):
            yield item

    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(streamed, **kwargs)
    return grpc.unary_stream_rpc_method_handler(streamed, **kwargs)


def _refusal(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    message = "an API key is required: send 'authorization: Bearer <key>' or 'x-api-key' metadata"
    trailing = (("edgesam-error-code", "unauthenticated"),)

    async def deny(_: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message, trailing_metadata=trailing)

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny, **kwargs)
    return grpc.unary_unary_rpc_method_handler(deny, **kwargs)


class SegmentationServicer(pb_grpc.SegmentationServicer):
    """Thin: converts messages, calls the core, maps errors. No logic HTTP lacks, except
    the interactive session (a gRPC-only operation, service.grpc_session)."""

    def __init__(self, service: SegmentationService, settings: Settings) -> None:
        self.service = service
        self.max_small = settings.max_json_bytes
        self.max_image = settings.max_body_bytes
        self.max_files = settings.embed_max_files
        self.sessions = 0
        self.max_sessions = MAX_SESSIONS

    async def _call(
        self,
        context: grpc.aio.ServicerContext,
        method: str,
        work: Callable[[], Awaitable[T]],
    ) -> T:
        """Run `work` with the caller's deadline known to the core's forwarder; errors
        become statuses; metrics as HTTP records them (route = the full method name)."""
        start = time.perf_counter()
        status = "OK"
        remaining = context.time_remaining()
        token = roles.DEADLINE.set(time.monotonic() + remaining if remaining else None)
        failure: BaseException | None = None
        try:
            if self.service.random_weights:
                await context.send_initial_metadata(((RANDOM_WEIGHTS_KEY, "true"),))
            return await work()
        except asyncio.CancelledError:
            status = "CANCELLED"
            raise
        except Exception as exc:  # noqa: BLE001 - mapped through the table, logged if unexpected
            if not isinstance(exc, ServiceError):
                log.exception("unhandled error in gRPC %s", method)
            failure = exc
        finally:
            roles.DEADLINE.reset(token)
            if failure is not None:
                status = status_of(failure)[0].name
            self.service.metrics.request_latency.labels(
                f"/{SERVICE_NAME}/{method}", "GRPC", status
            ).observe(time.perf_counter() - start)
        code, details, trailing = status_of(failure)
        await context.abort(code, details, trailing_metadata=trailing)
        raise AssertionError("unreachable")  # pragma: no cover - abort raises

    def _small(self, request: Any) -> None:
        size = request.ByteSize()
        if size > self.max_small:
            raise PayloadTooLarge(f"the message has {size} bytes; at most {self.max_small}")

    def _image(self, image: bytes, request: Any) -> None:
        """The configured image limit (EDGESAM_MAX_BODY_BYTES, as HTTP's /v1/embed body),
        and the fields around the image within ENVELOPE_BYTES."""
        if len(image) > self.max_image:
            raise PayloadTooLarge(
                f"the image has {len(image)} bytes; at most {self.max_image} are accepted"
            )
        size = request.ByteSize()
        if size > self.max_image + ENVELOPE_BYTES:
            raise PayloadTooLarge(
                f"the message has {size} bytes; at most {self.max_image + ENVELOPE_BYTES}"
            )

    async def Embed(  # noqa: N802 - gRPC method names
        self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> pb.EmbedResponse:
        async def work() -> pb.EmbedResponse:
            self._image(request.image, request)
            if request.url:
                if request.image:
                    raise InvalidRequest("give image or url, not both")
                res = await self.service.embed_url(request.url)
            else:
                res = await self.service.embed(request.image, request.content_type or None)
            return embed_result_to_pb(res, self._fingerprint())

        return await self._call(context, "Embed", work)

    async def EmbedBatch(  # noqa: N802
        self, request: pb.EmbedBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.EmbedBatchResponse:
        """Several images, one outcome each (HTTP: several multipart parts named "file")."""

        async def work() -> pb.EmbedBatchResponse:
            if not request.images:
                raise InvalidRequest("images is empty: give at least one image")
            if len(request.images) > self.max_files:
                raise InvalidRequest(
                    f"{len(request.images)} images; at most {self.max_files} are accepted"
                )
            total = sum(len(item.image) for item in request.images)
            if total > self.max_image:
                raise PayloadTooLarge(
                    f"the images have {total} bytes; at most {self.max_image} are accepted"
                )
            if any(item.url for item in request.images):
                raise InvalidRequest("EmbedBatch takes image bytes; embed URLs one by one")
            outcomes = await self.service.embed_many(
                [(item.image, item.content_type or None) for item in request.images]
            )
            fingerprint = self._fingerprint()
            return pb.EmbedBatchResponse(
                results=[
                    pb.EmbedBatchItem(result=embed_result_to_pb(o, fingerprint))
                    if isinstance(o, EmbedResult)
                    else pb.EmbedBatchItem(error=pb.EmbedError(code=o.code, message=o.message))
                    for o in outcomes
                ]
            )

        return await self._call(context, "EmbedBatch", work)

    def _fingerprint(self) -> str:
        backend = self.service.backend
        return backend.fingerprint if backend is not None else ""

    async def Segment(  # noqa: N802
        self, request: pb.SegmentRequest, context: grpc.aio.ServicerContext
    ) -> pb.SegmentResponse:
        async def work() -> pb.SegmentResponse:
            self._small(request)
            result = await self.service.segment(segment_request_from_pb(request))
            return segment_result_to_pb(result)

        return await self._call(context, "Segment", work)

    async def SegmentEverything(  # noqa: N802
        self, request: pb.EverythingRequest, context: grpc.aio.ServicerContext
    ) -> pb.EverythingResponse:
        async def work() -> pb.EverythingResponse:
            self._small(request)
            result = await self.service.everything(everything_request_from_pb(request))
            return everything_result_to_pb(result)

        return await self._call(context, "SegmentEverything", work)

    @staticmethod
    def _image_id(image_id: str) -> str:
        """The id in lower case (as the cache keys it), or InvalidRequest."""
        try:
            return IMAGE_ID.validate_python(image_id)
        except ValidationError as exc:
            raise InvalidRequest("image_id: must be 64 hex digits (sha256)") from exc

    async def HasEmbedding(  # noqa: N802
        self, request: pb.EmbeddingRef, context: grpc.aio.ServicerContext
    ) -> pb.EmbeddingStatus:
        async def work() -> pb.EmbeddingStatus:
            image_id = self._image_id(request.image_id)
            return pb.EmbeddingStatus(image_id=image_id, exists=await self.service.exists(image_id))

        return await self._call(context, "HasEmbedding", work)

    async def DeleteEmbedding(  # noqa: N802
        self, request: pb.EmbeddingRef, context: grpc.aio.ServicerContext
    ) -> pb.EmbeddingStatus:
        async def work() -> pb.EmbeddingStatus:
            image_id = self._image_id(request.image_id)
            if not await self.service.delete(image_id):
                raise EmbeddingNotFound(f"no embedding for image_id {image_id}")
            return pb.EmbeddingStatus(image_id=image_id, exists=True)

        return await self._call(context, "DeleteEmbedding", work)

    async def GetEmbedding(  # noqa: N802
        self, request: pb.EmbeddingRef, context: grpc.aio.ServicerContext
    ) -> pb.EmbeddingData:
        async def work() -> pb.EmbeddingData:
            found = await self.service.embedding_file(self._image_id(request.image_id))
            return pb.EmbeddingData(
                image_id=found.image_id,
                data=found.raw(),
                shape=list(found.array.shape),
                dtype=found.dtype,
                width=found.width,
                height=found.height,
                fingerprint=found.fingerprint,
            )

        return await self._call(context, "GetEmbedding", work)

    async def InteractiveSegment(  # noqa: N802
        self,
        request_iterator: AsyncIterator[pb.InteractiveRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.InteractiveResponse]:
        """First message: start (errors end the stream with a status). Later messages get
        one answer each; a refused one answers `error` and the session goes on."""
        iterator = request_iterator.__aiter__()

        async def open_session() -> tuple[InteractiveSession, pb.SessionStarted]:
            try:
                first = await iterator.__anext__()
            except StopAsyncIteration as exc:
                raise InvalidRequest("the stream ended before its start message") from exc
            if first.WhichOneof("action") != "start":
                raise InvalidRequest("the first message of a session must be start")
            if first.start.WhichOneof("source") == "image":
                self._image(first.start.image, first)
            else:
                self._small(first)
            if self.sessions >= self.max_sessions:
                raise Overloaded(
                    f"{self.max_sessions} interactive sessions are open; retry shortly",
                    retry_after=1,
                )
            return await InteractiveSession.open(self.service, first.start)

        session, started = await self._call(context, "InteractiveSegment", open_session)
        self.sessions += 1
        try:
            yield pb.InteractiveResponse(seq=0, started=started)
            seq = 0
            async for request in iterator:
                seq += 1
                yield await self._session_answer(context, session, request, seq)
        finally:
            self.sessions -= 1

    async def _session_answer(
        self,
        context: grpc.aio.ServicerContext,
        session: InteractiveSession,
        request: pb.InteractiveRequest,
        seq: int,
    ) -> pb.InteractiveResponse:
        start = time.perf_counter()
        status = "OK"
        try:
            self._small(request)
            answer = await session.apply(request)
            out = pb.InteractiveResponse(seq=seq, masks=answer)
        except ServiceError as exc:
            status = exc.code
            out = pb.InteractiveResponse(
                seq=seq,
                error=pb.SessionError(
                    code=exc.code, message=exc.message, retry_after=exc.retry_after or 0
                ),
            )
        except Exception as exc:
            log.exception("unhandled error in an interactive session")
            code, details, trailing = status_of(exc)
            await context.abort(code, details, trailing_metadata=trailing)
            raise
        finally:
            self.service.metrics.request_latency.labels(
                f"/{SERVICE_NAME}/InteractiveSegment:step", "GRPC", status
            ).observe(time.perf_counter() - start)
        cur = session.current
        out.num_points = len(cur.points) if cur else 0
        out.has_box = bool(cur and cur.box is not None)
        return out


class GrpcServer:
    """The aio server with its servicers; `start()`, `watch_health()`, `stop()`."""

    def __init__(self, service: SegmentationService, settings: Settings, port: int) -> None:
        self.service = service
        self.settings = settings
        self.health = health.aio.HealthServicer()
        limiter = shared_limiter(service, settings.rate_limit_per_second, settings.rate_limit_burst)
        interceptor = ApiKeyInterceptor(
            settings.api_key_values(), settings.tenant_isolation, limiter, service.metrics
        )
        self.server = grpc.aio.server(
            interceptors=[interceptor],
            options=[
                ("grpc.max_receive_message_length", receive_limit(settings)),
                ("grpc.max_send_message_length", MAX_SEND_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        self.servicer = SegmentationServicer(service, settings)
        pb_grpc.add_SegmentationServicer_to_server(self.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        bind = f"{_grpc_host(settings.http_host)}:{port}"
        credentials = server_credentials(settings)
        if credentials is None:
            self.port = self.server.add_insecure_port(bind)
        else:
            self.port = self.server.add_secure_port(bind, credentials)
        if not self.port:
            raise RuntimeError(f"gRPC could not bind {bind}")
        self._serving: bool | None = None

    async def start(self) -> None:
        await self._set_health(False)
        await self.server.start()
        log.info("gRPC listening on port %d", self.port)

    async def _set_health(self, serving: bool) -> None:
        if serving == self._serving:
            return
        self._serving = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def watch_health(self) -> None:
        """Keep grpc.health.v1 in step with the core's readiness (loading, ready, draining)."""
        while True:
            await self._set_health(self.service.ready)
            await asyncio.sleep(HEALTH_POLL_S)

    async def stop(self, grace: float | None = None) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS from EDGESAM_TLS_CERT_FILE/EDGESAM_TLS_KEY_FILE; with EDGESAM_TLS_CLIENT_CA_FILE,
    clients must present a certificate that CA signed (mTLS). None: plaintext."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    ca = settings.tls_client_ca_file
    return grpc.ssl_server_credentials(
        [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())],
        root_certificates=ca.read_bytes() if ca is not None else None,
        require_client_auth=ca is not None,
    )


def receive_limit(settings: Settings) -> int:
    """The transport's own message limit: the image limit and its envelope, plus a bounded
    margin within which the servicer answers payload_too_large itself."""
    return min(settings.max_body_bytes + ENVELOPE_BYTES + OVERSIZE_MARGIN_BYTES, MAX_GRPC_MESSAGE)


def _grpc_host(host: str) -> str:
    return "[::]" if host in ("0.0.0.0", "::", "") else host


async def serve_grpc(
    service: SegmentationService, settings: Settings, port: int | None = None
) -> None:
    """Run the gRPC server until cancelled (the HTTP app's lifespan cancels it at shutdown,
    after the drain); health is NOT_SERVING from the first cancellation on."""
    try:
        server = GrpcServer(service, settings, settings.grpc_port if port is None else port)
        await server.start()
    except Exception:
        log.exception("the gRPC server could not start (EDGESAM_GRPC_PORT=%s)", settings.grpc_port)
        raise
    try:
        await server.watch_health()
    finally:
        with contextlib.suppress(Exception):
            await asyncio.shield(server.stop(grace=min(5.0, settings.drain_seconds)))


__all__ = [
    "ApiKeyInterceptor",
    "GrpcServer",
    "SegmentationServicer",
    "receive_limit",
    "serve_grpc",
    "server_credentials",
]
