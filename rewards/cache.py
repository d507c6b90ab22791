"""The one cache class of promptgym: a bounded least-recently-used map whose exact state (entries *and* their
recency order) can be saved and restored, so a resumed run sees the caches an uninterrupted one would.

    cache = LRU(maxsize=2)
    cache.put("a", 1); cache.put("b", 2); cache.get("a"); cache.put("c", 3)   # evicts "b"
    assert cache.items() == [("a", 1), ("c", 3)]                              # least recently used first
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable
from typing import Any


class LRU:
    """A map of at most `maxsize` entries; `get`/`[]` mark a key as most recently used, `put` evicts the least
    recently used beyond `maxsize`; `maxsize=0` stores nothing. `key in cache` does not change the order."""

    def __init__(self, maxsize: int) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 0:
            raise ValueError(f"maxsize must be an int >= 0 (0 disables the cache), got {maxsize!r}")
        self.maxsize = maxsize
        self._data: OrderedDict[Hashable, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data

    def __getitem__(self, key: Hashable) -> Any:
        value = self._data[key]
        self._data.move_to_end(key)
        return value

    def get(self, key: Hashable, default: Any = None) -> Any:
        return self[key] if key in self._data else default

    def put(self, key: Hashable, value: Any) -> None:
        if self.maxsize == 0:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()

    def keys(self) -> list[Hashable]:
        """Keys, least recently used first."""
        return list(self._data)

    def items(self) -> list[tuple[Hashable, Any]]:
        """(key, value) pairs, least recently used first: `load(items())` rebuilds this exact cache."""
        return list(self._data.items())

    def load(self, items: Iterable[tuple[Hashable, Any]]) -> None:
        """Replace the contents with `items` (least recently used first), keeping at most `maxsize` newest."""
        self._data = OrderedDict()
        for key, value in items:
            self.put(key, value)
