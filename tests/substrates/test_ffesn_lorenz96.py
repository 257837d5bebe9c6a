"""Physics and math checks of the FFESN and Lorenz 96 substrates (oracle first, float64).

Tolerances are stated next to each check and derived from the error of the approximation
being tested (linearization O(eps^2), RK4 O(dt^4), rounding ~1e-16 per operation).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stosim.integrate.threads import single_threaded_blas
from stosim.substrates.ffesn import FFESN, draw_ffesn_mask, draw_ffesn_matrix, symmetric_edge_count
from stosim.substrates.lorenz96 import Lorenz96

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """The oracles use numpy eigensolvers; multi-threaded OpenBLAS crawls on small loaded machines."""
    with single_threaded_blas():
        yield


# ============================================================================ FFESN


def _spectral_radius(w: np.ndarray) -> float:
    return float(np.max(np.abs(np.linalg.eigvals(w))))


@pytest.mark.parametrize("rho", [0.1, 0.9, 1.0, 2.0, 10.0])
def test_ffesn_spectral_radius_is_exact(rho: float) -> None:
    sub = FFESN(n=120, spectral_radius=rho, seed=3)
    w = sub.W.numpy()
    # The rescaling divides by the float64 eigenvalue modulus: exact up to eigensolver rounding.
    assert abs(_spectral_radius(w) - rho) <= 1e-10 * rho


def test_ffesn_mask_density_and_values() -> None:
    n, rho = 400, 1.0
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(7)))
    mask = rng.random((n, n)) < 0.5  # the same stream the substrate draws from (mask first)
    sub = FFESN(n=n, spectral_radius=rho, density=0.5, seed=7)
    w = sub.W.numpy()
    # Zero exactly where masked, nonzero where kept (uniform [-1, 1] is never exactly 0 here).
    assert np.all(w[~mask] == 0.0)
    assert np.all(w[mask] != 0.0)
    # Bernoulli(0.5) over 160000 entries: standard deviation of the fraction is 0.00125; allow 5 sigma.
    frac = np.count_nonzero(w) / w.size
    assert abs(frac - 0.5) < 5 * math.sqrt(0.25 / w.size)
    # Before rescaling the kept entries are uniform in [-1, 1]: the scaled entries span
    # [-s, s] with s = rho / radius_raw, mean ~ 0 and the uniform variance s^2 / 3.
    s = np.max(np.abs(w))  # within a hair of the scale factor
    kept = w[mask] / s
    assert abs(kept.mean()) < 5 * math.sqrt((1 / 3) / kept.size)
    assert abs(kept.var() - 1 / 3) < 0.01
    # Other densities are honoured too.
    w2 = FFESN(n=n, density=0.1, seed=7).W.numpy()
    assert abs(np.count_nonzero(w2) / w2.size - 0.1) < 5 * math.sqrt(0.09 / w2.size)


def test_ffesn_seed_determines_w() -> None:
    a = FFESN(n=50, seed=11).W
    b = FFESN(n=50, seed=11).W
    c = FFESN(n=50, seed=12).W
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert np.array_equal(a.numpy(), draw_ffesn_matrix(50, 1.0, 0.5, 11))


def test_ffesn_w_is_a_buffer_not_a_parameter() -> None:
    sub = FFESN(n=10, seed=0)
    assert list(sub.parameters()) == []
    assert "W" in dict(sub.named_buffers())
    assert "W" in sub.state_dict()


def test_ffesn_evolve_matches_numpy_loop() -> None:
    n, steps = 40, 7
    sub = FFESN(n=n, spectral_radius=1.5, steps=steps, seed=5)
    w = sub.W.numpy()
    x0 = np.random.default_rng(0).normal(size=(4, n))
    expected = x0.copy()
    for _ in range(steps):
        expected = np.array([np.tanh(w @ row) for row in expected])  # one sample at a time: x <- tanh(W x)
    got = sub.evolve(torch.tensor(x0)).numpy()
    # K matrix-vector products with O(N) terms: a few ulps of the O(1) result.
    np.testing.assert_allclose(got, expected, rtol=1e-13, atol=1e-13)


def _seed_with_real_leading_eigenvalue(n: int, rho: float) -> tuple[int, float, np.ndarray]:
    for seed in range(50):
        w = draw_ffesn_matrix(n, rho, 0.5, seed)
        ev, vec = np.linalg.eig(w)
        i = int(np.argmax(np.abs(ev)))
        if ev[i].imag == 0.0:
            v = vec[:, i].real
            return seed, float(ev[i].real), v / np.linalg.norm(v)
    raise AssertionError("no seed in range(50) with a real leading eigenvalue")


@pytest.mark.parametrize("rho", [0.5, 0.9])
def test_ffesn_small_states_decay_like_rho_to_the_k(rho: float) -> None:
    """Linearization: tanh(z) = z + O(z^3), so x_K = lambda^K x_0 (1 + O(eps^2)) for x_0 = eps v."""
    n, steps, eps = 60, 6, 1e-6
    seed, lam, v = _seed_with_real_leading_eigenvalue(n, rho)
    assert abs(abs(lam) - rho) < 1e-10
    sub = FFESN(n=n, spectral_radius=rho, steps=steps, seed=seed)
    x0 = torch.tensor(eps * v).reshape(1, n)
    xk = sub.evolve(x0)
    ratio = (xk.norm() / x0.norm()).item()
    # Cubic correction of tanh is ~eps^2 = 1e-12 relative; rounding ~1e-14 relative.
    assert ratio == pytest.approx(rho**steps, rel=1e-9)
    # Stronger: the state stays on the eigenvector, with the sign of lambda^K.
    np.testing.assert_allclose(xk.numpy()[0], lam**steps * eps * v, rtol=0, atol=1e-9 * rho**steps * eps)


def test_ffesn_small_states_follow_complex_leading_mode() -> None:
    """Any seed: x_0 = eps Re(v) with W v = lambda v evolves as eps Re(lambda^K v) (linear regime)."""
    n, rho, steps, eps = 60, 0.8, 5, 1e-6
    for seed in range(50):
        sub = FFESN(n=n, spectral_radius=rho, steps=steps, seed=seed)
        ev, vec = np.linalg.eig(sub.W.numpy())
        i = int(np.argmax(np.abs(ev)))
        if ev[i].imag != 0.0:  # leading pair is complex
            break
    else:
        raise AssertionError("no seed in range(50) with a complex leading eigenvalue")
    v = vec[:, i]
    x0 = torch.tensor(eps * v.real).reshape(1, n)
    expected = eps * (ev[i] ** steps * v).real
    got = sub.evolve(x0).numpy()[0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9 * eps * rho**steps * np.abs(v).max())


def test_ffesn_saturates_for_large_states() -> None:
    """tanh bounds every component by 1 after one step, whatever the input."""
    sub = FFESN(n=30, spectral_radius=2.0, steps=1, seed=2)
    x = sub.evolve(torch.full((2, 30), 1e6, dtype=F64))
    assert torch.all(x.abs() <= 1.0)


def test_ffesn_gradcheck() -> None:
    sub = FFESN(n=6, spectral_radius=1.2, steps=3, seed=4)
    x = torch.randn(2, 6, dtype=F64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    assert torch.autograd.gradcheck(sub.evolve, (x,), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_ffesn_float32() -> None:
    sub = FFESN(n=20, seed=0, dtype=torch.float32)
    out = sub(torch.randn(3, 20))
    assert out.dtype == torch.float32
    with pytest.raises(ValueError, match="dtype"):
        sub(torch.randn(3, 20, dtype=F64))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n": 0}, "n"),
        ({"n": 2.5}, "n"),
        ({"n": True}, "n"),
        ({"spectral_radius": 0.0}, "spectral_radius"),
        ({"spectral_radius": -1.0}, "spectral_radius"),
        ({"spectral_radius": 10.5}, "spectral_radius"),
        ({"spectral_radius": float("nan")}, "spectral_radius"),
        ({"steps": 0}, "steps"),
        ({"steps": 1.0}, "steps"),
        ({"density": 0.0}, "density"),
        ({"density": 1.5}, "density"),
        ({"seed": -1}, "seed"),
        ({"dtype": torch.int64}, "dtype"),
    ],
)
def test_ffesn_invalid_arguments(kwargs: dict, name: str) -> None:
    base = {"n": 8}
    base.update(kwargs)
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        FFESN(**base)


def test_ffesn_configuration_and_description() -> None:
    sub = FFESN(n=12, spectral_radius=0.7, steps=4, density=0.5, seed=9)
    cfg = sub.read_configuration()
    assert cfg == {
        "substrate": "ffesn",
        "n": 12,
        "spectral_radius": 0.7,
        "steps": 4,
        "density": 0.5,
        "mask": "independent",
        "seed": 9,
        "dtype": "float64",
    }
    d = sub.describe()
    assert (d.state_size, d.readin_size, d.readout_size) == (12, 12, 12)
    assert d.time_unit == "step"
    assert "tanh(W x_k)" in d.summary


# ---------------------------------------------------------------- symmetric mask (the seed study's code)


@pytest.mark.parametrize(("n", "density"), [(500, 0.5), (120, 0.1), (61, 0.33), (7, 1.0), (2, 1.0)])
def test_ffesn_symmetric_mask_has_the_exact_edge_count_and_no_diagonal(n: int, density: float) -> None:
    w = FFESN(n=n, density=density, seed=4, mask="symmetric").W.numpy()
    kept = w != 0.0
    edges = round(density * n * (n - 1) / 2)  # the study's E = N (N - 1) / 2 * density, rounded
    assert symmetric_edge_count(n, density) == edges
    assert np.count_nonzero(np.triu(kept, 1)) == edges  # exactly E edges (uniform values are never 0 here)
    assert np.count_nonzero(kept) == 2 * edges
    assert np.array_equal(kept, kept.T)  # an undirected graph: the mask is symmetric ...
    assert not np.any(np.diag(w))  # ... without self-loops
    if density < 1.0:
        assert not np.allclose(w, w.T)  # the values are drawn per entry: W itself is not symmetric


def test_ffesn_symmetric_mask_draws_pairs_uniformly() -> None:
    # every pair i < j is an edge with probability E / (N (N - 1) / 2); over 400 draws of a 10-node graph with
    # E = 9 of 45 pairs (p = 0.2) each pair's count is Binomial(400, 0.2): mean 80, std 8; allow 5 std
    n, draws = 10, 400
    counts = np.zeros((n, n))
    for seed in range(draws):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed)))
        counts += draw_ffesn_mask(n, 0.2, "symmetric", rng)
    upper = counts[np.triu_indices(n, 1)]
    assert upper.sum() == draws * 9
    assert np.all(np.abs(upper - 80) < 5 * 8)


@pytest.mark.parametrize("rho", [0.5, 1.0, 1.5, 10.0])
def test_ffesn_symmetric_mask_spectral_radius_is_exact(rho: float) -> None:
    w = FFESN(n=150, spectral_radius=rho, seed=5, mask="symmetric").W.numpy()
    assert abs(_spectral_radius(w) - rho) <= 1e-10 * rho


def test_ffesn_symmetric_mask_is_reproducible_per_seed_and_leaves_the_default_unchanged() -> None:
    a = FFESN(n=60, seed=21, mask="symmetric").W
    assert torch.equal(a, FFESN(n=60, seed=21, mask="symmetric").W)
    assert np.array_equal(a.numpy(), draw_ffesn_matrix(60, 1.0, 0.5, 21, "symmetric"))
    assert not torch.equal(a != 0, FFESN(n=60, seed=22, mask="symmetric").W != 0)  # another graph
    # the default is the independent mask, drawn from the same stream as before the option existed
    independent = FFESN(n=60, seed=21).W
    assert torch.equal(independent, FFESN(n=60, seed=21, mask="independent").W)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(21)))
    mask = rng.random((60, 60)) < 0.5
    assert np.array_equal(independent.numpy() != 0, mask)
    assert FFESN(n=6, mask="symmetric").read_configuration()["mask"] == "symmetric"


@pytest.mark.parametrize("mask", ["Symmetric", "sym", "", None, 1, True])
def test_ffesn_refuses_an_unknown_mask(mask: object) -> None:
    with pytest.raises(ValueError, match=r"mask must be one of 'independent', 'symmetric'"):
        FFESN(n=8, mask=mask)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\bmask\b"):
        draw_ffesn_matrix(8, 1.0, 0.5, 0, mask)  # type: ignore[arg-type]


@pytest.mark.parametrize("density", [0.0, -0.1, 1.0 + 1e-12, 2.0, float("nan"), float("inf")])
def test_ffesn_symmetric_mask_refuses_densities_outside_0_1(density: float) -> None:
    with pytest.raises(ValueError, match=r"density must be (in \(0, 1\]|a finite real number)"):
        FFESN(n=8, density=density, mask="symmetric")


def test_ffesn_symmetric_mask_without_edges_is_refused_by_name() -> None:
    # N = 1 has no pair; a tiny density rounds to 0 edges: W_raw = 0 cannot be rescaled
    with pytest.raises(ValueError, match=r"mask='symmetric'.*spectral radius 0"):
        FFESN(n=1, mask="symmetric")
    with pytest.raises(ValueError, match=r"spectral radius 0"):
        FFESN(n=10, density=0.01, mask="symmetric")


def test_ffesn_mask_is_a_substrate_key_of_the_registry_and_the_training_config() -> None:
    from stosim.studies.training import TrainConfig, build_model
    from stosim.substrates.registry import get

    assert "mask" in get("ffesn").keys
    assert TrainConfig().mask == "independent"
    cfg = TrainConfig(substrate="ffesn", n=30, mask="symmetric", seed=3)
    model = build_model(cfg, 64, 10, (8, 8))
    w = next(b for name, b in model.named_buffers() if name.endswith("W"))
    assert torch.equal(w, FFESN(n=30, seed=3, mask="symmetric").W)
    with pytest.raises(Exception, match="mask"):
        TrainConfig(substrate="ffesn", mask="diagonal")


def test_ffesn_pipeline_centres_the_pixels_it_reads_in(monkeypatch) -> None:
    # the seed study's FFESN reads pixel / 255 - 0.5: with input_offset = 0.5 the read-in sees the pixels in
    # [0, 1] less 0.5 (their mean shifted by exactly -0.5, their spread unchanged), in training and test
    import stosim.studies.training as training
    from stosim.datasets import load_dataset
    from stosim.studies.training import TrainConfig, build_model, train

    seen: list[torch.Tensor] = []
    cfg = TrainConfig(
        dataset="digits",
        substrate="ffesn",
        n=20,
        mask="symmetric",
        input_offset=0.5,
        limit_train=60,
        limit_test=30,
        epochs=1,
        batch_size=30,
        optimizer="sgd",
        lr=0.005,
    )
    model = build_model(cfg, 64, 10, (8, 8))
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    monkeypatch.setattr(training, "build_model", lambda *a, **k: model)
    train(cfg)
    train_ds, test_ds = load_dataset("digits", None, False, seed=0, limit_train=60, limit_test=30)
    pixels = np.concatenate([train_ds.flat(), test_ds.flat()]).astype(np.float64)
    inputs = torch.cat(seen).numpy()
    assert inputs.shape == pixels.shape
    assert abs(inputs.mean() - (pixels.mean() - 0.5)) < 1e-12
    assert abs(inputs.std() - pixels.std()) < 1e-12
    assert inputs.min() == pytest.approx(-0.5, abs=1e-12) and inputs.max() == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize("offset", [float("nan"), float("inf"), -float("inf"), 1.5, -2.0, "0.5", True])
def test_input_offset_refuses_non_finite_and_out_of_range_values(offset: object) -> None:
    from stosim.studies.training import TrainConfig

    with pytest.raises(
        Exception,
        match=r"input_offset\n.*(finite number|less than or equal to 1|greater than or equal to -1|valid number)",
    ):
        TrainConfig(substrate="ffesn", input_offset=offset)


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((8, float("nan"), 0.5, 0), "spectral_radius"),
        ((8, -2.0, 0.5, 0), "spectral_radius"),
        ((8, 1.0, 1.5, 0), "density"),
        ((8, 1.0, float("nan"), 0), "density"),
        ((0, 1.0, 0.5, 0), "n"),
        ((8, 1.0, 0.5, -1), "seed"),
    ],
)
def test_draw_ffesn_matrix_validates_its_arguments(args: tuple, name: str) -> None:
    # the public draw function refuses what the constructor refuses (never a NaN or sign-flipped W)
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        draw_ffesn_matrix(*args)


# ============================================================================ Lorenz 96


def _numpy_vector_field(x: np.ndarray, forcing: float) -> np.ndarray:
    n = x.shape[-1]
    out = np.empty_like(x)
    for i in range(n):
        out[..., i] = (x[..., (i + 1) % n] - x[..., (i - 2) % n]) * x[..., (i - 1) % n] - x[..., i] + forcing
    return out


@pytest.mark.parametrize("n", [4, 5, 13])
def test_lorenz96_vector_field_matches_explicit_loop(n: int) -> None:
    sub = Lorenz96(n=n, forcing=8.0)
    x = np.random.default_rng(n).normal(scale=3.0, size=(5, n))
    got = sub.vector_field(torch.tensor(x)).numpy()
    # Same operations in the same order: equal to rounding.
    np.testing.assert_allclose(got, _numpy_vector_field(x, 8.0), rtol=1e-14, atol=1e-13)


@pytest.mark.parametrize("forcing", [0.0, 1.0, 8.0, -3.5, 1000.0])
def test_lorenz96_uniform_state_is_fixed_point(forcing: float) -> None:
    sub = Lorenz96(n=10, forcing=forcing, duration=0.1, dt=0.01)
    x = torch.full((2, 10), forcing, dtype=F64)
    assert torch.equal(sub.vector_field(x), torch.zeros_like(x))  # (F - F) F - F + F == 0 exactly
    assert torch.equal(sub.evolve(x), x)


def test_lorenz96_energy_identity() -> None:
    """The advection term conserves E = sum x^2/2: d/dt E = sum x_i f_i = -sum x^2 + F sum x."""
    n, forcing = 37, 8.0
    sub = Lorenz96(n=n, forcing=forcing)
    x = torch.tensor(np.random.default_rng(1).normal(loc=2.0, scale=4.0, size=(20, n)))
    f = sub.vector_field(x)
    lhs = (x * f).sum(-1)
    rhs = -(x**2).sum(-1) + forcing * x.sum(-1)
    # Scale of the cancelling terms: sum |x_i (x_{i+1} - x_{i-2}) x_{i-1}| + sum x^2 + |F| sum |x|.
    adv = x * (torch.roll(x, -1, -1) - torch.roll(x, 2, -1)) * torch.roll(x, 1, -1)
    scale = adv.abs().sum(-1) + (x**2).sum(-1) + abs(forcing) * x.abs().sum(-1)
    assert torch.all((lhs - rhs).abs() <= 1e-12 * scale)
    assert torch.all(adv.sum(-1).abs() <= 1e-12 * adv.abs().sum(-1))
    # and the cancellation is not trivial (each term is large)
    assert torch.all(adv.abs().sum(-1) > 100.0)


def test_lorenz96_energy_balance_along_trajectory() -> None:
    """E(T) - E(0) = int_0^T (-sum x^2 + F sum x) dt, with the integral by Simpson on RK4 output."""
    n, forcing, dt, steps = 12, 8.0, 0.001, 200
    sub = Lorenz96(n=n, forcing=forcing, duration=dt, dt=dt)
    x = torch.tensor(forcing + np.random.default_rng(2).normal(size=(1, n)))
    xs = [x]
    for _ in range(steps):
        xs.append(sub.evolve(xs[-1]))
    traj = torch.cat(xs).numpy()
    energy = 0.5 * (traj**2).sum(-1)
    power = -(traj**2).sum(-1) + forcing * traj.sum(-1)
    simpson = dt / 3 * (power[0] + power[-1] + 4 * power[1:-1:2].sum() + 2 * power[2:-1:2].sum())
    # Simpson error ~ T dt^4 |P''''| / 180 and RK4 error ~ dt^4: both far below 1e-8 of |E|.
    assert energy[-1] - energy[0] == pytest.approx(simpson, abs=1e-8 * energy[0])


def test_lorenz96_rk4_fourth_order_convergence() -> None:
    n, forcing, t_end = 8, 8.0, 0.5
    x0 = torch.tensor(forcing + np.random.default_rng(3).normal(size=(2, n)))
    base_dt = 0.005  # dt = 0.005, 0.0025, 0.00125 (at 0.025 the chaotic F = 8 flow is still pre-asymptotic)
    ref = Lorenz96(n=n, forcing=forcing, duration=t_end, dt=base_dt / 64).evolve(x0)
    errors = []
    for k in range(3):
        dt = base_dt / 2**k
        xt = Lorenz96(n=n, forcing=forcing, duration=t_end, dt=dt).evolve(x0)
        errors.append((xt - ref).abs().max().item())
    orders = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    # Reference error is (1/16)^4 of the finest error; the smallest error (~4e-8) is far above rounding.
    for order in orders:
        assert abs(order - 4.0) < 0.3, (errors, orders)


def test_lorenz96_linearization_about_fixed_point() -> None:
    """Near x = F a Fourier mode e^{i k j} grows at lambda = F (e^{ik} - e^{-2ik}) - 1."""
    n, forcing, t_end, dt, eps = 8, 3.0, 0.5, 0.001, 1e-7
    sub = Lorenz96(n=n, forcing=forcing, duration=t_end, dt=dt)
    j = np.arange(n)
    for m in range(n):
        k = 2 * np.pi * m / n
        lam = forcing * (np.exp(1j * k) - np.exp(-2j * k)) - 1.0
        mode = np.exp(1j * k * j)
        x0 = torch.tensor(forcing + eps * mode.real).reshape(1, n)
        got = (sub.evolve(x0).numpy()[0] - forcing) / eps
        expected = (np.exp(lam * t_end) * mode).real
        # Nonlinear error O(eps |e^{lam T}|^2) ~ 1e-5 abs at most here; RK4 error ~ 1e-8 relative;
        # subtracting F loses ~1e-16 F / eps ~ 3e-9.
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6 * max(1.0, abs(np.exp(lam * t_end)) ** 2))


def test_lorenz96_jvp_matches_autograd() -> None:
    sub = Lorenz96(n=9, forcing=8.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 9, dtype=F64, generator=g)
    v = torch.randn(3, 9, dtype=F64, generator=g)
    _, jv = torch.autograd.functional.jvp(sub.vector_field, x, v)
    torch.testing.assert_close(sub.vector_field_jvp(x, v), jv, rtol=1e-14, atol=1e-13)


def test_lorenz96_gradcheck() -> None:
    sub = Lorenz96(n=5, forcing=8.0, duration=0.05, dt=0.01)
    x = torch.randn(2, 5, dtype=F64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    assert torch.autograd.gradcheck(sub.evolve, (x,), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_lorenz96_blow_up_raises() -> None:
    sub = Lorenz96(n=6, forcing=8.0, duration=0.1, dt=0.01)
    # (An alternating +-a state would not do: its vector field is uniform, and after one stage the
    # rounding of a + c with c >> a leaves a uniform state, which does not blow up.)
    x = torch.tensor(1e150 * np.random.default_rng(0).normal(size=(2, 6)))
    with pytest.raises(FloatingPointError, match=r"step \d+ of 10"):
        sub.evolve(x)


def test_lorenz96_blow_up_names_first_bad_step() -> None:
    sub = Lorenz96(n=6, forcing=8.0, duration=0.1, dt=0.01)
    x = torch.tensor([[1e200, -1e200] * 3], dtype=F64)  # finite, but (x_{i+1} - x_{i-2}) x_{i-1} overflows
    with pytest.raises(FloatingPointError, match="step 1 of 10"):
        sub.evolve(x)
    x[0, 0] = float("inf")  # a non-finite input is refused before any step
    with pytest.raises(ValueError, match="state contains non-finite values"):
        sub.evolve(x)


def test_lorenz96_step_count_and_multiple_check() -> None:
    assert Lorenz96(n=4, duration=0.3, dt=0.01).n_steps == 30  # 0.3 / 0.01 = 29.999999999999996
    assert Lorenz96(n=4, duration=5.0, dt=0.01).n_steps == 500
    with pytest.raises(ValueError, match="multiple of dt"):
        Lorenz96(n=4, duration=0.305, dt=0.01)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n": 3}, "n"),
        ({"n": 10.0}, "n"),
        ({"forcing": float("inf")}, "forcing"),
        ({"forcing": float("nan")}, "forcing"),
        ({"forcing": 1000.5}, "forcing"),
        ({"forcing": -2000.0}, "forcing"),
        ({"duration": 0.0}, "duration"),
        ({"duration": -1.0}, "duration"),
        ({"duration": float("inf")}, "duration"),
        ({"dt": 0.0}, "dt"),
        ({"dt": -0.01}, "dt"),
        ({"dt": 0.3}, "dt"),
        ({"dtype": torch.float16}, "dtype"),
    ],
)
def test_lorenz96_invalid_arguments(kwargs: dict, name: str) -> None:
    base: dict = {"n": 8}
    base.update(kwargs)
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        Lorenz96(**base)


def test_lorenz96_configuration_and_description() -> None:
    sub = Lorenz96(n=16, forcing=5.0, duration=0.2, dt=0.01)
    assert sub.read_configuration() == {
        "substrate": "lorenz96",
        "n": 16,
        "forcing": 5.0,
        "duration": 0.2,
        "dt": 0.01,
        "n_steps": 20,
        "dtype": "float64",
    }
    d = sub.describe()
    assert (d.state_size, d.readin_size, d.readout_size) == (16, 16, 16)
    assert d.time_unit == "model time unit"
    assert "(x_(i+1) - x_(i-2)) x_(i-1) - x_i + F" in d.summary


def test_lorenz96_follows_module_dtype() -> None:
    sub = Lorenz96(n=8, duration=0.1, dt=0.01).to(torch.float32)
    assert sub.dtype == torch.float32
    out = sub(torch.randn(2, 8))
    assert out.dtype == torch.float32
