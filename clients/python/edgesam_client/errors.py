"""Errors the client raises: one class, with the server's stable `code` (the same for HTTP
and gRPC, e.g. "embedding_not_found", "overloaded") and its human `message`."""

from __future__ import annotations


class EdgeSamError(Exception):
    """A refused or failed request. `status` is the HTTP status or the gRPC status name;
    `retry_after` (seconds) comes with overloaded/not_ready answers."""

    def __init__(
        self,
        code: str,
        message: str,
        status: int | str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after


class EmbeddingNotFound(EdgeSamError):
    """The server has no embedding for the image_id (unknown or expired)."""


class Overloaded(EdgeSamError):
    """The server's queues are full; retried with backoff by the client."""


class Unauthenticated(EdgeSamError):
    """Missing or wrong API key."""


class Unavailable(EdgeSamError):
    """The server could not be reached or the connection broke (code "unavailable").
    `sent` is False when the request certainly never reached a server (connection refused):
    any operation may then be sent elsewhere; True when it may have been received."""

    def __init__(
        self,
        code: str,
        message: str,
        status: int | str | None = None,
        retry_after: float | None = None,
        sent: bool = True,
    ) -> None:
        super().__init__(code, message, status, retry_after)
        self.sent = sent


_CLASSES: dict[str, type[EdgeSamError]] = {
    "embedding_not_found": EmbeddingNotFound,
    "overloaded": Overloaded,
    "unauthenticated": Unauthenticated,
    "unavailable": Unavailable,
}


def make_error(
    code: str, message: str, status: int | str | None = None, retry_after: float | None = None
) -> EdgeSamError:
    """The EdgeSamError subclass for `code`."""
    return _CLASSES.get(code, EdgeSamError)(code, message, status, retry_after)
