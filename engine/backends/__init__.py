"""Runtimes behind one interface (`base.Backend`), one file per runtime, and the registry
(`registry`) that maps each backend name to its class and options and resolves `auto`."""

from engine.backends.base import (
    Backend,
    BackendError,
    BackendHealth,
    BackendInfo,
    BackendUnavailable,
    UnsupportedPrompt,
)

__all__ = [
    "Backend",
    "BackendError",
    "BackendHealth",
    "BackendInfo",
    "BackendUnavailable",
    "UnsupportedPrompt",
]
