"""Tangent dynamics and Lyapunov exponents of the coupled STO array."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stosim.analysis.lyapunov import lyapunov_spectrum, two_trajectory_mle
from stosim.analysis.tangent_sto import STOArrayTangent
from stosim.cli import main
from stosim.integrate.flow import sto_flow, sto_jvp
from stosim.physics.array import STOArray
from stosim.simulation import evolve, random_initial_state
from stosim.studies.run_lyapunov import substrate_tangent_system


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
    res = lyapunov_spectrum(
        system, random_initial_state(1, 0).reshape(-1), 2, 100_000, transient_steps=30_000, reorthonormalize_every=10
    )
    relaxation = res.exponents[1]
    assert relaxation < -1e8  # the orbit attracts (alpha gamma H ~ 5e7-4e8 1/s)
    # the phase exponent is zero within its spread and tiny next to the relaxation rate
    assert abs(res.exponents[0]) < max(3 * res.standard_error[0], 1e-3 * abs(relaxation)) + 0.05 * abs(relaxation)
    assert res.exponents[0] < 3 * res.standard_error[0] + 1e6


def test_a_single_sto_flow_leaves_its_input_alone_and_has_the_gradient_of_a_batch(device):
    # B = N = 1: the chunked arrays have the input's memory layout, yet must be copies
    array = STOArray.generate(device, 1, 500.0)
    z = torch.tensor([[[0.3, -0.5, 0.8]], [[0.1, 0.2, -0.9]]], dtype=torch.float64, requires_grad=True)
    grads = []
    for batch in (z[:1], z):
        m0 = torch.tanh(batch)
        m0 = m0 / m0.norm(dim=-1, keepdim=True)
        before = m0.detach().clone()
        out = sto_flow(m0, array, 10, 1e-12)
        assert torch.equal(m0.detach(), before) and not np.shares_memory(out.detach().numpy(), m0.detach().numpy())
        (g,) = torch.autograd.grad(out[0, 0, 0], z)
        grads.append(g[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=0)
    # the single STO's MLE, one exponent (the check "a single STO cannot be chaotic" in its smallest form)
    res = lyapunov_spectrum(
        STOArrayTangent(array.__class__.generate(device, 1, 0.0), 1e-12),
        random_initial_state(1, 0).reshape(-1),
        1,
        20_000,
        transient_steps=5_000,
        reorthonormalize_every=10,
    )
    assert np.isfinite(res.mle) and res.mle < 3 * res.standard_error[0] + 1e6


def test_flow_and_jvp_inputs_are_checked(device):
    array = STOArray.generate(device, 2, 500.0)
    m0 = random_initial_state(2, 0, batch=1)
    for kwargs, match in (
        ({"n_steps": -3}, "n_steps = -3 must be an integer >= 1"),
        ({"n_steps": 2.5}, "n_steps = 2.5 must be an integer >= 1"),
        ({"n_steps": True}, "n_steps = True must be an integer >= 1"),
        ({"dt_s": -1e-12}, "dt = -1e-12 s must be a finite number > 0 s"),
        ({"dt_s": float("nan")}, "dt = nan s must be a finite number > 0 s"),
        ({"dt_s": True}, "dt = True s must be a finite number > 0 s"),
        ({"dt_s": float("inf")}, "dt = inf s must be a finite number > 0 s"),
    ):
        run = {"n_steps": 5, "dt_s": 1e-12, **kwargs}
        # one check (stosim.physics.array.check_step_count / check_time_step) behind every entry point
        with pytest.raises(ValueError, match=match):
            sto_flow(torch.tensor(m0), array, run["n_steps"], run["dt_s"])
        with pytest.raises(ValueError, match=match):
            sto_jvp(m0, np.zeros_like(m0), array, run["n_steps"], run["dt_s"])
        with pytest.raises(ValueError, match=match):
            evolve(array, m0, run["n_steps"], run["dt_s"])
        if "dt_s" in kwargs:
            with pytest.raises(ValueError, match=match):
                STOArrayTangent(array, run["dt_s"])
    zero = m0.copy()
    zero[0, 1] = 0.0
    with pytest.raises(ValueError, match="m0 of sample 0, oscillator 1 is the zero vector"):
        sto_flow(torch.tensor(zero), array, 5, 1e-12)
    with pytest.raises(ValueError, match="m0 of sample 0, oscillator 1 is the zero vector"):
        sto_jvp(zero, np.zeros_like(zero), array, 5, 1e-12)
    nan = m0.copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="m0 contains non-finite values"):
        sto_flow(torch.tensor(nan), array, 5, 1e-12)
    system = STOArrayTangent(array, 1e-12)
    with pytest.raises(ValueError, match="x0 must be 6 finite numbers"):
        two_trajectory_mle(system, nan.reshape(-1), 10)
    with pytest.raises(ValueError, match="n_steps = 0 must be >= 1"):
        two_trajectory_mle(system, m0.reshape(-1), 0)
    with pytest.raises(ValueError, match="dt = inf s must be a finite number > 0 s"):
        STOArrayTangent(array, float("inf"))


def test_uncoupled_array_has_no_positive_exponent_and_coupling_makes_it_chaotic(device):
    x0 = random_initial_state(4, 1).reshape(-1)
    free = lyapunov_spectrum(
        STOArrayTangent(STOArray.generate(device, 4, 0.0), 1e-12),
        x0,
        1,
        60_000,
        transient_steps=30_000,
        reorthonormalize_every=10,
    )
    coupled = lyapunov_spectrum(
        STOArrayTangent(STOArray.generate(device, 4, 500.0, seed=2), 1e-12),
        x0,
        1,
        60_000,
        transient_steps=30_000,
        reorthonormalize_every=10,
    )
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
    assert (
        main(
            [
                "lyapunov",
                "--substrate",
                "sto",
                "--n",
                "4",
                "--duration",
                "5 ns",
                "--transient",
                "1 ns",
                "--exponents",
                "3",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("exponents", "mle", "kaplan_yorke_dimension", "ks_entropy"):
        assert key in out
    assert len(out["exponents"]) == 3 and out["units"] == "1/s"
    assert out["exponents"] == sorted(out["exponents"], reverse=True)
    assert main(["lyapunov", "--substrate", "sto", "--n", "4", "--exponents", "9"]) == 2
    assert "n_exponents = 9 must be in [1, 8]" in capsys.readouterr().err
    # one block: no standard error; --json stays standard JSON (null, not NaN)
    assert main(["lyapunov", "--substrate", "lorenz96", "--n", "10", "--duration", "0.01", "--json"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "NaN" not in line and json.loads(line)["standard_error"] == [None]


def test_cli_lyapunov_says_when_ks_entropy_is_a_lower_bound(capsys):
    """Lorenz 96 with N = 10, F = 8 is chaotic: with one exponent computed (positive) the KS entropy is
    only a lower bound and the text says so; with the whole spectrum (its last exponent negative) not."""
    from stosim.studies.run_lyapunov import LYAPUNOV_DEFAULTS

    run = ["lyapunov", "--substrate", "lorenz96", "--n", "10", "--duration", "20"]
    assert main([*run, "--exponents", "1"]) == 0
    text = capsys.readouterr().out
    ks = next(line for line in text.splitlines() if line.startswith("KS entropy"))
    assert float(ks.split(":")[1].split()[0]) > 0 and "a lower bound" in ks
    assert main([*run, "--exponents", "10"]) == 0
    ks = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("KS entropy"))
    assert "lower bound" not in ks
    with pytest.raises(TypeError):
        LYAPUNOV_DEFAULTS["lorenz96"]["n"] = 3  # the defaults are read-only
