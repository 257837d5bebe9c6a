"""Lorenz 96 and the FFESN as :class:`~stosim.analysis.lyapunov.TangentSystem` s (NumPy float64).

Both propagate the state and k tangent vectors at once, vectorized over the k vectors (rows of
q, shape (k, N)); no torch in the hot loop.

Lorenz 96 (docs/physics.md section 5), dx_i/dt = f(x)_i = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F with
periodic indices. One step is one classical RK4 step of ``dt`` model time units (the substrate's
integrator, ``Lorenz96.rk4_step``). Tangent vectors follow the RK4 discretization of the
variational equation dv/dt = Df(x) v, stage by stage::

    k1 = f(x),                 v1 = Df(x) q
    k2 = f(x + h/2 k1),        v2 = Df(x + h/2 k1) (q + h/2 v1)
    k3 = f(x + h/2 k2),        v3 = Df(x + h/2 k2) (q + h/2 v2)
    k4 = f(x + h k3),          v4 = Df(x + h k3)   (q + h v3)
    x' = x + h/6 (k1 + 2 k2 + 2 k3 + k4),   q' = q + h/6 (v1 + 2 v2 + 2 v3 + v4)

which is exactly the Jacobian of the RK4 map applied to q (the exponents are those of the map
that the substrate actually iterates), with the analytic Jacobian-vector product
(Df(x) v)_i = (v_{i+1} - v_{i-2}) x_{i-1} + (x_{i+1} - x_{i-2}) v_{i-1} - v_i. The divergence
of f is exactly -N (only the -x_i term has a diagonal derivative, for N >= 4), so the sum of
all N exponents of the flow is -N; the RK4 map's Jacobian determinant differs from exp(-N h)
by O(h^5) per step, i.e. O(h^4) in the rate.

FFESN: the map x -> tanh(W x) (one step = one iteration, time unit "step"), tangent vectors
q -> diag(1 - x'^2) W q with x' = tanh(W x), i.e. rows q <- (1 - x'^2) * (q W^T). At the origin
the tangent map is W itself, so for rho < 1 the exponents of an orbit that decays to 0 are
ln|eigenvalues of W| (the largest ln(rho)).
"""

from __future__ import annotations

import numbers

import numpy as np

from stosim.analysis.lyapunov import TangentSystem
from stosim.integrate.explicit import rk4_step, rk4_step_with_tangents
from stosim.integrate.threads import single_threaded_blas

__all__ = ["Lorenz96Tangent", "FFESNTangent"]


