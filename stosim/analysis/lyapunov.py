"""Lyapunov spectra by tangent-space propagation and QR re-orthonormalization (Benettin et al. 1980;
Engelken, Wolf & Abbott 2023 for networks).

A :class:`TangentSystem` advances a state by one step of its flow map x -> Phi(x) and, with it,
k tangent vectors Q -> DPhi(x) Q (Jacobian-vector products, never a full Jacobian for large
systems). Every ``reorthonormalize_every`` steps Q = Q' R (thin QR); the logs of |diag R|
accumulate, and after a discarded transient

    lambda_i = (1 / t) sum ln |R_ii|        (units: 1 / the system's time unit).

The running estimate is recorded at every re-orthonormalization, so convergence is visible;
the reported spread is a standard error: the run (after the transient) is cut into
``N_BLOCKS`` = 20 consecutive blocks, each gives its own estimate, and the spread is their
standard deviation over sqrt(20). The relative change of the running estimate over the last
quarter of the run, |lambda(t_end) - lambda(t_q)| / |lambda(t_end)| with t_q the last
re-orthonormalization at or before 3/4 of the averaging time, is reported as well (NaN when no
re-orthonormalization falls there, e.g. a single one at the end).

Derived quantities: Kaplan-Yorke dimension D_KY = j + sum_{i <= j} lambda_i / |lambda_{j+1}|
(j the largest index with a non-negative cumulative sum) and the Kolmogorov-Sinai entropy rate
bound h_KS = sum of the positive exponents (Pesin).
"""

from __future__ import annotations

import abc
import dataclasses
import math
import numbers
from typing import Callable

import numpy as np

N_BLOCKS = 20

__all__ = [
    "TangentSystem",
    "LyapunovResult",
    "lyapunov_spectrum",
    "kaplan_yorke_dimension",
    "ks_entropy",
    "two_trajectory_mle",
]


