"""Large work buffers reused across calls: the states and stage fields the gradient's forward pass keeps.

A training step keeps up to the memory budget of :mod:`stosim.integrate.flow` (1.02 GB at N = 200, 300
steps, batch 500 in float32) for its backward pass. Fresh memory costs page faults and the kernel's zeroing
of every page on first touch, about 25 ms per 215 MB on this project's machine (7 % of a float64 training
step at batch 64), paid again by every step. So a buffer goes back to this pool when nothing uses it any
more and the next step of the same size takes it again.

"Nothing uses it": :func:`take` returns the buffer together with a typed view of it; the caller hands
only that view on (``torch.from_numpy(view)`` saved for backward), and the buffer returns to the pool
when the view is garbage-collected, i.e. when torch frees the saved tensor after the backward pass (or
with its graph, if the graph was retained). A buffer still in use is never handed out twice.

The pool keeps at most :data:`MAX_FREE_BYTES` of free buffers (the two layers of the deep STO network
at batch 500 fit); :func:`release` frees them (the training loop calls it when a run ends).
"""

from __future__ import annotations

import threading
import weakref

import numpy as np

from stosim.integrate.aligned import aligned_empty

__all__ = ["take", "release", "free_bytes", "MAX_FREE_BYTES"]

MAX_FREE_BYTES = 2 << 30

_lock = threading.Lock()
_free: list[np.ndarray] = []  # 1-D uint8 buffers nobody uses, most recently returned last


def _give_back(buf: np.ndarray) -> None:
    with _lock:
        _free.append(buf)
        while sum(b.nbytes for b in _free) > MAX_FREE_BYTES:
            _free.pop(0)


def take(n_items: int, dtype) -> np.ndarray:
    """A 1-D array of ``n_items`` elements of ``dtype`` (contents undefined), from a free buffer of exactly
    that size if the pool has one. The buffer returns to the pool when this array (the object returned,
    not views made from it) is garbage-collected: hand it on, do not keep other views of it."""
    dtype = np.dtype(dtype)
    nbytes = n_items * dtype.itemsize
    buf = None
    with _lock:
        for i in range(len(_free) - 1, -1, -1):
            if _free[i].nbytes == nbytes:
                buf = _free.pop(i)
                break
    if buf is None:
        buf = aligned_empty(nbytes, np.uint8)  # on a 64-byte boundary, as the kernels' vectors like it
    view = buf.view(dtype)
    weakref.finalize(view, _give_back, buf)
    return view


def release() -> None:
    """Free every buffer the pool keeps (buffers in use return to the pool when their users are done)."""
    with _lock:
        _free.clear()


def free_bytes() -> int:
    """Bytes of the free buffers the pool keeps."""
    with _lock:
        return sum(b.nbytes for b in _free)
