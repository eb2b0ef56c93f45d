"""HTTP transport: FastAPI routes over `SegmentationService`, errors mapped through the one
table in service.errors, plus one small ASGI middleware for body limits, API keys, metrics,
the random-weights header and last-resort error answers.

No `from __future__ import annotations` here: FastAPI reads the route signatures at run
time, so they use typing's Optional/Dict (Python 3.8, JetPack 5)."""

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Dict,
    List,
    Optional,
    Tuple,
    Union,
)

from fastapi import FastAPI, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import codecs, tenancy
from service.auth import matching_key
from service.compat import Annotated
from service.config import Settings
from service.core import SegmentationService
from service.errors import (
    EmbeddingNotFound,
    InvalidRequest,
    MethodNotAllowed,
    PayloadTooLarge,
    RouteNotFound,
    ServiceError,
    Unauthenticated,
    UnsupportedMediaType,
    public_message,
    spec_for,
)
from service.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from service.ratelimit import shared_limiter
from service.schemas import (
    IMAGE_ID_PATTERN,
    EmbedBatchResult,
    EmbedResult,
    EmbedUrlRequest,
    ErrorBody,
    EverythingRequest,
    EverythingResult,
    ModelList,
    Readiness,
    SegmentRequest,
    SegmentResult,
)
from service.web import mount_web

log = logging.getLogger(__name__)

RANDOM_WEIGHTS_HEADER = "x-edgesam-random-weights"
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
# The web page's own files: a browser cannot send a key when it navigates; the page asks for
# the key and sends it on the API calls.
OPEN_PREFIXES = ("/static/",)


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or path == "/" or path.startswith(OPEN_PREFIXES)


IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")
NPY_TYPE = "application/x-npy"
ONNX_TYPE = "application/octet-stream"
# An embedding is addressed by the image's hash and fixed by the model and the dtype, which
# the ETag names: it never changes. private: it was fetched with an API key.
EMBEDDING_CACHE_CONTROL = "private, max-age=31536000, immutable"
# The decoder's URL stays when the model changes: revalidate (its ETag answers 304s).
DECODER_CACHE_CONTROL = "private, no-cache"
# What a page on another origin may send and read (EDGESAM_CORS_ORIGINS).
CORS_REQUEST_HEADERS = ["authorization", "x-api-key", "content-type", "if-none-match"]
CORS_EXPOSED_HEADERS = [
    "ETag",
    "Retry-After",
    "X-EdgeSAM-Width",
    "X-EdgeSAM-Height",
    "X-EdgeSAM-Fingerprint",
    RANDOM_WEIGHTS_HEADER,
]


