"""Numba vs torch, TMR readout, noise SNR, float32, and clear errors on bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stosim.config import spin_torque_field_oe
from stosim.physics.array import STOArray, Variability
from stosim.physics.llg import OSC_TORQUE_FIELD_OE, llg_rhs_batch
from stosim.physics.tmr import current_at_bias_voltage_a, resistance_ohm, voltage_at_bias_current_v
from stosim.physics.torch_llg import llg_rhs_torch, rk4_step_torch
from stosim.simulation import NoiseSettings, SimulationDivergedError, evolve, simulate


def _state(n: int, batch: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((batch, n, 3))
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_numba_and_torch_rhs_and_trajectories_agree(device):
    """N = 50, mu = 500 Oe: right-hand sides to 1e-13 relative, 1000 RK4 steps to 1e-12 (float64)."""
    n, batch = 50, 3
    array = STOArray.generate(device, n, 500.0, seed=7)
    m0 = _state(n, batch, 0)
    osc = array.oscillator_parameters()
    p = np.asarray(device.reference_direction)
    hx = m0[..., 0] @ array.coupling_transposed_oe()
    f_numba = llg_rhs_batch(np.ascontiguousarray(m0.transpose(2, 0, 1)), hx, osc, device.torque_asymmetry, p)
    ct = torch.as_tensor(array.coupling_transposed_oe())
    f_torch = llg_rhs_torch(torch.as_tensor(m0), ct, torch.as_tensor(osc), device.torque_asymmetry, torch.as_tensor(p))
    scale = np.max(np.abs(f_numba))
    assert np.max(np.abs(f_numba.transpose(1, 2, 0) - f_torch.numpy())) < 1e-13 * scale

    final, _, _ = evolve(array, m0, 1000, 1e-12)
    m = torch.as_tensor(m0)
    with torch.no_grad():
        for _ in range(1000):
            m = rk4_step_torch(m, 1e-12, ct, torch.as_tensor(osc), device.torque_asymmetry, torch.as_tensor(p))
    assert np.max(np.abs(final - m.numpy())) < 1e-12


def test_float32_tracks_float64(device):
    array = STOArray.generate(device, 20, 500.0, seed=1)
    m0 = _state(20, 4, 1)
    f64, _, _ = evolve(array, m0, 300, 1e-12)
    f32, _, _ = evolve(array, m0, 300, 1e-12, dtype=np.float32)
    assert f32.dtype == np.float32
    assert np.max(np.abs(f64 - f32)) < 1e-4
    assert np.max(np.abs(np.linalg.norm(f32, axis=-1) - 1)) < 1e-6


def test_batch_is_independent_of_its_companions(device):
    """A sample's trajectory does not depend on the other samples in the batch (parallel chunks)."""
    array = STOArray.generate(device, 40, 500.0, seed=1)
    m0 = _state(40, 200, 2)
    full, _, _ = evolve(array, m0, 200, 1e-12)
    part, _, _ = evolve(array, m0[17:18], 200, 1e-12)
    np.testing.assert_allclose(full[17], part[0], rtol=0, atol=1e-13)


def test_tmr_endpoints_and_monotonicity(device):
    r_p, tmr = device.parallel_resistance_ohm, device.tmr_ratio
    assert resistance_ohm(1.0, r_p, tmr) == pytest.approx(r_p, rel=1e-15)
    assert resistance_ohm(-1.0, r_p, tmr) == pytest.approx(r_p * (1 + tmr), rel=1e-15)
    mp = np.linspace(-1, 1, 101)
    r = resistance_ohm(mp, r_p, tmr)
    assert np.all(np.diff(r) < 0)
    np.testing.assert_allclose(np.diff(r, 2), 0, atol=1e-10)  # affine in m.p
    np.testing.assert_allclose(voltage_at_bias_current_v(mp, r_p, tmr, 2e-3), 2e-3 * r, rtol=1e-15)
    np.testing.assert_allclose(current_at_bias_voltage_a(mp, r_p, tmr, 0.3), 0.3 / r, rtol=1e-15)


