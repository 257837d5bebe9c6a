"""Feed-forward echo-state network (FFESN) substrate.

The state is a vector x in R^N (dimensionless). A fixed random matrix W (N x N) acts for K
discrete steps (the time unit is one "step")::

    x_0     = readin                  (the model's read-in Linear layer computes W_in u)
    x_{k+1} = tanh(W x_k),   k = 0, ..., K-1
    readout = x_K

W is drawn once from ``seed`` (docs/physics.md section 5): a 0/1 mask M, values V uniform in
[-1, 1] drawn independently for every entry, W_raw = M * V, then the whole matrix rescaled so
that its spectral radius (largest eigenvalue modulus) is exactly ``spectral_radius`` (computed
with ``numpy.linalg.eigvals`` in float64). Two masks (``mask``):

- ``"independent"`` (default): every entry kept independently with probability ``density``
  (diagonal included; about density * N^2 nonzero entries);
- ``"symmetric"``: the adjacency matrix of an undirected random graph on N nodes with exactly
  E = round(density * N (N - 1) / 2) edges drawn uniformly among the N (N - 1) / 2 node pairs
  (G(N, E)), no self-loops: M = M^T, M_ii = 0, 2E nonzero entries. This is the seed study's
  published FFESN code's mask (a random graph's adjacency matrix times uniform values); the values
  stay independent, so W itself is not symmetric.

Random numbers come only from ``numpy.random.Generator(PCG64(SeedSequence(seed)))``; no global
RNG is touched.

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

__all__ = ["FFESN", "MASKS", "draw_ffesn_mask", "draw_ffesn_matrix", "symmetric_edge_count"]

_DTYPES = {torch.float64: "float64", torch.float32: "float32"}
_MAX_SPECTRAL_RADIUS = 10.0
#: the masks of W: entries kept independently, or a symmetric random graph with an exact edge count
MASKS = ("independent", "symmetric")

# the FFESN's own settings (stosim.parameters): keys of experiment files, sweep points and flags
SPECTRAL_RADIUS, DENSITY, STEPS, MASK = declare(
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
    Parameter("mask", "text", "FFESN mask of W (independent entries or a symmetric graph)"),
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


def _check_mask(mask: object) -> str:
    if not isinstance(mask, str) or mask not in MASKS:
        raise ValueError(f"mask must be one of {', '.join(repr(m) for m in MASKS)}; got {mask!r}")
    return mask


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


def symmetric_edge_count(n: int, density: float) -> int:
    """E = round(density * n (n - 1) / 2): the edges of the symmetric mask (round half to even)."""
    return round(density * (n * (n - 1) // 2))


def draw_ffesn_mask(n: int, density: float, mask: str, rng: np.random.Generator) -> np.ndarray:
    """The 0/1 mask of W (bool, shape (n, n)) from ``rng``; ``mask`` one of :data:`MASKS` (module docstring).

    ``"symmetric"``: E = :func:`symmetric_edge_count` distinct pairs i < j drawn without replacement
    (``rng.choice`` over the n (n - 1) / 2 upper-triangle positions), mirrored; zero diagonal.
    """
    if mask == "independent":
        return rng.random((n, n)) < density
    rows, cols = np.triu_indices(n, k=1)
    chosen = rng.choice(rows.size, size=symmetric_edge_count(n, density), replace=False)
    out = np.zeros((n, n), dtype=bool)
    out[rows[chosen], cols[chosen]] = True
    return out | out.T


def draw_ffesn_matrix(
    n: int, spectral_radius: float, density: float, seed: int, mask: str = "independent"
) -> np.ndarray:
    """The fixed FFESN matrix W (float64, shape (n, n)) drawn from ``seed``.

    Mask (:func:`draw_ffesn_mask`): ``"independent"``, each entry kept with probability ``density``, or
    ``"symmetric"``, a random graph with exactly round(density n (n - 1) / 2) edges and no self-loops;
    kept entries uniform in [-1, 1]; the matrix is then multiplied by ``spectral_radius / max|eig(W_raw)|``.
    Raises ``ValueError`` for arguments outside n >= 1, spectral_radius in (0, 10], density in
    (0, 1], seed >= 0, mask in :data:`MASKS`, and if the raw matrix has spectral radius 0 (e.g. everything
    masked).
    """
    n, spectral_radius, density, seed = _check_matrix_arguments(n, spectral_radius, density, seed)
    mask = _check_mask(mask)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed)))
    kept = draw_ffesn_mask(n, density, mask, rng)
    values = rng.uniform(-1.0, 1.0, size=(n, n))
    w = np.where(kept, values, 0.0)
    # One BLAS thread: multi-threaded OpenBLAS eigensolvers crawl on small, loaded machines.
    with single_threaded_blas():
        radius = float(np.max(np.abs(np.linalg.eigvals(w))))
    if not radius > 0.0:
        raise ValueError(
            f"the random matrix drawn for n={n}, density={density}, mask={mask!r}, seed={seed} has spectral radius 0 "
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
        In (0, 1]: the probability that an entry of W is kept (``mask="independent"``) or the fraction of
        the N (N - 1) / 2 node pairs joined by an edge (``mask="symmetric"``). Default 0.5.
    seed:
        Non-negative integer seed of W (numpy SeedSequence). Default 0.
    dtype:
        ``torch.float64`` (default) or ``torch.float32``; states must have this dtype.
    mask:
        ``"independent"`` (default) or ``"symmetric"`` (the seed study's code: a random graph with exactly
        round(density N (N - 1) / 2) edges, zero diagonal); see the module docstring.

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
        mask: str = "independent",
    ) -> None:
        super().__init__()
        self.n, self.spectral_radius, self.density, self.seed = _check_matrix_arguments(
            n, spectral_radius, density, seed
        )
        self.mask = _check_mask(mask)
        self.steps = check_count(steps, "steps", 1)
        dtype = _check_dtype(dtype)
        w = draw_ffesn_matrix(self.n, self.spectral_radius, self.density, self.seed, self.mask)
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
                f"W random ({self.mask} mask, density {self.density:g}, uniform [-1, 1]) "
                f"with spectral radius {self.spectral_radius:g}"
            ),
        )

    def read_configuration(self) -> dict[str, float | int | str]:
        return {
            "substrate": "ffesn",
            "n": self.n,
            "spectral_radius": self.spectral_radius,
            "steps": self.steps,
            "density": self.density,
            "mask": self.mask,
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
            f"density={self.density:g}, mask={self.mask!r}, seed={self.seed}"
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
        n=cfg.n or SPEC.default_n,
        spectral_radius=cfg.spectral_radius,
        steps=cfg.steps,
        seed=seed,
        dtype=dtype,
        mask=getattr(cfg, "mask", "independent"),
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
        keys=("n", "spectral_radius", "steps", "mask"),
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
