"""The deep coupled STOs (read-in -> STOs -> Linear -> STOs -> readout): training gradients of every layer."""

from __future__ import annotations

import torch

from stosim.integrate.torch_steps import evolve_torch
from stosim.models import DeepReservoirClassifier
from stosim.substrates.sto_array import CoupledSTOArray

N, STEPS, DT = 4, 25, 1e-12


def _torch_layer(sub: CoupledSTOArray, h: torch.Tensor) -> torch.Tensor:
    """m(T) of one STO layer by plain backpropagation through a torch loop of projected RK4 steps."""
    m = h.reshape(h.shape[0], N, 3)
    m = m / m.norm(dim=-1, keepdim=True)
    lam = sub.array.device.torque_asymmetry
    return evolve_torch(m, STEPS, DT, sub.coupling_t, sub.osc, lam, sub.p).reshape(h.shape)


def test_deep_model_gradients_equal_backprop_through_torch_rk4_loops() -> None:
    """Every parameter's gradient (read-in, inner layer, readout) through the two Numba adjoints equals plain
    backpropagation through torch RK4 loops of the same discrete map, to 1e-10 relative in float64 (N = 4,
    mu = 500 Oe, 25 steps of 1 ps per layer, batch 3)."""
    torch.manual_seed(0)
    first, second = (
        CoupledSTOArray(n=N, coupling_oe=500.0, duration_s=STEPS * DT, dt_s=DT, seed=s, dtype=torch.float64)
        for s in (0, 1)
    )
    model = DeepReservoirClassifier(8, 3, first, second)
    x = torch.randn(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 2, 1])
    params = list(model.parameters())
    assert len(params) == 6  # weight and bias of read_in, inner, readout; the arrays are buffers
    fast = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), y), params)
    h = _torch_layer(second, model.inner(_torch_layer(first, model.read_in(x))))
    ref = torch.autograd.grad(torch.nn.functional.cross_entropy(model.readout(h), y), params)
    for g_fast, g_ref in zip(fast, ref):
        assert g_ref.abs().max() > 0
        assert float((g_fast - g_ref).abs().max() / g_ref.abs().max()) < 1e-10
