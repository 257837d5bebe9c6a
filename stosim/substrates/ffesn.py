"""Feed-forward echo-state network (FFESN) substrate.

The state is a vector x in R^N (dimensionless). A fixed random matrix W (N x N) acts for K
discrete steps (the time unit is one "step")::

    x_0     = readin                  (the model's read-in Linear layer computes W_in u)
    x_{k+1} = tanh(W x_k),   k = 0, ..., K-1
    readout = x_K

W is drawn once from ``seed`` (docs/physics.md section 5): a Bernoulli mask of the given density
(entries kept with probability ``density``), kept entries uniform in [-1, 1], then the whole
matrix rescaled so that its spectral radius (largest eigenvalue modulus) is exactly
``spectral_radius`` (computed with ``numpy.linalg.eigvals`` in float64). Random numbers come
only from ``numpy.random.Generator(PCG64(SeedSequence(seed)))``; no global RNG is touched.

Small rho contracts (rho < 1: tiny states decay like rho^K along the leading eigenvector);
rho > 1 gives chaotic tendencies. The substrate is deterministic and differentiable: gradients
flow through ``evolve`` by ordinary torch autograd. W is a buffer, not a trainable parameter.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from stosim.checks import check_count
from stosim.integrate.threads import single_threaded_blas
from stosim.parameters import Parameter, declare
from stosim.substrates.base import Substrate, SubstrateDescription
from stosim.substrates.protocols import Differentiable, Timed
from stosim.substrates.registry import SubstrateSpec, TangentSpec, register

__all__ = ["FFESN", "draw_ffesn_matrix"]

_DTYPES = {torch.float64: "float64", torch.float32: "float32"}
_MAX_SPECTRAL_RADIUS = 10.0

# the FFESN's own settings (stosim.parameters): keys of experiment files, sweep points and flags
SPECTRAL_RADIUS, DENSITY, STEPS = declare(
    Parameter(
        "spectral_radius",
        "dimensionless",
        "FFESN spectral radius rho",
        minimum=0.0,
        open_min=True,
        maximum=_MAX_SPECTRAL_RADIUS,
    ),
    Parameter("density", "dimensionless", "FFESN connection density", minimum=0.0, open_min=True, maximum=1.0),
    Parameter("steps", "count", "FFESN steps K", minimum=1, maximum=10_000),
    module=__name__,
)


def _check_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite real number; got {value!r}")
    return float(value)


def _check_dtype(dtype: object) -> torch.dtype:
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of torch.float64, torch.float32; got {dtype!r}")
    return dtype  # type: ignore[return-value]


def _check_matrix_arguments(
    n: object, spectral_radius: object, density: object, seed: object
) -> tuple[int, float, float, int]:
    """Validated (n, rho, density, seed) of W: n >= 1, rho in (0, 10], density in (0, 1], seed >= 0."""
    n = check_count(n, "n", 1)
    rho = _check_real("spectral_radius", spectral_radius)
    if not 0.0 < rho <= _MAX_SPECTRAL_RADIUS:
        raise ValueError(f"spectral_radius must be in (0, {_MAX_SPECTRAL_RADIUS:g}]; got {spectral_radius!r}")
    dens = _check_real("density", density)
    if not 0.0 < dens <= 1.0:
        raise ValueError(f"density must be in (0, 1]; got {density!r}")
    return n, rho, dens, check_count(seed, "seed", 0)


def draw_ffesn_matrix(n: int, spectral_radius: float, density: float, seed: int) -> np.ndarray:
    """The fixed FFESN matrix W (float64, shape (n, n)) drawn from ``seed``.

    Mask: each entry kept independently with probability ``density``; kept entries uniform in
    [-1, 1]; the matrix is then multiplied by ``spectral_radius / max|eig(W_raw)|``.
    Raises ``ValueError`` for arguments outside n >= 1, spectral_radius in (0, 10], density in
    (0, 1], seed >= 0, and if the raw matrix has spectral radius 0 (e.g. everything masked).
    """
    n, spectral_radius, density, seed = _check_matrix_arguments(n, spectral_radius, density, seed)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed)))
    mask = rng.random((n, n)) < density
    values = rng.uniform(-1.0, 1.0, size=(n, n))
    w = np.where(mask, values, 0.0)
    # One BLAS thread: multi-threaded OpenBLAS eigensolvers crawl on small, loaded machines.
    with single_threaded_blas():
        radius = float(np.max(np.abs(np.linalg.eigvals(w))))
    if not radius > 0.0:
        raise ValueError(
            f"the random matrix drawn for n={n}, density={density}, seed={seed} has spectral radius 0 "
            "and cannot be rescaled; use a larger n or density, or another seed"
        )
    return w * (spectral_radius / radius)


class FFESN(Substrate, Differentiable, Timed):
    """Feed-forward echo-state network: K steps of x <- tanh(W x) with a fixed random W.

    Parameters
    ----------
    n:
        N, the state size (= read-in size = readout size), integer >= 1. Default 500.
    spectral_radius:
        rho, the spectral radius W is rescaled to, in (0, 10]. Default 1.0.
    steps:
        K, the number of tanh(W x) steps, integer >= 1. Default 5.
    density:
        Probability that an entry of W is nonzero, in (0, 1]. Default 0.5.
    seed:
        Non-negative integer seed of W (numpy SeedSequence). Default 0.
    dtype:
        ``torch.float64`` (default) or ``torch.float32``; states must have this dtype.

    Units: the state is dimensionless; time is counted in steps.
    """

    W: torch.Tensor

    def __init__(
        self,
        n: int = 500,
        spectral_radius: float = 1.0,
        steps: int = 5,
        density: float = 0.5,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        self.n, self.spectral_radius, self.density, self.seed = _check_matrix_arguments(
            n, spectral_radius, density, seed
        )
        self.steps = check_count(steps, "steps", 1)
        dtype = _check_dtype(dtype)
        w = draw_ffesn_matrix(self.n, self.spectral_radius, self.density, self.seed)
        self.register_buffer("W", torch.as_tensor(w, dtype=dtype))

    # -- interface -------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the substrate (follows ``module.to(dtype)``)."""
        return self.W.dtype

    def describe(self) -> SubstrateDescription:
        return SubstrateDescription(
            name="ffesn",
            state_size=self.n,
            readin_size=self.n,
            readout_size=self.n,
            state_units="dimensionless",
            readout_units="dimensionless",
            time_unit="step",
            summary=(
                f"FFESN: x_(k+1) = tanh(W x_k) for K={self.steps} steps, N={self.n}, "
                f"W random (density {self.density:g}, uniform [-1, 1]) with spectral radius {self.spectral_radius:g}"
            ),
        )

    def read_configuration(self) -> dict[str, float | int | str]:
        return {
            "substrate": "ffesn",
            "n": self.n,
            "spectral_radius": self.spectral_radius,
            "steps": self.steps,
            "density": self.density,
            "seed": self.seed,
            "dtype": _DTYPES.get(self.dtype, str(self.dtype)),
        }

    @property
    def duration(self) -> float:
        """T = K, the number of steps ``evolve`` takes (time unit: step)."""
        return float(self.steps)

    def reset(self, seed: int) -> None:
        """No-op: the FFESN has no noise. W is fixed by the constructor's ``seed``, not by this one."""
        check_count(seed, "seed", 0)

    def initial_state(self, readin: torch.Tensor) -> torch.Tensor:
        """x_0 = readin (the read-in Linear layer of the model already computed W_in u)."""
        self._check_readin(readin)
        self._check_state(readin, "read-in")
        return readin

    def evolve(self, state: torch.Tensor) -> torch.Tensor:
        """K steps of x <- tanh(W x) on a batch (B, N): x <- tanh(x @ W^T). Differentiable."""
        self._check_state(state, "state")
        x = state
        w_t = self.W.T
        for _ in range(self.steps):
            x = torch.tanh(x @ w_t)
        return x

    # -- helpers ---------------------------------------------------------------------------
    def _check_state(self, state: torch.Tensor, what: str) -> None:
        if state.ndim != 2 or state.shape[1] != self.n:
            raise ValueError(f"{what} has shape {tuple(state.shape)}; expected (batch, {self.n}) for ffesn")
        if state.dtype != self.dtype:
            raise ValueError(f"{what} has dtype {state.dtype}; this ffesn substrate uses {self.dtype}")
        if not bool(torch.isfinite(state).all()):
            raise ValueError(f"{what} contains non-finite values (NaN or inf)")

    def extra_repr(self) -> str:
        return (
            f"n={self.n}, spectral_radius={self.spectral_radius:g}, steps={self.steps}, "
            f"density={self.density:g}, seed={self.seed}"
        )


