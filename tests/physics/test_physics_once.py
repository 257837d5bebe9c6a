"""Each piece of physics has one definition, and the engines agree on a device where every term counts.

- The engine-consistency checks (Numba vs torch right-hand side, Numba vs torch RK4 steps, the
  Numba adjoint gradient vs torch autograd, the Numba tangent vs central finite differences, the
  noisy torch path vs the noisy Numba path) run on the seed device AND on the all-terms device of
  :mod:`physics_devices` (tilted p, coupling, asymmetry, applied field, variability).
- TMR and observation noise: the hardware model, the digital twin, simulate and the substrate
  use :mod:`stosim.physics.tmr` and :func:`stosim.physics.noise.add_observation_noise`.

Mutations these tests catch (each applied by hand, the tests run, the mutation reverted):

- (a) the torch path's thermal field doubled, in ``integrate/torch_steps.py`` (field * 2):
  ``test_noisy_torch_path_equals_numba_path_for_one_seed`` (both devices, thermal cases),
  ``test_noise_statistics.py::test_torch_noisy_steps_sample_the_boltzmann_distribution`` and
  ``::test_noisy_evolve_is_one_realisation_with_and_without_a_graph``; in the substrate's
  ``thermal_sigma_oe`` buffer: ``test_noisy_evolve_is_one_realisation_with_and_without_a_graph``.
- (b) Euler instead of Heun in the torch noisy path: ``test_noisy_torch_path_equals_numba_path_for_one_seed``
  and ``test_noisy_evolve_is_one_realisation_with_and_without_a_graph`` (the Boltzmann test alone
  does not see it at dt = 1 ps).
- (c) the coupling field from m_y instead of m_x in both engines (Numba forward loops, adjoint,
  tangent, torch): every cross-engine trajectory, gradient and tangent test passes;
  ``test_coupling_field_is_mu_w_m_x_along_x_on_both_engines`` (closed form, N = 12 and 40) catches it,
  and the right-hand-side comparisons whose Numba side is fed the field m_x (mu W)^T by the test
  (``test_numba_and_torch_rhs_agree``,
  ``test_backends_noise_errors.py::test_numba_and_torch_rhs_and_trajectories_agree``).
- (d) a term zero on the seed device, a field-like torque 0.1 H_s0 (p_y e_y + p_z e_z): in the torch
  engine only, every seed-device test passes and the all-terms cases of the right-hand-side, RK4,
  adjoint-gradient and noisy-path tests fail; in the shared body (both engines) but not in the
  hand-written derivatives (``llg_vjp_point``, ``llg_jvp_point``): ``test_adjoint_gradient_equals_torch_autograd``
  and ``test_tangent_equals_central_finite_differences`` on the all-terms device.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from physics_devices import ARRAYS

from stosim.integrate.flow import sto_flow, sto_jvp
from stosim.integrate.torch_steps import evolve_torch
from stosim.physics.llg import (
    OSC_ANISOTROPY_OE,
    OSC_DAMPING,
    OSC_PREFACTOR,
    OSC_TORQUE_FIELD_OE,
    llg_point,
    llg_point_short_chain,
    llg_rhs_batch,
)
from stosim.physics.noise import (
    STREAM_DYNAMICAL,
    STREAM_THERMAL,
    add_observation_noise,
    observation_noise_scale,
    thermal_field_sigma_oe,
)
from stosim.physics.tmr import projection_from_voltage, voltage_at_bias_current_v
from stosim.physics.torch_llg import llg_rhs_torch, rk4_step_torch
from stosim.simulation import NoiseSettings, evolve

N = 12
DT = 1e-12


def _unit_states(batch: int, n: int, seed: int) -> np.ndarray:
    m = np.random.default_rng(seed).standard_normal((batch, n, 3))
    return m / np.linalg.norm(m, axis=-1, keepdims=True)


def _torch_args(array):
    return (
        torch.as_tensor(array.coupling_transposed_oe()),
        torch.as_tensor(array.oscillator_parameters()),
        array.device.torque_asymmetry,
        torch.as_tensor(np.asarray(array.device.reference_direction, dtype=float)),
    )


@pytest.fixture(params=sorted(ARRAYS), scope="module")
def array(request):
    return ARRAYS[request.param](N)


def test_all_terms_device_switches_every_term_on():
    arr = ARRAYS["all-terms"](N)
    p = np.asarray(arr.device.reference_direction)
    osc = arr.oscillator_parameters()
    assert np.all(np.abs(p) > 0.3) and abs(np.linalg.norm(p) - 1) < 1e-15
    assert arr.device.torque_asymmetry != 0 and arr.device.applied_field_oe != 0 and arr.coupling_oe != 0
    varied = (OSC_ANISOTROPY_OE, OSC_TORQUE_FIELD_OE, OSC_DAMPING, OSC_PREFACTOR)
    assert all(np.ptp(osc[row]) > 0 for row in varied)  # H_K', H_s0, alpha, prefactor differ between devices


def test_numba_and_torch_rhs_agree(array):
    """|f_numba - f_torch| <= 1e-12 max|f| in float64, random states, coupling field included."""
    m = _unit_states(7, N, 1)
    ct, osc, lam, p = _torch_args(array)
    hx = m[..., 0] @ array.coupling_transposed_oe()
    f_numba = llg_rhs_batch(
        np.ascontiguousarray(m.transpose(2, 0, 1)),
        hx,
        array.oscillator_parameters(),
        lam,
        np.asarray(array.device.reference_direction, dtype=float),
    ).transpose(1, 2, 0)
    f_torch = llg_rhs_torch(torch.as_tensor(m), ct, osc, lam, p).numpy()
    assert np.max(np.abs(f_numba - f_torch)) <= 1e-12 * np.max(np.abs(f_torch))


def test_short_chain_rhs_is_the_llg_rhs(array):
    """llg_point_short_chain (f = G + H_s Q, the single-trajectory kernel's form) against llg_point, the
    definition: <= 1e-14 max|f| in float64 on states off the unit sphere (|m| 0.5-1.5, as RK4 stages are
    slightly) with fields along x, y and z, for every oscillator of every test device."""
    rng = np.random.default_rng(3)
    osc = array.oscillator_parameters()
    lam = array.device.torque_asymmetry
    px, py, pz = array.device.reference_direction
    m = rng.standard_normal((64, 3))
    m *= rng.uniform(0.5, 1.5, (64, 1)) / np.linalg.norm(m, axis=1, keepdims=True)
    h = rng.standard_normal((64, 3)) * 300.0
    for i in range(osc.shape[1]):
        args = (*osc[:, i], lam, px, py, pz, 1.0)
        f_ref = np.array([llg_point(*m[k], *h[k], *args) for k in range(64)])
        f = np.array([llg_point_short_chain(*m[k], *h[k], *args) for k in range(64)])
        assert np.max(np.abs(f - f_ref)) <= 1e-14 * np.max(np.abs(f_ref))


def test_numba_rk4_and_torch_rk4_agree(array):
    """200 projected RK4 steps of 1 ps: Numba (simulation.evolve) and torch within 1e-11."""
    m0 = _unit_states(5, N, 2)
    final, _, _ = evolve(array, m0, 200, DT)
    m = torch.as_tensor(m0)
    args = _torch_args(array)
    for _ in range(200):
        m = rk4_step_torch(m, DT, *args)
    assert np.max(np.abs(final - m.numpy())) < 1e-11


def test_adjoint_gradient_equals_torch_autograd(array):
    """Numba adjoint of 120 RK4 steps vs autograd through the torch loop: relative 1e-10."""
    m0 = torch.as_tensor(_unit_states(4, N, 3)).requires_grad_(True)
    weights = torch.randn(4, N, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out = sto_flow(m0, array, 120, DT)
    (g_adjoint,) = torch.autograd.grad((out * weights).sum(), m0)
    ref = evolve_torch(m0, 120, DT, *_torch_args(array))
    (g_torch,) = torch.autograd.grad((ref * weights).sum(), m0)
    assert torch.max(torch.abs(out - ref)) < 1e-12
    assert torch.max(torch.abs(g_adjoint - g_torch)) / torch.max(torch.abs(g_torch)) < 1e-10


def test_tangent_equals_central_finite_differences(array):
    """J t of the Numba tangent kernel vs [F(m + e t) - F(m - e t)] / 2e, e = 1e-6: relative 1e-7."""
    m0 = _unit_states(3, N, 4)
    t = np.random.default_rng(5).standard_normal(m0.shape)
    t -= np.sum(t * m0, axis=-1, keepdims=True) * m0  # in the tangent planes
    _, jt = sto_jvp(m0, t, array, 150, DT)

    def flow(x):
        return evolve(array, x / np.linalg.norm(x, axis=-1, keepdims=True), 150, DT)[0]

    eps = 1e-6
    fd = (flow(m0 + eps * t) - flow(m0 - eps * t)) / (2 * eps)
    assert np.max(np.abs(jt - fd)) < 1e-7 * np.max(np.abs(fd))


@pytest.mark.parametrize(
    "noise",
    [
        NoiseSettings(temperature_k=300.0),
        NoiseSettings(dynamical_snr_db=20.0),
        NoiseSettings(temperature_k=300.0, dynamical_snr_db=15.0),
    ],
)
def test_noisy_torch_path_equals_numba_path_for_one_seed(array, noise):
    """Stochastic Heun with a thermal field and/or dynamical noise: the torch steps fed from the
    streams of the seed equal simulation.evolve (Numba) with that seed to 1e-12 after 100 steps."""
    m0 = _unit_states(4, N, 6)
    final, _, _ = evolve(array, m0, 100, DT, noise=noise, seed=11)
    dev = array.device
    sigma = None
    if noise.temperature_k > 0:
        sigma = torch.as_tensor(
            thermal_field_sigma_oe(
                array.oscillator_parameters()[OSC_DAMPING],
                noise.temperature_k,
                dev.gyromagnetic_ratio_rad_per_oe_s,
                dev.saturation_magnetization_emu_cm3,
                dev.volume_cm3,
                DT,
            )
        )
    rngs = [
        np.random.default_rng(np.random.SeedSequence(11, spawn_key=(k,))) for k in (STREAM_THERMAL, STREAM_DYNAMICAL)
    ]
    factor = None if noise.dynamical_snr_db is None else 10 ** (-noise.dynamical_snr_db / 20)
    out = evolve_torch(
        torch.as_tensor(m0),
        100,
        DT,
        *_torch_args(array),
        thermal_sigma_oe=sigma,
        dynamical_factor=factor,
        thermal_rng=rngs[0],
        dynamical_rng=rngs[1],
    )
    noiseless, _, _ = evolve(array, m0, 100, DT)
    assert np.max(np.abs(final - noiseless)) > 1e-3  # the noise does act
    assert np.max(np.abs(final - out.numpy())) < 1e-12


# -- the coupling field, against its closed form -------------------------------------------------------


def _coupling_response(m: np.ndarray, array) -> np.ndarray:
    """f(coupled) - f(uncoupled) in 1/s, closed form: B is affine in H, so a field h_i e_x with
    h_i = mu sum_j W_ij m_x,j (Oe) adds -gamma/(1+alpha^2) h_i [m x e_x + alpha m x (m x e_x)]."""
    h = array.coupling_oe * m[..., 0] @ array.coupling_matrix.T
    osc = array.oscillator_parameters()
    m_cross_ex = np.stack([np.zeros_like(h), m[..., 2], -m[..., 1]], axis=-1)
    torque = m_cross_ex + osc[OSC_DAMPING][:, None] * np.cross(m, m_cross_ex)
    return -(osc[OSC_PREFACTOR] * h)[..., None] * torque


@pytest.mark.parametrize("n", [N, 40])  # 12: the fused small-N Numba loop; 40: the chunked BLAS loop
def test_coupling_field_is_mu_w_m_x_along_x_on_both_engines(n):
    """Both engines' coupling against the closed form on the all-terms device (it catches a coupling
    written wrongly in both engines alike, e.g. from m_y, which no cross-engine test can see).
    Numba: one RK4 step of 1e-17 s, coupled minus uncoupled, divided by dt (O(dt) = 1e-6 relative);
    also with a thermal field (the Heun loop). Torch: the right-hand side, 1e-12 relative."""
    array = ARRAYS["all-terms"](n)
    uncoupled = dataclasses.replace(array, coupling_oe=0.0)
    m0 = _unit_states(3, n, 7)
    want = _coupling_response(m0, array)
    scale = np.max(np.abs(want))
    assert scale > 1e9  # 1/s: the coupling acts
    dt = 1e-17
    for noise in (NoiseSettings(), NoiseSettings(temperature_k=300.0)):
        step = evolve(array, m0, 1, dt, noise=noise, seed=1)[0] - evolve(uncoupled, m0, 1, dt, noise=noise, seed=1)[0]
        assert np.max(np.abs(step / dt - want)) < 1e-5 * scale
    ct, osc, lam, p = _torch_args(array)
    m = torch.as_tensor(m0)
    got = (llg_rhs_torch(m, ct, osc, lam, p) - llg_rhs_torch(m, None, osc, lam, p)).numpy()
    assert np.max(np.abs(got - want)) < 1e-12 * scale


def test_torch_engine_evaluates_the_numba_body():
    """One definition: the torch right-hand side calls the Python body of the Numba kernel."""
    from stosim.physics import torch_llg

    assert torch_llg._llg_point is llg_point.py_func


# -- TMR and observation noise: one definition ------------------------------------------------------


def test_tmr_inverse_round_trips_numpy_and_torch():
    mp = np.linspace(-1, 1, 11)
    v = voltage_at_bias_current_v(mp, 440.0, 1.2, 2e-3)
    assert v[0] == pytest.approx(2e-3 * 440.0 * 2.2) and v[-1] == pytest.approx(2e-3 * 440.0)
    np.testing.assert_allclose(projection_from_voltage(v, 2e-3, 440.0, 1.2), mp, atol=1e-14)
    mt = torch.tensor(mp, requires_grad=True)
    vt = voltage_at_bias_current_v(mt, 440.0, 1.2, 2e-3)
    (g,) = torch.autograd.grad(vt.sum(), mt)  # dV/d(m.p) = -I R_P TMR / 2
    np.testing.assert_allclose(g.numpy(), -2e-3 * 440.0 * 0.6, rtol=1e-14)
    with pytest.raises(ValueError, match="TMR ratio"):
        projection_from_voltage(v, 2e-3, 440.0, 0.0)


def test_station_model_uses_the_physics_tmr():
    from stosim.hardware import model

    assert model.projection_from_voltage is projection_from_voltage
    mp = torch.linspace(-1, 1, 5, dtype=torch.float64)
    torch.testing.assert_close(model.tmr_voltage(mp, 2e-3, 440.0, 1.2), voltage_at_bias_current_v(mp, 440.0, 1.2, 2e-3))


def test_observation_noise_scale_is_per_sample_for_numpy_and_torch():
    """A batch of a quiet and a loud sample: each gets std(noise_b) = std(x_b) 10^(-SNR/20)."""
    x = np.stack([0.01 * np.sin(np.arange(3000)), 5.0 * np.cos(np.arange(3000))])
    for signal, rng in ((x, np.random.default_rng(1)), (torch.as_tensor(x), torch.Generator().manual_seed(1))):
        y = add_observation_noise(signal, 20.0, rng, sample_axes=-1)
        noise = np.asarray(y - signal)
        ratio = noise.std(axis=-1) / x.std(axis=-1)
        np.testing.assert_allclose(ratio, 0.1, rtol=0.05)  # 3000 draws: 1.3 % standard error of a std
        np.testing.assert_allclose(
            np.asarray(observation_noise_scale(signal, 20.0, -1))[:, 0], 0.1 * x.std(axis=-1), rtol=1e-12
        )
    whole = add_observation_noise(x, 20.0, np.random.default_rng(1)) - x  # None: one scale for the whole array
    np.testing.assert_allclose(whole.std(axis=-1), 0.1 * x.std(), rtol=0.05)
    assert add_observation_noise(x, float("inf"), np.random.default_rng(1)) is x
