"""The API-key check shared by the HTTP middleware and the gRPC interceptor."""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Optional


def api_key_matches(
    x_api_key: Optional[str], authorization: Optional[str], keys: Sequence[bytes]
) -> bool:
    """True when `X-API-Key`, or else a `Bearer` authorization, is one of `keys`. Every key is
    compared (no early exit), each in constant time."""
    given = x_api_key
    if given is None and isinstance(authorization, str) and authorization[:7].lower() == "bearer ":
        given = authorization[7:].strip()
    if not given or not isinstance(given, str):
        return False
    candidate = given.encode()
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(candidate, key)
    return ok
