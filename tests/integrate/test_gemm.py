"""The kernels' coupling products (stosim.integrate.gemm) against NumPy, for both providers."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from numba import njit

from stosim.integrate.gemm import GEMM_PROVIDER, gemm_accumulate, gemm_into, one_blas_thread


@njit(cache=True)
def _into(a, w, out):
    gemm_into(a, w, out)


@njit(cache=True)
def _accumulate(a, w, out):
    gemm_accumulate(a, w, out)


RTOL = {np.float64: 1e-13, np.float32: 2e-5}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("rows", [1, 3, 32, 77])
def test_gemm_matches_numpy(dtype, rows):
    rng = np.random.default_rng(rows)
    a = rng.standard_normal((rows, 50)).astype(dtype)
    w = rng.standard_normal((50, 40)).astype(dtype)
    exact = a.astype(np.float64) @ w.astype(np.float64)
    scale = np.abs(a).astype(np.float64) @ np.abs(w).astype(np.float64)  # bound of the summation's round-off
    out = np.full((rows, 40), np.nan, dtype=dtype)  # beta = 0 must not read out (NaN * 0 would spread)
    with one_blas_thread():
        _into(a, w, out)
    assert np.all(np.abs(out - exact) <= RTOL[dtype] * scale)
    start = rng.standard_normal((rows, 40)).astype(dtype)
    acc = start.copy()
    with one_blas_thread():
        _accumulate(a, w, acc)
    assert np.all(np.abs(acc - (start + exact)) <= RTOL[dtype] * (scale + np.abs(start)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gemm_on_rows_of_a_larger_array_and_strided_views(dtype):
    """A row block of a (3, B, N) state (what the kernels pass), and views with strided rows or columns
    (the loop fallback), give the product of the same numbers."""
    rng = np.random.default_rng(5)
    state = rng.standard_normal((3, 8, 30)).astype(dtype)
    w = rng.standard_normal((30, 30)).astype(dtype)
    out = np.empty((8, 30), dtype=dtype)
    _into(state[1], w, out)
    np.testing.assert_allclose(out, state[1] @ w, rtol=RTOL[dtype], atol=RTOL[dtype] * 30)
    wide = rng.standard_normal((8, 60)).astype(dtype)
    _into(wide[:, ::2], w, out)  # columns strided: the loop fallback
    np.testing.assert_allclose(out, wide[:, ::2] @ w, rtol=RTOL[dtype], atol=RTOL[dtype] * 30)
    tall = rng.standard_normal((16, 30)).astype(dtype)
    _into(tall[::2], w, out)  # rows strided: BLAS with a leading dimension of 60
    np.testing.assert_allclose(out, tall[::2] @ w, rtol=RTOL[dtype], atol=RTOL[dtype] * 30)


def test_gemm_rejects_mismatched_shapes():
    a, w = np.ones((4, 5)), np.ones((6, 3))
    with pytest.raises(ValueError, match="shapes"):
        _into(a, w, np.empty((4, 3)))


_CHILD = """
import numpy as np, sys
from numba import njit
from stosim.integrate.gemm import GEMM_PROVIDER, gemm_into
@njit
def f(a, w, out):
    gemm_into(a, w, out)
rng = np.random.default_rng(0)
a, w = rng.standard_normal((32, 200)), rng.standard_normal((200, 200))
out = np.empty((32, 200))
f(a, w, out)
print(GEMM_PROVIDER)
print(float(np.abs(out - a @ w).max() / np.abs(a @ w).max()))
"""


def test_scipy_provider_forced_by_environment(tmp_path):
    """STOSIM_GEMM=scipy selects SciPy's cython_blas gemm (the routine behind np.dot), with the same results."""
    env = dict(os.environ, STOSIM_GEMM="scipy", NUMBA_CACHE_DIR=str(tmp_path))
    res = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True)
    provider, diff = res.stdout.split("\n")[:2]
    assert provider == "scipy cython_blas"
    assert float(diff) < 1e-13


def test_bad_provider_name_is_refused(tmp_path):
    env = dict(os.environ, STOSIM_GEMM="fastest", NUMBA_CACHE_DIR=str(tmp_path))
    res = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True)
    assert res.returncode != 0
    assert "STOSIM_GEMM must be 'auto', 'mkl' or 'scipy'" in res.stderr


def test_provider_is_named():
    assert GEMM_PROVIDER in ("mkl (torch)", "scipy cython_blas")


def test_one_blas_thread_restores_the_threads_setting():
    """MKL's per-thread count is 1 inside the block and what it was after (torch's own products keep theirs)."""
    import ctypes

    from stosim.integrate import gemm

    setter = gemm._MKL_LOCAL_THREADS
    if setter is None:
        pytest.skip("the kernels' gemm is SciPy's here (no MKL thread setting to restore)")
    before = setter(ctypes.byref(ctypes.c_int(3)))  # set 3 locally, remember what was there
    try:
        with one_blas_thread():
            inside = setter(ctypes.byref(ctypes.c_int(1)))  # returns the value in force: 1
        after = setter(ctypes.byref(ctypes.c_int(3)))
        assert (inside, after) == (1, 3)
    finally:
        setter(ctypes.byref(ctypes.c_int(before)))


def test_both_providers_pass_the_self_check():
    """The check each provider passes before its routines are registered (a product with padded leading
    dimensions through both routines, 64-bit integer arguments) holds for SciPy's and, where exported, MKL's."""
    from stosim.integrate import gemm

    assert gemm._works(*gemm._scipy_blas())
    mkl = gemm._torch_mkl()
    if mkl is not None:
        assert gemm._works(mkl[0], mkl[1])
