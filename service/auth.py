"""The API-key check shared by the HTTP middleware and the gRPC interceptor."""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Optional


def presented_key(x_api_key: Optional[str], authorization: Optional[str]) -> Optional[str]:
    """The key a caller sent: `X-API-Key`, or else a `Bearer` authorization."""
    given = x_api_key
    if given is None and isinstance(authorization, str) and authorization[:7].lower() == "bearer ":
        given = authorization[7:].strip()
    if not given or not isinstance(given, str):
        return None
    return given


def matching_key(
    x_api_key: Optional[str], authorization: Optional[str], keys: Sequence[bytes]
) -> Optional[bytes]:
    """The configured key the caller presented, or None. Every key is compared (no early
    exit), each in constant time."""
    given = presented_key(x_api_key, authorization)
    if given is None:
        return None
    candidate = given.encode()
    found: Optional[bytes] = None
    for key in keys:
        if hmac.compare_digest(candidate, key):
            found = key
    return found


def api_key_matches(
    x_api_key: Optional[str], authorization: Optional[str], keys: Sequence[bytes]
) -> bool:
    """True when `X-API-Key`, or else a `Bearer` authorization, is one of `keys`."""
    return matching_key(x_api_key, authorization, keys) is not None
