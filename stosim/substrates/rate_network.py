"""Random rate network substrate (Sompolinsky, Crisanti & Sommers 1988; Engelken, Wolf & Abbott 2023).

The state is the vector of synaptic currents h in R^N (dimensionless); the rates are phi(h) = tanh(h).
Two dynamics share one coupling matrix J:

- continuous time (``time = "continuous"``), in units of the time constant tau::

      tau dh/dt = -h + J phi(h) + I(t)

  integrated with classical RK4 of step ``dt`` (the input held constant over a step), for a
  duration T = n_steps dt; the time unit of the Lyapunov exponents is the substrate's time unit
  (tau = 1 by default, so exponents come in units of 1/tau);
- discrete time (``time = "discrete"``)::

      h_{s+1} = J phi(h_s) + I_s,          time unit: one step (tau and dt play no role).

J is dense Gaussian, J_ij ~ N(0, g^2 / N), drawn once from ``seed`` with
``numpy.random.Generator(PCG64(SeedSequence(seed)))``. **The diagonal is kept** by default
(``zero_diagonal = False``; set it True for J_ii = 0). The onset of chaos of the autonomous
network is at g = 1 (N -> infinity): below it h = 0 is a stable fixed point.

Input (optional, ``input_std`` > 0): independent per unit, frozen per seed (the same realization
for the same ``seed``; :class:`FrozenInput`):

- ``input_tau = 0``: white. Discrete time: I_s ~ N(0, input_std^2) i.i.d.; continuous time:
  I held over each step with I ~ N(0, input_std^2 tau / dt), i.e. tau dh = ... dt + input_std sqrt(tau) dW
  in the limit dt -> 0.
- ``input_tau > 0``: Ornstein-Uhlenbeck with correlation time input_tau (same unit as tau; steps in
  discrete time) and stationary standard deviation input_std, sampled exactly on the grid:
  I_{s+1} = a I_s + input_std sqrt(1 - a^2) z_s with a = exp(-dt / input_tau), I_0 stationary.

The substrate is differentiable (torch autograd through the RK4 steps or the map is the exact
gradient of the discrete map). ``trainable = True`` makes J a parameter (training J by BPTT).
Parameters are validated by :class:`RateNetworkParameters` (pydantic); a bad value raises
``ValueError`` naming the parameter and its valid range.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from types import MappingProxyType
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stosim.integrate.explicit import rk4_step
from stosim.parameters import Parameter, declare
from stosim.substrates.base import Substrate, SubstrateDescription
from stosim.substrates.protocols import Differentiable, Stochastic, Timed
from stosim.substrates.registry import SubstrateSpec, TangentSpec, register

__all__ = ["RateNetwork", "RateNetworkParameters", "FrozenInput", "draw_coupling_matrix", "rate_parameters"]

_DTYPES = {torch.float64: "float64", torch.float32: "float32"}
_MULTIPLE_RTOL = 1.0e-9
INPUT_BLOCK = 256  # steps per block of the frozen input (each block has its own spawned seed)

# the rate network's own settings (stosim.parameters): keys of experiment files, sweep points and flags
GAIN, NETWORK_TIME, INPUT_STD, INPUT_TAU, ZERO_DIAGONAL = declare(
    Parameter("g", "dimensionless", "rate network gain g", minimum=0.0, open_min=True, maximum=100.0),
    Parameter("network_time", "text", "rate network dynamics (continuous or discrete time)"),
    Parameter(
        "input_std", "dimensionless", "rate network input strength", minimum=0.0, maximum=100.0, note="(0: autonomous)"
    ),
    Parameter(
        "input_tau",
        "dimensionless",
        "rate network input correlation time",
        minimum=0.0,
        maximum=1e6,
        note="(0: white)",
        substrate_time=True,
    ),
    Parameter("zero_diagonal", "switch", "rate network without self-coupling (J_ii = 0)"),
    module=__name__,
)


class RateNetworkParameters(BaseModel):
    """Validated parameters of a random rate network (ranges in the field descriptions)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = Field(default=200, ge=2, le=20_000, description="N, number of units, in [2, 20000]")
    g: float = GAIN.field(2.0, allow_inf_nan=False)
    time: Literal["continuous", "discrete"] = "continuous"
    tau: float = Field(default=1.0, gt=0, le=1e6, allow_inf_nan=False, description="time constant, in (0, 1e6]")
    dt: float = Field(
        default=0.05, gt=0, allow_inf_nan=False, description="RK4 step, in (0, tau/2] (continuous time only)"
    )
    duration: float = Field(
        default=1.0,
        gt=0,
        allow_inf_nan=False,
        description="evolution time (continuous: multiple of dt; discrete: whole steps)",
    )
    input_std: float = INPUT_STD.field(0.0, allow_inf_nan=False)
    input_tau: float = INPUT_TAU.field(0.0, allow_inf_nan=False)
    zero_diagonal: bool = False
    seed: int = Field(default=0, ge=0, description="seed of J and of the input, >= 0")

    @model_validator(mode="after")
    def _check(self) -> "RateNetworkParameters":
        if self.time == "continuous":
            if self.dt > 0.5 * self.tau:
                raise ValueError(
                    f"dt = {self.dt!r} must be in (0, tau/2] = (0, {0.5 * self.tau:g}] (RK4 accuracy and stability)"
                )
            steps = round(self.duration / self.dt)
            if steps < 1 or abs(steps * self.dt - self.duration) > _MULTIPLE_RTOL * self.duration:
                raise ValueError(f"duration = {self.duration!r} must be a whole multiple of dt = {self.dt!r}")
        elif self.duration != round(self.duration):
            raise ValueError(f"duration = {self.duration!r} must be a whole number of steps in discrete time")
        return self

    @property
    def step_time(self) -> float:
        """Time of one step: dt (continuous) or 1 step (discrete)."""
        return self.dt if self.time == "continuous" else 1.0

    @property
    def n_steps(self) -> int:
        return max(1, round(self.duration / self.step_time))

    @property
    def time_unit(self) -> str:
        return "tau" if self.time == "continuous" else "step"


