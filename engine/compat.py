"""Shims for Python 3.8, the system Python of JetPack 5 (L4T r35) that the Jetson image runs
on. Each names the Python version that makes it unnecessary."""

from __future__ import annotations

import sys
from itertools import zip_longest
from typing import Any, Iterable, Iterator

_MISSING = object()


def _zip_checked(*iterables: Iterable[Any]) -> Iterator[tuple[Any, ...]]:
    """`zip(..., strict=True)` for Pythons before 3.10: ValueError on unequal lengths."""
    for items in zip_longest(*iterables, fillvalue=_MISSING):
        if any(item is _MISSING for item in items):
            raise ValueError("zip_strict() arguments have different lengths")
        yield items


def zip_strict(*iterables: Iterable[Any]) -> Iterator[tuple[Any, ...]]:
    """`zip(*iterables, strict=True)` (3.10+) on every supported Python."""
    if sys.version_info >= (3, 10):
        return zip(*iterables, strict=True)
    return _zip_checked(*iterables)
