"""Random rate network: substrate, tangent system, Lyapunov exponents against exact and mean-field results.

Tolerances (float64):
- tangent vectors vs central finite differences of the step map: relative 1e-6;
- discrete time, N = 400, g = 3: lambda_max within 3 % of the mean-field value 1/2 ln(g^2 <phi'^2>)
  (measured -2.3 % at seed 0; -0.7 % at N = 1000: a finite-N bias);
- Gaussian averages vs adaptive quadrature (scipy.integrate.quad): 1e-10 up to Delta = 100;
- below onset (g = 0.5): lambda_max vs ln rho(J) (discrete) and max Re eig(J) - 1 (continuous) within 0.01;
- sum of all exponents vs the mean divergence along the same orbit: discrete, relative 1e-9 (both are
  ln|det| of the same Jacobian product); continuous, within 3 standard errors + 1e-3 (RK4 O(dt^4)).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from stosim.analysis.lyapunov import lyapunov_spectrum, two_trajectory_mle
from stosim.analysis.rate_theory import dmft_discrete, dmft_discrete_mle, ginibre_product_spectrum, point_symmetry
from stosim.analysis.tangent_rate import RateNetworkTangent, mean_divergence
from stosim.integrate.threads import single_threaded_blas
from stosim.substrates.rate_network import INPUT_BLOCK, FrozenInput, RateNetwork, draw_coupling_matrix, rate_parameters


def _x0(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n)


@pytest.mark.parametrize(
    "kw",
    [
        {"time": "continuous", "dt": 0.1},
        {"time": "discrete"},
        {"time": "continuous", "dt": 0.1, "input_std": 0.5, "input_tau": 2.0},
        {"time": "discrete", "input_std": 0.3},
    ],
)
def test_tangent_matches_finite_differences(kw: dict) -> None:
    sys = RateNetworkTangent(n=12, g=2.0, seed=3, **kw)
    x = sys.steps(sys.initial_state(_x0(12)), 7)
    q = np.random.default_rng(1).standard_normal((3, sys.ambient_dimension))
    q = sys.project_tangent(x, q)
    _, tq = sys.step_with_tangents(x, q)
    eps = 1e-6
    for k in range(3):
        fd = (sys.step(x + eps * q[k]) - sys.step(x - eps * q[k])) / (2 * eps)
        np.testing.assert_allclose(tq[k], fd, rtol=1e-6, atol=1e-8)


def test_jacobian_is_the_flow_derivative() -> None:
    sys = RateNetworkTangent(n=8, g=1.7, seed=2, dt=0.1)
    h = _x0(8)
    eps = 1e-6

    def f(y: np.ndarray) -> np.ndarray:
        return -y + sys.J @ np.tanh(y)

    fd = np.stack([(f(h + eps * e) - f(h - eps * e)) / (2 * eps) for e in np.eye(8)], axis=1)
    np.testing.assert_allclose(sys.jacobian(h), fd, rtol=1e-7, atol=1e-9)


def test_substrate_and_tangent_system_take_the_same_steps() -> None:
    for kw in (
        {"time": "continuous", "dt": 0.1, "duration": 2.0, "input_std": 0.4, "input_tau": 1.0},
        {"time": "discrete", "duration": 5.0, "input_std": 0.4},
    ):
        sub = RateNetwork(n=10, g=2.0, seed=4, **kw)
        sys = RateNetworkTangent.from_substrate(sub)
        h0 = _x0(10)
        out = sub.evolve(torch.as_tensor(h0)[None])[0].numpy()
        ref = sys.steps(sys.initial_state(h0), sub.n_steps)[:10]
        np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)


def test_gradient_through_the_substrate_is_exact() -> None:
    sub = RateNetwork(n=5, g=1.5, seed=0, dt=0.1, duration=0.5)
    x = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: sub(z), (x,))
    trainable = RateNetwork(n=5, g=1.5, seed=0, dt=0.1, duration=0.5, trainable=True)
    assert trainable.J.requires_grad and any(p is trainable.J for p in trainable.parameters())


def test_discrete_mle_matches_mean_field_at_g3() -> None:
    sys = RateNetworkTangent(n=400, g=3.0, time="discrete", seed=0)
    with single_threaded_blas():
        r = lyapunov_spectrum(sys, _x0(400), 1, 2000, transient_steps=200)
    theory = dmft_discrete_mle(3.0)
    assert theory == pytest.approx(0.31025, abs=1e-4)
    assert abs(r.mle - theory) / theory < 0.03, (r.mle, theory)


def test_dmft_below_onset_and_quadrature() -> None:
    assert dmft_discrete(0.8) == 0.0
    assert dmft_discrete_mle(0.8) == pytest.approx(math.log(0.8), rel=1e-12)
    delta = dmft_discrete(2.5)
    from stosim.analysis.rate_theory import gaussian_average

    assert delta == pytest.approx(2.5**2 * gaussian_average(lambda h: np.tanh(h) ** 2, delta), rel=1e-11)
    # input adds its variance; the MLE decreases with input (saturation)
    assert dmft_discrete_mle(2.0, input_std=1.0) < dmft_discrete_mle(2.0)
    lam = ginibre_product_spectrum(200, 3.0)
    assert np.all(np.diff(lam) < 0) and abs(lam[0] - dmft_discrete_mle(3.0)) < 0.01


@pytest.mark.parametrize("variance", [0.5, 6.3, 20.6, 100.0])
def test_gaussian_average_matches_adaptive_quadrature(variance: float) -> None:
    from scipy.integrate import quad

    from stosim.analysis.rate_theory import gaussian_average

    for f in (lambda h: np.tanh(h) ** 2, lambda h: (1.0 - np.tanh(h) ** 2) ** 2):
        ref = quad(
            lambda z: f(math.sqrt(variance) * z) * math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi),
            -np.inf,
            np.inf,
            limit=400,
            epsabs=1e-14,
        )[0]
        assert gaussian_average(f, variance) == pytest.approx(ref, abs=1e-10)


def test_below_onset_mle_is_log_spectral_radius() -> None:
    sys = RateNetworkTangent(n=100, g=0.5, time="discrete", seed=1)
    with single_threaded_blas():
        r = lyapunov_spectrum(sys, _x0(100), 1, 300, transient_steps=100)
        eig = np.linalg.eigvals(sys.J)
    assert r.mle == pytest.approx(math.log(np.abs(eig).max()), abs=0.01)
    cont = RateNetworkTangent(n=100, g=0.5, seed=1, dt=0.1)
    with single_threaded_blas():
        rc = lyapunov_spectrum(cont, _x0(100), 1, 2000, transient_steps=500, reorthonormalize_every=5)
    assert rc.mle == pytest.approx(eig.real.max() - 1.0, abs=0.01)


def test_sum_of_exponents_is_mean_divergence() -> None:
    n = 16
    disc = RateNetworkTangent(n=n, g=3.0, time="discrete", seed=5)
    with single_threaded_blas():
        r = lyapunov_spectrum(disc, _x0(n), n, 400, transient_steps=50)
    div, _ = mean_divergence(disc, _x0(n), 400, transient_steps=50)
    assert r.exponents.sum() == pytest.approx(div, rel=1e-9)
    cont = RateNetworkTangent(n=n, g=3.0, seed=5, dt=0.05)
    with single_threaded_blas():
        rc = lyapunov_spectrum(cont, _x0(n), n, 2000, transient_steps=200, reorthonormalize_every=5)
    div_c, sem = mean_divergence(cont, _x0(n), 2000, transient_steps=200)
    assert abs(div_c + n) > 0.05  # the diagonal of J contributes: not the trivial -N
    assert abs(rc.exponents.sum() - div_c) < 3 * sem + 1e-3, (rc.exponents.sum(), div_c, sem)
    sym = point_symmetry(rc.exponents)
    assert sym["centre"] == pytest.approx(rc.exponents.mean())


def test_two_trajectory_cross_check() -> None:
    sys = RateNetworkTangent(n=200, g=3.0, time="discrete", seed=2)
    with single_threaded_blas():
        qr = lyapunov_spectrum(sys, _x0(200), 1, 1500, transient_steps=100).mle
        tt = two_trajectory_mle(sys, _x0(200), 1500, transient_steps=100, epsilon=1e-8)
    assert tt == pytest.approx(qr, abs=0.02)


def test_seeded_reproducibility() -> None:
    a = draw_coupling_matrix(30, 2.0, 7)
    np.testing.assert_array_equal(a, draw_coupling_matrix(30, 2.0, 7))
    assert not np.array_equal(a, draw_coupling_matrix(30, 2.0, 8))
    assert np.std(a) * math.sqrt(30) == pytest.approx(2.0, rel=0.1)
    assert np.all(np.diag(draw_coupling_matrix(30, 2.0, 7, zero_diagonal=True)) == 0)
    kw = {"n": 8, "g": 2.0, "seed": 3, "dt": 0.1, "duration": 1.0, "input_std": 0.5, "input_tau": 0.5}
    x = torch.randn(2, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out1, out2 = RateNetwork(**kw)(x), RateNetwork(**kw)(x)
    assert torch.equal(out1, out2)
    other = RateNetwork(**kw)
    other.reset(9)
    assert not torch.equal(other(x), out1)
    other.reset(3)
    assert torch.equal(other(x), out1)


def test_frozen_ou_input_statistics_and_block_continuity() -> None:
    p = rate_parameters(n=200, g=1.0, dt=0.1, input_std=0.7, input_tau=1.0, seed=1)
    inp = FrozenInput(p)
    w = inp.window(0, 3 * INPUT_BLOCK)
    assert w.std() == pytest.approx(0.7, rel=0.05)
    a = math.exp(-0.1)
    lag1 = np.mean(w[1:] * w[:-1]) / np.mean(w * w)
    assert lag1 == pytest.approx(a, abs=0.02)
    fresh = FrozenInput(p)  # regenerating block 2 alone gives the same values (the chain is rebuilt)
    np.testing.assert_array_equal(fresh.block(2), w[2 * INPUT_BLOCK :])


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"g": -1.0}, "g"),
        ({"g": 0.0}, "g"),
        ({"n": 1}, "n"),
        ({"dt": 0.8}, "dt"),
        ({"input_std": -0.1}, "input_std"),
        ({"tau": float("nan")}, "tau"),
        ({"duration": 1.05, "dt": 0.1}, "duration"),
        ({"time": "discrete", "duration": 2.5}, "duration"),
        ({"time": "sometimes"}, "time"),
        ({"gain": 2.0}, "gain"),
    ],
)
def test_parameter_validation_names_the_parameter(kw: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        RateNetwork(**kw)
    with pytest.raises(ValueError, match=r"\(0, 100\]"):
        rate_parameters(g=200.0)


def test_substrate_interface() -> None:
    sub = RateNetwork(n=6, g=2.0, seed=0, dt=0.1, duration=0.3)
    d = sub.describe()
    assert (d.state_size, d.readin_size, d.readout_size, d.time_unit) == (6, 6, 6, "tau")
    cfg = sub.read_configuration()
    assert cfg["substrate"] == "rate-network" and cfg["n_steps"] == 3 and cfg["zero_diagonal"] == 0
    assert not sub.capabilities.stochastic and sub.capabilities.differentiable
    assert RateNetwork(n=6, input_std=0.1).capabilities.stochastic
    with pytest.raises(ValueError, match="shape"):
        sub(torch.zeros(2, 5, dtype=torch.float64))
    assert sub.duration == pytest.approx(0.3)


def test_cli_lyapunov_rate_network(capsys: pytest.CaptureFixture[str]) -> None:
    from stosim.cli import main

    assert (
        main(
            [
                "lyapunov",
                "--substrate",
                "rate-network",
                "--n",
                "60",
                "--g",
                "3",
                "--time",
                "discrete",
                "--exponents",
                "2",
                "--duration",
                "300",
                "--transient",
                "50",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["units"] == "1/step" and out["substrate"] == "rate-network"
    assert abs(out["mle"] - dmft_discrete_mle(3.0)) < 0.06
    assert (
        main(
            [
                "lyapunov",
                "--substrate",
                "rate-network",
                "--n",
                "40",
                "--g",
                "0.5",
                "--duration",
                "20",
                "--transient",
                "10",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["units"] == "1/tau" and out["mle"] < 0


def test_training_model_and_ftmle_use_the_rate_network() -> None:
    from stosim.analysis.ftmle import substrate_ftmle
    from stosim.models import ReservoirClassifier
    from stosim.studies.training import TrainConfig, build_model

    cfg = TrainConfig(substrate="rate-network", n=20, g=2.0, duration=0.5, dt=0.1)
    model = build_model(cfg, 64, 10, (8, 8))
    assert isinstance(model, ReservoirClassifier) and isinstance(model.substrate, RateNetwork)
    assert model(torch.randn(3, 64, dtype=torch.float64)).shape == (3, 10)
    sub = RateNetwork(n=10, g=0.5, seed=0, time="discrete", duration=20.0)
    res = substrate_ftmle(sub, states=torch.zeros(1, 10, dtype=torch.float64), method="exact")
    # at the fixed point 0 the map's Jacobian is J^20: (1/20) ln sigma_max(J^20) -> ln rho(J) (slowly)
    j20 = np.linalg.matrix_power(sub.J.numpy(), 20)
    assert res.ftmle[0] == pytest.approx(np.log(np.linalg.svd(j20, compute_uv=False)[0]) / 20, rel=1e-8)


def test_cli_ftmle_rate_network(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from stosim.cli import main

    assert (
        main(
            [
                "ftmle",
                "--substrate",
                "rate-network",
                "--n",
                "30",
                "--g",
                "0.5",
                "--network-time",
                "discrete",
                "--steps",
                "10",
                "--limit",
                "3",
                "--out",
                str(tmp_path / "f.h5"),
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["units"] == "1/step" and out["mean"] < 0  # contracting below onset