def rate_parameters(**values: object) -> RateNetworkParameters:
    """:class:`RateNetworkParameters` from keywords; ``ValueError`` naming each bad parameter and its range."""
    try:
        return RateNetworkParameters(**values)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "parameters"
            field = RateNetworkParameters.model_fields.get(key)
            valid = f" (valid: {field.description})" if field is not None and field.description else ""
            lines.append(
                f"rate network {key} = {err.get('input')!r}: {err['msg'].removeprefix('Value error, ')}{valid}"
            )
        raise ValueError("; ".join(lines)) from None


def draw_coupling_matrix(n: int, g: float, seed: int, zero_diagonal: bool = False) -> np.ndarray:
    """J (float64, (n, n)) with i.i.d. entries N(0, g^2 / n) from ``SeedSequence(seed)`` (diagonal 0 if asked)."""
    p = rate_parameters(n=n, g=g, seed=seed, zero_diagonal=zero_diagonal)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(p.seed)))
    j = rng.standard_normal((p.n, p.n)) * (p.g / math.sqrt(p.n))
    if p.zero_diagonal:
        np.fill_diagonal(j, 0.0)
    return j


class FrozenInput:
    """The frozen input I_s (s = 0, 1, ...) of a rate network, (N,) per step, reproducible from the seed.

    Steps come in blocks of :data:`INPUT_BLOCK`; block b draws its normals from
    ``SeedSequence(seed, spawn_key=(1, b))``, so any step can be regenerated. The OU recursion
    runs across blocks; the end value of every generated block is kept, so a block is rebuilt
    from its predecessor's end in O(block). Returns zeros when ``input_std = 0``.
    """

    def __init__(self, params: RateNetworkParameters) -> None:
        self.params = params
        self.n = params.n
        std = params.input_std
        if params.input_tau > 0:
            self.a = math.exp(-params.step_time / params.input_tau)
            self.scale = std
        else:
            self.a = 0.0
            self.scale = std * (math.sqrt(params.tau / params.dt) if params.time == "continuous" else 1.0)
        self._ends: dict[int, np.ndarray] = {}
        self._cache: dict[int, np.ndarray] = {}

    @property
    def active(self) -> bool:
        return self.params.input_std > 0

    def _normals(self, b: int) -> np.ndarray:
        ss = np.random.SeedSequence(self.params.seed, spawn_key=(1, b))
        return np.random.Generator(np.random.PCG64(ss)).standard_normal((INPUT_BLOCK, self.n))

    def block(self, b: int) -> np.ndarray:
        """Input of steps b*INPUT_BLOCK ... (b+1)*INPUT_BLOCK - 1, shape (INPUT_BLOCK, N)."""
        if b in self._cache:
            return self._cache[b]
        z = self._normals(b)
        if self.a == 0.0:
            out = self.scale * z
        else:
            if b > 0 and (b - 1) not in self._ends:
                start = max((k for k in self._ends if k < b - 1), default=-1) + 1
                for k in range(start, b):  # the OU chain, block by block (no recursion)
                    self.block(k)
            prev = self._ends[b - 1] if b > 0 else None
            a, c = self.a, math.sqrt(1.0 - self.a * self.a)
            out = np.empty_like(z)
            out[0] = self.scale * z[0] if prev is None else a * prev + self.scale * c * z[0]
            for s in range(1, INPUT_BLOCK):
                out[s] = a * out[s - 1] + self.scale * c * z[s]
            self._ends[b] = out[-1].copy()
        if len(self._cache) >= 4:
            self._cache.pop(next(iter(self._cache)))
        self._cache[b] = out
        return out

    def at(self, step: int) -> np.ndarray:
        """I at step ``step`` (N,)."""
        b, r = divmod(int(step), INPUT_BLOCK)
        return self.block(b)[r]

    def window(self, start: int, count: int) -> np.ndarray:
        """Inputs of steps start ... start + count - 1, shape (count, N)."""
        if count <= 0:
            return np.zeros((0, self.n))
        first, last = start // INPUT_BLOCK, (start + count - 1) // INPUT_BLOCK
        rows = np.concatenate([self.block(b) for b in range(first, last + 1)])
        off = start - first * INPUT_BLOCK
        return rows[off : off + count]


