"""Differentiable time stepping of the coupled STO array in torch (autograd through every step).

Same schemes as the Numba loops (:mod:`stosim.integrate.sto_kernels`): RK4 with projection
onto |m| = 1 for deterministic runs, stochastic Heun for a thermal field, and dynamical
noise m <- (m + s_b xi)/|...| with s_b = std(m[b]) f after each step (the update of
:func:`stosim.physics.noise.make_state_noise_point`, the body the Numba loops compile), f the per-step factor of
:meth:`stosim.simulation.NoiseSettings.dynamical_factor`: 10^(-SNR/20) per step (the seed study's
definition) or 10^(-SNR/20) sqrt(dt / t_ref) over a reference time t_ref (independent of dt). States
are (B, N, 3) tensors.

Random numbers: with ``thermal_rng`` / ``dynamical_rng`` (numpy Generators) each step draws
standard normals of shape (B, N, 3) from them, in the order and dtype of the Numba loops fed by
:func:`stosim.simulation.evolve` from the same streams, so one seed gives one noise realisation
on either engine, whether or not autograd records a graph. Otherwise from an explicit
``torch.Generator``.
"""

from __future__ import annotations

import numpy as np
import torch

from stosim.physics.noise import make_state_noise_point
from stosim.physics.torch_llg import llg_rhs_torch, rk4_step_torch

__all__ = ["evolve_torch"]

# m <- (m + s xi)/|m + s xi|: the body the Numba loops compile (stosim.integrate.sto_kernels)
_state_noise_point = make_state_noise_point(torch.sqrt)


def _project(m: torch.Tensor) -> torch.Tensor:
    return m / m.norm(dim=-1, keepdim=True)


def _standard_normal(m: torch.Tensor, rng: np.random.Generator | None, generator: torch.Generator | None):
    """Standard normals shaped and typed like m, from the numpy stream ``rng`` when given."""
    if rng is not None:
        draw = rng.standard_normal(tuple(m.shape), dtype=np.float32 if m.dtype == torch.float32 else np.float64)
        return torch.from_numpy(draw).to(dtype=m.dtype, device=m.device)
    return torch.randn(m.shape, generator=generator, dtype=m.dtype, device=m.device)


def evolve_torch(
    m: torch.Tensor,
    n_steps: int,
    dt_s: float,
    coupling_t: torch.Tensor | None,
    osc: torch.Tensor,
    lam: float,
    p: torch.Tensor,
    *,
    thermal_sigma_oe: torch.Tensor | None = None,
    dynamical_factor: float | None = None,
    generator: torch.Generator | None = None,
    thermal_rng: np.random.Generator | None = None,
    dynamical_rng: np.random.Generator | None = None,
) -> torch.Tensor:
    """Advance m (B, N, 3) by ``n_steps`` steps of ``dt_s`` seconds, differentiably.

    ``thermal_sigma_oe`` (N,): per-oscillator thermal field standard deviation (Heun is used);
    ``dynamical_factor``: sigma_step / std(m) of the dynamical noise in one step of ``dt_s``, or None:
    10^(-SNR/20) per step, or 10^(-SNR/20) sqrt(dt / t_ref) over a reference time t_ref
    (:func:`stosim.physics.noise.dynamical_step_factor`).
    ``thermal_rng`` and
    ``dynamical_rng``: numpy streams of the two noises (see the module docstring); without them
    both draw from ``generator``.
    """
    for _ in range(n_steps):
        if thermal_sigma_oe is not None:
            field = _standard_normal(m, thermal_rng, generator) * thermal_sigma_oe[:, None]
            # stochastic Heun in the order of the Numba stage kernels: m + dt (k1/2 + k2/2)
            k1 = llg_rhs_torch(m, coupling_t, osc, lam, p, field)
            k2 = llg_rhs_torch(m + dt_s * k1, coupling_t, osc, lam, p, field)
            m = _project(m + dt_s * (0.5 * k1 + 0.5 * k2))
        else:
            m = rk4_step_torch(m, dt_s, coupling_t, osc, lam, p)
        if dynamical_factor is not None:
            xi = _standard_normal(m, dynamical_rng, generator)
            s = m.detach().reshape(m.shape[0], -1).std(dim=1, unbiased=False) * dynamical_factor
            m = torch.stack(_state_noise_point(*m.unbind(-1), s[:, None], *xi.unbind(-1), 1.0), dim=-1)
    return m
