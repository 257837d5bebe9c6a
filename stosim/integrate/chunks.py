"""Batch chunking of the Numba kernels: (B, N, 3) states <-> (C, 3, Bc, N) chunks, and their threads.

Samples never interact, so each chunk runs its whole time loop on one thread; chunks are
small enough (<= CHUNK_MAX_SAMPLES samples) that a chunk's working set stays in cache.

The chunks run on Python threads (:func:`for_each_chunk`) calling kernels compiled with
``nogil=True``, not in a ``parallel=True`` kernel: a chunk's call is a whole time loop (milliseconds
to seconds), so dispatching it from Python costs nothing measurable, while a ``parallel=True``
wrapper is compiled on top of the kernel it calls (the kernel's code linked and optimized again,
plus the parallel-region machinery), which made the first run compile for minutes.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from stosim.integrate.aligned import aligned_copy
from stosim.integrate.gemm import one_blas_thread

__all__ = [
    "chunk_count",
    "to_chunks",
    "from_chunks",
    "for_each_chunk",
    "PARALLEL_MIN_VALUES",
    "CHUNK_MAX_SAMPLES",
]

PARALLEL_MIN_VALUES = 4096  # batch x N from which chunks run in parallel
CHUNK_MAX_SAMPLES = 32  # samples per chunk


def chunk_count(n_batch: int, n_osc: int) -> int:
    """Chunks the batch is split into: at least one per Numba thread for large work, and
    small enough (<= CHUNK_MAX_SAMPLES samples) that a chunk's working set stays in cache."""
    if n_batch * n_osc < PARALLEL_MIN_VALUES:
        return 1
    return max(min(numba.get_num_threads(), n_batch), -(-n_batch // CHUNK_MAX_SAMPLES))


def to_chunks(x: np.ndarray, n_chunks: int, lead: int = 0) -> np.ndarray:
    """(..., B, N, 3) with ``lead`` leading axes -> (C, ..., 3, Bc, N), padded with copies of sample 0.

    Always a new array (the kernels write into it; a view would write into the caller's input)."""
    n_batch = x.shape[lead]
    per = -(-n_batch // n_chunks)
    pad = n_chunks * per - n_batch
    if pad:
        filler = np.repeat(np.take(x, [0], axis=lead), pad, axis=lead)
        x = np.concatenate([x, filler], axis=lead)
    shape = x.shape[:lead] + (n_chunks, per) + x.shape[lead + 1 :]
    x = x.reshape(shape)  # (..., C, Bc, N, 3)
    axes = (lead,) + tuple(range(lead)) + (lead + 3, lead + 1, lead + 2)
    return aligned_copy(x.transpose(axes))  # C order, on a 64-byte boundary (:mod:`stosim.integrate.aligned`)


def from_chunks(x: np.ndarray, n_batch: int) -> np.ndarray:
    """(C, ..., 3, Bc, N) -> (..., B, N, 3), always a new array (never sharing memory with ``x``)."""
    n_lead = x.ndim - 4
    axes = tuple(range(1, 1 + n_lead)) + (0, n_lead + 2, n_lead + 3, n_lead + 1)
    y = x.transpose(axes)  # (..., C, Bc, N, 3)
    y = y.reshape(y.shape[:n_lead] + (-1,) + y.shape[-2:])
    return y[..., :n_batch, :, :].copy(order="C")


_pool_lock = threading.Lock()
_pool: tuple[int, ThreadPoolExecutor] | None = None  # (pid that made it, pool)


def _executor() -> ThreadPoolExecutor:
    """The process's chunk threads (NUMBA_NUM_THREADS - 1 workers; the calling thread takes chunks too).

    Made again in a forked child, where the parent's worker threads do not exist."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():
            workers = max(1, numba.config.NUMBA_NUM_THREADS - 1)
            _pool = (os.getpid(), ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stosim-chunk"))
        return _pool[1]


def _take_chunks(body: Callable[[int], None], next_chunk: Callable[[], int], n_chunks: int) -> None:
    with one_blas_thread():  # the kernels' gemm on this thread only (MKL's setting is per thread)
        while (c := next_chunk()) < n_chunks:
            body(c)


def for_each_chunk(n_chunks: int, body: Callable[[int], None]) -> None:
    """``body(c)`` for every chunk c < ``n_chunks``, on T = min(n_chunks, numba.get_num_threads()) threads.

    Each thread takes the next chunk not yet taken (a shared counter) until none is left, the calling thread
    one of them: a core that runs slower (the machine's cores are not always equally fast, nor equally free)
    takes fewer chunks instead of holding up the others with a fixed share (16 chunks on two threads, an MNIST
    training step at batch 500, alternated in one process: 0.89-1.01 of the time of fixed stripes by the best of
    10, 0.94-1.00 by the median). ``body`` must call a kernel compiled with ``nogil=True`` (else the threads take
    turns). ``numba.get_num_threads()`` is read in the calling thread, so ``numba.set_num_threads(1)`` (a sweep
    worker) runs every chunk in the calling thread. Returns when every chunk is done; the first exception raised
    by a chunk is re-raised then (the other threads stop taking chunks)."""
    threads = min(n_chunks, numba.get_num_threads())
    counter = itertools.count()
    failed = threading.Event()

    def next_chunk() -> int:
        return n_chunks if failed.is_set() else next(counter)  # itertools.count is atomic under the GIL

    def run() -> None:
        try:
            _take_chunks(body, next_chunk, n_chunks)
        except BaseException:
            failed.set()
            raise

    if threads <= 1:
        _take_chunks(body, next_chunk, n_chunks)
        return
    pool = _executor()
    futures = [pool.submit(run) for _ in range(1, threads)]
    try:
        run()
    finally:
        for f in futures:  # every thread ends before the arrays it writes are used or raised past
            f.exception()
    for f in futures:
        f.result()
