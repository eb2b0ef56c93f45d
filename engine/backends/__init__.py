"""Runtimes behind one interface (see `base.Backend`)."""

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
