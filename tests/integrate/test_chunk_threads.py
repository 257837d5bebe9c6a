"""``for_each_chunk``: every chunk runs exactly once, on the threads allowed, the first error is re-raised."""

from __future__ import annotations

import collections
import threading
import time

import numba
import pytest

from stosim.integrate.chunks import for_each_chunk


def test_every_chunk_runs_once_and_a_slow_thread_takes_fewer():
    seen: collections.Counter[int] = collections.Counter()
    by_thread: collections.defaultdict[int, list[int]] = collections.defaultdict(list)
    lock = threading.Lock()
    caller = threading.get_ident()

    def body(c: int) -> None:
        me = threading.get_ident()
        with lock:
            seen[c] += 1
            by_thread[me].append(c)
        time.sleep(0.02 if me == caller else 0.002)  # the calling thread is the slow one

    for_each_chunk(24, body)
    assert seen == collections.Counter(range(24))
    assert len(by_thread) == min(24, numba.get_num_threads())
    if numba.get_num_threads() > 1:
        assert len(by_thread[caller]) < 12  # fixed stripes would give it 12 of the 24


def test_one_thread_runs_every_chunk_in_the_calling_thread():
    old = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        threads = set()
        order = []
        for_each_chunk(5, lambda c: (threads.add(threading.get_ident()), order.append(c)))
        assert threads == {threading.get_ident()} and order == [0, 1, 2, 3, 4]
    finally:
        numba.set_num_threads(old)


def test_the_first_error_is_raised_and_no_new_chunk_starts_after_it():
    started = []

    def body(c: int) -> None:
        started.append(c)
        if c == 2:
            raise ValueError("chunk 2 failed")
        time.sleep(0.01)

    with pytest.raises(ValueError, match="chunk 2 failed"):
        for_each_chunk(40, body)
    assert 2 in started and len(started) < 40
