"""engine.compat: zip_strict behaves as zip(strict=True) on every Python, including the
hand-written path that Python 3.8 (JetPack 5) takes."""

from __future__ import annotations

import pytest

from engine.compat import _zip_checked, zip_strict


@pytest.mark.parametrize("fn", [zip_strict, _zip_checked])
def test_equal_lengths_zip_like_zip(fn) -> None:  # noqa: ANN001
    assert list(fn([1, 2, 3], "abc", (4.0, 5.0, 6.0))) == list(
        zip([1, 2, 3], "abc", (4.0, 5.0, 6.0))
    )
    assert list(fn([], [])) == []


@pytest.mark.parametrize("fn", [zip_strict, _zip_checked])
@pytest.mark.parametrize("args", [([1, 2], [1]), ([1], [1, 2]), ([1, 2], [1, 2], [])])
def test_unequal_lengths_raise_after_the_common_part(fn, args) -> None:  # noqa: ANN001
    it = fn(*args)
    shortest = min(len(a) for a in args)
    for _ in range(shortest):
        next(it)
    with pytest.raises(ValueError):
        next(it)
