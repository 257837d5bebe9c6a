"""The batch-1 kernel (stosim.integrate.batch1) against the batched kernel, the matrix product and its options."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from stosim.integrate.batch1 import coupling_field, run_one
from stosim.integrate.sto_kernels import METHOD_RK4, run_chunk
from stosim.physics.array import STOArray
from stosim.simulation import _KERNEL_ARRAYS, check_initial_state, evolve


def _unit(rng, shape):
    v = rng.standard_normal(shape)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _batched(array, m0, n_steps, dt, save_every, coupling_t):
    """The batched (BLAS) kernel run_chunk on one sample, m0 (N, 3): (final (N, 3), saved (S, N, 3))."""
    n = array.n_oscillators
    m = np.ascontiguousarray(m0.T[:, None, :])
    traj = np.zeros((n_steps // save_every, 3, 1, n))
    dummy = np.zeros((1, 3, 1, 1))
    k, bad = run_chunk(
        m,
        coupling_t,
        True,
        np.ascontiguousarray(array.oscillator_parameters()),
        array.device.torque_asymmetry,
        np.asarray(array.device.reference_direction, dtype=np.float64),
        dt,
        n_steps,
        METHOD_RK4,
        save_every,
        0,
        traj,
        dummy,
        False,
        np.zeros(n),
        dummy,
        False,
        0.0,
        np.zeros(3),
    )
    assert (k, bad) == (-1, -1)
    return m[:, 0].T, traj[:, :, 0].transpose(0, 2, 1)


@pytest.mark.parametrize("n", [33, 100, 257])
def test_batch1_agrees_with_the_batched_kernel(device, n):
    """float64, mu = 100 Oe, 40 steps of 5 ps: the two kernels differ only in summation order (<= 1e-12)."""
    array = STOArray.generate(device, n, 100.0, seed=2)
    m0 = _unit(np.random.default_rng(n), (n, 3))
    final, saved, _ = evolve(array, m0, 40, 5e-12, save_every=5)  # batch 1, N > 32: run_one
    ref_final, ref_saved = _batched(array, m0, 40, 5e-12, 5, np.ascontiguousarray(array.coupling_transposed_oe()))
    assert np.max(np.abs(final[0] - ref_final)) < 1e-12
    assert np.max(np.abs(saved[:, 0] - ref_saved)) < 1e-12
    assert np.max(np.abs(final[0] - m0)) > 1e-2  # it moved


@pytest.mark.parametrize("n", [1, 7, 8, 9, 33, 100])
@pytest.mark.parametrize("cdtype", [np.float64, np.float32])
def test_coupling_field_is_the_matrix_product(n, cdtype):
    """h = s @ C in blocks of 8 rows (and the remaining rows): the product to round-off, float32 C promoted."""
    rng = np.random.default_rng(n)
    ct = rng.standard_normal((n, n)).astype(cdtype)
    s = rng.standard_normal(n)
    hx = np.full(n, np.nan)
    coupling_field(s, ct, True, hx)
    ref = s @ ct.astype(np.float64)
    scale = np.abs(s) @ np.abs(ct.astype(np.float64))  # sum_j |s_j C_ji|: the round-off scale of each h_i
    assert np.all(np.abs(hx - ref) <= 1e-14 * scale)
    coupling_field(s, ct, False, hx)
    assert not hx.any()


def test_float32_coupling_is_w_rounded_to_float32(device):
    """coupling_dtype=float32 is the same model on every path (W rounded to float32): the batch-1 kernel and
    the batched kernel agree to 1e-12; against float64 W it differs, by much less than the motion."""
    n = 64
    array = STOArray.generate(device, n, 500.0, seed=4)
    m0 = _unit(np.random.default_rng(0), (n, 3))
    one, _, _ = evolve(array, m0, 20, 1e-11, coupling_dtype="float32")
    ct32 = np.ascontiguousarray(array.coupling_transposed_oe().astype(np.float32).astype(np.float64))
    ref, _ = _batched(array, m0, 20, 1e-11, 20, ct32)
    assert np.max(np.abs(one[0] - ref)) < 1e-12
    both, _, _ = evolve(array, np.stack([m0, m0]), 20, 1e-11, coupling_dtype=np.float32)  # batched path
    assert np.max(np.abs(both[0] - ref)) < 1e-12
    f64, _, _ = evolve(array, m0, 20, 1e-11)
    # measured 1.5e-8..2.5e-8 after 10 steps at N = 33..100, mu = 500 Oe
    assert 0 < np.max(np.abs(one - f64)) < 1e-6


def test_coupling_dtype_is_checked(device):
    array = STOArray.generate(device, 40, 100.0, seed=1)
    m0 = initial = _unit(np.random.default_rng(1), (40, 3))
    for bad in ("float16", np.int32, "W"):
        with pytest.raises(ValueError, match="coupling_dtype"):
            evolve(array, m0, 2, 1e-12, coupling_dtype=bad)
    with pytest.raises(ValueError, match="coupling_dtype"):  # wider than the state
        evolve(array, initial, 2, 1e-12, dtype=np.float32, coupling_dtype=np.float64)


def test_float32_state_through_the_batch1_kernel(device):
    array = STOArray.generate(device, 48, 300.0, seed=5)
    m0 = _unit(np.random.default_rng(2), (48, 3))
    a, _, _ = evolve(array, m0, 100, 1e-11)
    b, _, _ = evolve(array, m0, 100, 1e-11, dtype=np.float32)
    assert b.dtype == np.float32
    assert np.max(np.abs(b - a)) < 1e-4  # float32 round-off (6e-8) over 100 steps


def test_run_one_reports_a_non_finite_state(device):
    array = STOArray.generate(device, 40, 100.0, seed=1)
    m = np.ascontiguousarray(_unit(np.random.default_rng(3), (40, 3)).T[:, None, :])
    m[1, 0, 17] = np.nan
    traj = np.zeros((1, 3, 1, 40))
    k, bad = run_one(
        m,
        np.ascontiguousarray(array.coupling_transposed_oe()),
        True,
        np.ascontiguousarray(array.oscillator_parameters()),
        array.device.torque_asymmetry,
        np.asarray(array.device.reference_direction, dtype=np.float64),
        1e-12,
        5,
        10,
        0,
        traj,
    )
    assert k == 0  # the coupling spreads the NaN to every oscillator within the step; the first is named
    assert 0 <= bad < 40


def test_kernel_arrays_are_cached_per_array_and_dropped_with_it(device):
    array = STOArray.generate(device, 40, 100.0, seed=1)
    m0 = _unit(np.random.default_rng(4), (40, 3))
    first, _, _ = evolve(array, m0, 5, 1e-12)
    assert array in _KERNEL_ARRAYS
    again, _, _ = evolve(array, m0, 5, 1e-12)
    np.testing.assert_array_equal(first, again)
    alive = weakref.ref(array)
    del array
    gc.collect()
    assert alive() is None  # the cache does not keep the array (and its (mu W)^T copies) alive


def test_uncoupled_kernel_agrees_with_the_small_n_kernel(device):
    """Without coupling (mu = 0) one trajectory runs oscillator by oscillator with its state in registers:
    the RK4 of run_small with its right-hand side rearranged (llg_point_short_chain): round-off, <= 1e-13 here."""
    from stosim.integrate.batch1 import run_uncoupled
    from stosim.integrate.sto_kernels import run_small

    n = 6
    array = STOArray.generate(device, n, 0.0, seed=1)
    m0 = np.ascontiguousarray(_unit(np.random.default_rng(6), (n, 3)).T[:, None, :])
    osc = np.ascontiguousarray(array.oscillator_parameters())
    p = np.asarray(array.device.reference_direction, dtype=np.float64)
    lam = array.device.torque_asymmetry
    traj_a, traj_b = np.zeros((4, 3, 1, n)), np.zeros((4, 3, 1, n))
    a, b = m0.copy(), m0.copy()
    assert run_small(a, np.zeros((n, n)), False, osc, lam, p, 1e-11, 2000, 500, 0, traj_a) == (-1, -1)
    assert run_uncoupled(b, osc, lam, p, 1e-11, 2000, 500, 0, traj_b) == (-1, -1)
    assert np.max(np.abs(a - b)) < 1e-13
    assert np.max(np.abs(traj_a - traj_b)) < 1e-13
    assert np.max(np.abs(a - m0)) > 1e-2
    final, _, _ = evolve(array, m0[:, 0].T, 2000, 1e-11)  # evolve routes here, from its normalized start
    start = np.ascontiguousarray(check_initial_state(m0[:, 0].T, n)[0].T[:, None, :])
    assert run_uncoupled(start, osc, lam, p, 1e-11, 2000, 500, 0, traj_b) == (-1, -1)
    np.testing.assert_array_equal(final[0], start[:, 0].T)
    b[2, 0, 3] = np.inf
    assert run_uncoupled(b, osc, lam, p, 1e-11, 5, 500, 0, traj_b) == (0, 3)
