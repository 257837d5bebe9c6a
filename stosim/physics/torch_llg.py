"""Torch implementation of the same LLG-Slonczewski right-hand side (for autograd, torchdiffeq, GPUs).

Equations as in :mod:`stosim.physics.llg`; states here are (B, N, 3) tensors (batch,
oscillator, component). A cross-backend test keeps both implementations equal to ~1e-12
in float64.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["llg_rhs_torch", "rk4_step_torch", "STORightHandSide"]


def llg_rhs_torch(
    m: torch.Tensor,
    coupling_t: torch.Tensor | None,
    osc: torch.Tensor,
    lam: float,
    p: torch.Tensor,
    extra_field: torch.Tensor | None = None,
) -> torch.Tensor:
    """dm/dt (1/s), shape (B, N, 3).

    ``coupling_t`` is (mu W)^T in Oe (N x N) or None for no coupling; ``osc`` the (5, N)
    per-oscillator parameters (H_appl, H_K', H_s0, alpha, gamma/(1+alpha^2)); ``p`` the unit
    reference direction (3,); ``extra_field`` an optional (B, N, 3) field in Oe (noise).
    """
    mx, my, mz = m.unbind(-1)
    h_appl, hk_eff, hs0, alpha, pref = osc.unbind(0)
    hx = mx @ coupling_t if coupling_t is not None else torch.zeros_like(mx)
    hy = torch.zeros_like(mx)
    hz = h_appl + hk_eff * mz
    if extra_field is not None:
        ex, ey, ez = extra_field.unbind(-1)
        hx, hy, hz = hx + ex, hy + ey, hz + ez
    px, py, pz = p.unbind(0)
    hs = hs0 / (1.0 + lam * (mx * px + my * py + mz * pz))
    bx = hx + hs * (py * mz - pz * my)
    by = hy + hs * (pz * mx - px * mz)
    bz = hz + hs * (px * my - py * mx)
    ax = my * bz - mz * by
    ay = mz * bx - mx * bz
    az = mx * by - my * bx
    dx = my * az - mz * ay
    dy = mz * ax - mx * az
    dz = mx * ay - my * ax
    return torch.stack((-pref * (ax + alpha * dx), -pref * (ay + alpha * dy), -pref * (az + alpha * dz)), dim=-1)


def rk4_step_torch(
    m: torch.Tensor,
    dt_s: float,
    coupling_t: torch.Tensor | None,
    osc: torch.Tensor,
    lam: float,
    p: torch.Tensor,
    project: bool = True,
) -> torch.Tensor:
    """One classical RK4 step of dt seconds, then (by default) projection onto |m| = 1."""
    f = lambda x: llg_rhs_torch(x, coupling_t, osc, lam, p)  # noqa: E731
    k1 = f(m)
    k2 = f(m + 0.5 * dt_s * k1)
    k3 = f(m + 0.5 * dt_s * k2)
    k4 = f(m + dt_s * k3)
    out = m + dt_s * (k1 / 6.0 + k2 / 3.0 + k3 / 3.0 + k4 / 6.0)
    return out / out.norm(dim=-1, keepdim=True) if project else out


class STORightHandSide(torch.nn.Module):
    """f(t, m) for torchdiffeq: the coupled array's dm/dt with m of shape (B, N, 3)."""

    def __init__(
        self,
        coupling_t: np.ndarray | torch.Tensor | None,
        osc: np.ndarray | torch.Tensor,
        lam: float,
        p: np.ndarray | torch.Tensor,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        as_t = lambda x: torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=dtype)  # noqa: E731
        self.register_buffer("coupling_t", as_t(coupling_t) if coupling_t is not None else None)
        self.register_buffer("osc", as_t(osc))
        self.register_buffer("p", as_t(p))
        self.lam = float(lam)

    def forward(self, t: torch.Tensor, m: torch.Tensor) -> torch.Tensor:  # autonomous
        return llg_rhs_torch(m, self.coupling_t, self.osc, self.lam, self.p)
