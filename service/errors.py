"""One exception hierarchy for the core, and ONE table mapping each kind to its wire codes.

Every transport maps errors through `spec_for(exc)` only: HTTP uses `http_status`, gRPC uses
`grpc_status` (a `grpc.StatusCode` member name). Clients always get `code` (stable, machine
readable) and `message` (a sentence safe to show; never a stack trace).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorSpec:
    code: str
    http_status: int
    grpc_status: str


class ServiceError(Exception):
    """Base of every error the core raises on purpose. `kind` selects the row of ERROR_TABLE."""

    kind = "internal_error"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after

    @property
    def spec(self) -> ErrorSpec:
        return ERROR_TABLE[self.kind]

    @property
    def code(self) -> str:
        return self.spec.code


class InvalidRequest(ServiceError):
    """The request does not match the schema (missing/unknown fields, wrong types)."""

    kind = "invalid_request"


class InvalidPrompt(ServiceError):
    """Prompts that cannot be decoded: non-finite or out-of-image coordinates, inverted boxes,
    too many points, labels other than 0/1."""

    kind = "invalid_prompt"


class UnsupportedPromptError(ServiceError):
    """A prompt the loaded model cannot take (mask_input on a decoder without it)."""

    kind = "unsupported_prompt"


class PayloadTooLarge(ServiceError):
    kind = "payload_too_large"


class ImageTooLarge(ServiceError):
    """Pixel count above the limit, or a decompression bomb."""

    kind = "image_too_large"


class UnsupportedMediaType(ServiceError):
    kind = "unsupported_media_type"


class InvalidImage(ServiceError):
    """Truncated or corrupt image bytes."""

    kind = "invalid_image"


class EmbeddingNotFound(ServiceError):
    """Unknown or expired image_id: the client should POST /v1/embed again."""

    kind = "embedding_not_found"


class MaskInputNotFound(ServiceError):
    kind = "mask_input_not_found"


class Unauthenticated(ServiceError):
    kind = "unauthenticated"


class Overloaded(ServiceError):
    """A bounded queue is full; retry after `retry_after` seconds."""

    kind = "overloaded"


class RateLimited(ServiceError):
    """This API key (or client) is over its rate limit; retry after `retry_after` seconds."""

    kind = "rate_limited"


class NotReady(ServiceError):
    """The model is loading, or the service is draining before shutdown."""

    kind = "not_ready"


class EncoderUnavailable(ServiceError):
    """This replica has no encoder (decoder role) and none is reachable."""

    kind = "encoder_unavailable"


class FeatureUnavailable(ServiceError):
    kind = "unavailable_feature"


class RouteNotFound(ServiceError):
    kind = "not_found"


class MethodNotAllowed(ServiceError):
    kind = "method_not_allowed"


class BackendFailure(ServiceError):
    """The model runtime failed while running a request."""

    kind = "backend_error"


class UrlNotAllowed(ServiceError):
    """An image URL outside EDGESAM_URL_ALLOWLIST: its host, a redirect's host, or an address
    it resolves to (private, loopback, ... unless listed)."""

    kind = "url_not_allowed"


class UrlFetchFailed(ServiceError):
    """An allowed image URL could not be fetched (timeout, refused, not 2xx)."""

    kind = "url_fetch_failed"


class InternalError(ServiceError):
    kind = "internal_error"


# The table: kind -> (code, HTTP status, gRPC status name). Nothing else maps errors.
ERROR_TABLE: dict[str, ErrorSpec] = {
    "invalid_request": ErrorSpec("invalid_request", 422, "INVALID_ARGUMENT"),
    "invalid_prompt": ErrorSpec("invalid_prompt", 422, "INVALID_ARGUMENT"),
    "unsupported_prompt": ErrorSpec("unsupported_prompt", 422, "FAILED_PRECONDITION"),
    "payload_too_large": ErrorSpec("payload_too_large", 413, "RESOURCE_EXHAUSTED"),
    "image_too_large": ErrorSpec("image_too_large", 413, "INVALID_ARGUMENT"),
    "unsupported_media_type": ErrorSpec("unsupported_media_type", 415, "INVALID_ARGUMENT"),
    "invalid_image": ErrorSpec("invalid_image", 400, "INVALID_ARGUMENT"),
    "embedding_not_found": ErrorSpec("embedding_not_found", 404, "NOT_FOUND"),
    "mask_input_not_found": ErrorSpec("mask_input_not_found", 404, "NOT_FOUND"),
    "unauthenticated": ErrorSpec("unauthenticated", 401, "UNAUTHENTICATED"),
    "overloaded": ErrorSpec("overloaded", 503, "UNAVAILABLE"),
    "rate_limited": ErrorSpec("rate_limited", 429, "RESOURCE_EXHAUSTED"),
    "not_ready": ErrorSpec("not_ready", 503, "UNAVAILABLE"),
    "encoder_unavailable": ErrorSpec("encoder_unavailable", 503, "UNAVAILABLE"),
    "unavailable_feature": ErrorSpec("unavailable_feature", 501, "UNIMPLEMENTED"),
    "not_found": ErrorSpec("not_found", 404, "NOT_FOUND"),
    "method_not_allowed": ErrorSpec("method_not_allowed", 405, "UNIMPLEMENTED"),
    "url_not_allowed": ErrorSpec("url_not_allowed", 403, "PERMISSION_DENIED"),
    "url_fetch_failed": ErrorSpec("url_fetch_failed", 502, "UNAVAILABLE"),
    "backend_error": ErrorSpec("backend_error", 500, "INTERNAL"),
    "internal_error": ErrorSpec("internal_error", 500, "INTERNAL"),
}

INTERNAL = ERROR_TABLE["internal_error"]


def spec_for(exc: BaseException) -> ErrorSpec:
    """The wire spec of any exception; anything unexpected is an internal error."""
    if isinstance(exc, ServiceError):
        return exc.spec
    return INTERNAL


def public_message(exc: BaseException) -> str:
    """The sentence a client may see: the message of a ServiceError, a fixed one otherwise."""
    if isinstance(exc, ServiceError):
        return exc.message
    return "internal error; the server logged the details"
