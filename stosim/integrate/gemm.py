"""The coupling products of the Numba kernels, out = a @ w (+ out), through the fastest BLAS gemm loaded.

Every RK4 stage of a chunk (at most 32 samples) costs one product (Bc x N)(N x N). At these shapes
the OpenBLAS behind Numba's ``np.dot`` (SciPy's) runs at 55-65 % of the speed of the MKL that torch
links (measured on this project's machine, one thread, (32 x 200)(200 x 200): 52-56 against 83-86
GFLOP/s in float64, 85-96 against 160-166 in float32). So the kernels call the Fortran ``dgemm_`` /
``sgemm_`` of torch's MKL where torch's library exports them (x86 Linux builds do), and SciPy's
``cython_blas`` gemm otherwise (the routine ``np.dot`` calls): the same Fortran interface, chosen once
per process, when this module is imported (:data:`GEMM_PROVIDER`; the environment variable
``STOSIM_GEMM=scipy`` forces SciPy's), and only after it computed a small product correctly.

The kernels call the routine by a symbol name (``stosim_dgemm`` / ``stosim_sgemm``) that this module
registers with LLVM at the address found, so cached kernels stay valid in a process that finds the
other provider. Both run on one thread inside the kernels: :func:`one_blas_thread` around every
chunk's call (MKL's thread-local setting; SciPy's OpenBLAS is limited by
:func:`stosim.integrate.threads.single_threaded_blas`).

Products of the two providers differ by round-off (summation order), about 1e-16 relative in
float64 and 1e-7 in float32; a process uses one provider for all its products, so the forward pass
and the adjoint's recomputation stay bitwise identical.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import llvmlite.binding as llvm
import numpy as np
from numba import njit, types
from numba.extending import overload

__all__ = ["GEMM_PROVIDER", "gemm_into", "gemm_accumulate", "one_blas_thread"]

_P = types.CPointer
_FORTRAN_GEMM = {
    dtype: types.void(
        _P(types.int8),  # transa
        _P(types.int8),  # transb
        _P(types.int64),  # m
        _P(types.int64),  # n
        _P(types.int64),  # k
        _P(dtype),  # alpha
        _P(dtype),  # a
        _P(types.int64),  # lda
        _P(dtype),  # b
        _P(types.int64),  # ldb
        _P(dtype),  # beta
        _P(dtype),  # c
        _P(types.int64),  # ldc
    )
    for dtype in (types.float64, types.float32)
}
# The integer arguments are passed as pointers to 64-bit integers: a 32-bit-integer (LP64) BLAS reads their
# first 4 bytes, which on a little-endian machine hold the same value, and a 64-bit-integer (ILP64) one reads
# all 8; both get the right sizes. :func:`_works` checks a provider's routines on a small product first.
_dgemm = types.ExternalFunction("stosim_dgemm", _FORTRAN_GEMM[types.float64])
_sgemm = types.ExternalFunction("stosim_sgemm", _FORTRAN_GEMM[types.float32])


def _address(func: ctypes._CFuncPtr) -> int:
    return ctypes.cast(func, ctypes.c_void_p).value


def _torch_mkl() -> tuple[int, int, ctypes._CFuncPtr | None] | None:
    """Addresses of dgemm_ / sgemm_ exported by torch's CPU library, and its MKL thread-local setter."""
    import torch

    lib_path = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    if not lib_path.is_file():
        return None
    try:
        lib = ctypes.CDLL(str(lib_path))  # already loaded by ``import torch``: the same handle
        dgemm, sgemm = lib.dgemm_, lib.sgemm_
    except (OSError, AttributeError):
        return None
    if not hasattr(lib, "mkl_get_max_threads"):  # only MKL exports this: a torch built on another BLAS has none
        return None
    setter = getattr(lib, "mkl_set_num_threads_local_", None)  # Fortran interface: the count by reference
    if setter is not None:
        setter.restype = ctypes.c_int
        setter.argtypes = [ctypes.POINTER(ctypes.c_int)]
    return _address(dgemm), _address(sgemm), setter


def _scipy_blas() -> tuple[int, int]:
    """Addresses of SciPy's cython_blas dgemm / sgemm (the Fortran routines behind Numba's np.dot)."""
    from scipy.linalg import cython_blas

    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    capsules = cython_blas.__pyx_capi__
    return tuple(get_pointer(capsules[n], get_name(capsules[n])) for n in ("dgemm", "sgemm"))  # type: ignore[return-value]


def _works(d_addr: int, s_addr: int) -> bool:
    """A (3 x 4)(4 x 2) product with padded leading dimensions through both routines, against NumPy."""
    if sys.byteorder != "little":  # the 64-bit integer arguments above rely on it
        return False
    ptr = ctypes.c_void_p
    for addr, dtype, ctype in ((d_addr, np.float64, ctypes.c_double), (s_addr, np.float32, ctypes.c_float)):
        routine = ctypes.CFUNCTYPE(None, *([ptr] * 13))(addr)
        rng = np.random.default_rng(1)
        a = rng.standard_normal((3, 5)).astype(dtype)[:, :4]  # row stride 5
        w = rng.standard_normal((4, 3)).astype(dtype)[:, :2]  # row stride 3
        out = np.full((3, 2), np.nan, dtype=dtype)
        ints = np.array([2, 3, 4, 3, 5, 2], dtype=np.int64)  # n, m, k, ldw, lda, ldo (column-major view)
        trans = ctypes.c_char(b"N")
        one, zero = ctype(1.0), ctype(0.0)
        at = [ctypes.c_void_p(ints.ctypes.data + 8 * j) for j in range(6)]
        routine(
            ctypes.addressof(trans), ctypes.addressof(trans), at[0], at[1], at[2], ctypes.addressof(one),
            w.ctypes.data, at[3], a.ctypes.data, at[4], ctypes.addressof(zero), out.ctypes.data, at[5],
        )  # fmt: skip
        if not np.allclose(out, a @ w, rtol=1e-4, atol=1e-5):
            return False
    return True


