"""The bounded memory of recently used label sets shared by the pipeline, the demo and an export's text tower."""

from __future__ import annotations

import threading
import time

import pytest

from naclip_hf.models.naclip.recently_used import RecentlyUsed


def test_the_least_recently_used_value_is_forgotten_first():
    memory = RecentlyUsed(2)
    memory.get_or_compute("a", lambda: 1)
    memory.get_or_compute("b", lambda: 2)
    assert memory.get("a") == 1  # "a" is now the most recently used
    memory.get_or_compute("c", lambda: 3)
    assert memory.get("b") is None and memory.get("a") == 1 and memory.get("c") == 3


def test_get_or_compute_computes_once_and_keeps_nothing_on_error():
    memory = RecentlyUsed(4)
    calls = []
    assert memory.get_or_compute("k", lambda: calls.append(1) or "value") == "value"
    assert memory.get_or_compute("k", lambda: calls.append(1) or "other") == "value"
    assert calls == [1]

    def fail() -> str:
        raise ValueError("no embedding for 'x'")

    with pytest.raises(ValueError, match="no embedding"):
        memory.get_or_compute("bad", fail)
    assert memory.get("bad") is None and memory.get("k") == "value"


@pytest.mark.parametrize("one_at_a_time, most_computing", [(True, 1), (False, 4)])
def test_threads_compute_one_at_a_time_only_when_asked(one_at_a_time, most_computing):
    memory = RecentlyUsed(8, one_at_a_time=one_at_a_time)
    computing, most, lock = 0, 0, threading.Lock()
    start = threading.Barrier(4)

    def compute() -> str:
        nonlocal computing, most
        with lock:
            computing += 1
            most = max(most, computing)
        time.sleep(0.2)
        with lock:
            computing -= 1
        return "embeddings"

    def request(key: str) -> None:
        start.wait()
        assert memory.get_or_compute(key, compute) == "embeddings"

    # Four different label sets at once: computed side by side, or one after the other.
    threads = [threading.Thread(target=request, args=(f"set {i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == most_computing
    assert all(memory.get(f"set {i}") == "embeddings" for i in range(4))


def test_a_size_below_one_is_refused():
    with pytest.raises(ValueError, match="size must be at least 1, got 0"):
        RecentlyUsed(0)
