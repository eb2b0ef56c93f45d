"""The gRPC side of the one error table (service.errors.ERROR_TABLE): status codes and the
trailing metadata that carry the stable error code, and the way back (for the decoder role,
which re-raises an encoder's error as the same ServiceError kind)."""

from __future__ import annotations

import grpc

from service.errors import ERROR_TABLE, ServiceError, public_message, spec_for

ERROR_CODE_KEY = "edgesam-error-code"
RETRY_AFTER_KEY = "retry-after"


def status_code(exc: BaseException) -> grpc.StatusCode:
    """The grpc.StatusCode of any exception, from the table's `grpc_status` name."""
    return getattr(grpc.StatusCode, spec_for(exc).grpc_status)


def trailers(exc: BaseException) -> tuple[tuple[str, str], ...]:
    """Trailing metadata: the stable code, and retry-after (seconds) with UNAVAILABLE and
    with a rate limit's RESOURCE_EXHAUSTED."""
    spec = spec_for(exc)
    out: tuple[tuple[str, str], ...] = ((ERROR_CODE_KEY, spec.code),)
    retry_after = getattr(exc, "retry_after", None)
    if spec.grpc_status == "UNAVAILABLE" or (spec.http_status == 429 and retry_after):
        out += ((RETRY_AFTER_KEY, str(int(retry_after or 1))),)
    return out


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """(code, details, trailing metadata) to abort an RPC with."""
    return status_code(exc), public_message(exc), trailers(exc)


def _kinds() -> dict[str, type[ServiceError]]:
    found: dict[str, type[ServiceError]] = {}
    stack: list[type[ServiceError]] = [ServiceError]
    while stack:
        cls = stack.pop()
        found[cls.kind] = cls  # subclasses come later and win over ServiceError
        stack.extend(cls.__subclasses__())
    return found


def error_from_code(code: str, message: str, retry_after: float | None = None) -> ServiceError:
    """The ServiceError whose table row has `code` (an InternalError when none has)."""
    kinds = _kinds()
    row = next((kind for kind, spec in ERROR_TABLE.items() if spec.code == code), None)
    cls = kinds.get(row or "internal_error", kinds["internal_error"])
    return cls(message, retry_after=retry_after)


def metadata_value(metadata: object, key: str) -> str | None:
    """A value from gRPC metadata (a sequence of (key, value) pairs or None)."""
    for item in metadata or ():  # type: ignore[attr-defined]
        k, v = item
        if k == key:
            return v.decode() if isinstance(v, bytes) else str(v)
    return None
