"""The batch-1 kernel (one trajectory, N > 32, one thread or split: stosim.integrate.batch1) against physics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stosim.physics.array import STOArray
from stosim.simulation import evolve, initial_state_from_angles, simulate

N = 40  # > SMALL_N_MAX: a noiseless batch-1 run takes the batch-1 kernel


def test_undamped_precession_of_uncoupled_oscillators(device):
    """alpha = 0, I = 0, mu = 0: every m_z is conserved and oscillator i precesses about +z at
    f_i = gamma/(2 pi)(H_appl + H_K' m_z,i), each at its own angle."""
    dev = device.replace(damping=0.0, current_a=0.0)
    array = STOArray.generate(dev, N, 0.0, seed=0)
    thetas = np.linspace(10.0, 80.0, N)
    m0 = np.concatenate([initial_state_from_angles(1, t, 0.0) for t in thetas])
    traj = simulate(array, m0, 2e-9, 1e-12, save_every=1)
    m = traj.m[:, 0]
    mz0 = np.cos(np.radians(thetas))
    assert np.max(np.abs(m[:, :, 2] - mz0)) < 1e-10  # RK4 at 1 ps keeps m_z to ~1e-12
    for i in (0, N // 2, N - 1):
        phase = np.unwrap(np.arctan2(m[:, i, 1], m[:, i, 0]))
        slope = np.polyfit(traj.time_s, phase, 1)[0]
        f = (
            dev.gyromagnetic_ratio_rad_per_oe_s
            / (2 * math.pi)
            * (dev.applied_field_oe + dev.effective_anisotropy_field_oe * mz0[i])
        )
        assert slope / (2 * math.pi) == pytest.approx(f, rel=1e-9)


def test_rk4_is_fourth_order_on_a_coupled_array(device):
    """Halving dt divides the global error by ~16 (N = 40, mu = 500 Oe, one trajectory)."""
    _assert_fourth_order(STOArray.generate(device, N, 500.0, seed=3))


def _assert_fourth_order(array: STOArray) -> np.ndarray:
    """Global errors at 50-400 steps over 0.4 ns against 3200 steps shrink ~16x per halving; returns the reference."""
    m0 = np.random.default_rng(1).standard_normal((array.n_oscillators, 3))
    duration = 0.4e-9
    ref, _, _ = evolve(array, m0, 3200, duration / 3200)
    errors = [np.max(np.abs(evolve(array, m0, n, duration / n)[0] - ref)) for n in (50, 100, 200, 400)]
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(np.abs(orders - 4) < 0.3), (errors, orders)
    return ref


def test_norm_is_kept_and_zero_coupling_is_the_uncoupled_dynamics(device):
    rng = np.random.default_rng(4)
    m0 = rng.standard_normal((N, 3))
    traj = simulate(STOArray.generate(device, N, 500.0, seed=2), m0, 5e-9, 1e-12, save_every=100)
    assert np.max(np.abs(np.linalg.norm(traj.m, axis=-1) - 1)) < 4e-16 * 4
    uncoupled, _, _ = evolve(STOArray.generate(device, N, 0.0, seed=9), m0, 1000, 1e-12)
    singles = np.stack(
        [evolve(STOArray.generate(device, 1, 0.0), m0[i : i + 1], 1000, 1e-12)[0][0, 0] for i in range(N)]
    )
    # one trajectory of 40 uncoupled oscillators and 40 single ones: the same arithmetic, to round-off
    assert np.max(np.abs(uncoupled[0] - singles)) < 1e-12


def test_two_thread_trajectory_is_fourth_order_and_keeps_the_norm(device, monkeypatch):
    """The split step (stosim.integrate.batch1_threads, N = 264 on two threads every chunk): halving dt
    divides the global error by ~16, and |m| = 1 to round-off."""
    import stosim.simulation
    from stosim.integrate.batch1_threads import OneTrajectoryRunner

    class TwoThreads(OneTrajectoryRunner):
        def __init__(self, n_osc, max_threads):
            super().__init__(n_osc, 2)
            self.threads = 2

        def _next(self):
            return 2, 10_000

    monkeypatch.setattr(stosim.simulation, "_OneTrajectoryRunner", TwoThreads)
    ref = _assert_fourth_order(STOArray.generate(device, 264, 200.0, seed=3))  # 500 Oe: dt = 8 ps too large
    assert np.max(np.abs(np.linalg.norm(ref, axis=-1) - 1)) < 4e-16 * 4