def etag_matches(if_none_match: Optional[str], etag: str) -> bool:
    """RFC 9110 If-None-Match: `*` or a list of (weak or strong) tags, compared weakly."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    wanted = etag[2:] if etag.startswith("W/") else etag
    for tag in if_none_match.split(","):
        tag = tag.strip()
        if (tag[2:] if tag.startswith("W/") else tag) == wanted:
            return True
    return False


# Either case; the handlers look up the lower-case id (the form the cache keys use).
ImageIdPath = Annotated[str, Path(pattern=IMAGE_ID_PATTERN, description="sha256 hex")]

ERROR_RESPONSES: Dict[Union[int, str], Dict[str, Any]] = {
    status: {"model": ErrorBody, "description": desc}
    for status, desc in (
        (400, "corrupt or truncated image"),
        (401, "missing or wrong API key"),
        (404, "embedding_not_found: embed the image again"),
        (413, "body or image too large"),
        (415, "not JPEG, PNG or WebP; or a JSON body not sent as application/json"),
        (422, "invalid request or prompt"),
        (429, "rate_limited: over this key's rate limit (Retry-After)"),
        (500, "internal_error or backend_error: the server logged the details"),
        (503, "overloaded or not ready (Retry-After)"),
    )
}


def error_response(exc: BaseException, headers: Optional[Dict[str, str]] = None) -> JSONResponse:
    spec = spec_for(exc)
    headers = dict(headers or {})
    retry_after = getattr(exc, "retry_after", None)
    if spec.http_status in (429, 503):
        headers["Retry-After"] = str(int(retry_after or 1))
    if spec.http_status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="edgesam"'
    return JSONResponse(
        {"code": spec.code, "message": public_message(exc)},
        status_code=spec.http_status,
        headers=headers,
    )


def _allowed_methods(request: Request, given: Optional[str]) -> Optional[str]:
    """The Allow header of a 405 (RFC 9110 requires one): the methods of every route on
    this path. Starlette names only the first route that matched the path, and HEAD
    /v1/embeddings/{id} and DELETE /v1/embeddings/{id} are two routes."""
    methods = set()
    for route in request.app.router.routes:
        route_methods = getattr(route, "methods", None)
        if route_methods and route.matches(request.scope)[0] is not Match.NONE:
            methods |= set(route_methods)
    return ", ".join(sorted(methods)) if methods else given


class EdgeSamMiddleware:
    """Outermost layer: request metrics by route template, body-size limits, API keys
    (constant-time compare), the random-weights header, and a JSON 500 for anything
    unexpected (logged here with its traceback; the client never sees it)."""

    def __init__(self, app: ASGIApp, service: SegmentationService) -> None:
        self.app = app
        self.service = service
        s = service.settings
        self.keys = s.api_key_values()
        self.max_body = s.max_body_bytes
        self.max_json = s.max_json_bytes
        self.isolate = s.tenant_isolation
        self.limiter = shared_limiter(service, s.rate_limit_per_second, s.rate_limit_burst)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status_holder = [500]
        started = [False]
        random_weights = self.service.random_weights

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                started[0] = True
                status_holder[0] = message["status"]
                if random_weights:
                    headers = list(message.get("headers", []))
                    headers.append((RANDOM_WEIGHTS_HEADER.encode(), b"true"))
                    message = {**message, "headers": headers}
            await send(message)

        tenant_token = None
        try:
            path = scope.get("path", "")
            if not _is_open(path):
                key = self._authorised(scope) if self.keys else None
                if self.keys and key is None:
                    raise Unauthenticated(
                        "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key'"
                    )
                tenant = tenancy.tenant_id(key) if key is not None else None
                if self.limiter is not None:
                    try:
                        self.limiter.check(tenant or _client_address(scope))
                    except ServiceError:
                        self.service.metrics.rate_limited.labels("http").inc()
                        raise
                if self.isolate and tenant is not None:
                    tenant_token = tenancy.TENANT.set(tenant)
            limit = self.max_body if path == "/v1/embed" else self.max_json
            length = _header(scope, b"content-length")
            if length is not None:
                try:
                    declared = int(length)
                except ValueError as exc:
                    raise InvalidRequest("Content-Length is not a number") from exc
                if declared > limit:
                    raise PayloadTooLarge(
                        f"the body has {declared} bytes; at most {limit} are accepted"
                    )
            await self.app(scope, _limited(receive, limit), send_wrapper)
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if not isinstance(exc, ServiceError):
                log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started[0]:
                raise
            await error_response(exc)(scope, receive, send_wrapper)
        finally:
            if tenant_token is not None:
                tenancy.TENANT.reset(tenant_token)
            route = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            self.service.metrics.request_latency.labels(
                name, scope.get("method", ""), str(status_holder[0])
            ).observe(time.perf_counter() - start)

    def _authorised(self, scope: Scope) -> Optional[bytes]:
        """The configured key this request presented, or None."""
        return matching_key(
            _header(scope, b"x-api-key"), _header(scope, b"authorization"), self.keys
        )


def _client_address(scope: Scope) -> str:
    client = scope.get("client")
    return f"addr:{client[0]}" if client else "addr:unknown"


def _header(scope: Scope, name: bytes) -> Optional[str]:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def _limited(receive: Receive, limit: int) -> Receive:
    """Counts streamed body bytes (chunked uploads have no Content-Length)."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise PayloadTooLarge(f"the body exceeds {limit} bytes")
        return message

    return wrapped


