"""Tenant namespaces (EDGESAM_TENANT_ISOLATION): with API keys, each key's embeddings and
masks live under a prefix of their own, so one key holder can neither learn whether another
embedded an image (HEAD) nor delete it.

The transport that authenticated the call sets `TENANT` for the duration of the call; the
cache reads it when it builds keys. The id is an HMAC of the key under a fixed label, never
the key itself, so Redis keys and metrics never carry a secret. (A short key could still be
guessed from its id offline: keys are at least 8 characters; use long random ones.)
"""

from __future__ import annotations

import hashlib
import hmac
from contextvars import ContextVar
from typing import Optional

# None: no isolation (the shared namespace), the default.
TENANT: ContextVar[Optional[str]] = ContextVar("edgesam_tenant", default=None)

_LABEL = b"edgesam-tenant-v1"


def tenant_id(api_key: bytes) -> str:
    """A stable, non-secret id for an API key: 16 hex digits of HMAC-SHA256."""
    return hmac.new(_LABEL, api_key, hashlib.sha256).hexdigest()[:16]


def current() -> Optional[str]:
    return TENANT.get()