def _register() -> tuple[str, ctypes._CFuncPtr | None]:
    choice = os.environ.get("STOSIM_GEMM", "auto").strip().lower()
    if choice not in ("auto", "mkl", "scipy"):
        raise ValueError(f"STOSIM_GEMM must be 'auto', 'mkl' or 'scipy', not {choice!r}")
    found = _torch_mkl() if choice in ("auto", "mkl") else None
    if found is not None and not _works(found[0], found[1]):
        found = None
    if found is None and choice == "mkl":
        raise RuntimeError("STOSIM_GEMM=mkl: torch's CPU library exports no working MKL dgemm_/sgemm_ here")
    if found is not None:
        d_addr, s_addr, setter = found
        provider = "mkl (torch)"
    else:
        d_addr, s_addr = _scipy_blas()
        setter, provider = None, "scipy cython_blas"
        if not _works(d_addr, s_addr):
            raise RuntimeError("SciPy's cython_blas dgemm/sgemm gave a wrong product: stosim's kernels cannot run")
    llvm.add_symbol("stosim_dgemm", d_addr)
    llvm.add_symbol("stosim_sgemm", s_addr)
    return provider, setter


GEMM_PROVIDER, _MKL_LOCAL_THREADS = _register()


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """The gemm of :data:`GEMM_PROVIDER` runs on one thread in the calling thread inside the block.

    MKL: its thread-local thread count (restored after); SciPy's OpenBLAS: nothing here (see
    :func:`stosim.integrate.threads.single_threaded_blas`)."""
    if _MKL_LOCAL_THREADS is None:
        yield
        return
    previous = _MKL_LOCAL_THREADS(ctypes.byref(ctypes.c_int(1)))
    try:
        yield
    finally:
        _MKL_LOCAL_THREADS(ctypes.byref(ctypes.c_int(previous)))


def _gemm(a, w, out, beta):  # pragma: no cover - the Python stand-in of the overloads below
    out[...] = a @ w + beta * out


@njit(inline="always", cache=True)
def _leading(x, itemsize):
    """Row stride of a 2-D array in elements, or -1 if its rows are not contiguous."""
    if x.shape[1] > 1 and x.strides[1] != itemsize:
        return -1
    if x.shape[0] > 1:
        return x.strides[0] // itemsize
    return max(x.shape[1], 1)


def _make_gemm(routine, np_dtype):
    itemsize = np.dtype(np_dtype).itemsize

    def impl(a, w, out, beta):
        m_rows, k_inner = a.shape
        n_cols = w.shape[1]
        if w.shape[0] != k_inner or out.shape[0] != m_rows or out.shape[1] != n_cols:
            raise ValueError("gemm: shapes do not match")
        lda, ldw, ldo = _leading(a, itemsize), _leading(w, itemsize), _leading(out, itemsize)
        if lda < 0 or ldw < 0 or ldo < 0 or m_rows == 0 or n_cols == 0 or k_inner == 0:
            # not a BLAS layout (or empty): a plain loop (the kernels never pass such arrays)
            for r in range(m_rows):
                for j in range(n_cols):
                    total = out[r, j] * beta if beta != 0 else out.dtype.type(0)
                    for q in range(k_inner):
                        total += a[r, q] * w[q, j]
                    out[r, j] = total
            return
        # row-major out = a @ w is column-major out^T = w^T a^T: gemm('N', 'N', n, m, k, w, a, out)
        ints = np.empty(6, dtype=np.int64)  # 64-bit integer arguments: see the note above _dgemm
        ints[0], ints[1], ints[2] = n_cols, m_rows, k_inner
        ints[3], ints[4], ints[5] = ldw, lda, ldo
        trans = np.empty(1, dtype=np.int8)
        trans[0] = 78  # 'N'
        coef = np.empty(2, dtype=np_dtype)
        coef[0], coef[1] = 1.0, beta
        routine(
            trans.ctypes,
            trans.ctypes,
            ints[0:].ctypes,
            ints[1:].ctypes,
            ints[2:].ctypes,
            coef.ctypes,
            w.ctypes,
            ints[3:].ctypes,
            a.ctypes,
            ints[4:].ctypes,
            coef[1:].ctypes,
            out.ctypes,
            ints[5:].ctypes,
        )

    return impl


@overload(_gemm, jit_options={"cache": True})
def _gemm_overload(a, w, out, beta):
    dtypes = {a.dtype, w.dtype, out.dtype}
    if len(dtypes) != 1 or a.ndim != 2 or w.ndim != 2 or out.ndim != 2:
        return None
    (dtype,) = dtypes
    if dtype == types.float64:
        return _make_gemm(_dgemm, np.float64)
    if dtype == types.float32:
        return _make_gemm(_sgemm, np.float32)
    return None


@njit(inline="always", cache=True)
def gemm_into(a, w, out):
    """out = a @ w for 2-D float64 or float32 arrays of one dtype with contiguous rows (Numba only)."""
    _gemm(a, w, out, 0.0)


@njit(inline="always", cache=True)
def gemm_accumulate(a, w, out):
    """out += a @ w (one gemm with beta = 1; no temporary), as :func:`gemm_into`."""
    _gemm(a, w, out, 1.0)