def _validation_message(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "the request is invalid"
    first = errors[0]
    loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    kind = first.get("type", "")
    if kind == "json_invalid":
        return "the body is not valid JSON"
    if kind == "extra_forbidden":  # a client's name, cut short as codecs.quoted_media does
        return f"unknown field {codecs.quoted_media(loc)}"
    if kind == "missing":
        return f"missing field {loc!r}"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{loc or 'body'}: {first.get('msg', 'invalid')}{more}"


JSON_TYPE_NEEDED = "the body must be a JSON object sent with 'content-type: application/json'"


class JsonTypeRoute(APIRoute):
    """A route with a JSON body refuses a body sent without any content type, whatever the
    FastAPI release: FastAPI 0.132+ does (strict_content_type), while the releases that
    Python 3.8/3.9 get parse such a body as JSON, which would let any web page post to a
    key-less service on localhost without a CORS preflight. Bodies under another content type
    reach `_validation_error_of` as bytes on every release."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def checked(request: Request) -> Response:
            if not request.headers.get("content-type") and await request.body():
                raise UnsupportedMediaType(JSON_TYPE_NEEDED)
            return await handler(request)

        return checked


def _validation_error_of(exc: RequestValidationError) -> ServiceError:
    """A JSON route's body that failed validation: empty, not sent as JSON (FastAPI parses
    bodies only under an application/json content type, so `curl -d` without one arrives as
    bytes), or JSON that does not match the schema."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    if tuple(first.get("loc", ())) == ("body",):
        if first.get("type") == "missing":
            return InvalidRequest("the body is empty: send a JSON object")
        if isinstance(first.get("input"), (bytes, bytearray)):
            return UnsupportedMediaType(JSON_TYPE_NEEDED)
    return InvalidRequest(_validation_message(exc))


