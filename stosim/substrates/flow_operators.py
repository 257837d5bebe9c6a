"""The flow-operator protocol: matrix-free Jacobian access a substrate offers to the analyses.

A substrate that knows its own tangent dynamics returns a :class:`FlowOperators` from
``flow_operators()`` (:class:`stosim.substrates.protocols.HasTangentSystem`); the finite-time maximal
Lyapunov exponent of :mod:`stosim.analysis.ftmle` consumes it. The protocol lives with the substrates
(the layer that provides it) so that substrates never import the analysis that uses them.

Projections onto the tangent space: :func:`identity_projection` (flat state spaces) and
:func:`unit_sphere_tangent_projection` (coupled unit magnetizations, a product of N unit spheres).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Callable

import torch

__all__ = ["FlowOperators", "check_flow_time", "identity_projection", "unit_sphere_tangent_projection"]

Tensor = torch.Tensor


# ----------------------------------------------------------------------------------------------
# projections
# ----------------------------------------------------------------------------------------------
def identity_projection(x0: Tensor, v: Tensor) -> Tensor:
    """P = identity (flat state spaces)."""
    return v


def unit_sphere_tangent_projection(x0: Tensor, v: Tensor) -> Tensor:
    """Project each consecutive 3-vector of v (B, 3N) onto the plane orthogonal to m_i = x0's i-th 3-vector.

    (P v)_i = v_i - m^_i (m^_i . v_i), m^_i = m_i / |m_i|: the tangent space of the product of N unit
    spheres at x0. Raises ``ValueError`` if D is not a multiple of 3 or some m_i is zero.
    """
    if x0.shape != v.shape or x0.ndim != 2:
        raise ValueError(f"x0 {tuple(x0.shape)} and v {tuple(v.shape)} must both have shape (batch, 3N)")
    if x0.shape[1] % 3 != 0:
        raise ValueError(f"state dimension {x0.shape[1]} is not a multiple of 3 (one 3-vector per oscillator)")
    m = x0.reshape(x0.shape[0], -1, 3)
    norm = m.norm(dim=-1, keepdim=True)
    if bool((norm == 0).any()):
        raise ValueError("a 3-vector of x0 is zero: the tangent plane of the unit sphere is undefined there")
    m = m / norm
    w = v.reshape(m.shape)
    return (w - m * (m * w).sum(dim=-1, keepdim=True)).reshape(v.shape)


# ----------------------------------------------------------------------------------------------
# the operator protocol
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FlowOperators:
    """Matrix-free access to the Jacobian J = dx(T)/dx(0) of a map, batched over samples.

    - ``jvp(x0, v)``: J v, x0 (B, D) and v (B, D) -> (B, D_out).
    - ``vjp(x0, u)``: J^T u, x0 (B, D) and u (B, D_out) -> (B, D).
    - ``time``: T (> 0, finite) in ``time_unit``; FTMLE = ln sigma_max / T.
    - ``time_unit``: e.g. ``"s"``, ``"step"``, ``"model time unit"``, ``"layer"``.
    - ``project_tangent(x0, v)``: orthogonal projector onto the tangent space at x0 (B, D) -> (B, D);
      identity by default. The exponent is that of J P.
    - ``jacobian(x0)``: optional full unprojected Jacobian (B, D_out, D), used by the exact method.
    - ``linearize(x0)``: optional; returns ``(jvp_at, vjp_at)``, the maps v -> J v and u -> J^T u at
      this fixed batch x0 (e.g. sharing one recorded forward pass). The iterative methods use it
      when given, re-linearizing when the set of unconverged samples shrinks.

    Samples must be independent; the functions may be called with any sub-batch and with x0
    repeated. They receive tensors without a graph and should return tensors without one.
    """

    jvp: Callable[[Tensor, Tensor], Tensor]
    vjp: Callable[[Tensor, Tensor], Tensor]
    time: float = 1.0
    time_unit: str = "1"
    project_tangent: Callable[[Tensor, Tensor], Tensor] = identity_projection
    jacobian: Callable[[Tensor], Tensor] | None = None
    linearize: Callable[[Tensor], tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] | None = None

    def __post_init__(self) -> None:
        for name in ("jvp", "vjp", "project_tangent"):
            if not callable(getattr(self, name)):
                raise ValueError(f"FlowOperators.{name} must be callable; got {getattr(self, name)!r}")
        for name in ("jacobian", "linearize"):
            if getattr(self, name) is not None and not callable(getattr(self, name)):
                raise ValueError(f"FlowOperators.{name} must be callable or None; got {getattr(self, name)!r}")
        check_flow_time(self.time)
        if not isinstance(self.time_unit, str) or not self.time_unit:
            raise ValueError(f"FlowOperators.time_unit must be a non-empty string; got {self.time_unit!r}")


def check_flow_time(time: object) -> float:
    """``time`` as a float, or ``ValueError`` unless it is a finite real number > 0."""
    if isinstance(time, bool) or not isinstance(time, numbers.Real) or not math.isfinite(float(time)) or not time > 0:
        raise ValueError(f"time T must be a finite number > 0; got {time!r}")
    return float(time)
