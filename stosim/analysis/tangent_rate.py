"""The random rate network as a :class:`~stosim.analysis.lyapunov.TangentSystem` (NumPy float64).

Continuous time (time unit tau; one step = one RK4 step of dt/tau)::

    dh/dt = f(h) = -h + J phi(h) + I,      Df(h) = -1 + J diag(phi'(h)),   phi = tanh, phi' = 1 - tanh^2

and the tangent vectors follow the RK4 discretization of dv/dt = Df(h) v stage by stage (the exact
Jacobian of the RK4 map, as :class:`~stosim.analysis.tangent_models.Lorenz96Tangent`). The state
and the k tangent vectors share one matrix product per stage: [phi(h); phi'(h) * v] @ J^T.

Discrete time (time unit one step): h' = J phi(h) + I_s, DPhi(h) = J diag(phi'(h)).

Divergence (sum of all exponents = its time average): continuous, tr Df = -N + sum_i J_ii phi'(h_i)
(in 1/tau; exactly -N for a zero diagonal); discrete, ln |det DPhi| = ln |det J| + sum_i ln phi'(h_i).

With input, the frozen input I_s depends on the step index s, which the flat state carries as its
last entry (ambient dimension N + 1, tangent dimension N; the last tangent component is zero).
"""

from __future__ import annotations

import numpy as np

from stosim.analysis.lyapunov import TangentSystem
from stosim.integrate.explicit import rk4_step, rk4_step_with_tangents
from stosim.integrate.threads import single_threaded_blas
from stosim.substrates.rate_network import FrozenInput, RateNetworkParameters, draw_coupling_matrix, rate_parameters

__all__ = ["RateNetworkTangent", "mean_divergence"]


