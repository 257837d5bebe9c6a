"""The device layer against physics (docs/physics.md section 7), float64, with stated tolerances."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, optimize

from stosim.constants import BOLTZMANN_ERG_K
from stosim.physics.array import STOArray, check_time_step
from stosim.physics.llg import llg_rhs_batch
from stosim.simulation import NoiseSettings, evolve, initial_state_from_angles, simulate


def _single(device, **changes) -> STOArray:
    dev = device.replace(**changes) if changes else device
    return STOArray.generate(dev, 1, 0.0, seed=0)


def test_undamped_precession_frequency_and_conserved_mz(device):
    """alpha = 0, I = 0: m_z is conserved and m precesses about +z at f = gamma/(2 pi)(H_appl + H_K' m_z)."""
    dev = device.replace(damping=0.0, current_a=0.0)
    array = STOArray.generate(dev, 1, 0.0, seed=0)
    theta = 40.0
    traj = simulate(array, initial_state_from_angles(1, theta, 0.0), 5e-9, 1e-12, save_every=1)
    m = traj.m[:, 0, 0]
    mz0 = math.cos(math.radians(theta))
    # tolerance: RK4 with dt = 1 ps over 5000 steps keeps m_z to ~1e-12
    assert np.max(np.abs(m[:, 2] - mz0)) < 1e-10
    phase = np.unwrap(np.arctan2(m[:, 1], m[:, 0]))
    slope = np.polyfit(traj.time_s, phase, 1)[0]
    f_expected = (
        dev.gyromagnetic_ratio_rad_per_oe_s
        / (2 * math.pi)
        * (dev.applied_field_oe + dev.effective_anisotropy_field_oe * mz0)
    )
    # counter-clockwise about +z (dm/dt = -gamma m x H); relative tolerance 1e-9
    assert slope / (2 * math.pi) == pytest.approx(f_expected, rel=1e-9)


def _mz_closed_form(t: np.ndarray, mz0: float, h_appl: float, hk: float, rate: float) -> np.ndarray:
    """Invert G(m_z(t)) - G(m_z0) = rate t for dm_z/dt = rate (h_appl + hk m_z)(1 - m_z^2).

    Partial fractions: 1/((a + b z)(1 - z)(1 + z)) = b^2/((b^2 - a^2)(a + b z)) + 1/(2 (a + b)(1 - z))
    + 1/(2 (a - b)(1 + z)), so G(z) = b/(b^2 - a^2) ln|a + b z| - ln(1 - z)/(2 (a + b)) + ln(1 + z)/(2 (a - b)).
    """
    a, b = h_appl, hk

    def g(z):
        return (
            b / (b * b - a * a) * math.log(abs(a + b * z))
            - math.log(1 - z) / (2 * (a + b))
            + math.log(1 + z) / (2 * (a - b))
        )

    g0 = g(mz0)
    out = []
    for tk in t:
        target = g0 + rate * tk
        out.append(mz0 if tk == 0 else optimize.brentq(lambda z: g(z) - target, mz0, 1 - 1e-15, xtol=1e-15, rtol=1e-15))
    return np.array(out)


def test_damped_relaxation_of_mz_matches_closed_form(device):
    """I = 0, alpha > 0: dm_z/dt = alpha gamma/(1+alpha^2)(H_appl + H_K' m_z)(1 - m_z^2), solved in closed form."""
    dev = device.replace(damping=0.05, current_a=0.0)
    array = STOArray.generate(dev, 1, 0.0, seed=0)
    mz0 = 0.2
    traj = simulate(
        array, initial_state_from_angles(1, math.degrees(math.acos(mz0)), 30.0), 8e-9, 1e-12, save_every=100
    )
    rate = dev.damping * dev.gyromagnetic_ratio_rad_per_oe_s / (1 + dev.damping**2)
    expected = _mz_closed_form(traj.time_s, mz0, dev.applied_field_oe, dev.effective_anisotropy_field_oe, rate)
    assert expected[-1] > 0.99  # the run covers the whole relaxation
    # tolerance: RK4 global error at dt = 1 ps is ~1e-11 here
    np.testing.assert_allclose(traj.m[:, 0, 0, 2], expected, atol=1e-9, rtol=0)


def _fixed_point(array: STOArray, guess: np.ndarray) -> np.ndarray:
    osc = array.oscillator_parameters()
    p = np.asarray(array.device.reference_direction)
    lam = array.device.torque_asymmetry

    def to_m(angles):
        th, ph = angles
        return np.array([math.sin(th) * math.cos(ph), math.sin(th) * math.sin(ph), math.cos(th)])

    def residual(angles):
        m = to_m(angles).reshape(3, 1, 1)
        f = llg_rhs_batch(m, np.zeros((1, 1)), osc, lam, p)[:, 0, 0]
        th, ph = angles
        e_th = np.array([math.cos(th) * math.cos(ph), math.cos(th) * math.sin(ph), -math.sin(th)])
        e_ph = np.array([-math.sin(ph), math.cos(ph), 0.0])
        return [f @ e_th / 1e9, f @ e_ph / 1e9]

    th0 = math.acos(guess[2])
    ph0 = math.atan2(guess[1], guess[0])
    sol = optimize.fsolve(residual, [th0, ph0], xtol=1e-12)
    return to_m(sol)


def _tangent_jacobian_growth_rate(array: STOArray, m_star: np.ndarray) -> float:
    """Real part of the eigenvalues of the linearized flow at m* in its tangent plane (1/s)."""
    osc = array.oscillator_parameters()
    p = np.asarray(array.device.reference_direction)
    lam = array.device.torque_asymmetry
    e1 = np.cross(m_star, [0.0, 0.0, 1.0] if abs(m_star[2]) < 0.9 else [1.0, 0.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(m_star, e1)
    f = lambda m: llg_rhs_batch(m.reshape(3, 1, 1), np.zeros((1, 1)), osc, lam, p)[:, 0, 0]  # noqa: E731
    h = 1e-7
    jac = np.empty((2, 2))
    for j, e in enumerate((e1, e2)):
        d = (f(m_star + h * e) - f(m_star - h * e)) / (2 * h)
        jac[:, j] = [d @ e1, d @ e2]
    return float(np.max(np.linalg.eigvals(jac).real))


@pytest.mark.parametrize("ratio", [0.5, 1.5, 2.0])
def test_critical_current_and_growth_rate(device, ratio):
    """Near the stable state, small precession grows at alpha gamma (H_appl + H_K')(I/I_c - 1).

    The formula is the leading order in the cone angle and in H_s0/(H_appl + H_K') (the
    in-plane torque tilts the fixed point by ~H_s0/H); at these currents the exact
    linearization differs from it by < 1 %: tolerance 2 % of alpha gamma (H_appl + H_K').
    """
    i_c = device.critical_current_a
    assert i_c == pytest.approx(
        4
        * device.damping
        * 1.602176634e-19
        * device.saturation_magnetization_emu_cm3
        * device.volume_cm3
        * (device.applied_field_oe + device.effective_anisotropy_field_oe)
        / (1.054571817e-27 * device.polarization * device.torque_asymmetry),
        rel=1e-9,
    )
    array = STOArray.generate(device, 1, 0.0, seed=0, current_a=ratio * i_c)
    m_star = _fixed_point(array, np.array([0.0, 0.0, 1.0]))
    scale = (
        device.damping
        * device.gyromagnetic_ratio_rad_per_oe_s
        * (device.applied_field_oe + device.effective_anisotropy_field_oe)
    )
    sigma = _tangent_jacobian_growth_rate(array, m_star)
    print(f"I/I_c = {ratio}: growth rate {sigma:.5g} 1/s, formula {scale * (ratio - 1):.5g} 1/s")
    assert sigma == pytest.approx(scale * (ratio - 1), abs=0.02 * scale)
    assert np.sign(sigma) == np.sign(ratio - 1)

    # the simulated deviation from m* grows/decays at sigma (envelope over whole periods)
    period = (
        2
        * math.pi
        / (device.gyromagnetic_ratio_rad_per_oe_s * (device.applied_field_oe + device.effective_anisotropy_field_oe))
    )
    m0 = m_star + 1e-4 * np.cross(m_star, [1.0, 0.0, 0.0])
    m0 /= np.linalg.norm(m0)
    duration = 2e-9
    traj = simulate(array, m0[None], duration, 1e-12, save_every=1)
    dist = np.linalg.norm(traj.m[:, 0, 0] - m_star, axis=-1)
    n_per = int(round(period / 1e-12))
    n_periods = dist.size // n_per
    env = np.array([np.sqrt(np.mean(dist[k * n_per : (k + 1) * n_per] ** 2)) for k in range(n_periods)])
    slope = np.polyfit(np.arange(n_periods) * n_per * 1e-12, np.log(env), 1)[0]
    assert slope == pytest.approx(sigma, abs=0.02 * scale)


def test_rk4_is_fourth_order(device):
    """Halving dt divides the global error by ~16 (coupled array, N = 8, mu = 500 Oe)."""
    array = STOArray.generate(device, 8, 500.0, seed=3)
    rng = np.random.default_rng(1)
    m0 = rng.standard_normal((8, 3))
    duration = 0.4e-9
    ref, _, _ = evolve(array, m0, 3200, duration / 3200)
    errors = []
    for n in (50, 100, 200, 400):
        final, _, _ = evolve(array, m0, n, duration / n)
        errors.append(np.max(np.abs(final - ref)))
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    # observed orders 4 +/- 0.3 on nested steps (8, 4, 2, 1 ps)
    assert np.all(np.abs(orders - 4) < 0.3), (errors, orders)


def test_norm_is_kept_to_round_off(device):
    array = STOArray.generate(device, 20, 500.0, seed=2)
    rng = np.random.default_rng(0)
    traj = simulate(array, rng.standard_normal((20, 3)), 20e-9, 1e-12, save_every=100)
    assert np.max(np.abs(np.linalg.norm(traj.m, axis=-1) - 1)) < 4e-16 * 4


def test_zero_coupling_is_exactly_the_uncoupled_dynamics(device):
    n = 5
    rng = np.random.default_rng(4)
    m0 = rng.standard_normal((n, 3))
    coupled_off = STOArray.generate(device, n, 0.0, seed=9)
    zero_w = STOArray.with_matrix(device, np.zeros((n, n)), 800.0)
    a, _, _ = evolve(coupled_off, m0, 2000, 1e-12)
    b, _, _ = evolve(zero_w, m0, 2000, 1e-12)
    singles = np.stack(
        [evolve(STOArray.generate(device, 1, 0.0), m0[i : i + 1], 2000, 1e-12)[0][0, 0] for i in range(n)]
    )
    np.testing.assert_array_equal(a[0], singles)
    np.testing.assert_array_equal(b[0], singles)
    # and a nonzero coupling does change the dynamics
    c, _, _ = evolve(STOArray.generate(device, n, 500.0, seed=9), m0, 2000, 1e-12)
    assert np.max(np.abs(c[0] - singles)) > 1e-2


def _boltzmann_moments(dev, temperature_k: float) -> tuple[float, float]:
    """<1 - m_z> and <(1 - m_z)^2> for p(m_z) ~ exp(M V (H_appl m_z + H_K' m_z^2 / 2) / (k_B T)) on [-1, 1]."""
    beta_mv = dev.saturation_magnetization_emu_cm3 * dev.volume_cm3 / (BOLTZMANN_ERG_K * temperature_k)
    h, hk = dev.applied_field_oe, dev.effective_anisotropy_field_oe
    # energy measured from m_z = 1 for numerical safety
    w = lambda z: math.exp(beta_mv * (h * (z - 1) + hk * (z * z - 1) / 2))  # noqa: E731
    norm = integrate.quad(w, -1, 1, points=[1 - 1e-3], epsabs=0, epsrel=1e-12, limit=200)[0]
    m1 = integrate.quad(lambda z: (1 - z) * w(z), -1, 1, epsabs=0, epsrel=1e-12, limit=200)[0] / norm
    m2 = integrate.quad(lambda z: (1 - z) ** 2 * w(z), -1, 1, epsabs=0, epsrel=1e-12, limit=200)[0] / norm
    return m1, m2


def test_thermal_equilibrium_matches_boltzmann(device):
    """Fluctuation-dissipation: at I = 0, independent devices reach p(m_z) ~ exp(-E/k_B T).

    Small device (r = 20 nm, d = 1 nm) with alpha = 0.1 so that the distribution is broad and
    relaxes in ~1 ns. 4000 devices x 4 snapshots; tolerance 4 standard errors of the mean
    (a thermal field off by sqrt(2) in amplitude moves <1 - m_z> by ~100 %).
    """
    dev = device.replace(damping=0.1, current_a=0.0, radius_cm=20e-7, thickness_cm=1e-7)
    temperature = 300.0
    n = 4000
    array = STOArray.generate(dev, 1, 0.0, seed=0)
    m0 = np.tile([0.0, 0.0, 1.0], (n, 1, 1))  # a batch of n independent devices
    _, saved, _ = evolve(
        array, m0, 12000, 1e-12, noise=NoiseSettings(temperature_k=temperature), seed=5, save_every=2000
    )
    samples = 1 - saved[2:, :, 0, 2]  # snapshots at 6, 8, 10, 12 ns, after the relaxation
    m1, m2 = _boltzmann_moments(dev, temperature)
    print(
        f"<1 - m_z>: simulated {samples.mean():.5g}, Boltzmann {m1:.5g}; "
        f"<(1 - m_z)^2>: simulated {(samples**2).mean():.5g}, Boltzmann {m2:.5g}"
    )
    sem = samples.std() / math.sqrt(samples.size / 2)  # snapshots 2 ns apart: correlation time ~1 ns
    assert samples.mean() == pytest.approx(m1, abs=4 * sem)
    sem2 = (samples**2).std() / math.sqrt(samples.size / 2)
    assert (samples**2).mean() == pytest.approx(m2, abs=4 * sem2)
    # the same seed reproduces the same noisy run; another seed does not
    again = evolve(array, m0, 200, 1e-12, noise=NoiseSettings(temperature_k=temperature), seed=5)[0]
    first = evolve(array, m0, 200, 1e-12, noise=NoiseSettings(temperature_k=temperature), seed=5)[0]
    other = evolve(array, m0, 200, 1e-12, noise=NoiseSettings(temperature_k=temperature), seed=6)[0]
    np.testing.assert_array_equal(again, first)
    assert np.max(np.abs(other - first)) > 1e-3


def test_auto_oscillation_above_critical_current(device):
    """Above I_c the free layer leaves the stable state and settles on a large precession orbit."""
    array = STOArray.generate(device, 1, 0.0, seed=0)  # I = 2.5 mA, about 6 I_c
    traj = simulate(array, initial_state_from_angles(1, 5.0, 0.0), 20e-9, 1e-12, save_every=10)
    late = traj.m[-500:, 0, 0]
    assert late[:, 0].max() - late[:, 0].min() > 0.5  # large m_x oscillation -> TMR signal
    below = STOArray.generate(device, 1, 0.0, seed=0, current_a=0.5 * device.critical_current_a)
    traj_b = simulate(below, initial_state_from_angles(1, 5.0, 0.0), 20e-9, 1e-12, save_every=10)
    late_b = traj_b.m[-500:, 0, 0]
    assert late_b[:, 0].max() - late_b[:, 0].min() < 0.1 * (late[:, 0].max() - late[:, 0].min())


def test_time_step_bound_holds_for_every_state_and_is_nearly_attained(device):
    """check_time_step uses an upper bound of |dm/dt|: no state exceeds it (random states), and the
    state that lines every m_j up with sign(W_ij) of the most coupled device comes within a factor 2."""
    array = STOArray.generate(device, 50, 2000.0, seed=3)
    osc, lam = array.oscillator_parameters(), device.torque_asymmetry
    p = np.asarray(device.reference_direction)
    coupling_t = array.coupling_transposed_oe()
    rng = np.random.default_rng(0)
    m = rng.standard_normal((400, 50, 3))
    m /= np.linalg.norm(m, axis=-1, keepdims=True)
    i = int(np.argmax(np.abs(array.coupling_matrix).sum(axis=1)))
    aligned = np.zeros((1, 50, 3))
    aligned[0, :, 0] = np.sign(array.coupling_matrix[i])
    aligned[0, i] = (0.0, 1.0, 0.0)  # W_ii = 0: oscillator i feels the full sum, perpendicular to it
    m = np.concatenate([m, aligned])
    rates = np.linalg.norm(
        llg_rhs_batch(np.ascontiguousarray(m.transpose(2, 0, 1)), m[..., 0] @ coupling_t, osc, lam, p), axis=0
    )
    bound = array.max_precession_rate_rad_s
    assert rates.max() <= bound
    assert rates[-1, i] >= 0.5 * bound
    check_time_step(array, 1e-12)  # 0.25 rad per 1 ps step: accepted
    with pytest.raises(ValueError, match="dt = 5e-12 s is too large for this array"):
        check_time_step(array, 5e-12)
