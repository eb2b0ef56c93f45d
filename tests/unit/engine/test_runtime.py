"""engine.runtime: the allocator tuning applies on glibc and is idempotent."""

import platform

import pytest

from engine.runtime import tune_allocator


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_tune_allocator_applies_once() -> None:
    assert tune_allocator() is True
    assert tune_allocator() is True
