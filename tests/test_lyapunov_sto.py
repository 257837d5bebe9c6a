"""Tangent dynamics and Lyapunov exponents of the coupled STO array."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stosim.analysis.lyapunov import lyapunov_spectrum, two_trajectory_mle
from stosim.analysis.run_lyapunov import substrate_tangent_system
from stosim.analysis.tangent_sto import STOArrayTangent
from stosim.cli import main
from stosim.integrate.flow import sto_flow, sto_jvp
from stosim.physics.array import STOArray
from stosim.simulation import random_initial_state


def test_jvp_is_the_exact_derivative_and_the_transpose_of_the_adjoint(device):
    array = STOArray.generate(device, 5, 500.0, seed=1)
    rng = np.random.default_rng(0)
    m0 = random_initial_state(5, 0, batch=2)
    t = rng.standard_normal((2, 5, 3))
    t -= m0 * np.sum(m0 * t, -1, keepdims=True)
    m_t, jt = sto_jvp(m0, t, array, 50, 1e-12)
    eps = 1e-6

    def flow(m):
        m = m / np.linalg.norm(m, axis=-1, keepdims=True)
        return sto_flow(torch.tensor(m), array, 50, 1e-12).numpy()

    fd = (flow(m0 + eps * t) - flow(m0 - eps * t)) / (2 * eps)
    assert np.max(np.abs(fd - jt)) < 1e-8 * np.max(np.abs(jt))  # central differences: O(eps^2) + round-off
    u = rng.standard_normal((2, 5, 3))
    x = torch.tensor(m0, requires_grad=True)
    (sto_flow(x, array, 50, 1e-12) * torch.tensor(u)).sum().backward()
    # <u, J t> = <J^T u, t> to round-off
    assert np.sum(u * jt) == pytest.approx(float(np.sum(x.grad.numpy() * t)), rel=1e-12)
    np.testing.assert_allclose(m_t, flow(m0), atol=1e-15)
    assert np.max(np.abs(np.sum(jt * m_t, -1))) < 1e-14  # tangents stay in the tangent planes


def test_single_free_running_sto_is_not_chaotic(device):
    """A single STO (2-D phase space on the sphere) on its limit cycle: exponents (0, negative)."""
    system = STOArrayTangent(STOArray.generate(device, 1, 0.0), 1e-12)
    res = lyapunov_spectrum(system, random_initial_state(1, 0).reshape(-1), 2, 100_000, transient_steps=30_000,
                            reorthonormalize_every=10)
    relaxation = res.exponents[1]
    assert relaxation < -1e8  # the orbit attracts (alpha gamma H ~ 5e7-4e8 1/s)
    # the phase exponent is zero within its spread and tiny next to the relaxation rate
    assert abs(res.exponents[0]) < max(3 * res.standard_error[0], 1e-3 * abs(relaxation)) + 0.05 * abs(relaxation)
    assert res.exponents[0] < 3 * res.standard_error[0] + 1e6


def test_uncoupled_array_has_no_positive_exponent_and_coupling_makes_it_chaotic(device):
    x0 = random_initial_state(4, 1).reshape(-1)
    free = lyapunov_spectrum(STOArrayTangent(STOArray.generate(device, 4, 0.0), 1e-12), x0, 1, 60_000,
                             transient_steps=30_000, reorthonormalize_every=10)
    coupled = lyapunov_spectrum(STOArrayTangent(STOArray.generate(device, 4, 500.0, seed=2), 1e-12), x0, 1, 60_000,
                                transient_steps=30_000, reorthonormalize_every=10)
    assert free.mle < 3 * free.standard_error[0] + 1e6
    assert coupled.mle > 10 * max(free.mle, 1e7)


def test_qr_mle_agrees_with_two_trajectory_estimate():
    system, x0 = substrate_tangent_system("sto", n=10, seed=0, coupling_oe=500.0)  # chaotic (MLE ~ 2e9 1/s)
    qr = lyapunov_spectrum(system, x0, 1, 40_000, transient_steps=10_000, reorthonormalize_every=10)
    fd = two_trajectory_mle(system, x0, 40_000, transient_steps=10_000, epsilon=1e-9, renormalize_every=10)
    assert qr.mle > 5e8
    # same orbit: the estimates differ by finite-difference effects and the tangent alignment
    # transient of the two-trajectory run; tolerance 3 standard errors of the QR estimate
    assert fd == pytest.approx(qr.mle, abs=3 * qr.standard_error[0])


def test_cli_lyapunov_json(capsys):
    assert main(["lyapunov", "--substrate", "sto", "--n", "4", "--duration", "5 ns", "--transient", "1 ns",
                 "--exponents", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("exponents", "mle", "kaplan_yorke_dimension", "ks_entropy"):
        assert key in out
    assert len(out["exponents"]) == 3 and out["units"] == "1/s"
    assert out["exponents"] == sorted(out["exponents"], reverse=True)
    assert main(["lyapunov", "--substrate", "sto", "--n", "4", "--exponents", "9"]) == 2
    assert "n_exponents = 9 must be in [1, 8]" in capsys.readouterr().err
