"""Exact gradients through the coupled STO array (Numba adjoint of the discrete RK4 map)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stosim.integrate.flow import checkpoint_segment, keeps_stage_fields, sto_flow
from stosim.integrate.torch_steps import evolve_torch
from stosim.physics.array import STOArray
from stosim.substrates.sto_array import CoupledSTOArray


def _unit(batch: int, n: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    m = torch.randn(batch, n, 3, dtype=dtype, generator=torch.Generator().manual_seed(seed))
    return m / m.norm(dim=-1, keepdim=True)


def _torch_rk4(m0: torch.Tensor, array: STOArray, steps: int) -> torch.Tensor:
    """The same projected RK4 map (1 ps steps) as a torch loop, for backprop through it."""
    device = array.device
    return evolve_torch(
        m0,
        steps,
        1e-12,
        torch.as_tensor(array.coupling_transposed_oe()),
        torch.as_tensor(array.oscillator_parameters()),
        device.torque_asymmetry,
        torch.as_tensor(device.reference_direction, dtype=torch.float64),
    )


def test_gradcheck_float64(device):
    array = STOArray.generate(device, 4, 500.0, seed=2)
    m0 = _unit(2, 4, 0).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: sto_flow(x, array, 6, 1e-12), (m0,), eps=1e-7, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("budget", [1 << 30, 1])  # all states kept / checkpoints every ~sqrt(n) steps
def test_adjoint_equals_backprop_through_a_torch_rk4_loop(device, budget):
    """Relative agreement 1e-10 in float64 (N = 20, mu = 500 Oe, 150 steps)."""
    array = STOArray.generate(device, 20, 500.0, seed=3)
    m0 = _unit(5, 20, 1).requires_grad_(True)
    weights = torch.randn(5, 20, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out = sto_flow(m0, array, 150, 1e-12, checkpoint_bytes=budget)
    (out * weights).sum().backward()
    g_fast = m0.grad.clone()
    m0.grad = None
    ref = _torch_rk4(m0, array, 150)
    (ref * weights).sum().backward()
    assert torch.max(torch.abs(out - ref)) < 1e-13
    assert torch.max(torch.abs(g_fast - m0.grad)) / torch.max(torch.abs(m0.grad)) < 1e-10


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kept_stage_fields_give_the_gradient_of_the_other_plans_bitwise(device, dtype):
    """N = 40 (above the fused small-N loop), 60 steps: the plan that keeps every stage field and 1/|u| (8 products
    per step; its backward pass projects the cotangent with the kept m' and 1/|u| and recomputes the stage states
    without their sum), the one that keeps every state (12) and the checkpointed one (12, segments of 8 steps) give
    the same output and gradient bitwise, in float64 and float32; in float64 they agree with backprop through a
    torch RK4 loop to 1e-10 relative."""
    n, batch, steps = 40, 3, 60
    array = STOArray.generate(device, n, 500.0, seed=4)
    state_bytes = 3 * batch * n * (8 if dtype == torch.float64 else 4)
    budgets = {
        "fields": (steps + 1) * state_bytes + steps * state_bytes * 5 // 3,
        "states": (steps + 1) * state_bytes,
        "segments": 1,
    }
    assert keeps_stage_fields(steps, n, state_bytes, budgets["fields"])
    assert not keeps_stage_fields(steps, n, state_bytes, budgets["fields"] - 1)
    assert checkpoint_segment(steps, state_bytes, budgets["states"]) == 1
    weights = torch.randn(batch, n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5)).to(dtype)
    results = {}
    for plan, budget in budgets.items():
        m0 = _unit(batch, n, 6, dtype).requires_grad_(True)
        out = sto_flow(m0, array, steps, 1e-12, checkpoint_bytes=budget)
        (out * weights).sum().backward()
        results[plan] = (out.detach(), m0.grad)
    for plan in ("states", "segments"):
        assert torch.equal(results[plan][0], results["fields"][0]), plan
        assert torch.equal(results[plan][1], results["fields"][1]), plan
    if dtype == torch.float32:
        return
    m0 = _unit(batch, n, 6).requires_grad_(True)
    ref = _torch_rk4(m0, array, steps)
    (ref * weights).sum().backward()
    assert torch.max(torch.abs(results["fields"][0] - ref)) < 1e-13
    assert torch.max(torch.abs(results["fields"][1] - m0.grad)) / torch.max(torch.abs(m0.grad)) < 1e-10


def test_kept_stage_fields_only_above_the_small_n_loop():
    assert not keeps_stage_fields(300, 32, 1000, budget_bytes=10**9)  # N <= 32: the fused loop, no products
    assert keeps_stage_fields(300, 33, 1000, budget_bytes=10**9)
    # 301 states + 300 x 5/3 states of stage fields and 1/|u|
    assert keeps_stage_fields(300, 200, 3000, budget_bytes=301 * 3000 + 300 * 5000)
    assert not keeps_stage_fields(300, 200, 3000, budget_bytes=301 * 3000 + 300 * 5000 - 1)


def test_forward_keeping_fields_reports_the_first_non_finite_step(device):
    from stosim.integrate.adjoint import forward_keep_chunk

    array = STOArray.generate(device, 40, 500.0, seed=4)
    states = np.empty((6, 3, 2, 40))
    states[0] = _unit(2, 40, 0).numpy().transpose(2, 0, 1)
    states[0, 1, 1, 7] = np.nan
    fields = np.empty((5, 5, 2, 40))
    osc = np.ascontiguousarray(array.oscillator_parameters())
    w_t = np.ascontiguousarray(array.coupling_transposed_oe())
    p = np.asarray(device.reference_direction, dtype=np.float64)
    assert forward_keep_chunk(states, fields, w_t, True, osc, float(device.torque_asymmetry), p, 1e-12) == 0
    states[0, 1, 1, 7] = 0.0
    states[0] /= np.linalg.norm(states[0], axis=0)
    assert forward_keep_chunk(states, fields, w_t, True, osc, float(device.torque_asymmetry), p, 1e-12) == -1
    assert np.all(np.isfinite(states)) and np.allclose(np.linalg.norm(states, axis=1), 1.0, atol=1e-14)


def test_kept_arrays_of_the_wrong_shape_are_refused(device):
    """The kept-plan kernels need the four stage fields and 1/|u| per step (5 rows) and one state more than steps:
    anything else is refused with a message, never read past its end."""
    from stosim.integrate.adjoint import adjoint_kept_chunk, forward_keep_chunk

    array = STOArray.generate(device, 40, 500.0, seed=4)
    osc = np.ascontiguousarray(array.oscillator_parameters())
    w_t = np.ascontiguousarray(array.coupling_transposed_oe())
    p = np.asarray(device.reference_direction, dtype=np.float64)
    lam = float(device.torque_asymmetry)
    states = np.empty((6, 3, 2, 40))
    states[:] = _unit(2, 40, 0).numpy().transpose(2, 0, 1)
    for kept, st in ((np.empty((5, 4, 2, 40)), states), (np.empty((4, 5, 2, 40)), states)):
        with pytest.raises(ValueError, match="kept must be"):
            forward_keep_chunk(st, kept, w_t, True, osc, lam, p, 1e-12)
        with pytest.raises(ValueError, match="kept must be"):
            adjoint_kept_chunk(st, kept, np.ones((3, 2, 40)), w_t.T.copy(), True, osc, lam, p, 1e-12)


def test_checkpoint_segment_bounds_memory():
    assert checkpoint_segment(300, 1000, budget_bytes=10**9) == 1
    assert checkpoint_segment(300, 1000, budget_bytes=100_000) == 18  # ceil(sqrt(300))


def test_float32_gradient_close_to_float64(device):
    array = STOArray.generate(device, 10, 500.0, seed=3)
    grads = []
    for dtype in (torch.float64, torch.float32):
        m0 = _unit(3, 10, 4).to(dtype).requires_grad_(True)
        sto_flow(m0, array, 100, 1e-12)[..., 0].sum().backward()
        grads.append(m0.grad.double())
    assert torch.max(torch.abs(grads[0] - grads[1])) / torch.max(torch.abs(grads[0])) < 1e-4


def test_substrate_gradcheck_through_readin_normalization():
    sub = CoupledSTOArray(n=3, coupling_oe=300.0, duration_s=5e-12, dt_s=1e-12, seed=0)
    u = torch.randn(2, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    assert torch.autograd.gradcheck(sub, (u,), eps=1e-7, atol=1e-7, rtol=1e-6)


def test_noisy_substrate_gradients_flow_and_runs_repeat_after_reset():
    sub = CoupledSTOArray(
        n=4, coupling_oe=300.0, duration_s=10e-12, dt_s=1e-12, seed=0, temperature_k=300.0, dynamical_snr_db=30.0
    )
    u = torch.randn(2, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    sub.reset(7)
    y1 = sub(u)
    y1.sum().backward()
    assert torch.isfinite(u.grad).all() and u.grad.abs().max() > 0
    sub.reset(7)
    np.testing.assert_array_equal(sub(u).detach().numpy(), y1.detach().numpy())


def test_adjoint_agrees_with_torchdiffeq_odeint_adjoint(device):
    """torchdiffeq's continuous adjoint (rk4, same dt) integrates the unprojected flow, whose gradient
    has an extra radial part; the tangential parts (the only ones that move the state on the
    spheres) agree to 1e-8 relative at dt = 1 ps and converge at 4th order as dt shrinks."""
    from torchdiffeq import odeint_adjoint

    from stosim.physics.torch_llg import STORightHandSide

    array = STOArray.generate(device, 10, 500.0, seed=1)
    m0 = _unit(3, 10, 0)
    weights = torch.randn(3, 10, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    rhs = STORightHandSide(
        array.coupling_transposed_oe(),
        array.oscillator_parameters(),
        device.torque_asymmetry,
        device.reference_direction,
    )

    def tangential(g):
        return g - m0 * (g * m0).sum(-1, keepdim=True)

    errors = []
    for steps, dt in ((100, 1e-12), (200, 0.5e-12)):
        x = m0.clone().requires_grad_(True)
        (sto_flow(x, array, steps, dt) * weights).sum().backward()
        y = m0.clone().requires_grad_(True)
        out = odeint_adjoint(
            rhs,
            y,
            torch.tensor([0.0, steps * dt], dtype=torch.float64),
            method="rk4",
            options={"step_size": dt},
            adjoint_params=(),
        )
        (out[-1] * weights).sum().backward()
        errors.append(float((tangential(x.grad) - tangential(y.grad)).abs().max() / tangential(y.grad).abs().max()))
    assert errors[0] < 1e-8
    assert errors[0] / errors[1] > 10  # ~16 for a 4th-order method
