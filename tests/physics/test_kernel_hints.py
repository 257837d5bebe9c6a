"""The compiler hints of the pointwise kernels (wide vectors, no overlap checks): set on the kernels that call
them only, and the results unchanged bit for bit."""

from __future__ import annotations

import llvmlite.binding as llvm
import numpy as np
from numba import njit

from stosim.physics.kernel_hints import VECTOR_WIDTH_BITS, arrays_do_not_overlap, prefer_wide_vectors
from stosim.physics.llg import llg_point, stage_accumulate


def _rhs_loop(out, m, hx, osc, lam, p):
    one = np.ones(1, dtype=m.dtype)[0]
    zero = one - one
    for i in range(m.shape[1]):
        out[0, i], out[1, i], out[2, i] = llg_point(
            m[0, i], m[1, i], m[2, i], hx[i], zero, zero, osc[0, i], osc[1, i], osc[2, i], osc[3, i], osc[4, i],
            lam, p[0], p[1], p[2], one,
        )  # fmt: skip


_narrow = njit(error_model="numpy", fastmath={"contract"})(_rhs_loop)
_rhs_loop_inline = njit(inline="always", error_model="numpy", fastmath={"contract"})(_rhs_loop)


@njit(error_model="numpy", fastmath={"contract"})
def _wide(out, m, hx, osc, lam, p):
    prefer_wide_vectors()
    _rhs_loop_inline(out, m, hx, osc, lam, p)


@njit(error_model="numpy", fastmath={"contract"})
def _no_overlap(out, m, hx, osc, lam, p):
    arrays_do_not_overlap()
    _rhs_loop_inline(out, m, hx, osc, lam, p)


def _inputs(dtype, n=203):
    rng = np.random.default_rng(5)
    m = rng.standard_normal((3, n))
    m /= np.linalg.norm(m, axis=0)
    osc = np.stack([
        np.full(n, 2000.0), rng.uniform(-300.0, 300.0, n), rng.uniform(50.0, 400.0, n),
        np.full(n, 0.005), np.full(n, 1.76e7),
    ])  # fmt: skip
    hx = rng.uniform(-50.0, 50.0, n)
    p = np.array([0.0, 0.6, 0.8])
    return [np.ascontiguousarray(a, dtype=dtype) for a in (m, hx, osc)] + [dtype(0.288), p.astype(dtype)]


def test_attribute_is_set_on_the_calling_function_only():
    m, hx, osc, lam, p = _inputs(np.float64)
    out = np.empty_like(m)
    _wide(out, m, hx, osc, lam, p)
    _narrow(out, m, hx, osc, lam, p)
    attribute = f'"prefer-vector-width"="{VECTOR_WIDTH_BITS}"'
    assert any(attribute in ir for ir in _wide.inspect_llvm().values())
    assert not any(attribute in ir for ir in _narrow.inspect_llvm().values())


def test_wide_vectors_give_the_same_bits_and_use_512_bit_registers_where_the_cpu_has_them():
    for dtype in (np.float64, np.float32):
        m, hx, osc, lam, p = _inputs(dtype)
        wide, narrow = np.empty_like(m), np.empty_like(m)
        _wide(wide, m, hx, osc, lam, p)
        _narrow(narrow, m, hx, osc, lam, p)
        assert np.array_equal(wide, narrow)
        assert np.all(np.isfinite(wide)) and np.max(np.abs(wide)) > 0.0
    if "+avx512f" in llvm.get_host_cpu_features().flatten():
        assert any("zmm" in asm for asm in _wide.inspect_asm().values())
        assert not any("zmm" in asm for asm in _narrow.inspect_asm().values())


def test_the_stage_kernels_carry_the_attribute():
    m, hx, osc, lam, p = _inputs(np.float64)
    m3 = np.ascontiguousarray(m[:, None, :])
    h = np.ascontiguousarray(hx[None, :])
    zero = np.zeros_like(h)
    acc, nxt = np.zeros_like(m3), np.empty_like(m3)
    fresh = njit(error_model="numpy", fastmath={"contract"})(stage_accumulate.py_func)  # not from the cache
    fresh(m3, m3, h, zero, zero, osc, lam, p, 1e-12, 0.0, 1.0, acc, nxt)
    assert any('"prefer-vector-width"' in ir for ir in fresh.inspect_llvm().values())


def _define_line(dispatcher) -> str:
    (signature,) = [sig for sig in dispatcher.signatures if str(sig[0].dtype) == "float64"]
    ir = dispatcher.inspect_llvm(signature)
    name = dispatcher.overloads[signature].fndesc.mangled_name
    return next(line for line in ir.splitlines() if line.startswith("define") and name in line)


def test_no_overlap_marks_only_the_float_data_pointers():
    m, hx, osc, lam, p = _inputs(np.float64)
    out, ref = np.empty_like(m), np.empty_like(m)
    _no_overlap(out, m, hx, osc, lam, p)
    _narrow(ref, m, hx, osc, lam, p)
    assert np.array_equal(out, ref)
    marked = _define_line(_no_overlap).count("noalias") - _define_line(_narrow).count("noalias")
    # four float arrays (out, m, hx, osc) and p: five data pointers, not their meminfo or parent pointers
    assert marked == 5
