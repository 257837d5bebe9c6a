"""The LLG-Slonczewski right-hand side on torch tensors (for autograd, torchdiffeq, GPUs).

Not a second implementation: :func:`llg_rhs_torch` evaluates the Python body of the Numba
kernel :func:`stosim.physics.llg.llg_point` (``llg_point.py_func``, plain arithmetic) on
(B, N) component tensors, and unpacks the parameter rows with the same
:func:`stosim.physics.llg.oscillator_rows`. States here are (B, N, 3) tensors (batch,
oscillator, component). Tests keep both engines equal to ~1e-12 in float64 (only the
order of floating-point contractions differs).
"""

from __future__ import annotations

import numpy as np
import torch

from stosim.physics.llg import llg_point, oscillator_rows

__all__ = ["llg_rhs_torch", "rk4_step_torch", "STORightHandSide"]

_llg_point = llg_point.py_func  # the Numba kernel's own body, evaluated on tensors
_oscillator_rows = oscillator_rows.py_func


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
    per-oscillator parameters (rows :data:`stosim.physics.llg.OSC_APPLIED_FIELD_OE` ...);
    ``p`` the unit reference direction (3,); ``extra_field`` an optional (B, N, 3) field in
    Oe (noise). The fields h_x = m_x (mu W)^T (+ noise), h_y, h_z (noise) enter
    :func:`stosim.physics.llg.llg_point` as in the Numba stage kernels.
    """
    mx, my, mz = m.unbind(-1)
    h_appl, hk_eff, hs0, alpha, pref = _oscillator_rows(osc)
    hx = mx @ coupling_t if coupling_t is not None else 0.0
    hy = hz = 0.0
    if extra_field is not None:
        ex, hy, hz = extra_field.unbind(-1)
        hx = hx + ex
    px, py, pz = p.unbind(0)
    return torch.stack(
        _llg_point(mx, my, mz, hx, hy, hz, h_appl, hk_eff, hs0, alpha, pref, lam, px, py, pz, 1.0), dim=-1
    )


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
