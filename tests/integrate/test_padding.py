"""Oscillator padding of the gradient and tangent kernels (``stosim.integrate.flow.padded_oscillator_count``).

The kernels run on N_pad >= N oscillators so that every row of a chunk is whole 64-byte lines; the padding
oscillators are uncoupled copies of oscillator 0. The real oscillators' states, gradients and tangents must not
depend on them: compared here with the same runs unpadded (the padding switched off), in float64 to 1e-13
relative (bit for bit in practice: the products add exact zeros) and in float32 to 1e-6, and against backprop
through a torch RK4 loop (the definition) to 1e-10 in float64.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import stosim.integrate.flow as flow
from stosim import STOArray, load_device
from stosim.integrate.flow import _ArrayTensors, padded_oscillator_count, sto_flow, sto_jvp
from stosim.integrate.torch_steps import evolve_torch


@pytest.mark.parametrize(
    "n, dtype, expected",
    [
        (200, np.float32, 208),
        (200, np.float64, 200),
        (100, np.float64, 104),
        (100, np.float32, 112),
        (1000, np.float32, 1008),
        (40, np.float32, 40),  # 8 more would be 20 %: not padded
        (20, np.float32, 20),  # the fused small-N kernels: not padded
        (33, np.float64, 33),
    ],
)
def test_padded_count(n, dtype, expected):
    assert padded_oscillator_count(n, dtype) == expected


def test_padding_oscillators_are_uncoupled_copies_of_oscillator_0():
    arr = STOArray.generate(load_device(), 100, 500.0, seed=1)
    prm = _ArrayTensors(arr, np.float32)
    assert (prm.n_osc, prm.n_pad) == (100, 112)
    assert np.all(prm.osc[:, 100:] == prm.osc[:, :1])
    assert not prm.coupling_t[100:].any() and not prm.coupling_t[:, 100:].any()
    assert np.array_equal(prm.coupling_t[:100, :100], arr.coupling_transposed_oe().astype(np.float32))
    m = np.random.default_rng(0).standard_normal((2, 100, 3))
    assert np.array_equal(prm.out(prm.states_in(m)), m.astype(np.float32))
    assert np.all(prm.states_in(m)[:, 100:] == m[:, :1].astype(np.float32))
    assert not prm.zeros_in(m)[:, 100:].any()


def _unit(batch: int, n: int, seed: int, dtype) -> torch.Tensor:
    m = torch.randn(batch, n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return (m / m.norm(dim=-1, keepdim=True)).to(dtype)


def _flow_and_grad(array, m0, steps, budget=None):
    x = m0.clone().requires_grad_(True)
    w = torch.linspace(-1.0, 1.0, x.numel(), dtype=x.dtype).reshape(x.shape)
    out = sto_flow(x, array, steps, 1e-12, checkpoint_bytes=budget)
    (out * w).sum().backward()
    return out.detach(), x.grad


@pytest.mark.parametrize(
    "n, dtype, tol", [(100, torch.float64, 1e-13), (200, torch.float32, 1e-6), (100, torch.float32, 1e-6)]
)
@pytest.mark.parametrize("budget", [None, 1])  # stage fields kept / checkpoints
def test_padding_leaves_states_and_gradients_unchanged(monkeypatch, n, dtype, tol, budget):
    array = STOArray.generate(load_device(), n, 500.0, seed=3)
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    assert padded_oscillator_count(n, np_dtype) > n
    m0 = _unit(5, n, 1, dtype)
    out_p, g_p = _flow_and_grad(array, m0, 80, budget)
    monkeypatch.setattr(flow, "padded_oscillator_count", lambda n_osc, dt: n_osc)
    assert _ArrayTensors(array, np_dtype).n_pad == n
    out_u, g_u = _flow_and_grad(array, m0, 80, budget)
    assert out_p.shape == out_u.shape == (5, n, 3) and g_p.shape == (5, n, 3)
    assert torch.max(torch.abs(out_p - out_u)) <= tol
    assert torch.max(torch.abs(g_p - g_u)) <= tol * torch.max(torch.abs(g_u))


def test_padded_gradient_equals_backprop_through_a_torch_rk4_loop():
    """N = 100 in float64 (padded to 104), 120 steps: the definition, to 1e-10 relative."""
    array = STOArray.generate(load_device(), 100, 500.0, seed=4)
    m0 = _unit(3, 100, 2, torch.float64)
    out, g = _flow_and_grad(array, m0, 120)
    x = m0.clone().requires_grad_(True)
    dev = array.device
    ref = evolve_torch(
        x, 120, 1e-12, torch.as_tensor(array.coupling_transposed_oe()), torch.as_tensor(array.oscillator_parameters()),
        dev.torque_asymmetry, torch.as_tensor(dev.reference_direction, dtype=torch.float64),
    )  # fmt: skip
    w = torch.linspace(-1.0, 1.0, x.numel(), dtype=x.dtype).reshape(x.shape)
    (ref * w).sum().backward()
    assert torch.max(torch.abs(out - ref.detach())) < 1e-12
    assert torch.max(torch.abs(g - x.grad)) / torch.max(torch.abs(x.grad)) < 1e-10


def test_padded_tangent_equals_the_unpadded_one(monkeypatch):
    array = STOArray.generate(load_device(), 100, 500.0, seed=5)
    rng = np.random.default_rng(3)
    m0 = rng.standard_normal((4, 100, 3))
    t0 = rng.standard_normal((4, 100, 3))
    m_p, t_p = sto_jvp(m0, t0, array, 60, 1e-12)
    monkeypatch.setattr(flow, "padded_oscillator_count", lambda n_osc, dt: n_osc)
    m_u, t_u = sto_jvp(m0, t0, array, 60, 1e-12)
    assert m_p.shape == t_p.shape == (4, 100, 3)
    assert np.max(np.abs(m_p - m_u)) <= 1e-13 and np.max(np.abs(t_p - t_u)) <= 1e-13 * np.max(np.abs(t_u))


def test_lyapunov_tangent_system_runs_padded_and_matches_the_unpadded_one(monkeypatch):
    """STOArrayTangent at N = 100 (float64: the kernels run 104 oscillators): states and tangents equal the
    unpadded run's to 1e-13 (relative for tangents), and the state equals ``evolve`` (never padded)."""
    from stosim.analysis.tangent_sto import STOArrayTangent

    array = STOArray.generate(load_device(), 100, 500.0, seed=6)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((100, 3))
    x = (x / np.linalg.norm(x, axis=-1, keepdims=True)).reshape(-1)
    q = rng.standard_normal((3, 300))
    system = STOArrayTangent(array, 1e-12)
    assert system._prm.n_pad == 104
    m_p, t_p = system.steps_with_tangents(x, q, 40)
    assert m_p.shape == (300,) and t_p.shape == (3, 300)
    assert np.max(np.abs(m_p - system.steps(x, 40))) <= 1e-13
    monkeypatch.setattr(flow, "padded_oscillator_count", lambda n_osc, dt: n_osc)
    unpadded = STOArrayTangent(array, 1e-12)
    assert unpadded._prm.n_pad == 100
    m_u, t_u = unpadded.steps_with_tangents(x, q, 40)
    assert np.max(np.abs(m_p - m_u)) <= 1e-13 and np.max(np.abs(t_p - t_u)) <= 1e-13 * np.max(np.abs(t_u))