def create_app(
    settings: Optional[Settings] = None,
    service: Optional[SegmentationService] = None,
    extra_servers: Optional[List[Callable[[SegmentationService], Awaitable[Any]]]] = None,
) -> FastAPI:
    """The FastAPI app. `extra_servers` are coroutine factories started beside HTTP (the
    gRPC server goes there) and cancelled at shutdown."""
    settings = settings or Settings()
    svc = service or SegmentationService(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(_start(svc), name="edgesam-model-start")]
        tasks += [asyncio.create_task(factory(svc)) for factory in extra_servers or []]
        app.state.background = tasks
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await svc.close()

    app = FastAPI(
        title="EdgeSAM segmentation service",
        version="1.0",
        description="Embed an image once (POST /v1/embed), then segment it with points and "
        "boxes (POST /v1/segment) on any replica that shares the cache.",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
    )
    app.router.route_class = JsonTypeRoute  # the routes below
    app.state.service = svc

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(_validation_error_of(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, ServiceError):
            return error_response(exc.__cause__)
        if exc.status_code == 404:
            return error_response(RouteNotFound("no such route"))
        if exc.status_code == 405:
            allow = _allowed_methods(request, (exc.headers or {}).get("Allow"))
            return error_response(
                MethodNotAllowed("method not allowed on this route"),
                {"Allow": allow} if allow else None,
            )
        if exc.status_code == 413:
            return error_response(PayloadTooLarge("the body is too large"))
        return error_response(InvalidRequest(str(exc.detail)))

    @app.post(
        "/v1/embed",
        response_model=Union[EmbedResult, EmbedBatchResult],
        summary="Compute (or find) the embedding of an image, or of several",
        description="The image as the body, as one multipart part named `file`, or "
        '`{"url": ...}` (JSON; only where EDGESAM_URL_ALLOWLIST lists the host) answers the '
        'embed object. Several multipart parts named `file` answer `{"results": [...]}`: '
        "one entry per part in order, the embed object or `{code, message}` for a part that "
        "failed (the others are embedded all the same).",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    **{t: {"schema": {"type": "string", "format": "binary"}} for t in IMAGE_TYPES},
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "file": {
                                    "type": "array",
                                    "items": {"type": "string", "format": "binary"},
                                }
                            },
                            "required": ["file"],
                        }
                    },
                    "application/json": {"schema": EmbedUrlRequest.model_json_schema()},
                },
            }
        },
    )
    async def embed(request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        media = content_type.split(";")[0].strip().lower()
        if media == "multipart/form-data":
            parts = await _multipart_files(
                request, settings.max_body_bytes, settings.embed_max_files
            )
            if len(parts) > 1:
                outcomes = await svc.embed_many(parts)
                batch = EmbedBatchResult(
                    results=[o if isinstance(o, EmbedResult) else _error_body(o) for o in outcomes]
                )
                return Response(batch.model_dump_json(), media_type="application/json")
            data, part_type = parts[0]
            result = await svc.embed(data, part_type)
        elif media == "application/json":
            try:
                body = EmbedUrlRequest.model_validate_json(await request.body())
            except ValidationError as exc:
                raise InvalidRequest(
                    _validation_message(RequestValidationError(exc.errors()))
                ) from exc
            result = await svc.embed_url(body.url)
        else:
            if media not in IMAGE_TYPES:
                raise UnsupportedMediaType(
                    f"content type {codecs.quoted_media(media or 'none')} is not accepted; "
                    "send image/jpeg, image/png or image/webp as the body, a multipart file "
                    'or {"url": ...} as JSON'
                )
            result = await svc.embed(await request.body(), media)
        return Response(result.model_dump_json(), media_type="application/json")

    @app.post("/v1/segment", response_model=SegmentResult, summary="Masks for prompts")
    async def segment(body: SegmentRequest) -> Response:
        result = await svc.segment(body)
        return Response(result.model_dump_json(exclude_none=True), media_type="application/json")

    @app.post("/v1/everything", response_model=EverythingResult, summary="Everything mode")
    async def everything(body: EverythingRequest) -> Response:
        result = await svc.everything(body)
        return Response(result.model_dump_json(exclude_none=True), media_type="application/json")

    # HEAD answers carry headers only: the 200 declares no content, and a 404 carries an
    # error's headers (application/json) like every other error, its body left out.
    @app.head(
        "/v1/embeddings/{image_id}",
        summary="Is this embedding cached?",
        response_class=Response,
        responses={
            200: {"description": "cached"},
            404: {
                "model": ErrorBody,
                "description": "embedding_not_found: not cached (unknown or expired)",
            },
        },
    )
    async def head_embedding(image_id: ImageIdPath) -> Response:
        image_id = image_id.lower()
        if not await svc.exists(image_id):
            raise EmbeddingNotFound(f"no embedding for image_id {image_id}")
        return Response(status_code=200)

    @app.delete("/v1/embeddings/{image_id}", status_code=204, summary="Forget an embedding")
    async def delete_embedding(image_id: ImageIdPath) -> Response:
        image_id = image_id.lower()
        if not await svc.delete(image_id):
            raise EmbeddingNotFound(f"no embedding for image_id {image_id}")
        return Response(status_code=204)

    @app.get(
        "/v1/embeddings/{image_id}",
        summary="Download an embedding (.npy) to decode locally",
        response_class=Response,
        responses={
            200: {
                "description": "the embedding, shape (1, 256, 64, 64), in the cache's dtype "
                "(float16 or float32); X-EdgeSAM-Width/-Height give the original image size",
                "content": {NPY_TYPE: {"schema": {"type": "string", "format": "binary"}}},
            },
            304: {"description": "If-None-Match named this embedding's ETag"},
        },
    )
    async def get_embedding(image_id: ImageIdPath, request: Request) -> Response:
        found = await svc.embedding_file(image_id.lower())
        headers = {
            "ETag": found.etag,
            "Cache-Control": EMBEDDING_CACHE_CONTROL,
            "X-EdgeSAM-Width": str(found.width),
            "X-EdgeSAM-Height": str(found.height),
            "X-EdgeSAM-Fingerprint": found.fingerprint,
        }
        if etag_matches(request.headers.get("if-none-match"), found.etag):
            return Response(status_code=304, headers=headers)
        return Response(found.npy(), media_type=NPY_TYPE, headers=headers)

    @app.get("/v1/models", response_model=ModelList, summary="The loaded model and downloads")
    async def models() -> Response:
        return Response(svc.models().model_dump_json(), media_type="application/json")

    @app.get(
        "/v1/models/decoder.onnx",
        summary="The decoder in segment-anything's ONNX signature (or CVAT's)",
        response_class=Response,
        responses={
            200: {
                "description": "ONNX model; variant=sam (default): segment-anything's "
                "export_onnx_model.py --return-single-mask signature; variant=cvat: CVAT's "
                "SAM plugin signature",
                "content": {ONNX_TYPE: {"schema": {"type": "string", "format": "binary"}}},
            },
            304: {"description": "If-None-Match named this file's ETag"},
            501: {
                "model": ErrorBody,
                "description": "unavailable_feature: the service was started from ONNX files",
            },
        },
    )
    async def decoder_onnx(request: Request, variant: Optional[str] = None) -> Response:
        found = await svc.decoder_file(variant)
        headers = {
            "ETag": found.etag,
            "Cache-Control": DECODER_CACHE_CONTROL,
            "X-EdgeSAM-Fingerprint": found.fingerprint,
        }
        if etag_matches(request.headers.get("if-none-match"), found.etag):
            return Response(status_code=304, headers=headers)
        return FileResponse(
            found.path,
            media_type=ONNX_TYPE,
            headers=headers,
            filename=f"edgesam_decoder_{found.variant}.onnx",
        )

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> Dict[str, str]:
        return {"status": "alive"}

    @app.get(
        "/readyz",
        response_model=Readiness,
        summary="Readiness",
        responses={
            503: {
                "model": Readiness,
                "description": "not ready: loading, failed or draining (Retry-After)",
            }
        },
    )
    async def readyz() -> Response:
        state = await svc.readiness()
        return Response(
            state.model_dump_json(),
            status_code=200 if state.ready else 503,
            media_type="application/json",
            headers={} if state.ready else {"Retry-After": "2"},
        )

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={
            200: {
                "description": "Prometheus text exposition format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    )
    async def metrics() -> Response:
        sync = getattr(svc.encoder, "sync_metrics", None)
        if sync is not None:
            sync()
        return Response(svc.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    mount_web(app, settings.web_ort_dir)
    if settings.api_key_values():
        _declare_api_keys(app)
    app.add_middleware(EdgeSamMiddleware, service=svc)
    origins = settings.cors_origins
    if origins:  # outermost: preflights carry no key, and errors need the CORS headers too
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(origins),
            allow_methods=["GET", "HEAD", "POST", "DELETE"],
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=CORS_EXPOSED_HEADERS,
            max_age=600,
        )
    return app


def _declare_api_keys(app: FastAPI) -> None:
    """The published schema says what the middleware asks for: a key in X-API-Key or as a
    bearer token on every path but the open ones (generated clients then send it)."""
    plain_openapi = app.openapi

    def openapi_with_keys() -> Dict[str, Any]:
        if app.openapi_schema is None:
            schema = plain_openapi()
            schema.setdefault("components", {})["securitySchemes"] = {
                "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "BearerKey": {"type": "http", "scheme": "bearer"},
            }
            schema["security"] = [{"ApiKeyHeader": []}, {"BearerKey": []}]
            for path, operations in schema.get("paths", {}).items():
                if _is_open(path):
                    for operation in operations.values():
                        operation["security"] = []
        return app.openapi_schema

    app.openapi = openapi_with_keys  # type: ignore[method-assign]


def _error_body(exc: ServiceError) -> ErrorBody:
    return ErrorBody(code=exc.code, message=exc.message)


async def _multipart_files(
    request: Request, max_bytes: int, max_files: int
) -> List[Tuple[bytes, str]]:
    """The parts named `file`, in order (or, with none so named, the first file part)."""
    try:
        form = await request.form(max_files=max_files, max_fields=8, max_part_size=max_bytes)
    except PayloadTooLarge:
        raise
    except Exception as exc:  # malformed multipart bodies, too many parts
        if isinstance(exc.__cause__, ServiceError):
            raise exc.__cause__ from exc
        # Starlette's HTTPException reads "400: <detail>"; the answer is 422, so the detail only
        reason = exc.detail if isinstance(exc, StarletteHTTPException) else exc
        raise InvalidRequest(f"the multipart body could not be parsed: {reason}") from exc
    try:
        uploads = [v for v in form.getlist("file") if isinstance(v, UploadFile)]
        if not uploads:
            uploads = [v for v in form.values() if isinstance(v, UploadFile)][:1]
            if not uploads:
                raise InvalidRequest("the multipart body has no file part (name it 'file')")
        return [(await upload.read(), upload.content_type or "") for upload in uploads]
    finally:
        await form.close()


async def _start(svc: SegmentationService) -> None:
    try:
        await svc.start()
    except asyncio.CancelledError:
        raise
    except BaseException:  # start() logged it; readiness reports it
        return
