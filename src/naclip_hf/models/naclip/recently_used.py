"""A bounded, thread-safe memory of the label sets embedded last, so that a long-running process (a pipeline, the
demo, an export's text tower) skips the text tower for classes it has seen. Torch-free."""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

Value = TypeVar("Value")


class RecentlyUsed(Generic[Value]):
    """At most `size` values by key, the least recently used forgotten first; safe to call from many threads.
    `one_at_a_time` computes missing values one after the other, whatever their keys (a thread asking for a key being
    computed then reuses its value); by default threads compute side by side.

    Example: `RecentlyUsed(32).get_or_compute(("sky", "road"), lambda: embed(["sky", "road"]))`.
    """

    def __init__(self, size: int, *, one_at_a_time: bool = False) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}.")
        self.size, self._lock = size, threading.Lock()
        self._values: OrderedDict[Hashable, Value] = OrderedDict()
        self._compute_lock = threading.Lock() if one_at_a_time else None

    def get(self, key: Hashable) -> Value | None:
        """The value kept under `key` (now the most recently used), or None."""
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
            return self._values.get(key)

    def get_or_compute(self, key: Hashable, compute: Callable[[], Value]) -> Value:
        """The value kept under `key`, else `compute()`'s, then kept (an exception keeps nothing)."""
        value = self.get(key)
        if value is None:
            with self._compute_lock or contextlib.nullcontext():
                value = self.get(key)  # computing one at a time, another thread may have just kept it
                if value is None:
                    value = compute()
                    with self._lock:
                        self._values[key] = value
                        while len(self._values) > self.size:
                            self._values.popitem(last=False)
        return value
