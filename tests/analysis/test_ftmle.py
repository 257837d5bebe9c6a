"""Finite-time maximum Lyapunov exponents (stosim.analysis.ftmle), float64 throughout.

Oracles: linear maps with known singular values, full Jacobians from
``torch.autograd.functional.jacobian`` and their SVD, the FFESN's near-linear regime (bounds
from tanh'(z) = 1 - tanh(z)^2), and maps on unit spheres whose tangent-space singular values
are known.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from stosim.analysis.ftmle import (
    FlowOperators,
    flow_ftmle,
    flow_operators_from_function,
    model_ftmle,
    substrate_ftmle,
    unit_sphere_tangent_projection,
)
from stosim.substrates.ffesn import FFESN
from stosim.substrates.lorenz96 import Lorenz96

F64 = torch.float64
ITER_RTOL = 1e-6  # iterative vs exact (the brief's tolerance)
ORACLE_TOL = 1e-10  # against an independently computed SVD (round-off only)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _orthogonal(n: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, generator=_gen(seed), dtype=F64))
    return q * torch.sign(torch.diagonal(r))


def _sigma_max(jac: torch.Tensor) -> float:
    return float(torch.linalg.svdvals(jac)[0])


# -- linear maps --------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["exact", "lanczos", "power"])
def test_linear_map_gives_log_of_largest_singular_value(method):
    s = torch.tensor([3.0, 2.0, 1.5, 1.0, 0.5, 0.1], dtype=F64)
    u, v = _orthogonal(6, 1), _orthogonal(6, 2)
    a = u @ torch.diag(s) @ v.T
    x0 = torch.randn(4, 6, generator=_gen(3), dtype=F64)
    res = flow_ftmle(lambda x: x @ a.T, x0, time=2.0, time_unit="s", method=method, tol=1e-13, max_iter=500)
    assert res.method == method and res.time == 2.0 and res.unit == "1/s"
    np.testing.assert_allclose(res.ftmle, math.log(3.0) / 2.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.sigma_max, 3.0, rtol=1e-12)
    assert res.all_converged
    # the top right singular vector is +-V[:, 0]
    np.testing.assert_allclose(np.abs(res.right_vector @ v[:, 0].numpy()), 1.0, atol=1e-9)


def test_rectangular_linear_map_through_hand_written_operators():
    """The protocol itself: jvp/vjp written by hand, no autograd; J is 4 x 7 (D_out < D)."""
    s = torch.tensor([2.5, 1.2, 0.7, 0.2], dtype=F64)
    u = _orthogonal(4, 4)
    v = _orthogonal(7, 5)[:, :4]
    a = u @ torch.diag(s) @ v.T  # (4, 7)
    ops = FlowOperators(jvp=lambda x0, w: w @ a.T, vjp=lambda x0, y: y @ a, time=0.5, time_unit="step")
    x0 = torch.zeros(3, 7, dtype=F64)
    for method in ("exact", "lanczos", "power"):
        res = flow_ftmle(ops, x0, method=method, tol=1e-13, max_iter=1000)
        np.testing.assert_allclose(res.ftmle, math.log(2.5) / 0.5, rtol=0, atol=1e-11)
        assert res.all_converged


def test_zero_map_gives_minus_infinity():
    res = flow_ftmle(lambda x: 0.0 * x, torch.ones(2, 3, dtype=F64), method="lanczos")
    assert np.all(np.isneginf(res.ftmle)) and res.all_converged


# -- iterative vs exact on the substrates -----------------------------------------------------
def test_ffesn_iterative_equals_exact_svd():
    sub = FFESN(n=20, spectral_radius=1.5, steps=3, seed=1)
    states = 0.8 * torch.randn(5, 20, generator=_gen(7), dtype=F64)
    exact = substrate_ftmle(sub, states=states, method="exact")
    lanczos = substrate_ftmle(sub, states=states, method="lanczos", tol=1e-12)
    assert exact.time == 3.0 and exact.time_unit == "step"
    assert lanczos.all_converged and np.all(lanczos.iterations <= 20)
    np.testing.assert_allclose(lanczos.ftmle, exact.ftmle, rtol=ITER_RTOL, atol=1e-12)
    # independent oracle: autograd Jacobian of one sample, then its SVD
    jac = torch.autograd.functional.jacobian(lambda x: sub.evolve(x[None])[0], states[2])
    assert abs(exact.ftmle[2] - math.log(_sigma_max(jac)) / 3.0) < ORACLE_TOL
    # auto picks exact for D = 20 <= 64; chunking does not change the answer
    auto = substrate_ftmle(sub, readin=states, batch_size=2)
    assert auto.method == "exact"
    np.testing.assert_allclose(auto.ftmle, exact.ftmle, rtol=0, atol=1e-13)


def test_lorenz96_iterative_equals_exact_svd():
    sub = Lorenz96(n=8, forcing=8.0, duration=0.5, dt=0.01)
    states = 8.0 + torch.randn(4, 8, generator=_gen(11), dtype=F64)
    exact = substrate_ftmle(sub, states=states, method="exact")
    lanczos = substrate_ftmle(sub, states=states, method="lanczos", tol=1e-12)
    assert exact.time == 0.5 and exact.time_unit == "model time unit"
    assert lanczos.all_converged
    np.testing.assert_allclose(lanczos.ftmle, exact.ftmle, rtol=ITER_RTOL)
    jac = torch.autograd.functional.jacobian(lambda x: sub.evolve(x[None])[0], states[0])
    assert abs(exact.ftmle[0] - math.log(_sigma_max(jac)) / 0.5) < ORACLE_TOL


def test_lanczos_stops_on_tolerance_before_exhausting_the_space():
    sub = Lorenz96(n=40, forcing=8.0, duration=0.5, dt=0.01)
    states = 8.0 + 2.0 * torch.randn(3, 40, generator=_gen(12), dtype=F64)
    exact = substrate_ftmle(sub, states=states, method="exact")
    lanczos = substrate_ftmle(sub, states=states, method="lanczos", tol=1e-10, batch_size=2)
    assert lanczos.all_converged and np.all(lanczos.iterations < 40)
    np.testing.assert_allclose(lanczos.ftmle, exact.ftmle, rtol=ITER_RTOL)
    # not converged when max_iter is too small, and it says so
    short = substrate_ftmle(sub, states=states, method="lanczos", tol=1e-14, max_iter=2)
    assert not short.converged.any() and np.all(short.iterations == 2)


def test_forward_and_reverse_jvp_modes_agree():
    sub = FFESN(n=12, spectral_radius=1.2, steps=2, seed=4)
    x = 0.7 * torch.randn(3, 12, generator=_gen(13), dtype=F64)
    results = {}
    for mode in ("reverse", "forward"):
        ops = flow_operators_from_function(sub.evolve, time=2.0, time_unit="step", jvp_mode=mode)
        v = torch.randn(3, 12, generator=_gen(14), dtype=F64)
        results[mode] = (ops.jvp(x, v), ops.jacobian(x), flow_ftmle(ops, x, method="lanczos", tol=1e-12).ftmle)
    for a, b in zip(results["reverse"], results["forward"]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-14)


# -- FFESN near the origin: singular values, not the spectral radius ---------------------------
@pytest.mark.parametrize("steps", [1, 3])
def test_ffesn_small_inputs_follow_singular_values_of_w(steps):
    rho = 0.9
    sub = FFESN(n=20, spectral_radius=rho, steps=steps, seed=3)
    w = sub.W.numpy()
    x = 1e-4 * torch.randn(3, 20, generator=_gen(5), dtype=F64)
    res = substrate_ftmle(sub, states=x, method="exact")
    # J = D_K W ... D_1 W with D_k = diag(1 - tanh(z_k)^2), ||D_k|| <= 1, ||D_k - I|| <= eps
    eps, h = 0.0, x.numpy()
    for _ in range(steps):
        h = np.tanh(h @ w.T)
        eps = max(eps, float(np.max(h**2)))
    wk = np.linalg.matrix_power(w, steps)
    s_wk = np.linalg.svd(wk, compute_uv=False)[0]
    s_w = np.linalg.svd(w, compute_uv=False)[0]
    # |sigma(J) - sigma(W^K)| <= ||J - W^K|| <= K eps ||W||^K (telescoping)
    delta = steps * eps * s_w**steps / s_wk
    assert delta < 1e-6
    tol = -math.log1p(-delta) / steps + 1e-13
    np.testing.assert_allclose(res.ftmle, math.log(s_wk) / steps, rtol=0, atol=tol)
    if steps == 1:
        np.testing.assert_allclose(res.ftmle, math.log(s_w), rtol=0, atol=tol)
    # ... and clearly not ln(rho): W is far from normal
    assert np.all(res.ftmle - math.log(rho) > 0.1)


# -- tangent projection on unit spheres --------------------------------------------------------
def _rotations(n: int, seed: int) -> torch.Tensor:
    rots = torch.stack([_orthogonal(3, seed + i) for i in range(n)])
    return rots * torch.linalg.det(rots)[:, None, None]  # proper rotations


def _unit_states(batch: int, n: int, seed: int) -> torch.Tensor:
    m = torch.randn(batch, n, 3, generator=_gen(seed), dtype=F64)
    return (m / m.norm(dim=-1, keepdim=True)).reshape(batch, 3 * n)


def test_projection_removes_radial_stretching():
    """f(m) = |m|^2 R m per oscillator: a rotation on the spheres (tangent singular values 1, FTMLE 0),
    but on R^3 its Jacobian R (I + 2 m m^T) stretches the radial direction by 3."""
    rots = _rotations(3, 20)

    def f(x: torch.Tensor) -> torch.Tensor:
        m = x.reshape(x.shape[0], -1, 3)
        return ((m * m).sum(-1, keepdim=True) * torch.einsum("nij,bnj->bni", rots, m)).reshape(x.shape)

    x0 = _unit_states(4, 3, 21)
    projected = flow_operators_from_function(f, project_tangent=unit_sphere_tangent_projection)
    for method in ("exact", "lanczos", "power"):
        res = flow_ftmle(projected, x0, method=method, tol=1e-13)
        np.testing.assert_allclose(res.ftmle, 0.0, rtol=0, atol=1e-12)
    flat = flow_ftmle(f, x0, method="exact")
    np.testing.assert_allclose(flat.ftmle, math.log(3.0), rtol=0, atol=1e-12)


def test_projected_ftmle_of_nonlinear_sphere_map_equals_tangent_basis_svd():
    rots = _rotations(2, 30)

    def f(x: torch.Tensor) -> torch.Tensor:
        m = x.reshape(x.shape[0], -1, 3)
        y = torch.einsum("nij,bnj->bni", rots, m) + 0.6 * m**2 + 0.4 * m.roll(1, dims=1)
        # the factor |m|^6 is 1 on the spheres but stretches radial perturbations off them
        return (m.norm(dim=-1, keepdim=True) ** 6 * y / y.norm(dim=-1, keepdim=True)).reshape(x.shape)

    x0 = _unit_states(3, 2, 31)
    ops = flow_operators_from_function(f, time=2.0, time_unit="s", project_tangent=unit_sphere_tangent_projection)
    exact = flow_ftmle(ops, x0, method="exact")
    lanczos = flow_ftmle(ops, x0, method="lanczos", tol=1e-12)
    np.testing.assert_allclose(lanczos.ftmle, exact.ftmle, rtol=ITER_RTOL)
    for b in range(3):
        jac = torch.autograd.functional.jacobian(lambda z: f(z[None])[0], x0[b])
        m = x0[b].reshape(2, 3)
        basis = torch.zeros(6, 4, dtype=F64)
        for i in range(2):  # orthonormal basis of the plane orthogonal to m_i
            uu, _, _ = torch.linalg.svd(torch.eye(3, dtype=F64) - torch.outer(m[i], m[i]))
            basis[3 * i : 3 * i + 3, 2 * i : 2 * i + 2] = uu[:, :2]
        want = math.log(_sigma_max(jac @ basis)) / 2.0
        assert abs(exact.ftmle[b] - want) < ORACLE_TOL
        # the unprojected value is larger (so the projection matters here) ...
        assert math.log(_sigma_max(jac)) / 2.0 - want > 0.1
        # ... and the right singular vectors are tangent
        for res in (exact, lanczos):
            v = res.right_vector[b].reshape(2, 3)
            assert np.all(np.abs(np.sum(v * m.numpy(), axis=1)) < 1e-9)


# -- models ------------------------------------------------------------------------------------
def _mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7, dtype=F64), nn.Tanh(), nn.Linear(7, 4, dtype=F64))


@pytest.mark.parametrize("method", ["exact", "lanczos"])
def test_model_ftmle_equals_autograd_jacobian_svd(method):
    net = _mlp(0)
    x = torch.randn(3, 5, generator=_gen(40), dtype=F64)
    res = model_ftmle(net, x, method=method, tol=1e-13)
    assert res.n_layers == 3 and res.names == ("0:Linear", "1:Tanh", "2:Linear")
    assert res.total.time == 3.0 and res.total.time_unit == "layer"
    h = net[0](x).detach()
    for b in range(3):
        want = [
            math.log(_sigma_max(net[0].weight.detach())),
            math.log(float(torch.max(1.0 - torch.tanh(h[b]) ** 2))),
            math.log(_sigma_max(net[2].weight.detach())),
        ]
        np.testing.assert_allclose(res.layer_ftmle[:, b], want, rtol=0, atol=ORACLE_TOL)
        jac = torch.autograd.functional.jacobian(net, x[b])
        assert abs(res.total.ftmle[b] - math.log(_sigma_max(jac)) / 3.0) < ORACLE_TOL
    # sub-multiplicativity: ln sigma(J_total) <= sum_l ln sigma(J_l)
    assert np.all(3.0 * res.total.ftmle <= res.layer_ftmle.sum(axis=0) + 1e-12)


def test_model_ftmle_layer_selection():
    net = _mlp(1)
    x = torch.randn(2, 5, generator=_gen(41), dtype=F64)
    wrapper = nn.Module()
    wrapper.net = net
    by_seq = model_ftmle(net, x)
    by_name = model_ftmle(wrapper, x, layers=["net.0", "net.1", "net.2"])
    by_list = model_ftmle(list(net), x)
    for other in (by_name, by_list):
        np.testing.assert_allclose(other.layer_ftmle, by_seq.layer_ftmle, rtol=0, atol=1e-13)
        np.testing.assert_allclose(other.total.ftmle, by_seq.total.ftmle, rtol=0, atol=1e-13)
    # grouping Linear + Tanh into one layer changes the time convention: 2 layers
    grouped = model_ftmle(nn.Sequential(nn.Sequential(net[0], net[1]), net[2]), x)
    np.testing.assert_allclose(grouped.total.ftmle * 2.0, by_seq.total.ftmle * 3.0, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="not an nn.Sequential"):
        model_ftmle(wrapper, x)
    with pytest.raises(ValueError, match="no submodule"):
        model_ftmle(wrapper, x, layers=["net.9"])
    with pytest.raises(ValueError, match="training mode"):
        model_ftmle(nn.Sequential(nn.Linear(5, 5, dtype=F64), nn.Dropout(0.5)), x)


# -- the substrate helper and its operator hook ------------------------------------------------
def test_substrate_flow_operators_hook_is_used():
    from stosim.substrates.protocols import HasTangentSystem

    class WithOperators(FFESN, HasTangentSystem):  # the declared capability, not the method's presence, counts
        def flow_operators(self) -> FlowOperators:
            return flow_operators_from_function(self.evolve, time=7.0, time_unit="custom")

        def project_tangent(self, x0: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return v

    sub = WithOperators(n=6, steps=2, seed=2)
    x = 0.5 * torch.randn(2, 6, generator=_gen(50), dtype=F64)
    res = substrate_ftmle(sub, states=x)
    plain = substrate_ftmle(FFESN(n=6, steps=2, seed=2), states=x)
    assert res.time == 7.0 and res.time_unit == "custom"
    np.testing.assert_allclose(res.ftmle * 7.0, plain.ftmle * 2.0, rtol=0, atol=1e-13)


def test_sto_array_ftmle_is_exact_and_projected():
    """The coupled STO array's operators (Numba tangent and adjoint kernels, unit-sphere projection):
    check the projected sigma_max against central differences of the Numba map."""
    from stosim.substrates.sto_array import CoupledSTOArray

    sub = CoupledSTOArray(n=3, coupling_oe=500.0, duration_s=20e-12, dt_s=1e-12)
    x0 = _unit_states(2, 3, 60)
    res = substrate_ftmle(sub, states=x0)
    assert res.method == "exact" and res.time == 20e-12 and res.time_unit == "s"
    eps = 1e-6
    for b in range(2):
        cols = []
        for j in range(9):
            e = torch.zeros(1, 9, dtype=F64)
            e[0, j] = eps
            with torch.no_grad():
                cols.append((sub.evolve(x0[b : b + 1] + e) - sub.evolve(x0[b : b + 1] - e))[0] / (2 * eps))
        jac = torch.stack(cols, dim=1)
        proj = unit_sphere_tangent_projection(x0[b : b + 1].repeat(9, 1), torch.eye(9, dtype=F64)).T
        want = math.log(_sigma_max(jac @ proj)) / 20e-12
        assert abs(res.ftmle[b] - want) <= 1e-7 * abs(want)  # central differences: O(eps^2) + round-off/eps
    for v, m in zip(res.right_vector.reshape(2, 3, 3), x0.reshape(2, 3, 3).numpy()):
        assert np.all(np.abs(np.sum(v * m, axis=1)) < 1e-9)
    lanczos = substrate_ftmle(sub, states=x0, method="lanczos", tol=1e-10)
    np.testing.assert_allclose(lanczos.ftmle, res.ftmle, rtol=1e-6)
    with pytest.raises(ValueError, match="stochastic"):
        substrate_ftmle(CoupledSTOArray(n=3, duration_s=20e-12, observation_snr_db=20.0), states=x0)


# -- errors ------------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors():
    sub = FFESN(n=4, steps=1, seed=0)
    good = torch.zeros(2, 4, dtype=F64)
    with pytest.raises(ValueError, match="expected \\(batch, D\\)"):
        flow_ftmle(sub.evolve, torch.zeros(4, dtype=F64))
    with pytest.raises(ValueError, match="non-finite"):
        flow_ftmle(sub.evolve, torch.tensor([[0.0, 1.0, math.nan, 0.0]], dtype=F64))
    with pytest.raises(ValueError, match="method"):
        flow_ftmle(sub.evolve, good, method="svd")
    with pytest.raises(ValueError, match="tol"):
        flow_ftmle(sub.evolve, good, tol=0.0)
    with pytest.raises(ValueError, match="max_iter"):
        flow_ftmle(sub.evolve, good, max_iter=0)
    with pytest.raises(ValueError, match="time T"):
        FlowOperators(jvp=lambda x, v: v, vjp=lambda x, u: u, time=-1.0)
    ops = flow_operators_from_function(sub.evolve)
    with pytest.raises(ValueError, match="time and time_unit"):
        flow_ftmle(ops, good, time=2.0)
    with pytest.raises(ValueError, match="jvp returned"):
        flow_ftmle(FlowOperators(jvp=lambda x, v: v[:1], vjp=lambda x, u: u), good, method="lanczos")
    with pytest.raises(FloatingPointError, match="non-finite"):
        flow_ftmle(FlowOperators(jvp=lambda x, v: v / 0.0, vjp=lambda x, u: u), good, method="power")
    with pytest.raises(ValueError, match="exactly one"):
        substrate_ftmle(sub)
    with pytest.raises(ValueError, match="exactly one"):
        substrate_ftmle(sub, good, states=good)
    with pytest.raises(ValueError, match="expected \\(batch >= 1, 4\\)"):
        substrate_ftmle(sub, states=torch.zeros(2, 5, dtype=F64))
    with pytest.raises(ValueError, match="non-finite"):
        substrate_ftmle(sub, states=torch.full((2, 4), math.inf, dtype=F64))
    with pytest.raises(ValueError, match="multiple of 3"):
        unit_sphere_tangent_projection(good, good)
    with pytest.raises(ValueError, match="x has shape"):
        model_ftmle(_mlp(0), torch.zeros(5, dtype=F64))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_raise_a_value_error(dtype):
    """torch.linalg.svd / eigh have no half-precision kernels: x0 in float16 used to pass the input
    checks and fail inside the solver (NotImplementedError), after the operators had run."""
    x0 = torch.ones(2, 3, dtype=dtype)
    for method in ("exact", "lanczos", "power"):
        with pytest.raises(ValueError, match="x0 must be a float32 or float64 tensor"):
            flow_ftmle(lambda z: 2.0 * z, x0, method=method)
    with pytest.raises(ValueError, match="x must be a finite float32 or float64 tensor"):
        model_ftmle([lambda z: 2.0 * z], x0)
