"""Lorenz 96 substrate.

The state is x in R^N (dimensionless), with periodic indices (x_{i+N} = x_i), evolving in
continuous model time t (dimensionless "model time units")::

    dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F,       i = 0, ..., N-1

for a duration T with T/dt steps of classical fourth-order Runge-Kutta (docs/physics.md section 5:
N = 500, F = 8, RK4 step 0.01, T from 0.2 to 5). ``x_i = F`` for all i is a fixed point; it is
stable for small F, then periodic and chaotic behaviour appears as F grows.

The advection term conserves E = sum_i x_i^2 / 2, so along any solution
``dE/dt = -sum_i x_i^2 + F sum_i x_i`` exactly.

The substrate is deterministic and differentiable (torch autograd through the RK4 steps).
A state that becomes non-finite raises ``FloatingPointError`` naming the first bad step.
"""

from __future__ import annotations

import math
import numbers

import torch

from stosim.integrate.explicit import rk4_step
from stosim.parameters import Parameter, declare
from stosim.substrates.base import Substrate, SubstrateDescription
from stosim.substrates.protocols import Differentiable, Timed
from stosim.substrates.registry import SubstrateSpec, TangentSpec, register

__all__ = ["Lorenz96"]

_DTYPES = {torch.float64: "float64", torch.float32: "float32"}
_MAX_ABS_FORCING = 1.0e3
_MULTIPLE_RTOL = 1.0e-9

# the Lorenz 96 system's own setting (stosim.parameters)
(FORCING,) = declare(
    Parameter("forcing", "dimensionless", "Lorenz 96 forcing F", minimum=-_MAX_ABS_FORCING, maximum=_MAX_ABS_FORCING),
    module=__name__,
)


def _check_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite real number; got {value!r}")
    return float(value)