def test_trajectory_tmr_voltage_is_the_readout_of_m(device):
    array = STOArray.generate(device, 5, 300.0, seed=1)
    traj = simulate(array, _state(5, 1, 3)[0], 50e-12, 1e-12, save_every=5)
    expected = voltage_at_bias_current_v(
        traj.m[..., 0], device.parallel_resistance_ohm, device.tmr_ratio, device.current_a
    )
    np.testing.assert_allclose(traj.tmr_voltage_v, expected, rtol=1e-15)


def test_tmr_voltage_uses_each_devices_own_current_under_variability(device):
    """With current variability device i is driven by I_i = I (1 + s xi_i) (its spin-torque field H_s0,i is
    proportional to I_i), so its output is V_i = I_i R(m_i), not I R(m_i); float64, 1e-14 relative."""
    array = STOArray.generate(device, 5, 300.0, seed=1, variability=Variability(current=0.2, seed=4))
    traj = simulate(array, _state(5, 1, 3)[0], 20e-12, 1e-12, save_every=5)
    currents = (
        device.current_a
        * array.oscillator_parameters()[OSC_TORQUE_FIELD_OE]
        / spin_torque_field_oe(device, device.current_a)
    )
    assert np.ptp(currents) > 0.05 * device.current_a  # the devices do differ
    expected = voltage_at_bias_current_v(traj.m[..., 0], device.parallel_resistance_ohm, device.tmr_ratio, currents)
    np.testing.assert_allclose(traj.tmr_voltage_v, expected, rtol=1e-14)


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 25.0])
def test_observation_noise_has_the_requested_snr(device, snr_db):
    array = STOArray.generate(device, 30, 500.0, seed=1)
    clean = simulate(array, _state(30, 1, 4)[0], 2e-9, 1e-12, save_every=2)
    noisy = simulate(array, _state(30, 1, 4)[0], 2e-9, 1e-12, save_every=2, observation_snr_db=snr_db, seed=3)
    for got, ref in ((noisy.m, clean.m), (noisy.tmr_voltage_v, clean.tmr_voltage_v)):
        measured = 10 * np.log10(np.var(ref) / np.var(got - ref))
        assert measured == pytest.approx(snr_db, abs=0.2)
    np.testing.assert_array_equal(noisy.final_state, clean.final_state)  # observation does not disturb the run


@pytest.mark.parametrize("snr_db", [10.0, 30.0])
def test_dynamical_noise_has_the_requested_snr_and_stays_on_the_sphere(device, snr_db):
    array = STOArray.generate(device, 50, 500.0, seed=1)
    m0 = _state(50, 8, 5)
    final, saved, measured = evolve(
        array, m0, 500, 1e-12, noise=NoiseSettings(dynamical_snr_db=snr_db), seed=2, save_every=50
    )
    assert measured == pytest.approx(snr_db, abs=0.2)
    assert np.max(np.abs(np.linalg.norm(saved, axis=-1) - 1)) < 1e-14
    again, _, _ = evolve(array, m0, 500, 1e-12, noise=NoiseSettings(dynamical_snr_db=snr_db), seed=2)
    np.testing.assert_array_equal(final, again)
    clean, _, _ = evolve(array, m0, 500, 1e-12)
    assert np.max(np.abs(final - clean)) > 1e-3
    off, _, _ = evolve(array, m0, 500, 1e-12, noise=NoiseSettings(dynamical_snr_db=float("inf")))
    np.testing.assert_array_equal(off, clean)


