"""A bounded cache of values derived from a tensor, valid while that very tensor lives."""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Any, Generic, Optional, TypeVar

V = TypeVar("V")


class PerTensorCache(Generic[V]):
    """Keeps the values computed from the `maxsize` most recently used tensors.

    Keyed by `id()` and checked through a weak reference, so a new tensor that happens to get
    a freed tensor's id never receives its value. Safe to share between threads."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._entries: OrderedDict[int, tuple[Any, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, tensor: Any) -> Optional[V]:
        with self._lock:
            hit = self._entries.get(id(tensor))
            if hit is None or hit[0]() is not tensor:
                return None
            self._entries.move_to_end(id(tensor))
            return hit[1]

    def put(self, tensor: Any, value: V) -> None:
        with self._lock:
            self._entries[id(tensor)] = (weakref.ref(tensor), value)
            self._entries.move_to_end(id(tensor))
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    # A copied or pickled owner (a deep-copied model, say) starts with an empty cache: the
    # entries belong to tensors of the original, and a lock cannot be copied.
    def __getstate__(self) -> dict[str, int]:
        return {"maxsize": self.maxsize}

    def __setstate__(self, state: dict[str, int]) -> None:
        self.__init__(state["maxsize"])  # type: ignore[misc]
