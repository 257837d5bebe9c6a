"""The classical fourth-order Runge-Kutta step, written once for every array type (NumPy, torch).

For dx/dt = f(x) and a step h (in the system's own time unit):

    k1 = f(x),  k2 = f(x + h/2 k1),  k3 = f(x + h/2 k2),  k4 = f(x + h k3)
    x(t + h) = x + h/6 (k1 + 2 k2 + 2 k3 + k4)          (local error O(h^5), global O(h^4))

:func:`rk4_step_with_tangents` applies the same scheme to the system extended by its tangent
dynamics dv/dt = Df(x) v, i.e. it returns the exact derivative of the discrete RK4 map applied to v
(the tangent map of Lyapunov spectra). The coupled-STO engines fuse their RK4 stages with the LLG
right-hand side in Numba kernels (:mod:`stosim.integrate.sto_kernels`) and do not use these.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

Array = TypeVar("Array")

__all__ = ["rk4_step", "rk4_step_with_tangents"]


def rk4_step(f: Callable[[Array], Array], x: Array, h: float) -> Array:
    """One classical RK4 step of size ``h`` of dx/dt = f(x) (autonomous; hold any input inside ``f``)."""
    k1 = f(x)
    k2 = f(x + (0.5 * h) * k1)
    k3 = f(x + (0.5 * h) * k2)
    k4 = f(x + h * k3)
    return x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def rk4_step_with_tangents(
    stage: Callable[[Array, Array], tuple[Array, Array]], x: Array, v: Array, h: float
) -> tuple[Array, Array]:
    """One RK4 step of the state ``x`` and its tangents ``v``: ``stage(x, v)`` returns (f(x), Df(x) v).

    v' = v + h/6 (v1 + 2 v2 + 2 v3 + v4) with v_i = Df(s_i) (v + c_i h v_{i-1}) at the stage states s_i:
    the Jacobian of the discrete map x -> x' applied to v, exactly.
    """
    k1, v1 = stage(x, v)
    k2, v2 = stage(x + (0.5 * h) * k1, v + (0.5 * h) * v1)
    k3, v3 = stage(x + (0.5 * h) * k2, v + (0.5 * h) * v2)
    k4, v4 = stage(x + h * k3, v + h * v3)
    c = h / 6.0
    return x + c * (k1 + 2.0 * k2 + 2.0 * k3 + k4), v + c * (v1 + 2.0 * v2 + 2.0 * v3 + v4)
