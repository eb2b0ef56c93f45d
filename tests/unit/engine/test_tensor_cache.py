from __future__ import annotations

import copy

import torch

from engine.tensor_cache import PerTensorCache


def test_values_follow_the_tensor_and_the_bound() -> None:
    cache: PerTensorCache[str] = PerTensorCache(2)
    a, b, c = torch.zeros(1), torch.zeros(1), torch.zeros(1)
    cache.put(a, "a")
    cache.put(b, "b")
    assert cache.get(a) == "a"  # a is now the most recent
    cache.put(c, "c")  # evicts b, the least recent
    assert (cache.get(a), cache.get(b), cache.get(c)) == ("a", None, "c")
    assert cache.get(torch.zeros(1)) is None and len(cache) == 2


def test_a_copy_starts_empty() -> None:
    cache: PerTensorCache[int] = PerTensorCache(3)
    t = torch.zeros(1)
    cache.put(t, 1)
    clone = copy.deepcopy(cache)
    assert clone.maxsize == 3 and len(clone) == 0 and clone.get(t) is None
    clone.put(t, 2)
    assert cache.get(t) == 1
