"""Kernel buffers on 64-byte boundaries (``stosim.integrate.aligned``), and results that do not depend on where
the arrays lie (the same instructions on the same elements: bit for bit)."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from stosim import STOArray, load_device
from stosim.integrate import buffers
from stosim.integrate.adjoint import adjoint_kept_chunk, forward_keep_chunk
from stosim.integrate.aligned import ALIGN_BYTES, aligned_copy, aligned_empty, aligned_zeros
from stosim.integrate.chunks import to_chunks
from stosim.integrate.flow import _ArrayTensors


@njit
def _aligned_inside(like):
    a = aligned_zeros((7, 3, 5, 11), like)
    b = aligned_zeros((5, 11), like)
    return a.ctypes.data % 64, b.ctypes.data % 64, a.shape, a.sum(), b.sum()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_allocations_start_on_a_cache_line(dtype):
    assert ALIGN_BYTES == 64
    for shape in [(3, 7, 13), 5, (1,)]:
        a = aligned_empty(shape, dtype)
        assert a.ctypes.data % 64 == 0 and a.dtype == dtype and a.flags.c_contiguous
        assert a.shape == ((shape,) if isinstance(shape, int) else shape)
    src = np.arange(3 * 5 * 7, dtype=np.float64).reshape(3, 5, 7).transpose(2, 0, 1)  # not C-ordered
    c = aligned_copy(src, dtype)
    assert c.ctypes.data % 64 == 0 and c.flags.c_contiguous and np.array_equal(c, src.astype(dtype))
    off_a, off_b, shape, sa, sb = _aligned_inside(np.zeros(1, dtype))
    assert (off_a, off_b, shape, sa, sb) == (0, 0, (7, 3, 5, 11), 0.0, 0.0)
    x = np.random.default_rng(0).standard_normal((10, 13, 3)).astype(dtype)
    chunks = to_chunks(x, 3)
    assert chunks.ctypes.data % 64 == 0 and chunks.flags.c_contiguous and chunks.shape == (3, 3, 4, 13)
    kept = buffers.take(1000, dtype)
    assert kept.ctypes.data % 64 == 0 and kept.size == 1000


def _misaligned_copy(a: np.ndarray, offset_bytes: int) -> np.ndarray:
    """A C-ordered copy of ``a`` starting ``offset_bytes`` past a 64-byte boundary."""
    k = offset_bytes // a.itemsize
    buf = aligned_empty(a.size + k, a.dtype)
    out = buf[k : k + a.size].reshape(a.shape)
    out[...] = a
    assert out.ctypes.data % 64 == offset_bytes
    return out


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kernels_give_the_same_bits_wherever_their_arrays_lie(dtype):
    """forward_keep_chunk and adjoint_kept_chunk (N = 40, 8 samples, 60 steps) on arrays on a cache line and
    16 bytes past one (NumPy's placement): the kept states, fields and gradients are identical."""
    arr = STOArray.generate(load_device(), 40, 500.0, seed=2)
    prm = _ArrayTensors(arr, dtype)
    rng = np.random.default_rng(4)
    m = rng.standard_normal((3, 8, 40))
    m = (m / np.linalg.norm(m, axis=0)).astype(dtype)
    g = rng.standard_normal((3, 8, 40)).astype(dtype)
    steps, dt = 60, dtype(1e-12)
    results = []
    for offset in (0, 16):
        states = _misaligned_copy(np.zeros((steps + 1, 3, 8, 40), dtype), offset)
        fields = _misaligned_copy(np.zeros((steps, 5, 8, 40), dtype), offset)
        osc = _misaligned_copy(prm.osc, offset)
        states[0] = m
        assert forward_keep_chunk(states, fields, prm.coupling_t, True, osc, prm.lam, prm.p, dt) == -1
        grad = adjoint_kept_chunk(
            states, fields, _misaligned_copy(g, offset), prm.coupling, True, osc, prm.lam, prm.p_adjoint, dt,
        )  # fmt: skip
        results.append((states.copy(), fields.copy(), grad.copy()))
    for a, b in zip(*results):
        assert np.array_equal(a, b)