def test_bad_input_gets_clear_errors(device):
    array = STOArray.generate(device, 4, 500.0, seed=1)
    m0 = _state(4, 1, 0)[0]
    with pytest.raises(ValueError, match=r"dt = .* must be a finite number > 0"):
        simulate(array, m0, 1e-9, 0.0)
    with pytest.raises(ValueError, match=r"dt = .* must be a finite number > 0"):
        simulate(array, m0, 1e-9, -1e-12)
    with pytest.raises(ValueError, match=r"duration = .* must be a finite number > 0"):
        simulate(array, m0, 0.0, 1e-12)
    with pytest.raises(ValueError, match=r"whole multiple"):
        simulate(array, m0, 1.5e-12, 1e-12)
    with pytest.raises(ValueError, match=r"initial_state has shape \(3, 3\).*N = 4"):
        simulate(array, m0[:3], 1e-9, 1e-12)
    bad = m0.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"not finite at sample 0, oscillator 2"):
        simulate(array, bad, 1e-9, 1e-12)
    with pytest.raises(ValueError, match=r"zero vector at sample 0, oscillator 1"):
        simulate(array, np.vstack([m0[:1], [[0, 0, 0]], m0[2:]]), 1e-9, 1e-12)
    with pytest.raises(ValueError, match=r"coupling_matrix has shape \(3, 3\).*\(4, 4\)"):
        STOArray(device, 4, 100.0, np.zeros((3, 3)), device.current_a)
    w = np.zeros((4, 4))
    w[1, 2] = np.inf
    with pytest.raises(ValueError, match=r"non-finite entry at \(1, 2\)"):
        STOArray.with_matrix(device, w, 100.0)
    with pytest.raises(ValueError, match=r"n_oscillators = 0"):
        STOArray.generate(device, 0, 100.0)
    with pytest.raises(ValueError, match=r"temperature = -1.0 K"):
        NoiseSettings(temperature_k=-1.0)
    with pytest.raises(ValueError, match=r"dtype"):
        evolve(array, m0, 10, 1e-12, dtype=np.int32)
    with pytest.raises(ValueError, match=r"save_every"):
        simulate(array, m0, 1e-11, 1e-12, save_every=0)


def test_non_finite_state_during_a_run_raises_with_step_and_oscillator(device, monkeypatch):
    """Fields beyond float range (a measured W in wrong units, say): the step-size check refuses
    them before any work; past it, the kernel's own check stops the run at the first step whose
    state overflowed and names where, instead of spreading NaN or zeros."""
    import stosim.simulation

    w = np.zeros((6, 6))
    w[3, 0] = 1e200  # oscillator 3 feels an absurd field (its stage values then reach every other one)
    array = STOArray.with_matrix(device, w, 1.0)
    with pytest.raises(ValueError, match=r"dt = 1e-12 s is too large for this array"):
        evolve(array, _state(6, 1, 0), 50, 1e-12)
    monkeypatch.setattr(stosim.simulation, "check_time_step", lambda array, dt_s: None)  # the safety net below it
    with pytest.raises(SimulationDivergedError, match=r"non-finite at step 1 .* sample 0, oscillator \d"):
        evolve(array, _state(6, 1, 0), 50, 1e-12)
    w[3, 0] = 1e308
    with pytest.raises(ValueError, match=r"mu W must be finite"):
        STOArray.with_matrix(device, w, 10.0)


def test_explicit_coupling_matrix_from_npy(device, tmp_path):
    w = np.random.default_rng(0).uniform(-1, 1, (6, 6))
    path = tmp_path / "w.npy"
    np.save(path, w)
    array = STOArray.with_matrix(device, path, 100.0)
    np.testing.assert_array_equal(array.coupling_matrix, w)  # used as it is, not rescaled
    np.save(path, w[:, :5])
    with pytest.raises(ValueError, match="square"):
        STOArray.with_matrix(device, path, 100.0)


def test_generated_coupling_matrix_properties(device):
    array = STOArray.generate(device, 100, 1.0, seed=3)
    w = array.coupling_matrix
    assert np.all(np.diag(w) == 0)
    assert np.max(np.abs(np.linalg.eigvals(w))) == pytest.approx(1.0, rel=1e-12)
    np.testing.assert_array_equal(w, STOArray.generate(device, 100, 1.0, seed=3).coupling_matrix)
    assert not np.array_equal(w, STOArray.generate(device, 100, 1.0, seed=4).coupling_matrix)
    # entries were uniform in [-1, 1] before the rescaling by one common factor
    ratio = np.abs(w[w != 0]).max() / np.abs(w[w != 0]).min()
    assert ratio > 100
