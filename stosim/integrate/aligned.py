"""Arrays whose first element lies on a 64-byte boundary: one cache line, one AVX-512 vector.

The pointwise kernels load and store whole 512-bit vectors (:mod:`stosim.physics.kernel_hints`). NumPy's
allocator aligns to 16 bytes (a large array is a fresh mapping plus a 16-byte header, so 16 bytes past a
cache line) and Numba's to 32, so with arbitrary placement most vectors straddle two cache lines: every load
touches two lines and every store splits. On this project's machine the RK4 stage and adjoint passes took
20-26 % longer in float64 on arrays 16 or 32 bytes past a line than on aligned ones (same code, same
process). Results do not depend on placement (the same instructions run on the same elements); only speed.

:func:`aligned_empty` (NumPy, for the buffers handed to the kernels) and :func:`aligned_zeros` (inside the
kernels, for their work arrays) allocate 64 bytes more than needed and start the array at the first aligned
byte. A (3, Bc, N) state then has every component aligned, and every row too where N times the item size is
a multiple of 64 (N = 200 in float64; in float32 every second row starts half a line in, which the gradient
kernels avoid by padding N: :func:`stosim.integrate.flow.padded_oscillator_count`).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["ALIGN_BYTES", "aligned_empty", "aligned_copy", "aligned_zeros"]

ALIGN_BYTES = 64


def aligned_empty(shape: tuple[int, ...] | int, dtype) -> np.ndarray:
    """``np.empty(shape, dtype)`` (C order) starting on a 64-byte boundary."""
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    nbytes = math.prod(shape) * dtype.itemsize
    buf = np.empty(nbytes + ALIGN_BYTES, dtype=np.uint8)
    start = (-buf.ctypes.data) % ALIGN_BYTES
    return buf[start : start + nbytes].view(dtype).reshape(shape)


def aligned_copy(a, dtype=None) -> np.ndarray:
    """A C-ordered copy of ``a`` (as ``dtype``, default its own) starting on a 64-byte boundary."""
    a = np.asarray(a, dtype=dtype)
    out = aligned_empty(a.shape, a.dtype)
    out[...] = a
    return out


@njit(cache=True)
def aligned_zeros(shape, like):
    """Inside a kernel: ``np.zeros(shape, like.dtype)`` starting on a 64-byte boundary (``like`` gives the dtype)."""
    n = 1
    for s in shape:
        n *= s
    pad = ALIGN_BYTES // like.itemsize
    buf = np.zeros(n + pad, dtype=like.dtype)
    start = ((ALIGN_BYTES - buf.ctypes.data % ALIGN_BYTES) % ALIGN_BYTES) // like.itemsize
    return buf[start : start + n].reshape(shape)