class TangentSystem(abc.ABC):
    """A discrete-time view of a dynamical system for Lyapunov analysis.

    Attributes: ``dimension`` (of the tangent space, i.e. the most exponents there are),
    ``ambient_dimension`` (length of the flat state/tangent vectors), ``step_time`` (time of one
    step in ``time_unit``).
    """

    dimension: int
    ambient_dimension: int
    step_time: float
    time_unit: str

    @abc.abstractmethod
    def step(self, x: np.ndarray) -> np.ndarray:
        """One step of the flow map for a flat state x (ambient_dimension,)."""

    def steps(self, x: np.ndarray, n_steps: int) -> np.ndarray:
        """``n_steps`` steps of the flow map (override when many steps run faster at once)."""
        for _ in range(n_steps):
            x = self.step(x)
        return x

    @abc.abstractmethod
    def step_with_tangents(self, x: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(Phi(x), DPhi(x) q) for tangent vectors q of shape (k, ambient_dimension)."""

    def steps_with_tangents(self, x: np.ndarray, q: np.ndarray, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
        """``n_steps`` steps of :meth:`step_with_tangents` (override when many steps run faster at once)."""
        for _ in range(n_steps):
            x, q = self.step_with_tangents(x, q)
        return x, q

    def project_tangent(self, x: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Project vectors (k, ambient) onto the tangent space at x (identity for flat spaces)."""
        return q

    def retract(self, y: np.ndarray) -> np.ndarray:
        """Map a nearby point y (ambient_dimension,) back onto the state manifold (identity for flat spaces)."""
        return y

    def divergence(self, x: np.ndarray) -> float:
        """Divergence of the vector field at x (sum of all exponents = its time average), if known."""
        raise NotImplementedError


@dataclasses.dataclass
class LyapunovResult:
    """Exponents (descending) in 1/``time_unit`` with their convergence record."""

    exponents: np.ndarray
    standard_error: np.ndarray
    running_time: np.ndarray
    running_estimates: np.ndarray  # (n_records, k)
    relative_change_last_quarter: np.ndarray
    time_unit: str
    duration: float
    transient: float

    @property
    def mle(self) -> float:
        return float(self.exponents[0])

    @property
    def kaplan_yorke_dimension(self) -> float:
        return kaplan_yorke_dimension(self.exponents)

    @property
    def ks_entropy(self) -> float:
        return ks_entropy(self.exponents)

    def as_dict(self) -> dict:
        return {
            "exponents": [float(v) for v in self.exponents],
            "standard_error": [float(v) for v in self.standard_error],
            "mle": self.mle,
            "kaplan_yorke_dimension": self.kaplan_yorke_dimension,
            "ks_entropy": self.ks_entropy,
            "relative_change_last_quarter": [float(v) for v in self.relative_change_last_quarter],
            "time_unit": self.time_unit,
            "duration": self.duration,
            "transient": self.transient,
        }


def kaplan_yorke_dimension(exponents: np.ndarray) -> float:
    """D_KY = j + sum_{i<=j} lambda_i / |lambda_{j+1}|; the number of exponents when all partial sums are >= 0.

    Raises ``ValueError`` for an empty spectrum or one with NaN or +inf (-inf, ln 0, is allowed).
    """
    lam = np.sort(_check_exponents(exponents))[::-1]
    csum = np.cumsum(lam)
    if csum[0] < 0:
        return 0.0
    j = int(np.max(np.nonzero(csum >= 0)[0]))  # 0-based index of the last non-negative partial sum
    if j == lam.size - 1:
        return float(lam.size)
    return float(j + 1 + csum[j] / abs(lam[j + 1]))


def ks_entropy(exponents: np.ndarray) -> float:
    """Sum of the positive exponents (Pesin's bound on the Kolmogorov-Sinai entropy rate).

    Raises ``ValueError`` for an empty spectrum or one with NaN or +inf (-inf, ln 0, is allowed).
    """
    lam = _check_exponents(exponents)
    return float(lam[lam > 0].sum())


def _check_exponents(exponents: np.ndarray) -> np.ndarray:
    """The exponents as a float64 1-D array, non-empty, without NaN or +inf (a NaN would drop out silently)."""
    lam = np.asarray(exponents, dtype=np.float64)
    if lam.ndim != 1 or lam.size == 0 or np.any(np.isnan(lam)) or np.any(lam == np.inf):
        raise ValueError(
            f"exponents must be a non-empty 1-D array of numbers in [-inf, inf) (no NaN, no +inf); got {exponents!r}"
        )
    return lam


def _check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an int >= ``minimum``; ``ValueError`` naming ``name`` otherwise (bools and floats too)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise ValueError(f"{name} = {value!r} must be >= {minimum} (an integer)")
    return int(value)


def lyapunov_spectrum(
    system: TangentSystem,
    x0: np.ndarray,
    n_exponents: int,
    n_steps: int,
    transient_steps: int = 0,
    reorthonormalize_every: int = 1,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> LyapunovResult:
    """The leading ``n_exponents`` Lyapunov exponents of ``system`` along the orbit of ``x0``.

    ``transient_steps`` steps are run first and discarded (the tangent vectors are aligned
    during the transient too); the exponents are averaged over the next ``n_steps`` steps.
    """
    if (
        isinstance(n_exponents, bool)
        or not isinstance(n_exponents, numbers.Integral)
        or not 1 <= n_exponents <= system.dimension
    ):
        raise ValueError(
            f"n_exponents = {n_exponents!r} must be in [1, {system.dimension}] (an integer; the tangent dimension)"
        )
    n_exponents = int(n_exponents)
    n_steps = _check_int("n_steps", n_steps, 1)
    transient_steps = _check_int("transient_steps", transient_steps, 0)
    reorthonormalize_every = _check_int("reorthonormalize_every", reorthonormalize_every, 1)
    x = np.array(x0, dtype=float).reshape(-1)
    if x.size != system.ambient_dimension or not np.all(np.isfinite(x)):
        raise ValueError(f"x0 must be {system.ambient_dimension} finite numbers")
    rng = np.random.default_rng(seed)
    q = system.project_tangent(x, rng.standard_normal((n_exponents, system.ambient_dimension)))
    q = np.linalg.qr(q.T)[0].T
    total = transient_steps + n_steps
    log_sums = np.zeros(n_exponents)
    block_logs: list[np.ndarray] = []
    elapsed_steps: list[int] = []
    times: list[float] = []
    running: list[np.ndarray] = []
    step = 0
    while step < total:
        # run to the next re-orthonormalization (or to the end of the transient, where averaging starts)
        target = min(step + reorthonormalize_every, total)
        if step < transient_steps < target:
            target = transient_steps
        since = target - step
        x, q = system.steps_with_tangents(x, q, since)
        step = target
        if not np.all(np.isfinite(x)):
            raise FloatingPointError(f"the orbit became non-finite by step {step}")
        qq, r = np.linalg.qr(q.T)
        d = np.abs(np.diag(r))
        if not np.all(np.isfinite(d)) or np.any(d == 0):
            raise FloatingPointError(f"tangent vectors degenerated at step {step}; reduce reorthonormalize_every")
        q = qq.T * np.sign(np.diag(r))[:, None]
        if step > transient_steps:
            logs = np.log(d)
            log_sums += logs
            block_logs.append(logs)
            elapsed = (step - transient_steps) * system.step_time
            elapsed_steps.append(step - transient_steps)
            times.append(elapsed)
            running.append(log_sums / elapsed)
        if progress is not None:
            progress(step, total)
    duration = n_steps * system.step_time
    exponents = log_sums / duration
    records = np.array(block_logs)
    record_times = np.diff(np.concatenate([[0.0], times]))
    groups = np.array_split(np.arange(records.shape[0]), min(N_BLOCKS, records.shape[0]))
    blocks = np.array([records[g].sum(0) / record_times[g].sum() for g in groups])
    sem = blocks.std(axis=0, ddof=1) / math.sqrt(len(groups)) if len(groups) > 1 else np.full(n_exponents, np.nan)
    run = np.array(running)
    rel = _relative_change_last_quarter(np.array(elapsed_steps), run, n_steps)
    order = np.argsort(-exponents, kind="stable")
    return LyapunovResult(
        exponents=exponents[order],
        standard_error=sem[order],
        running_time=np.array(times),
        running_estimates=run[:, order],
        relative_change_last_quarter=rel[order],
        time_unit=system.time_unit,
        duration=duration,
        transient=transient_steps * system.step_time,
    )


def _relative_change_last_quarter(elapsed_steps: np.ndarray, running: np.ndarray, n_steps: int) -> np.ndarray:
    """|lambda(T) - lambda(t_q)| / |lambda(T)| per exponent (dimensionless).

    ``running[i]`` is the running estimate after ``elapsed_steps[i]`` averaged steps (the last at
    T = ``n_steps``); t_q is the last record with elapsed steps <= 3/4 T. NaN when there is none.
    """
    final = running[-1]
    i = int(np.searchsorted(4 * elapsed_steps, 3 * n_steps, side="right")) - 1  # last with 4 e <= 3 T
    if i < 0:
        return np.full(final.shape, np.nan)
    return np.abs(final - running[i]) / np.maximum(np.abs(final), 1e-300)


def two_trajectory_mle(
    system: TangentSystem,
    x0: np.ndarray,
    n_steps: int,
    transient_steps: int = 0,
    epsilon: float = 1e-8,
    renormalize_every: int = 1,
    seed: int = 0,
) -> float:
    """Maximum Lyapunov exponent from two nearby trajectories (finite differences), renormalized
    to distance ``epsilon`` every ``renormalize_every`` steps (the classical cross-check)."""
    n_steps = _check_int("n_steps", n_steps, 1)
    transient_steps = _check_int("transient_steps", transient_steps, 0)
    renormalize_every = _check_int("renormalize_every", renormalize_every, 1)
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not 0 < epsilon < math.inf:
        raise ValueError(f"epsilon = {epsilon!r} must be a finite number > 0")
    rng = np.random.default_rng(seed)
    x = np.array(x0, dtype=float).reshape(-1)
    if x.size != system.ambient_dimension or not np.all(np.isfinite(x)):
        raise ValueError(f"x0 must be {system.ambient_dimension} finite numbers")
    if transient_steps:
        x = system.steps(x, transient_steps)
    d = system.project_tangent(x, rng.standard_normal((1, x.size)))[0]
    y = _perturb(system, x, d, epsilon)
    log_sum = 0.0
    done = 0
    while done < n_steps:
        k = min(renormalize_every, n_steps - done)
        with np.errstate(over="ignore", invalid="ignore"):  # a diverging orbit is reported just below
            x, y = system.steps(x, k), system.steps(y, k)
            dist = np.linalg.norm(y - x)
        done += k
        if not 0 < dist < math.inf:
            raise FloatingPointError(
                f"the distance of the two trajectories became {float(dist)!r} by step {done} "
                "(an orbit diverged, or the perturbation collapsed); reduce dt or "
                "renormalize_every"
            )
        log_sum += math.log(dist / epsilon)
        y = _perturb(system, x, (y - x), epsilon)
    return log_sum / (n_steps * system.step_time)


def _perturb(system: TangentSystem, x: np.ndarray, direction: np.ndarray, epsilon: float) -> np.ndarray:
    """A state at distance ~epsilon from x along ``direction`` (kept valid by the system's own step)."""
    direction = system.project_tangent(x, direction[None])[0]
    y = x + epsilon * direction / np.linalg.norm(direction)
    return system.retract(y)
