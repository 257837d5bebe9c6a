"""The RK4 stage kernels the gradient's kept plan uses, against the general ones and the formula.

``stage_next`` (a stage state without the stages' sum) must give ``stage_accumulate``'s next state bit for bit,
and ``stage_final_keep_norm`` ``stage_final``'s projected state bit for bit plus 1/|u| (the gradient's plans are
compared bitwise, so these must be exact, not close). 1/|u| is checked against u computed in float64 from
``llg_rhs_batch``'s right-hand side.
"""

from __future__ import annotations

import numpy as np
import pytest

from stosim.config import load_device
from stosim.physics.array import STOArray
from stosim.physics.llg import llg_rhs_batch, stage_accumulate, stage_final, stage_final_keep_norm, stage_next

BATCH, N = 5, 37  # N not a multiple of a vector: the loops' remainders run too


def _inputs(dtype, seed=0):
    rng = np.random.default_rng(seed)
    array = STOArray.generate(load_device(), N, 500.0, seed=1)
    unit = rng.standard_normal((3, BATCH, N))
    m = (unit / np.linalg.norm(unit, axis=0)).astype(dtype)
    ms = m + (1e-3 * rng.standard_normal((3, BATCH, N))).astype(dtype)
    hx = (300.0 * rng.standard_normal((BATCH, N))).astype(dtype)
    acc = (1e9 * rng.standard_normal((3, BATCH, N))).astype(dtype)
    osc = np.ascontiguousarray(array.oscillator_parameters(), dtype=dtype)
    p = np.asarray(array.device.reference_direction, dtype=dtype)
    lam = dtype(array.device.torque_asymmetry)
    return m, ms, hx, acc, osc, p, lam


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_stage_next_is_stage_accumulates_next_state_bitwise(dtype):
    m, ms, hx, acc, osc, p, lam = _inputs(dtype)
    zero = np.zeros((BATCH, N), dtype)
    a_next = dtype(0.5e-12)
    expected = np.empty_like(m)
    stage_accumulate(m, ms, hx, zero, zero, osc, lam, p, a_next, dtype(1.0), dtype(1.0 / 3.0), acc.copy(), expected)
    got = np.empty_like(m)
    stage_next(m, ms, hx, osc, lam, p, a_next, got)
    assert np.array_equal(got, expected)
    # and it is m + a f(ms): against the right-hand side evaluated on its own (float64)
    f = llg_rhs_batch(ms.astype(np.float64), hx.astype(np.float64), osc.astype(np.float64), float(lam), p.astype(float))
    tol = 1e-15 if dtype == np.float64 else 1e-6
    assert np.max(np.abs(got - (m.astype(np.float64) + float(a_next) * f))) < tol


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_stage_final_keep_norm_is_stage_final_bitwise_and_keeps_one_over_the_norm(dtype):
    m, ms, hx, acc, osc, p, lam = _inputs(dtype, seed=1)
    zero = np.zeros((BATCH, N), dtype)
    dt, w = dtype(1e-12), dtype(1.0 / 6.0)
    expected = np.empty_like(m)
    assert stage_final(m, ms, hx, zero, zero, osc, lam, p, dt, w, acc, expected) == -1
    got, inv = np.empty_like(m), np.empty((BATCH, N), dtype)
    assert stage_final_keep_norm(m, ms, hx, osc, lam, p, dt, w, acc, got, inv) == -1
    assert np.array_equal(got, expected)
    f = llg_rhs_batch(ms.astype(np.float64), hx.astype(np.float64), osc.astype(np.float64), float(lam), p.astype(float))
    u = m.astype(np.float64) + float(dt) * (acc.astype(np.float64) + float(w) * f)
    tol = 1e-14 if dtype == np.float64 else 1e-6
    assert np.max(np.abs(inv * np.linalg.norm(u, axis=0) - 1.0)) < tol
    assert np.all(np.isfinite(inv))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_stage_final_keep_norm_reports_the_first_failed_oscillator_as_stage_final_does(dtype):
    m, ms, hx, acc, osc, p, lam = _inputs(dtype, seed=2)
    ms[1, 3, 11] = np.nan
    zero = np.zeros((BATCH, N), dtype)
    dt, w = dtype(1e-12), dtype(1.0 / 6.0)
    out = np.empty_like(m)
    expected = stage_final(m, ms, hx, zero, zero, osc, lam, p, dt, w, acc, out)
    assert expected == 3 * N + 11
    assert stage_final_keep_norm(m, ms, hx, osc, lam, p, dt, w, acc, out, np.empty((BATCH, N), dtype)) == expected