class Lorenz96(Substrate, Differentiable, Timed):
    """Lorenz 96 ring, dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F, integrated with RK4.

    Parameters
    ----------
    n:
        N, the number of sites (= state, read-in and readout size), integer >= 4. Default 500.
    forcing:
        F (model units), finite with |F| <= 1000. Default 8.0.
    duration:
        T, evolution time in model time units, > 0. Default 1.0.
    dt:
        RK4 step in model time units, > 0; T must be a whole multiple of dt within a relative
        1e-9. The integrator takes ``n_steps = round(T / dt)`` steps of exactly T / n_steps.
    dtype:
        ``torch.float64`` (default) or ``torch.float32``; states must have this dtype.
    """

    forcing_tensor: torch.Tensor

    def __init__(
        self,
        n: int = 500,
        forcing: float = 8.0,
        duration: float = 1.0,
        dt: float = 0.01,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or int(n) < 4:
            raise ValueError(f"n must be an integer >= 4; got {n!r}")
        self.n = int(n)
        f = _check_real("forcing", forcing)
        if abs(f) > _MAX_ABS_FORCING:
            raise ValueError(f"forcing must be in [-{_MAX_ABS_FORCING:g}, {_MAX_ABS_FORCING:g}]; got {forcing!r}")
        self.forcing = f
        t = _check_real("duration", duration)
        if not t > 0.0:
            raise ValueError(f"duration must be > 0 (model time units); got {duration!r}")
        self._duration = t
        h = _check_real("dt", dt)
        if not h > 0.0:
            raise ValueError(f"dt must be > 0 (model time units); got {dt!r}")
        self.dt = h
        steps = round(t / h)
        if steps < 1 or abs(steps * h - t) > _MULTIPLE_RTOL * t:
            raise ValueError(
                f"duration ({t!r}) must be a whole multiple of dt ({h!r}) within a relative {_MULTIPLE_RTOL:g}; "
                f"T/dt = {t / h!r}"
            )
        self.n_steps = int(steps)
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of torch.float64, torch.float32; got {dtype!r}")
        # F as a 0-d buffer: it follows module.to(device/dtype) and fixes the substrate's dtype.
        self.register_buffer("forcing_tensor", torch.tensor(f, dtype=dtype))

    # -- dynamics --------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the substrate (follows ``module.to(dtype)``)."""
        return self.forcing_tensor.dtype

    def vector_field(self, x: torch.Tensor) -> torch.Tensor:
        """f(x)_i = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F along the last axis (any leading shape)."""
        x_next = torch.roll(x, shifts=-1, dims=-1)  # x_{i+1}
        x_prev = torch.roll(x, shifts=1, dims=-1)  # x_{i-1}
        x_prev2 = torch.roll(x, shifts=2, dims=-1)  # x_{i-2}
        return (x_next - x_prev2) * x_prev - x + self.forcing_tensor

    def vector_field_jvp(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Jacobian-vector product (Df(x) v)_i = (v_{i+1} - v_{i-2}) x_{i-1} + (x_{i+1} - x_{i-2}) v_{i-1} - v_i.

        The tangent (linearized) dynamics dv/dt = Df(x) v, e.g. for Lyapunov exponents.
        """
        x_prev = torch.roll(x, shifts=1, dims=-1)
        dx = torch.roll(x, shifts=-1, dims=-1) - torch.roll(x, shifts=2, dims=-1)
        dv = torch.roll(v, shifts=-1, dims=-1) - torch.roll(v, shifts=2, dims=-1)
        return dv * x_prev + dx * torch.roll(v, shifts=1, dims=-1) - v

    def rk4_step(self, x: torch.Tensor, h: float) -> torch.Tensor:
        """One classical RK4 step of size h (model time units) of dx/dt = f(x)."""
        return rk4_step(self.vector_field, x, h)

    # -- interface -------------------------------------------------------------------------
    def describe(self) -> SubstrateDescription:
        return SubstrateDescription(
            name="lorenz96",
            state_size=self.n,
            readin_size=self.n,
            readout_size=self.n,
            state_units="dimensionless",
            readout_units="dimensionless",
            time_unit="model time unit",
            summary=(
                f"Lorenz 96: dx_i/dt = (x_(i+1) - x_(i-2)) x_(i-1) - x_i + F (periodic), N={self.n}, "
                f"F={self.forcing:g}, T={self.duration:g} with {self.n_steps} RK4 steps of "
                f"{self.duration / self.n_steps:g}"
            ),
        )

    def read_configuration(self) -> dict[str, float | int | str]:
        return {
            "substrate": "lorenz96",
            "n": self.n,
            "forcing": self.forcing,
            "duration": self.duration,
            "dt": self.dt,
            "n_steps": self.n_steps,
            "dtype": _DTYPES.get(self.dtype, str(self.dtype)),
        }

    @property
    def duration(self) -> float:
        """T, the time ``evolve`` integrates, in model time units."""
        return self._duration

    def reset(self, seed: int) -> None:
        """No-op: Lorenz 96 is deterministic and has no random stream to re-seed."""
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or int(seed) < 0:
            raise ValueError(f"seed must be an integer >= 0; got {seed!r}")

    def initial_state(self, readin: torch.Tensor) -> torch.Tensor:
        """x(0) = readin."""
        self._check_readin(readin)
        self._check_state(readin, "read-in")
        return readin

    def evolve(self, state: torch.Tensor) -> torch.Tensor:
        """``n_steps`` RK4 steps of size T / n_steps on a batch (B, N). Differentiable.

        Raises ``FloatingPointError`` naming the first step after which the state is non-finite.
        The finiteness flags are gathered on the device and inspected once, at the end.
        """
        self._check_state(state, "state")
        h = self.duration / self.n_steps
        x = state
        finite_flags = []
        for _ in range(self.n_steps):
            x = self.rk4_step(x, h)
            finite_flags.append(torch.isfinite(x.detach()).all())
        flags = torch.stack(finite_flags)
        if not bool(flags.all()):
            first = int(torch.nonzero(~flags)[0, 0]) + 1
            raise FloatingPointError(
                f"Lorenz 96 state became non-finite at RK4 step {first} of {self.n_steps} "
                f"(t = {first * h:g} model time units; N={self.n}, F={self.forcing:g}, dt={h:g})"
            )
        return x

    # -- helpers ---------------------------------------------------------------------------
    def _check_state(self, state: torch.Tensor, what: str) -> None:
        if state.ndim != 2 or state.shape[1] != self.n:
            raise ValueError(f"{what} has shape {tuple(state.shape)}; expected (batch, {self.n}) for lorenz96")
        if state.dtype != self.dtype:
            raise ValueError(f"{what} has dtype {state.dtype}; this lorenz96 substrate uses {self.dtype}")
        if not bool(torch.isfinite(state).all()):
            raise ValueError(f"{what} contains non-finite values (NaN or inf)")

    def extra_repr(self) -> str:
        return (
            f"n={self.n}, forcing={self.forcing:g}, duration={self.duration:g}, dt={self.dt:g}, n_steps={self.n_steps}"
        )


def _build_from_config(cfg, seed: int, dtype: torch.dtype) -> Lorenz96:  # seed unused: no random draw
    """The Lorenz 96 ring of a training configuration (TrainConfig keys of the spec below)."""
    return Lorenz96(
        n=cfg.n or SPEC.default_n,
        forcing=cfg.forcing,
        duration=cfg.duration or SPEC.duration,
        dt=cfg.dt or SPEC.dt,
        dtype=dtype,
    )


def _check_config(cfg, n: int, dtype: torch.dtype) -> None:
    """duration / dt within MAX_STEPS (before the ring rounds it: an inf ratio cannot be rounded)."""
    from stosim.checks import check_steps

    duration, dt = cfg.duration or SPEC.duration, cfg.dt or SPEC.dt
    if math.isfinite(duration) and math.isfinite(dt) and dt > 0:
        check_steps(duration / dt)
    check_steps(_build_from_config(cfg, cfg.seed, dtype).n_steps)


def _tangent(n: int, dt: float, seed: int, rng, *, forcing: float = 8.0):
    """The Lorenz 96 tangent system (exponents per model time unit), started at F + a standard normal draw."""
    from stosim.analysis.tangent_models import Lorenz96Tangent

    return Lorenz96Tangent(n, forcing, dt=dt), forcing + rng.standard_normal(n)


SPEC = register(
    SubstrateSpec(
        name="lorenz96",
        summary="Lorenz 96 ring dx_i/dt = (x_(i+1) - x_(i-2)) x_(i-1) - x_i + F (RK4, model time)",
        keys=("n", "forcing", "duration", "dt"),
        default_n=500,
        time_unit="model time",
        duration=1.0,
        dt=0.01,
        cls=Lorenz96,
        build=_build_from_config,
        check=_check_config,
        tangent=TangentSpec(
            build=_tangent,
            defaults={"duration": 1000.0, "transient": 50.0, "dt": 0.01, "n": 40, "reorthonormalize_every": 10},
            flags={"forcing": "forcing"},
        ),
    )
)