# the run check builds the FFESN up to this size: its build can fail beyond its fields only when the masked W
# has spectral radius 0, which a matrix of more than a few dozen rows at density 0.5 never has (all-zero mask:
# probability 2**-(n * n))
FFESN_CHECK_MAX_N = 32


def _check_config(cfg, n: int, dtype: torch.dtype) -> None:
    if n <= FFESN_CHECK_MAX_N:
        _build_from_config(cfg, cfg.seed, dtype)


def _build_from_config(cfg, seed: int, dtype: torch.dtype) -> FFESN:
    """The FFESN of a training configuration (TrainConfig keys of the spec below)."""
    return FFESN(
        n=cfg.n or SPEC.default_n, spectral_radius=cfg.spectral_radius, steps=cfg.steps, seed=seed, dtype=dtype
    )


def _tangent(
    n: int, dt: float | None, seed: int, rng: np.random.Generator, *, spectral_radius: float = 1.5, density: float = 0.5
):
    """The FFESN map's tangent system (exponents per step) and a uniform initial state in [-1, 1]."""
    from stosim.analysis.tangent_models import FFESNTangent

    if dt is not None and dt != SPEC.tangent.defaults["dt"]:
        raise ValueError(f"dt = {dt!r}: the FFESN is a map (one step per layer); leave dt unset")
    system = FFESNTangent.from_substrate(FFESN(n=n, spectral_radius=spectral_radius, density=density, seed=seed))
    return system, rng.uniform(-1, 1, n)


SPEC = register(
    SubstrateSpec(
        name="ffesn",
        summary="feed-forward echo state network: steps layers of one random matrix (a map)",
        keys=("n", "spectral_radius", "steps"),
        default_n=500,
        time_unit="steps",
        seeded_matrix=True,
        readout_bias=False,
        cls=FFESN,
        build=_build_from_config,
        check=_check_config,
        tangent=TangentSpec(
            build=_tangent,
            defaults={"duration": 2000.0, "transient": 500.0, "dt": 1.0, "n": 500, "reorthonormalize_every": 1},
            flags={"spectral_radius": "spectral_radius"},
        ),
    )
)