class RateNetworkTangent(TangentSystem):
    """Random rate network with tangents; keywords of :class:`RateNetworkParameters`, or ``J`` given."""

    def __init__(self, J: np.ndarray | None = None, **params: object) -> None:
        if J is not None:
            j = np.array(J, dtype=np.float64)
            if j.ndim != 2 or j.shape[0] != j.shape[1] or not np.all(np.isfinite(j)):
                raise ValueError(f"J must be a finite square (N, N) matrix; got shape {j.shape}")
            params = {**params, "n": j.shape[0]}
        self.params: RateNetworkParameters = rate_parameters(**params)
        p = self.params
        self.J = j if J is not None else draw_coupling_matrix(p.n, p.g, p.seed, p.zero_diagonal)
        self._jt = np.ascontiguousarray(self.J.T)
        self._diag = np.diag(self.J).copy()
        self._logdet: float | None = None
        self.n = p.n
        self.input = FrozenInput(p)
        self.has_input = self.input.active
        self.dimension = self.n
        self.ambient_dimension = self.n + (1 if self.has_input else 0)
        self.continuous = p.time == "continuous"
        self.step_time = p.dt / p.tau if self.continuous else 1.0
        self.time_unit = "tau" if self.continuous else "step"

    @classmethod
    def from_substrate(cls, substrate) -> "RateNetworkTangent":
        """The tangent system of a :class:`~stosim.substrates.rate_network.RateNetwork` (its J, as float64)."""
        values = substrate.params.model_dump()
        values.pop("n")
        return cls(J=substrate.J.detach().cpu().double().numpy(), **values)

    # -- helpers --------------------------------------------------------------------------------
    def initial_state(self, h0: np.ndarray) -> np.ndarray:
        """The flat state for currents h0 (N,): h0, plus step counter 0 when there is input."""
        h0 = np.asarray(h0, dtype=np.float64).reshape(-1)
        return np.concatenate([h0, [0.0]]) if self.has_input else h0.copy()

    def _split(self, x: np.ndarray) -> tuple[np.ndarray, int, np.ndarray | float]:
        if not self.has_input:
            return x, 0, 0.0
        s = int(x[-1])
        return x[:-1], s, self.input.at(s)

    def jacobian(self, h: np.ndarray) -> np.ndarray:
        """Df(h) = -1 + J diag(phi'(h)) (continuous, 1/tau) or J diag(phi'(h)) (discrete), shape (N, N)."""
        d = 1.0 - np.tanh(h) ** 2
        m = self.J * d[None, :]
        return m - np.eye(self.n) if self.continuous else m

    def divergence(self, x: np.ndarray) -> float:
        """tr Df (continuous, 1/tau) or ln|det DPhi| (discrete) at the state x."""
        h = x[: self.n]
        d = 1.0 - np.tanh(h) ** 2
        if self.continuous:
            return float(-self.n + self._diag @ d)
        if self._logdet is None:  # ln|det J| once: an O(N^3) factorization, not one per step
            self._logdet = float(np.linalg.slogdet(self.J)[1])
        a = np.abs(h)  # ln phi'(h) = ln sech^2 h = -2 (|h| + ln(1 + e^{-2|h|}) - ln 2), finite where phi' underflows
        return float(self._logdet - 2.0 * np.sum(a + np.log1p(np.exp(-2.0 * a)) - np.log(2.0)))

    # -- TangentSystem ------------------------------------------------------------------------------
    def _one(self, h: np.ndarray, inp) -> np.ndarray:
        if not self.continuous:
            return np.tanh(h) @ self._jt + inp
        # dt / tau; I is held over the step
        return rk4_step(lambda y: -y + np.tanh(y) @ self._jt + inp, h, self.step_time)

    def step(self, x: np.ndarray) -> np.ndarray:
        h, s, inp = self._split(x)
        h_new = self._one(h, inp)
        return np.concatenate([h_new, [s + 1.0]]) if self.has_input else h_new

    def steps(self, x: np.ndarray, n_steps: int) -> np.ndarray:
        with single_threaded_blas():
            for _ in range(n_steps):
                x = self.step(x)
        return x

    def _stage(self, y: np.ndarray, v: np.ndarray, inp_rate) -> tuple[np.ndarray, np.ndarray]:
        t = np.tanh(y)
        m = np.vstack([t[None, :], (1.0 - t * t) * v]) @ self._jt
        return -y + m[0] + inp_rate, -v + m[1:]

    def step_with_tangents(self, x: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, s, inp = self._split(x)
        v = q[:, : self.n]
        if self.continuous:
            h_new, v_new = rk4_step_with_tangents(lambda y, w: self._stage(y, w, inp), h, v, self.step_time)
        else:
            t = np.tanh(h)
            m = np.vstack([t[None, :], (1.0 - t * t) * v]) @ self._jt
            h_new, v_new = m[0] + inp, m[1:]
        if not self.has_input:
            return h_new, v_new
        return np.concatenate([h_new, [s + 1.0]]), np.hstack([v_new, np.zeros((v_new.shape[0], 1))])

    def steps_with_tangents(self, x: np.ndarray, q: np.ndarray, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
        with single_threaded_blas():
            for _ in range(n_steps):
                x, q = self.step_with_tangents(x, q)
        return x, q

    def project_tangent(self, x: np.ndarray, q: np.ndarray) -> np.ndarray:
        if not self.has_input:
            return q
        q = np.array(q, dtype=np.float64)
        q[..., -1] = 0.0
        return q


def mean_divergence(
    system: RateNetworkTangent, x0: np.ndarray, n_steps: int, transient_steps: int = 0, n_blocks: int = 20
) -> tuple[float, float]:
    """Time average of :meth:`RateNetworkTangent.divergence` along the orbit of x0 and its standard error.

    The divergence is sampled at the start of each of the ``n_steps`` steps after ``transient_steps``
    (left Riemann sum, per unit time: 1/tau or 1/step); the standard error is the spread of
    ``n_blocks`` consecutive block means over sqrt(n_blocks). In continuous time this is the sum of
    all exponents of the flow (Liouville); the RK4 map's differs by O(dt^4).
    """
    x = system.steps(np.asarray(x0, dtype=np.float64), transient_steps) if transient_steps else x0
    values = np.empty(n_steps)
    with single_threaded_blas():
        for s in range(n_steps):
            values[s] = system.divergence(x)
            x = system.step(x)
    blocks = np.array([b.mean() for b in np.array_split(values, min(n_blocks, n_steps))])
    sem = float(blocks.std(ddof=1) / np.sqrt(len(blocks))) if len(blocks) > 1 else float("nan")
    return float(values.mean()), sem
