"""The coupled STO array as a :class:`~stosim.analysis.lyapunov.TangentSystem`.

State: the 3N components of m (flat, oscillator-major); one step is one projected RK4 step of
dt seconds. The phase space is the product of N unit spheres (dimension 2N): tangent vectors are
kept in the tangent planes (the Jacobian of the projected map removes radial components), so at
most 2N exponents exist; exponents are in 1/s.
"""

from __future__ import annotations

import numpy as np

from stosim.analysis.lyapunov import TangentSystem
from stosim.integrate.aligned import aligned_copy
from stosim.integrate.flow import _ArrayTensors
from stosim.integrate.tangent import tangent_run
from stosim.integrate.threads import single_threaded_blas
from stosim.physics.array import STOArray, check_time_step
from stosim.simulation import evolve

__all__ = ["STOArrayTangent"]


class STOArrayTangent(TangentSystem):
    """Tangent dynamics of a deterministic coupled STO array (RK4 step ``dt_s`` seconds)."""

    def __init__(self, array: STOArray, dt_s: float = 1e-12) -> None:
        check_time_step(array, dt_s)
        self.array = array
        self.n = array.n_oscillators
        self.dimension = 2 * self.n
        self.ambient_dimension = 3 * self.n
        self.step_time = float(dt_s)
        self.time_unit = "s"
        self._prm = _ArrayTensors(array, np.float64)

    def step(self, x: np.ndarray) -> np.ndarray:
        return self.steps(x, 1)

    def steps(self, x: np.ndarray, n_steps: int) -> np.ndarray:
        final, _, _ = evolve(self.array, x.reshape(1, self.n, 3), n_steps, self.step_time)
        return final.reshape(-1)

    def step_with_tangents(self, x: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.steps_with_tangents(x, q, 1)

    def steps_with_tangents(self, x: np.ndarray, q: np.ndarray, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
        k = q.shape[0]
        prm = self._prm
        # new, writable (3, k, N_pad) arrays on cache lines: the kernel writes into them; the kernels' padding
        # oscillators (flow.padded_oscillator_count) are uncoupled copies of oscillator 0 with zero tangents
        m = aligned_copy(prm.states_in(np.broadcast_to(x.reshape(1, self.n, 3), (k, self.n, 3))).transpose(2, 0, 1))
        t = aligned_copy(prm.zeros_in(q.reshape(k, self.n, 3)).transpose(2, 0, 1))
        with single_threaded_blas():
            tangent_run(m, t, prm.coupling_t, prm.use_coupling, prm.osc, prm.lam, prm.p, self.step_time, n_steps)
        return m[:, 0, : self.n].T.reshape(-1).copy(), t[:, :, : self.n].transpose(1, 2, 0).reshape(k, -1).copy()

    def project_tangent(self, x: np.ndarray, q: np.ndarray) -> np.ndarray:
        m = x.reshape(self.n, 3)
        v = q.reshape(q.shape[0], self.n, 3)
        return (v - m * np.sum(v * m, axis=-1, keepdims=True)).reshape(q.shape)

    def retract(self, y: np.ndarray) -> np.ndarray:
        """Back onto the unit spheres."""
        m = y.reshape(self.n, 3)
        return (m / np.linalg.norm(m, axis=-1, keepdims=True)).reshape(-1)
