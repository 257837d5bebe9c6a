"""Lyapunov exponents of Lorenz 96 and the FFESN (stosim.analysis.tangent_models), float64.

Oracles: the tangent map is the exact Jacobian of the substrate's own step (finite differences,
autograd); invariants of the spectrum (sum = time-averaged divergence, a zero exponent for an
autonomous flow off a fixed point); analytic spectra at fixed points (Lorenz 96 at x_i = F,
the FFESN at the origin); the two-trajectory estimate; Kaplan-Yorke / KS on hand-made spectra;
and (slow) published values for Lorenz 96 with N = 40, F = 8.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stosim.analysis.lyapunov import (
    TangentSystem,
    kaplan_yorke_dimension,
    ks_entropy,
    lyapunov_spectrum,
    two_trajectory_mle,
)
from stosim.analysis.tangent_models import FFESNTangent, Lorenz96Tangent
from stosim.integrate.threads import single_threaded_blas
from stosim.studies.run_lyapunov import substrate_lyapunov
from stosim.substrates.ffesn import FFESN
from stosim.substrates.lorenz96 import Lorenz96


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """Small products and QRs: one BLAS thread (multi-threaded BLAS crawls on small, loaded machines)."""
    with single_threaded_blas():
        yield


def _lorenz96_fixed_point_spectrum(n: int, forcing: float) -> np.ndarray:
    """Real parts of the eigenvalues of Df at x_i = F, descending: the Jacobian is circulant, its
    Fourier modes v_j = exp(i k j), k = 2 pi m / n, have eigenvalues F (e^{ik} - e^{-2ik}) - 1."""
    k = 2.0 * np.pi * np.arange(n) / n
    return np.sort((forcing * (np.exp(1j * k) - np.exp(-2j * k)) - 1.0).real)[::-1]


# -- Lorenz 96: the tangent map ---------------------------------------------------------------


def test_lorenz96_step_and_jvp_match_the_substrate():
    sub = Lorenz96(n=12, forcing=8.0, duration=0.5, dt=0.01)
    system = Lorenz96Tangent.from_substrate(sub)
    assert (system.n, system.forcing, system.step_time) == (12, 8.0, 0.01)
    assert system.dimension == system.ambient_dimension == 12 and system.time_unit == "model time unit"
    rng = np.random.default_rng(0)
    x = 8.0 + 3.0 * rng.standard_normal(12)
    v = rng.standard_normal((5, 12))
    ref_step = sub.rk4_step(torch.tensor(x)[None], 0.01)[0].numpy()
    np.testing.assert_allclose(system.step(x), ref_step, rtol=0, atol=1e-13)  # same arithmetic: equal to round-off
    ref_jvp = sub.vector_field_jvp(torch.tensor(x), torch.tensor(v)).numpy()
    np.testing.assert_allclose(system.vector_field_jvp(x, v), ref_jvp, rtol=0, atol=1e-13)
    # 50 steps equal the substrate's evolve (T = 0.5, dt = 0.01)
    ref = sub.evolve(torch.tensor(x)[None])[0].numpy()
    np.testing.assert_allclose(system.steps(x, 50), ref, rtol=0, atol=1e-11)
    assert system.divergence(x) == -12.0


def test_lorenz96_tangents_are_the_exact_jacobian_of_the_rk4_step():
    system = Lorenz96Tangent(10, 8.0, dt=0.01)
    rng = np.random.default_rng(1)
    x = 8.0 + 3.0 * rng.standard_normal(10)
    q = rng.standard_normal((4, 10))
    x1, jq = system.step_with_tangents(x, q)
    np.testing.assert_array_equal(x1, system.step(x))
    eps = 1e-6
    fd = np.array([(system.step(x + eps * d) - system.step(x - eps * d)) / (2 * eps) for d in q])
    # central differences: O(eps^2) truncation + ~1e-16 |x| / eps round-off (measured 1.2e-9 absolute)
    assert np.max(np.abs(fd - jq)) < 1e-8 * np.max(np.abs(jq))


def test_lorenz96_rk4_jacobian_determinant_differs_from_the_flow_by_order_h5():
    """ln|det DPhi_h(x)| = -N h exactly for the flow; the RK4 map deviates by O(h^5) per step.

    This is what bounds |sum of exponents + N| below (an O(h^4) rate)."""
    n = 10
    x = 8.0 + 3.0 * np.random.default_rng(3).standard_normal(n)
    dev = []
    for h in (0.01, 0.005):
        _, jt = Lorenz96Tangent(n, 8.0, dt=h).step_with_tangents(x, np.eye(n))  # rows: DPhi e_i
        sign, logdet = np.linalg.slogdet(jt)
        assert sign == 1.0
        dev.append(logdet + n * h)
    order = math.log2(abs(dev[0]) / abs(dev[1]))
    assert 4.7 < order < 5.4  # measured 5.13 (4.18e-6 at h = 0.01, 1.19e-7 at h = 0.005)
    assert abs(dev[0]) < 1e-5


# -- Lorenz 96: chaotic spectrum (N = 10, F = 8) ----------------------------------------------

N10_STEPS, N10_TRANSIENT = 20_000, 2_000  # 200 model time units averaged, 20 discarded


@pytest.fixture(scope="module")
def l96_chaotic():
    system = Lorenz96Tangent(10, 8.0, dt=0.01)
    x0 = 8.0 + np.random.default_rng(1).standard_normal(10)
    with single_threaded_blas():
        res = lyapunov_spectrum(system, x0, 10, N10_STEPS, transient_steps=N10_TRANSIENT, reorthonormalize_every=10)
    return system, x0, res


def test_lorenz96_sum_of_exponents_is_the_divergence(l96_chaotic):
    """Sum of all N exponents = time average of div f = -N.

    The QR sums of ln R_ii add up to ln |det| of the product of step Jacobians exactly, so the sum
    carries no statistical error; what remains is the RK4 map's O(h^4) deviation from the flow
    (see the h^5 test above) and round-off. Measured: |sum + N| = 6.5e-6 (6.5e-7 N); tolerance
    1e-4 N."""
    _, _, res = l96_chaotic
    n = res.exponents.size
    assert abs(res.exponents.sum() + n) < 1e-4 * n


def test_lorenz96_has_one_zero_exponent(l96_chaotic):
    """An autonomous flow off a fixed point has one zero exponent (perturbation along f(x)).

    Measured (200 time units): spectrum 1.168, 0.734, 0.167, -0.004, -0.402, ...; the block
    standard error of the near-zero exponent is 0.03. Tolerance: within 3 standard errors of 0
    and below 5 % of the largest exponent; its neighbours are > 5 standard errors from 0."""
    _, _, res = l96_chaotic
    lam, sem = res.exponents, res.standard_error
    i0 = int(np.argmin(np.abs(lam)))
    assert abs(lam[i0]) < 3 * sem[i0]
    assert abs(lam[i0]) < 0.05 * lam[0]
    others = np.delete(lam, i0)
    assert np.all(np.abs(others) > 3 * np.delete(sem, i0))  # exactly one exponent is ~0
    assert lam[0] > 1.0  # chaotic: measured 1.168 +- 0.053


def test_lorenz96_qr_mle_agrees_with_two_trajectories(l96_chaotic):
    """Same orbit, same averaging window: the finite-difference estimate (epsilon = 1e-8,
    renormalized every 10 steps) differs only by its alignment transient and finite-size effects.
    Measured: QR 1.168 +- 0.053, two-trajectory 1.189. Tolerance: 3 standard errors of the QR
    estimate, and 5 %."""
    system, x0, res = l96_chaotic
    fd = two_trajectory_mle(system, x0, N10_STEPS, transient_steps=N10_TRANSIENT, epsilon=1e-8, renormalize_every=10)
    assert abs(fd - res.mle) < 3 * res.standard_error[0]
    assert abs(fd - res.mle) < 0.05 * res.mle


def test_two_trajectory_estimate_reports_a_diverging_orbit_and_a_collapsed_perturbation():
    # RK4 with dt = 5 is unstable for Lorenz 96: the orbits overflow
    with pytest.raises(FloatingPointError, match="distance of the two trajectories became"):
        two_trajectory_mle(Lorenz96Tangent(8, 8.0, dt=5.0), 8.0 + np.arange(8.0), 50)
    # W = 0 maps every state to 0: the two trajectories coincide
    with pytest.raises(FloatingPointError, match=r"became 0\.0 by step 1"):
        two_trajectory_mle(FFESNTangent(np.zeros((3, 3))), np.ones(3), 5)


def test_lorenz96_stable_fixed_point_spectrum_is_analytic():
    """F = 0.5: x_i = F is a stable fixed point (f(F) = 0 exactly in floating point, so the orbit
    never leaves it) and the exponents are the real parts of the circulant Jacobian's eigenvalues,
    F (cos k - cos 2k) - 1, each Fourier pair +-k giving two equal exponents. RK4 changes them by
    |ln R(h mu) / h - Re mu| ~ h^4 |mu|^5 / 120 < 1e-8 here; alignment errors decay like
    exp(-gap t) with gaps >= 0.25 over 50 time units of transient. Measured max error 3e-9."""
    n, forcing = 10, 0.5
    ref = _lorenz96_fixed_point_spectrum(n, forcing)
    res = lyapunov_spectrum(
        Lorenz96Tangent(n, forcing), np.full(n, forcing), n, 5_000, transient_steps=5_000, reorthonormalize_every=10
    )
    assert res.mle < 0
    assert res.mle == pytest.approx(ref[0], abs=1e-6)  # ref[0] = 0.5 (cos 72 - cos 144 deg) - 1 = -0.4410
    np.testing.assert_allclose(res.exponents, ref, rtol=0, atol=1e-6)


# -- FFESN -------------------------------------------------------------------------------------


def test_ffesn_tangent_matches_the_substrate_and_autograd():
    sub = FFESN(n=20, spectral_radius=1.5, steps=1, seed=3)
    system = FFESNTangent.from_substrate(sub)
    assert system.W.dtype == np.float64 and system.dimension == system.ambient_dimension == 20
    assert (system.step_time, system.time_unit) == (1.0, "step")
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, 20)
    q = rng.standard_normal((3, 20))
    np.testing.assert_allclose(system.step(x), sub.evolve(torch.tensor(x)[None])[0].numpy(), rtol=0, atol=1e-15)
    x1, jq = system.step_with_tangents(x, q)
    np.testing.assert_array_equal(x1, system.step(x))
    for row, v in zip(jq, q):
        _, ref = torch.autograd.functional.jvp(lambda s: sub.evolve(s[None])[0], torch.tensor(x), torch.tensor(v))
        np.testing.assert_allclose(row, ref.numpy(), rtol=0, atol=1e-14)
    np.testing.assert_array_equal(system.steps(x, 3), system.step(system.step(system.step(x))))


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_ffesn_mle_is_ln_rho_below_the_edge_of_chaos(rho):
    """rho < 1, small initial state: the orbit decays to the origin (here to exactly 0 after
    ~1000-3000 steps), where the tangent map is W itself, so the MLE is ln(max |eig W|) = ln(rho).
    Measured error: 2e-5 (N = 60, 2000 steps after 200). Tolerance 1e-3."""
    system = FFESNTangent.from_substrate(FFESN(n=60, spectral_radius=rho, seed=0))
    x0 = 1e-3 * np.random.default_rng(0).uniform(-1, 1, 60)
    res = lyapunov_spectrum(system, x0, 1, 2_000, transient_steps=200)
    assert res.mle == pytest.approx(math.log(rho), abs=1e-3)


def test_ffesn_spectrum_at_the_origin_is_log_eigenvalue_moduli():
    """Full spectrum at the origin = ln |eigenvalues of W|, sorted; a complex pair gives ln|lambda|
    twice (QR of W^n in its real 2-D invariant subspace). Measured max error 1.6e-4 (N = 12,
    2000 steps after 200); tolerance 1e-3."""
    n = 12
    system = FFESNTangent.from_substrate(FFESN(n=n, spectral_radius=0.8, seed=1))
    eig = np.linalg.eigvals(system.W)
    assert np.sum(np.abs(eig.imag) > 1e-12) >= 2  # the check covers complex pairs
    ref = np.sort(np.log(np.abs(eig)))[::-1]
    x0 = 1e-3 * np.random.default_rng(1).uniform(-1, 1, n)
    res = lyapunov_spectrum(system, x0, n, 2_000, transient_steps=200)
    np.testing.assert_allclose(res.exponents, ref, rtol=0, atol=1e-3)
    assert res.mle == pytest.approx(math.log(0.8), abs=1e-3)


def test_ffesn_rho_2_has_a_positive_mle():
    """rho = 2 (docs/physics.md: chaotic tendencies for rho > 1): positive MLE. Measured 0.118 +- 0.0025
    (N = 100, 2000 steps after 200). Required: > 0.05 and > 10 standard errors."""
    system = FFESNTangent.from_substrate(FFESN(n=100, spectral_radius=2.0, seed=0))
    x0 = np.random.default_rng(0).uniform(-1, 1, 100)
    res = lyapunov_spectrum(system, x0, 1, 2_000, transient_steps=200)
    assert res.mle > 0.05
    assert res.mle > 10 * res.standard_error[0]


# -- derived quantities --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spectrum", "d_ky", "h_ks"),
    [
        ([1.0, 0.0, -2.0], 2.5, 1.0),  # j = 2 partial sums >= 0, D = 2 + 1/2
        ([0.0, -2.0, 1.0], 2.5, 1.0),  # order does not matter
        ([-0.1, -1.0, -3.0], 0.0, 0.0),  # all negative: a stable fixed point
        ([0.5, 1.0, 2.0], 3.0, 3.5),  # all positive: the number of exponents
        ([2.0, 1.0, -1.0, -4.0], 3.5, 3.0),  # partial sums 2, 3, 2, -2 -> 3 + 2/4
        ([0.906, 0.0, -14.572], 2.0 + 0.906 / 14.572, 0.906),  # Lorenz 63 (Sprott): D_KY = 2.062
    ],
)
def test_kaplan_yorke_and_ks_entropy_on_hand_made_spectra(spectrum, d_ky, h_ks):
    assert kaplan_yorke_dimension(np.array(spectrum)) == pytest.approx(d_ky, abs=1e-12)
    assert ks_entropy(np.array(spectrum)) == pytest.approx(h_ks, abs=1e-12)


@pytest.mark.parametrize("spectrum", [[math.nan, 0.5], [0.5, math.inf], [], [[1.0, -1.0]]])
def test_kaplan_yorke_and_ks_entropy_reject_nan_and_empty_spectra(spectrum):
    """A NaN exponent used to drop out of the KS sum silently (ks_entropy([nan, 0.5]) = 0.5) and to
    crash the Kaplan-Yorke formula with a NumPy reduction error; an empty spectrum gave an IndexError."""
    with pytest.raises(ValueError, match="exponents must be a non-empty 1-D array"):
        ks_entropy(np.array(spectrum))
    with pytest.raises(ValueError, match="exponents must be a non-empty 1-D array"):
        kaplan_yorke_dimension(np.array(spectrum))


def test_kaplan_yorke_and_ks_entropy_accept_minus_infinity():
    """ln 0 = -inf (a direction collapsed in one step) is a legitimate exponent: it contributes nothing
    to h_KS and its partial-sum term lambda/|-inf| is 0, so D_KY = 1 for (1, -inf)."""
    assert kaplan_yorke_dimension(np.array([1.0, -math.inf])) == 1.0
    assert ks_entropy(np.array([1.0, -math.inf])) == 1.0


class _CounterSystem(TangentSystem):
    """1-D test map: x counts steps (x -> x + 1) and the tangent grows by ln g = x + 1 per step, so after
    s0 discarded and e averaged steps the running exponent is exactly mean(s0+1 .. s0+e) / step_time."""

    dimension = 1
    ambient_dimension = 1
    step_time = 0.5
    time_unit = "tick"

    def step(self, x: np.ndarray) -> np.ndarray:
        return x + 1.0

    def step_with_tangents(self, x: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x + 1.0, q * np.exp(x[0] + 1.0)


@pytest.mark.parametrize(
    ("n_steps", "transient", "every", "quarter_steps"),
    [
        (4, 0, 1, 3),  # records after 1, 2, 3, 4 steps: 3/4 of the run is the third one
        (4, 2, 1, 3),  # the same after a 2-step transient (growth rates 3 .. 6)
        (8, 0, 2, 6),  # records after 2, 4, 6, 8 steps
        (7, 0, 2, 4),  # records after 2, 4, 6, 7: the last one at or before 5.25 steps is at 4
        (100, 0, 1, 75),
    ],
)
def test_relative_change_last_quarter_uses_the_estimate_at_three_quarters(n_steps, transient, every, quarter_steps):
    """rel = |lambda(T) - lambda(3T/4)| / |lambda(T)| with exact running estimates (see _CounterSystem).

    The old index (3 n_records) // 4 took the record one interval after 3/4 of the run: with 4 records
    it was the final estimate itself, so the reported change was always 0. Tolerance 1e-12 (round-off)."""

    def running(e: int) -> float:  # exact running estimate after e averaged steps, in 1/tick
        return float(np.mean(np.arange(transient + 1, transient + e + 1))) / 0.5

    res = lyapunov_spectrum(
        _CounterSystem(), np.zeros(1), 1, n_steps, transient_steps=transient, reorthonormalize_every=every
    )
    assert res.mle == pytest.approx(running(n_steps), rel=1e-12)
    want = abs(running(n_steps) - running(quarter_steps)) / running(n_steps)
    assert want > 0.01
    assert res.relative_change_last_quarter[0] == pytest.approx(want, rel=1e-12)


def test_relative_change_last_quarter_is_nan_without_a_record_before_three_quarters():
    """One re-orthonormalization at the very end: there is no earlier estimate to compare with."""
    res = lyapunov_spectrum(_CounterSystem(), np.zeros(1), 1, 4, reorthonormalize_every=4)
    assert res.mle == pytest.approx(2.5 / 0.5, rel=1e-12)
    assert np.isnan(res.relative_change_last_quarter[0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_steps": 2.5}, "n_steps = 2.5 must be >= 1"),
        ({"n_steps": True}, "n_steps = True must be >= 1"),
        ({"transient_steps": 1.5}, "transient_steps = 1.5 must be >= 0"),
        ({"reorthonormalize_every": 2.0}, "reorthonormalize_every = 2.0 must be >= 1"),
        ({"n_exponents": 2.0}, r"n_exponents = 2.0 must be in \[1, 6\] \(an integer"),
    ],
)
def test_lyapunov_spectrum_rejects_non_integer_counts(kwargs, match):
    """Non-integer step counts used to reach range() inside the stepping loop (TypeError), and True
    passed as one step."""
    run = {"n_exponents": 2, "n_steps": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        lyapunov_spectrum(
            Lorenz96Tangent(6, 8.0), np.full(6, 8.0) + np.arange(6), run.pop("n_exponents"), run.pop("n_steps"), **run
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_steps": 2.5}, "n_steps = 2.5 must be >= 1"),
        ({"transient_steps": 0.5}, "transient_steps = 0.5 must be >= 0"),
        ({"renormalize_every": 1.5}, "renormalize_every = 1.5 must be >= 1"),
        ({"epsilon": True}, "epsilon = True must be a finite number > 0"),
    ],
)
def test_two_trajectory_mle_rejects_non_integer_counts(kwargs, match):
    run = {"n_steps": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        two_trajectory_mle(Lorenz96Tangent(6, 8.0), np.full(6, 8.0) + np.arange(6), run.pop("n_steps"), **run)


@pytest.mark.parametrize("duration", [0.0, 0.004])
def test_substrate_lyapunov_rejects_a_duration_shorter_than_one_step(duration):
    """duration = 0 (or under half a step) used to be run silently as one step of dt = 0.01."""
    with pytest.raises(ValueError, match=f"duration = {duration!r} model time unit must be at least one step"):
        substrate_lyapunov("lorenz96", n=6, duration=duration, transient=0.0)
    res = substrate_lyapunov("lorenz96", n=6, duration=0.05, transient=0.0)
    assert res.duration == pytest.approx(0.05, rel=1e-12) and res.running_time.size == 1  # 5 steps, 1 record


# -- published values (slow) ----------------------------------------------------------------------


@pytest.mark.slow
def test_lorenz96_n40_f8_matches_published_values():
    """Lorenz 96, N = 40, F = 8 (RK4, dt = 0.01): the standard chaotic configuration.

    Reference values: 13 positive exponents, Kaplan-Yorke dimension ~27.1 and a leading exponent
    of ~1.7 per model time unit (error doubling time ~0.4 time units, ~2 "days" at 5 days per
    unit), as given for this configuration by E. N. Lorenz and K. A. Emanuel, "Optimal sites for
    supplementary weather observations: simulation with a small model", J. Atmos. Sci. 55,
    399-414 (1998), and used as the reference case by A. Karimi and M. R. Paul, "Extensive chaos
    in the Lorenz-96 model", Chaos 20, 043105 (2010), arXiv:0906.3496, who compute the spectrum
    and the Kaplan-Yorke dimension versus N and F. (The figures are those commonly quoted from
    these papers; the primary texts were not re-read when this test was written.)

    They are quoted to 2-3 significant digits, so the tolerances are: MLE in [1.60, 1.75]
    (measured 1.672 +- 0.014 over 2000 time units, seed 0; 1.683 +- 0.009 over 5000, seed 1);
    D_KY = 27.1 +- 0.5 (measured 27.08 and 27.04); exactly 13 exponents above 3 standard errors
    (the 13th measured 0.041 +- 0.008) and one within 3 standard errors of 0 (the flow
    direction, measured -0.002 +- 0.008). Sum of all exponents = -40 to 1e-4 * 40.
    Runtime: ~20-40 s on 2 shared cores.
    """
    system = Lorenz96Tangent(40, 8.0, dt=0.01)
    x0 = 8.0 + np.random.default_rng(0).standard_normal(40)
    res = lyapunov_spectrum(system, x0, 40, 200_000, transient_steps=5_000, reorthonormalize_every=10)
    lam, sem = res.exponents, res.standard_error
    assert 1.60 < res.mle < 1.75
    assert np.sum(lam > 3 * sem) == 13
    assert np.sum(np.abs(lam) < 3 * sem) == 1
    assert res.kaplan_yorke_dimension == pytest.approx(27.1, abs=0.5)
    assert abs(lam.sum() + 40) < 1e-4 * 40
    assert 8.0 < res.ks_entropy < 12.0  # measured 10.23 (sum of the 13 positive exponents)