class RateNetwork(Substrate, Differentiable, Stochastic, Timed):
    """Random rate network tau dh/dt = -h + J tanh(h) + I(t) (RK4) or h_{s+1} = J tanh(h_s) + I_s.

    Keywords are those of :class:`RateNetworkParameters` (n, g, time, tau, dt, duration,
    input_std, input_tau, zero_diagonal, seed) plus ``dtype`` (torch.float64 default, or float32)
    and ``trainable`` (J as a torch parameter). Read-in: h(0); readout: the rates tanh(h(T)).
    """

    J: torch.Tensor

    def __init__(self, *, dtype: torch.dtype = torch.float64, trainable: bool = False, **params: object) -> None:
        super().__init__()
        self.params = rate_parameters(**params)
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of torch.float64, torch.float32; got {dtype!r}")
        j = torch.as_tensor(
            draw_coupling_matrix(self.params.n, self.params.g, self.params.seed, self.params.zero_diagonal), dtype=dtype
        )
        if trainable:
            self.J = torch.nn.Parameter(j)
        else:
            self.register_buffer("J", j)
        self.trainable = bool(trainable)
        self._input = FrozenInput(self.params)
        self._input_tensor: torch.Tensor | None = None
        self._input_suspended = False  # inside noise_suspended(): the autonomous network

    # -- properties ------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return self.params.n

    @property
    def dtype(self) -> torch.dtype:
        return self.J.dtype

    @property
    def n_steps(self) -> int:
        return self.params.n_steps

    @property
    def duration(self) -> float:
        """Evolution time in the substrate's time unit: tau (continuous) or steps (discrete)."""
        p = self.params
        return self.n_steps * p.dt / p.tau if p.time == "continuous" else float(self.n_steps)

    # -- dynamics --------------------------------------------------------------------------
    def vector_field(self, h: torch.Tensor, inp: torch.Tensor | float = 0.0) -> torch.Tensor:
        """dh/dt = (-h + J tanh(h) + I) / tau along the last axis (rows of h are states)."""
        return (-h + torch.tanh(h) @ self.J.T + inp) / self.params.tau

    def step(self, h: torch.Tensor, inp: torch.Tensor | float = 0.0) -> torch.Tensor:
        """One RK4 step of dt (continuous) or one map iteration (discrete), input ``inp`` held."""
        if self.params.time == "discrete":
            return torch.tanh(h) @ self.J.T + inp
        return rk4_step(lambda y: self.vector_field(y, inp), h, self.params.dt)

    def _inputs(self) -> torch.Tensor | None:
        if self._input_suspended or not self._input.active:
            return None
        if self._input_tensor is None or self._input_tensor.dtype != self.dtype:
            self._input_tensor = torch.as_tensor(self._input.window(0, self.n_steps), dtype=self.dtype)
        return self._input_tensor.to(self.J.device)

    # -- interface -------------------------------------------------------------------------
    def describe(self) -> SubstrateDescription:
        p = self.params
        law = "tau dh/dt = -h + J tanh(h) + I" if p.time == "continuous" else "h_(s+1) = J tanh(h_s) + I_s"
        return SubstrateDescription(
            name="rate-network",
            state_size=p.n,
            readin_size=p.n,
            readout_size=p.n,
            state_units="dimensionless (synaptic current h)",
            readout_units="dimensionless (rate tanh h)",
            time_unit=p.time_unit,
            summary=(
                f"random rate network ({p.time} time): {law}, J_ij ~ N(0, g^2/N), N={p.n}, g={p.g:g}, "
                f"{self.n_steps} steps"
                + (f" of dt={p.dt:g} tau (RK4)" if p.time == "continuous" else "")
                + (f", input std {p.input_std:g}, correlation time {p.input_tau:g}" if p.input_std else "")
            ),
        )

    def read_configuration(self) -> dict[str, float | int | str]:
        p = self.params
        return {
            "substrate": "rate-network",
            **{k: (int(v) if isinstance(v, bool) else v) for k, v in p.model_dump().items()},
            "n_steps": self.n_steps,
            "dtype": _DTYPES.get(self.dtype, str(self.dtype)),
        }

    @property
    def noise_on(self) -> bool:
        """True when a fluctuating input is configured (input_std > 0); it is frozen per seed (``reset``)."""
        return self._input.active

    @contextlib.contextmanager
    def noise_suspended(self) -> Iterator[None]:
        """Run without the fluctuating input inside the block (the autonomous network)."""
        saved, self._input_suspended = self._input_suspended, True
        try:
            yield
        finally:
            self._input_suspended = saved

    def reset(self, seed: int) -> None:
        """Redraw the frozen input from ``seed`` (J stays: it is the network, drawn at construction)."""
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0; got {seed!r}")
        self._input = FrozenInput(self.params.model_copy(update={"seed": seed}))
        self._input_tensor = None

    def initial_state(self, readin: torch.Tensor) -> torch.Tensor:
        """h(0) = readin."""
        self._check_readin(readin)
        self._check_state(readin, "read-in")
        return readin

    def evolve(self, state: torch.Tensor) -> torch.Tensor:
        """``n_steps`` steps on a batch (B, N); differentiable. ``FloatingPointError`` if the state blows up."""
        self._check_state(state, "state")
        inputs = self._inputs()
        h = state
        for s in range(self.n_steps):
            h = self.step(h, 0.0 if inputs is None else inputs[s])
        if not bool(torch.isfinite(h.detach()).all()):
            raise FloatingPointError(
                f"rate network state became non-finite within {self.n_steps} steps "
                f"(N={self.n}, g={self.params.g:g}, dt={self.params.dt:g})"
            )
        return h

    def readout(self, state: torch.Tensor) -> torch.Tensor:
        """The rates tanh(h)."""
        return torch.tanh(state)

    def _check_state(self, state: torch.Tensor, what: str) -> None:
        if state.ndim != 2 or state.shape[1] != self.n:
            raise ValueError(f"{what} has shape {tuple(state.shape)}; expected (batch, {self.n}) for rate-network")
        if state.dtype != self.dtype:
            raise ValueError(f"{what} has dtype {state.dtype}; this rate-network substrate uses {self.dtype}")
        if not bool(torch.isfinite(state).all()):
            raise ValueError(f"{what} contains non-finite values (NaN or inf)")

    def extra_repr(self) -> str:
        p = self.params
        return f"n={p.n}, g={p.g:g}, time={p.time}, tau={p.tau:g}, dt={p.dt:g}, n_steps={self.n_steps}"