class Lorenz96Tangent(TangentSystem):
    """Lorenz 96 ring (N sites, forcing F) stepped by RK4 of ``dt`` model time units, with tangents.

    Parameters
    ----------
    n:
        N, the number of sites, integer >= 4 (as the substrate requires).
    forcing:
        F (model units), finite.
    dt:
        RK4 step in model time units, > 0. Default 0.01 (docs/physics.md section 5).
    """

    def __init__(self, n: int, forcing: float, dt: float = 0.01) -> None:
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or int(n) < 4:
            raise ValueError(f"n must be an integer >= 4; got {n!r}")
        if isinstance(forcing, bool) or not isinstance(forcing, numbers.Real) or not np.isfinite(forcing):
            raise ValueError(f"forcing must be a finite real number; got {forcing!r}")
        if isinstance(dt, bool) or not isinstance(dt, numbers.Real) or not (np.isfinite(dt) and dt > 0):
            raise ValueError(f"dt must be a finite number > 0 (model time units); got {dt!r}")
        self.n = int(n)
        self.forcing = float(forcing)
        self.dimension = self.n
        self.ambient_dimension = self.n
        self.step_time = float(dt)
        self.time_unit = "model time unit"
        idx = np.arange(self.n)
        # neighbour indices along the last axis: x[..., _ip1][i] = x_{i+1}, etc. (periodic)
        self._ip1 = np.roll(idx, -1)
        self._im1 = np.roll(idx, 1)
        self._im2 = np.roll(idx, 2)

    @classmethod
    def from_substrate(cls, substrate) -> "Lorenz96Tangent":
        """The tangent system of a :class:`~stosim.substrates.lorenz96.Lorenz96` substrate: same N and F,
        and the step its integrator actually takes, T / n_steps (= dt within a relative 1e-9)."""
        return cls(substrate.n, substrate.forcing, dt=substrate.duration / substrate.n_steps)

    # -- vector field and its Jacobian-vector product (last axis = sites) ---------------------
    def vector_field(self, x: np.ndarray) -> np.ndarray:
        """f(x)_i = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F along the last axis."""
        return (x[..., self._ip1] - x[..., self._im2]) * x[..., self._im1] - x + self.forcing

    def vector_field_jvp(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        """(Df(x) v)_i = (v_{i+1} - v_{i-2}) x_{i-1} + (x_{i+1} - x_{i-2}) v_{i-1} - v_i; x (N,), v (..., N)."""
        ip1, im1, im2 = self._ip1, self._im1, self._im2
        return (v[..., ip1] - v[..., im2]) * x[im1] + (x[ip1] - x[im2]) * v[..., im1] - v

    # -- TangentSystem ------------------------------------------------------------------------
    def step(self, x: np.ndarray) -> np.ndarray:
        return rk4_step(self.vector_field, x, self.step_time)

    def _stage(self, x: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(f(x), Df(x) v) for one state x (N,) and tangents v (k, N), sharing the neighbour terms of x."""
        ip1, im1, im2 = self._ip1, self._im1, self._im2
        x_prev = x[im1]
        dx = x[ip1] - x[im2]
        return dx * x_prev - x + self.forcing, (v[:, ip1] - v[:, im2]) * x_prev + dx * v[:, im1] - v

    def step_with_tangents(self, x: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return rk4_step_with_tangents(self._stage, x, q, self.step_time)

    def divergence(self, x: np.ndarray) -> float:
        """Trace of Df: exactly -N (the advection term has no diagonal derivative)."""
        return -float(self.n)


class FFESNTangent(TangentSystem):
    """The FFESN map x -> tanh(W x) with tangents q -> diag(1 - x'^2) W q (time unit: one step).

    Multi-step calls (``steps``, ``steps_with_tangents``) run their matrix products on one BLAS
    thread (multi-threaded BLAS on small products crawls on loaded machines).

    Parameters
    ----------
    W:
        The (N, N) recurrent matrix (converted to float64 NumPy).
    """

    def __init__(self, W) -> None:
        w = np.array(W, dtype=np.float64)
        if w.ndim != 2 or w.shape[0] != w.shape[1] or w.shape[0] < 1:
            raise ValueError(f"W must be a square (N, N) matrix; got shape {w.shape}")
        if not np.all(np.isfinite(w)):
            raise ValueError("W must be finite")
        self.W = w
        self._wt = np.ascontiguousarray(w.T)
        self.n = w.shape[0]
        self.dimension = self.n
        self.ambient_dimension = self.n
        self.step_time = 1.0
        self.time_unit = "step"

    @classmethod
    def from_substrate(cls, substrate) -> "FFESNTangent":
        """The tangent system of a :class:`~stosim.substrates.ffesn.FFESN` substrate (its W buffer, as float64)."""
        return cls(substrate.W.detach().cpu().double().numpy())

    def step(self, x: np.ndarray) -> np.ndarray:
        return np.tanh(self.W @ x)

    def steps(self, x: np.ndarray, n_steps: int) -> np.ndarray:
        with single_threaded_blas():
            for _ in range(n_steps):
                x = np.tanh(self.W @ x)
        return x

    def step_with_tangents(self, x: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x_new = np.tanh(self.W @ x)
        return x_new, (1.0 - x_new * x_new) * (q @ self._wt)

    def steps_with_tangents(self, x: np.ndarray, q: np.ndarray, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
        with single_threaded_blas():
            for _ in range(n_steps):
                x, q = self.step_with_tangents(x, q)
        return x, q