def _build_from_config(cfg, seed: int, dtype: torch.dtype) -> RateNetwork:
    """The rate network of a training configuration (TrainConfig keys of the spec below): continuous time
    runs ``duration`` tau in steps of ``dt``; discrete time runs ``steps`` steps."""
    discrete = cfg.network_time == "discrete"
    return RateNetwork(
        n=cfg.n or SPEC.default_n,
        g=cfg.g,
        time=cfg.network_time,
        duration=float(cfg.steps) if discrete else (cfg.duration or SPEC.duration),
        dt=cfg.dt or SPEC.dt,
        input_std=cfg.input_std,
        input_tau=cfg.input_tau,
        seed=seed,
        dtype=dtype,
    )


# discrete-time Lyapunov defaults (steps); the spec's defaults are the continuous time's (tau, RK4)
RATE_DISCRETE_DEFAULTS = MappingProxyType(
    {"duration": 2000.0, "transient": 200.0, "dt": 1.0, "reorthonormalize_every": 1}
)


def _tangent(
    n: int,
    dt: float,
    seed: int,
    rng: np.random.Generator,
    *,
    g: float = 2.0,
    time: str = "continuous",
    input_std: float = 0.0,
    input_tau: float = 0.0,
    zero_diagonal: bool = False,
):
    """The rate network's tangent system (exponents in 1/tau, or per step in discrete time)."""
    from stosim.analysis.tangent_rate import RateNetworkTangent

    if time == "discrete":
        if dt != SPEC.tangent.defaults["dt"]:
            raise ValueError(f"dt = {dt!r}: the discrete-time rate network is a map; leave dt unset")
        dt = 1.0
    system = RateNetworkTangent(
        n=n, g=g, time=time, dt=dt, input_std=input_std, input_tau=input_tau, zero_diagonal=zero_diagonal, seed=seed
    )
    return system, system.initial_state(rng.standard_normal(n))


SPEC = register(
    SubstrateSpec(
        name="rate-network",
        summary="random rate network tau dh/dt = -h + J tanh h (Sompolinsky-Crisanti-Sommers)",
        keys=("n", "g", "network_time", "steps", "duration", "dt", "input_std", "input_tau"),
        default_n=200,
        time_unit="tau",
        duration=5.0,
        dt=0.1,
        seeded_matrix=True,
        cls=RateNetwork,
        build=_build_from_config,
        tangent=TangentSpec(
            build=_tangent,
            defaults={"duration": 500.0, "transient": 100.0, "dt": 0.1, "n": 200, "reorthonormalize_every": 10},
            defaults_for=lambda params: (
                RATE_DISCRETE_DEFAULTS if params.get("time") == "discrete" else SPEC.tangent.defaults
            ),
            flags={
                "g": "g",
                "time": "time",
                "input_std": "input_std",
                "input_tau": "input_tau",
                "zero_diagonal": "zero_diagonal",
            },
            single_thread_blas=True,
        ),
    )
)
