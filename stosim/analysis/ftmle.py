"""Finite-time maximum Lyapunov exponents (FTMLE) of maps x(0) -> x(T) (docs/physics.md section 6).

Definition
----------
For a differentiable map Phi_T: x(0) -> x(T) and one input sample x0,

    FTMLE(x0) = ln sigma_max(J) / T,        J = d x(T) / d x(0) evaluated at x0,

sigma_max the largest singular value (not the largest |eigenvalue|: a non-normal J can stretch
a vector although all its eigenvalues lie inside the unit circle). Units: 1 / ``time_unit``.
Everything is per sample; a batch (B, D) gives B exponents. ``sigma_max = 0`` gives ``-inf``.

Methods (``method=``)
---------------------
- ``"exact"``: the full Jacobian (B, D_out, D), built batched (all D basis tangents of all
  samples in one stacked call of the operators, or the operators' own ``jacobian``), then a
  batched SVD. For small states.
- ``"lanczos"`` (iterative, default for large states): Lanczos with full re-orthogonalization
  on the symmetric positive semi-definite operator A = P J^T J P, applied matrix-free as one
  Jacobian-vector product followed by one vector-Jacobian product; J is never formed. Batched
  over samples: every iteration applies the operators once to the samples that have not
  converged yet. Per sample, it stops when the top Ritz pair (theta, y) has relative residual
  ||A y - theta y|| / theta <= ``tol`` (then theta lies within tol theta of an eigenvalue of A,
  which is sigma_max^2 unless the random start vector is (almost) orthogonal to the top singular
  vector; the FTMLE is then off by about tol / (2 T) at most), when the Krylov space is invariant,
  or when it spans the whole space (then theta is exact); otherwise after ``max_iter`` iterations
  with ``converged = False``.
- ``"power"``: plain power iteration on the same operator with the same stopping rule (slower
  when sigma_1 and sigma_2 are close; kept as a simple cross-check).
- ``"auto"``: ``"exact"`` when the state dimension D <= ``exact_max_dim`` (64), else
  ``"lanczos"``. Start vectors are drawn from ``torch.Generator().manual_seed(seed)``.

Computations run in the dtype of x0 (float32 or float64, else ``ValueError``); float64 is the
reference (in float32 the residual floor is ~1e-6, so ask for ``tol`` >= 1e-5 there or the
samples end with ``converged = False``).

The operator protocol (:class:`FlowOperators`)
----------------------------------------------
Anything that can apply J and J^T to a batch plugs in:

- ``jvp(x0, v) -> J v``: x0 (B, D), v (B, D) -> (B, D_out); row b uses the Jacobian at x0[b].
- ``vjp(x0, u) -> J^T u``: x0 (B, D), u (B, D_out) -> (B, D).
- ``project_tangent(x0, v) -> P v``: the orthogonal (symmetric, idempotent) projector onto the
  tangent space of the state manifold at x0; identity by default.
- ``time`` (T, a float > 0) and ``time_unit`` (a string, e.g. "s", "step", "layer").
- ``jacobian(x0) -> J`` (optional): the full, unprojected (B, D_out, D) Jacobian, if there is
  a faster way than D Jacobian-vector products.
- ``linearize(x0) -> (jvp_at, vjp_at)`` (optional): v -> J v and u -> J^T u at this fixed batch,
  e.g. sharing one recorded forward pass; the iterative methods prefer it.

The operators must treat samples independently (row b of the result depends only on row b of
the inputs) and may be called with any sub-batch; they are called with x0 repeated when the
exact method stacks basis vectors. :func:`flow_operators_from_function` builds them from any
torch function ``f(x0) -> x(T)`` acting on (B, D) batches: ``vjp`` by ordinary reverse mode
(``torch.autograd.grad``, which also works through custom ``torch.autograd.Function`` s) and
``jvp`` by default by the double-vjp trick J v = d/du <J^T u, v> on a recorded forward pass
(``linearize``: one forward pass per batch, then backward passes only; needs a differentiable
backward), or with ``jvp_mode="forward"`` by ``torch.func.jvp``. Substrates that support
neither (the coupled STO array integrates with Numba inside a custom autograd Function whose
backward, a Numba adjoint, is not differentiable, and which has no forward mode) provide their
own operators through a ``flow_operators()`` method returning a :class:`FlowOperators`;
:func:`substrate_ftmle` uses it when present.

Constrained states (unit spheres)
---------------------------------
A coupled-STO state is N unit 3-vectors m_i, so perturbations live in the tangent space of the
product of spheres (dimension 2N inside R^{3N}). The FTMLE is then that of the restriction
J|_tangent, i.e. sigma_max(J P) with P projecting each oscillator's 3-vector perturbation onto
the plane orthogonal to m_i(0): (P v)_i = v_i - m_i (m_i . v_i). Without P a radial
perturbation (which leaves the sphere and has no physical meaning; normalization removes or
the integrator may even amplify it) would count. :func:`unit_sphere_tangent_projection` is that
P (it normalizes m_i itself) and is the ``project_tangent`` a sphere-valued flow should use. The
output side needs no projection: a map of the spheres into themselves sends tangent vectors to
tangent vectors. The right singular vector returned lies in the tangent space.

Models (layer-wise FTMLE)
-------------------------
:func:`model_ftmle` treats a network as a discrete-time map with one layer = one time unit
(``time_unit = "layer"``): for layer l with input h_l, FTMLE_l = ln sigma_max(d h_{l+1} / d h_l)
(time 1, per sample, evaluated along the sample's own forward pass); for the whole
composition of L layers, FTMLE_total = ln sigma_max(d h_L / d h_0) / L. Sub-multiplicativity
gives FTMLE_total <= mean_l FTMLE_l. Layers are the children of an ``nn.Sequential`` (so an
activation is its own layer; group ``Linear`` and activation into one ``nn.Sequential`` to count
them as one) or a list of callables / submodule names given by the user; the total is the
composition of exactly those layers. Jacobians may be rectangular; inputs of any per-sample
shape are flattened.
"""

from __future__ import annotations

import dataclasses
import numbers
import warnings
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from stosim.checks import check_count
from stosim.substrates.flow_operators import FlowOperators, identity_projection, unit_sphere_tangent_projection
from stosim.substrates.flow_operators import check_flow_time as _check_time

__all__ = [
    "FlowOperators",
    "FTMLEResult",
    "ModelFTMLEResult",
    "identity_projection",
    "unit_sphere_tangent_projection",
    "flow_operators_from_function",
    "flow_ftmle",
    "substrate_ftmle",
    "model_ftmle",
    "METHODS",
]

Tensor = torch.Tensor
METHODS = ("auto", "exact", "lanczos", "power")
DEFAULT_EXACT_MAX_DIM = 64
# Rows of one stacked operator call in the exact method, and bytes of Lanczos bases per chunk.
_EXACT_STACK_ROWS = 4096
_LANCZOS_BASIS_BYTES = 256 << 20
# dtypes torch.linalg.svd / eigh accept (half precision is not implemented there)
_SOLVER_DTYPES = (torch.float32, torch.float64)


def flow_operators_from_function(
    f: Callable[[Tensor], Tensor],
    *,
    time: float = 1.0,
    time_unit: str = "1",
    project_tangent: Callable[[Tensor, Tensor], Tensor] = identity_projection,
    jvp_mode: str = "reverse",
) -> FlowOperators:
    """:class:`FlowOperators` of a torch function ``f`` mapping (B, D) batches to (B, D_out), samples independent.

    ``vjp`` is one reverse-mode pass (``torch.autograd.grad``; works through custom autograd
    Functions). ``jvp_mode`` chooses how J v is computed:

    - ``"reverse"`` (default): J v = d/du <J^T u, v> (the "double-vjp" trick), which needs a
      differentiable backward. ``linearize`` records the forward pass once per batch and then
      applies J and J^T by backward passes only, which the iterative methods reuse.
    - ``"forward"``: ``torch.func.jvp`` (forward mode). Beware: in torch 2.x forward mode is slow
      for elementwise ops with Python scalars or 0-d tensors (each goes through a Python
      decomposition), e.g. ~20x the forward pass for the Lorenz 96 RK4 map.

    The exact method's ``jacobian`` stacks min(D, D_out) basis vectors of all samples into one
    batch: rows by one vjp (D_out <= D in reverse mode, D_out < D in forward mode), else columns.
    """
    if not callable(f):
        raise ValueError(f"f must be callable; got {f!r}")
    if jvp_mode not in ("reverse", "forward"):
        raise ValueError(f"jvp_mode must be 'reverse' or 'forward'; got {jvp_mode!r}")

    def forward_jvp(x0: Tensor, v: Tensor) -> Tensor:
        try:
            with warnings.catch_warnings():
                # torch's first forward-mode call scripts its jvp decompositions with the deprecated
                # torch.jit.script (torch >= 2.10 warns); that is torch-internal, not ours
                warnings.filterwarnings(
                    "ignore", message=r"`torch\.jit\.script` is deprecated", category=DeprecationWarning
                )
                _, out = torch.func.jvp(f, (x0.detach(),), (v,))
        except RuntimeError as err:
            raise RuntimeError(
                f"forward-mode torch.func.jvp failed for {f!r}: {err}. Use jvp_mode='reverse' "
                "or provide FlowOperators with your own jvp"
            ) from err
        return out.detach()

    def record(x0: Tensor) -> tuple[Tensor, Tensor]:
        x = x0.detach().requires_grad_(True)
        y = _call_checked(f, x)
        if not y.requires_grad:
            raise ValueError(
                "f(x0) has no autograd graph to x0: f is not differentiable by torch autograd "
                "(provide FlowOperators with your own jvp/vjp)"
            )
        return x, y

    def vjp(x0: Tensor, u: Tensor) -> Tensor:
        with torch.enable_grad():
            x, y = record(x0)
            (g,) = torch.autograd.grad(y, x, grad_outputs=u, allow_unused=True)
        return torch.zeros_like(x0) if g is None else g.detach()

    def linearize(x0: Tensor) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
        with torch.enable_grad():
            x, y = record(x0)
            if jvp_mode == "reverse":
                u = torch.zeros_like(y, requires_grad=True)
                (g,) = torch.autograd.grad(y, x, grad_outputs=u, create_graph=True, allow_unused=True)
                if g is not None and not g.requires_grad:
                    raise RuntimeError(
                        f"the backward pass of {f!r} is not differentiable (a custom autograd Function?), so "
                        "jvp_mode='reverse' cannot form J v; use jvp_mode='forward' or provide FlowOperators with "
                        "your own jvp (the exact method needs only vjp when D_out <= D)"
                    )

        def vjp_at(w: Tensor) -> Tensor:
            with torch.enable_grad():
                (gx,) = torch.autograd.grad(y, x, grad_outputs=w, retain_graph=True, allow_unused=True)
            return torch.zeros_like(x0) if gx is None else gx.detach()

        def jvp_at(v: Tensor) -> Tensor:
            if jvp_mode == "forward":
                return forward_jvp(x0, v)
            if g is None:  # x does not reach y: J = 0
                return torch.zeros_like(y).detach()
            with torch.enable_grad():
                (jv,) = torch.autograd.grad(g, u, grad_outputs=v, retain_graph=True, allow_unused=True)
            return torch.zeros_like(y).detach() if jv is None else jv.detach()

        return jvp_at, vjp_at

    def jvp(x0: Tensor, v: Tensor) -> Tensor:
        return forward_jvp(x0, v) if jvp_mode == "forward" else linearize(x0)[0](v)

    def jacobian(x0: Tensor) -> Tensor:
        n_batch, dim = x0.shape
        with torch.no_grad():
            d_out = _call_checked(f, x0[:1].detach()).shape[1]
        if d_out < dim or (d_out == dim and jvp_mode == "reverse"):
            xs = x0.repeat_interleave(d_out, dim=0)
            basis = torch.eye(d_out, dtype=x0.dtype, device=x0.device).repeat(n_batch, 1)
            return vjp(xs, basis).reshape(n_batch, d_out, dim)
        xs = x0.repeat_interleave(dim, dim=0)
        basis = torch.eye(dim, dtype=x0.dtype, device=x0.device).repeat(n_batch, 1)
        return jvp(xs, basis).reshape(n_batch, dim, -1).transpose(1, 2)

    return FlowOperators(
        jvp=jvp,
        vjp=vjp,
        time=time,
        time_unit=time_unit,
        project_tangent=project_tangent,
        jacobian=jacobian,
        linearize=linearize,
    )


def _call_checked(f: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    y = f(x)
    if not isinstance(y, torch.Tensor) or y.ndim != 2 or y.shape[0] != x.shape[0]:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"f must map (batch, D) to (batch, D_out); got {shape} for input {tuple(x.shape)}")
    return y


# ----------------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FTMLEResult:
    """Per-sample FTMLE (B,) in 1/``time_unit`` with how it was obtained.

    ``sigma_max`` (B,): largest singular value of J P; ``iterations`` (B,): operator applications
    (A = P J^T J P) per sample, 0 for the exact method; ``converged`` (B,): stopping rule met
    (always True for the exact method); ``right_vector`` (B, D): unit top right singular vector.
    """

    ftmle: np.ndarray
    sigma_max: np.ndarray
    time: float
    time_unit: str
    method: str
    iterations: np.ndarray
    converged: np.ndarray
    right_vector: np.ndarray

    @property
    def all_converged(self) -> bool:
        return bool(np.all(self.converged))

    @property
    def unit(self) -> str:
        """The unit of ``ftmle``."""
        return f"1/{self.time_unit}"


@dataclasses.dataclass(frozen=True)
class ModelFTMLEResult:
    """Layer-wise (time = 1 layer each) and whole-composition (time = ``n_layers``) FTMLE of a network."""

    names: tuple[str, ...]
    layers: tuple[FTMLEResult, ...]
    total: FTMLEResult

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def layer_ftmle(self) -> np.ndarray:
        """(n_layers, B): ln sigma_max of each layer's Jacobian, per sample."""
        return np.stack([r.ftmle for r in self.layers])


# ----------------------------------------------------------------------------------------------
# the core
# ----------------------------------------------------------------------------------------------
def flow_ftmle(
    flow: FlowOperators | Callable[[Tensor], Tensor],
    x0: Tensor,
    *,
    method: str = "auto",
    tol: float = 1e-8,
    max_iter: int = 300,
    exact_max_dim: int = DEFAULT_EXACT_MAX_DIM,
    seed: int = 0,
    batch_size: int | None = None,
    time: float | None = None,
    time_unit: str | None = None,
) -> FTMLEResult:
    """FTMLE ln(sigma_max(J P)) / T of a map at each sample of x0 (B, D).

    ``flow``: a :class:`FlowOperators`, or a torch function f(x0) -> x(T) on (B, D) batches (wrapped
    by :func:`flow_operators_from_function` with ``time`` (default 1) and ``time_unit`` (default
    "1"); these two may only be given with a function). ``method``: one of :data:`METHODS`
    (module docstring). ``tol``/``max_iter``: stopping rule of the iterative methods (relative
    residual of the top eigenpair of P J^T J P). ``exact_max_dim``: "auto" uses the exact method up
    to this D. ``seed``: start vectors. ``batch_size``: samples per chunk (None: chosen to bound
    memory). Raises ``ValueError`` for bad arguments or inputs and ``FloatingPointError`` when an
    operator returns non-finite values.
    """
    ops = _resolve_flow(flow, time, time_unit)
    x0 = _check_x0(x0)
    method = _check_method(method)
    tol = _check_tol(tol)
    max_iter = check_count(max_iter, "max_iter", 1)
    exact_max_dim = check_count(exact_max_dim, "exact_max_dim", 1)
    seed = check_count(seed, "seed", 0)
    if batch_size is not None:
        batch_size = check_count(batch_size, "batch_size", 1)
    n_batch, dim = x0.shape
    if method == "auto":
        method = "exact" if dim <= exact_max_dim else "lanczos"
    x0 = x0.detach()
    if method == "exact":
        chunk = batch_size or max(1, _EXACT_STACK_ROWS // dim)
        parts = [_exact(ops, x0[i : i + chunk]) for i in range(0, n_batch, chunk)]
    else:
        gen = torch.Generator(device=x0.device).manual_seed(seed)
        start = torch.randn(x0.shape, generator=gen, dtype=x0.dtype, device=x0.device)
        kmax = min(max_iter, dim)
        chunk = batch_size or max(1, _LANCZOS_BASIS_BYTES // ((kmax + 1) * dim * x0.element_size()))
        solver = _lanczos if method == "lanczos" else _power
        parts = [solver(ops, x0[i : i + chunk], start[i : i + chunk], tol, max_iter) for i in range(0, n_batch, chunk)]
    sigma, iters, conv, vec = (torch.cat([p[k] for p in parts]) for k in range(4))
    ftmle = torch.log(sigma.to(torch.float64)) / ops.time  # log(0) = -inf without a numpy warning
    return FTMLEResult(
        ftmle=ftmle.cpu().numpy(),
        sigma_max=sigma.to(torch.float64).cpu().numpy(),
        time=float(ops.time),
        time_unit=ops.time_unit,
        method=method,
        iterations=iters.cpu().numpy().astype(np.int64),
        converged=conv.cpu().numpy().astype(bool),
        right_vector=vec.to(torch.float64).cpu().numpy(),
    )


def _resolve_flow(flow: object, time: float | None, time_unit: str | None) -> FlowOperators:
    if isinstance(flow, FlowOperators):
        if time is not None or time_unit is not None:
            raise ValueError("time and time_unit are taken from the FlowOperators; pass them only with a function")
        return flow
    if callable(flow):
        return flow_operators_from_function(
            flow, time=1.0 if time is None else time, time_unit="1" if time_unit is None else time_unit
        )
    raise ValueError(f"flow must be a FlowOperators or a callable f(x0) -> x(T); got {type(flow).__name__}")


def _check_x0(x0: object) -> Tensor:
    if not isinstance(x0, torch.Tensor):
        raise ValueError(f"x0 must be a torch.Tensor of shape (batch, D); got {type(x0).__name__}")
    if x0.ndim != 2 or x0.shape[0] < 1 or x0.shape[1] < 1:
        raise ValueError(f"x0 has shape {tuple(x0.shape)}; expected (batch, D) with batch >= 1 and D >= 1")
    if x0.dtype not in _SOLVER_DTYPES:
        raise ValueError(f"x0 must be a float32 or float64 tensor (the SVD and eigensolvers need them); got {x0.dtype}")
    if not bool(torch.isfinite(x0).all()):
        bad = int(torch.nonzero(~torch.isfinite(x0).all(dim=1))[0, 0])
        raise ValueError(f"x0 contains non-finite values (first in sample {bad})")
    return x0


def _check_method(method: object) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    return str(method)


def _check_tol(tol: object) -> float:
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not 0.0 < float(tol) < 1.0:
        raise ValueError(f"tol must be a number in (0, 1); got {tol!r}")
    return float(tol)


def _checked(name: str, out: object, n_batch: int, dim: int | None, like: Tensor) -> Tensor:
    """Validate an operator's output: (n_batch, dim) (any dim when None), floating, finite."""
    if (
        not isinstance(out, torch.Tensor)
        or out.ndim != 2
        or out.shape[0] != n_batch
        or (dim is not None and out.shape[1] != dim)
    ):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        want = f"({n_batch}, {'D_out' if dim is None else dim})"
        raise ValueError(f"{name} returned {shape}; expected {want}")
    if not bool(torch.isfinite(out).all()):
        raise FloatingPointError(f"{name} returned non-finite values (the map diverged or the input is out of range)")
    return out.to(dtype=like.dtype, device=like.device)


def _project(ops: FlowOperators, x0: Tensor, v: Tensor) -> Tensor:
    if ops.project_tangent is identity_projection:
        return v
    return _checked("project_tangent", ops.project_tangent(x0, v), x0.shape[0], x0.shape[1], x0)


class _NormalOperator:
    """A = P J^T J P on the active samples of a chunk x0 (re-linearized when the active set shrinks)."""

    def __init__(self, ops: FlowOperators, x0: Tensor) -> None:
        self.ops = ops
        self.x0 = x0
        self._n_linearized = -1
        self._lin: tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]] | None = None

    def __call__(self, active: Tensor, q: Tensor) -> Tensor:
        xs = self.x0[active]
        n, d = xs.shape
        pq = _project(self.ops, xs, q)
        if self.ops.linearize is not None:
            if active.numel() != self._n_linearized:  # the active set only ever shrinks
                self._lin = None  # free the old graph first
                self._lin = self.ops.linearize(xs)
                self._n_linearized = active.numel()
            jvp_at, vjp_at = self._lin
            jv = _checked("jvp", jvp_at(pq), n, None, xs)
            g = _checked("vjp", vjp_at(jv), n, d, xs)
        else:
            jv = _checked("jvp", self.ops.jvp(xs, pq), n, None, xs)
            g = _checked("vjp", self.ops.vjp(xs, jv), n, d, xs)
        return _project(self.ops, xs, g)


def _exact(ops: FlowOperators, x0: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    n, d = x0.shape
    eye = torch.eye(d, dtype=x0.dtype, device=x0.device).repeat(n, 1)
    xs = x0.repeat_interleave(d, dim=0)
    identity = ops.project_tangent is identity_projection
    if ops.jacobian is not None:
        jac = ops.jacobian(x0)
        if not isinstance(jac, torch.Tensor) or jac.ndim != 3 or jac.shape[0] != n or jac.shape[2] != d:
            shape = tuple(jac.shape) if isinstance(jac, torch.Tensor) else type(jac).__name__
            raise ValueError(f"jacobian returned {shape}; expected ({n}, D_out, {d})")
        if not bool(torch.isfinite(jac).all()):
            raise FloatingPointError("jacobian returned non-finite values")
        jac = jac.to(dtype=x0.dtype, device=x0.device)
        if not identity:
            p_rows = _project(ops, xs, eye).reshape(n, d, d)  # row j = P e_j
            jac = jac @ p_rows.transpose(1, 2)
    else:
        cols = eye if identity else _project(ops, xs, eye)
        jv = _checked("jvp", ops.jvp(xs, cols), n * d, None, x0)
        jac = jv.reshape(n, d, -1).transpose(1, 2)  # (n, D_out, D): column j = J P e_j
    _, s, vh = torch.linalg.svd(jac, full_matrices=False)
    sigma = s[:, 0]
    vec = vh[:, 0, :]
    return sigma, torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.bool), vec


def _lanczos(
    ops: FlowOperators, x0: Tensor, start: Tensor, tol: float, max_iter: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Batched Lanczos with full re-orthogonalization on A = P J^T J P; top Ritz pair per sample."""
    n, d = x0.shape
    kmax = min(max_iter, d)
    eps = torch.finfo(x0.dtype).eps
    q0 = _unit_start(ops, x0, start)
    basis = x0.new_zeros(n, kmax + 1, d)
    basis[:, 0] = q0
    alpha = x0.new_zeros(n, kmax)
    beta = x0.new_zeros(n, kmax)
    theta = x0.new_zeros(n)
    iters = torch.zeros(n, dtype=torch.long)
    conv = torch.zeros(n, dtype=torch.bool)
    vec = q0.clone()
    active = torch.arange(n, device=x0.device)
    apply = _NormalOperator(ops, x0)
    for j in range(kmax):
        q = basis[active, j]
        w = apply(active, q)
        a = (q * w).sum(dim=1)
        w = w - a[:, None] * q
        if j > 0:
            w = w - beta[active, j - 1, None] * basis[active, j - 1]
        qs = basis[active, : j + 1]
        for _ in range(2):  # full re-orthogonalization, twice ("twice is enough")
            w = w - torch.einsum("bk,bkd->bd", torch.einsum("bkd,bd->bk", qs, w), qs)
        b = w.norm(dim=1)
        alpha[active, j] = a
        beta[active, j] = b
        tri = torch.diag_embed(alpha[active, : j + 1])
        if j > 0:
            off = torch.diag_embed(beta[active, :j], offset=1)
            tri = tri + off + off.transpose(1, 2)
        evals, evecs = torch.linalg.eigh(tri)
        th = evals[:, -1].clamp_min(0.0)  # A is positive semi-definite; clamp round-off only
        s = evecs[:, :, -1]
        resid = b * s[:, -1].abs()
        scale = torch.maximum(th, evals.abs().amax(dim=1))
        breakdown = b <= 100.0 * eps * scale
        converged_now = (resid <= tol * th) | breakdown | torch.tensor(j + 1 >= d, device=x0.device)
        done = converged_now | torch.tensor(j + 1 >= kmax, device=x0.device)
        theta[active] = th
        iters[active.cpu()] = j + 1
        if bool(done.any()):
            idx = active[done]
            vec[idx] = torch.einsum("bk,bkd->bd", s[done], qs[done])
            conv[idx.cpu()] = converged_now[done].cpu()
        keep = ~done
        if not bool(keep.any()):
            break
        basis[active[keep], j + 1] = w[keep] / b[keep, None]
        active = active[keep]
    vec = vec / vec.norm(dim=1, keepdim=True).clamp_min(torch.finfo(x0.dtype).tiny)
    return theta.sqrt(), iters, conv, vec


def _power(
    ops: FlowOperators, x0: Tensor, start: Tensor, tol: float, max_iter: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Batched power iteration on A = P J^T J P; Rayleigh quotient and relative residual per sample."""
    n, d = x0.shape
    v = _unit_start(ops, x0, start)
    theta = x0.new_zeros(n)
    iters = torch.zeros(n, dtype=torch.long)
    conv = torch.zeros(n, dtype=torch.bool)
    active = torch.arange(n, device=x0.device)
    tiny = torch.finfo(x0.dtype).tiny
    apply = _NormalOperator(ops, x0)
    for it in range(1, max_iter + 1):
        q = v[active]
        w = apply(active, q)
        th = (q * w).sum(dim=1).clamp_min(0.0)
        resid = (w - th[:, None] * q).norm(dim=1)
        wn = w.norm(dim=1)
        ok = resid <= tol * th
        zero = wn <= tiny  # A v = 0: sigma_max = 0 on a generic start vector
        theta[active] = th
        iters[active.cpu()] = it
        conv[active.cpu()] = (ok | zero).cpu()
        upd = ~zero
        v[active[upd]] = w[upd] / wn[upd, None]
        active = active[~(ok | zero)]
        if active.numel() == 0:
            break
    return theta.sqrt(), iters, conv, v


def _unit_start(ops: FlowOperators, x0: Tensor, start: Tensor) -> Tensor:
    r = _project(ops, x0, start)
    norm = r.norm(dim=1, keepdim=True)
    if bool((norm == 0).any()):
        raise ValueError("the tangent space is {0} at some sample (project_tangent annihilated a random vector)")
    return r / norm


# ----------------------------------------------------------------------------------------------
# substrates
# ----------------------------------------------------------------------------------------------
def substrate_ftmle(
    substrate: nn.Module,
    readin: Tensor | None = None,
    *,
    states: Tensor | None = None,
    method: str = "auto",
    tol: float = 1e-8,
    max_iter: int = 300,
    exact_max_dim: int = DEFAULT_EXACT_MAX_DIM,
    seed: int = 0,
    batch_size: int | None = None,
) -> FTMLEResult:
    """Per-sample FTMLE of a substrate's evolution x(0) -> x(T), in 1/(the substrate's time unit).

    Give exactly one of ``readin`` (B, readin_size; x(0) = ``substrate.initial_state(readin)``) or
    ``states`` (B, state_size; x(0) directly). Operators (by the capabilities the substrate
    declares, :mod:`stosim.substrates.protocols`): ``substrate.flow_operators()`` for a
    :class:`~stosim.substrates.protocols.HasTangentSystem` (it must return a :class:`FlowOperators`,
    e.g. the coupled STO array's, with T = ``duration`` in s and the unit-sphere tangent
    projection); else, for a substrate that is both ``Differentiable`` and ``Timed``, built from
    ``substrate.evolve`` by :func:`flow_operators_from_function` with T = ``substrate.duration``
    (time unit from ``describe().time_unit``) and the identity tangent projection; anything else
    raises ``ValueError``. Stochastic substrates (noise on) raise ``ValueError``: the FTMLE of a
    noisy map is not defined here.
    """
    # lazy: importing stosim.substrates pulls in the Numba kernels of the coupled STO array
    from stosim.substrates.protocols import Differentiable, HasTangentSystem, Timed

    if (readin is None) == (states is None):
        raise ValueError("give exactly one of readin or states")
    desc = substrate.describe()
    if substrate.capabilities.stochastic:
        raise ValueError(
            f"substrate {desc.name} is stochastic (noise on); FTMLE needs a deterministic map: switch the noise off"
        )
    if readin is not None:
        _check_batch(readin, desc.readin_size, "read-in", desc.name)
        with torch.no_grad():
            x0 = substrate.initial_state(readin)
    else:
        _check_batch(states, desc.state_size, "states", desc.name)
        x0 = states
    if isinstance(substrate, HasTangentSystem):
        ops = substrate.flow_operators()
        if not isinstance(ops, FlowOperators):
            raise ValueError(f"{desc.name}.flow_operators() returned {type(ops).__name__}; expected FlowOperators")
    else:
        missing = [p.__name__ for p in (Differentiable, Timed) if not isinstance(substrate, p)]
        if missing:
            raise ValueError(
                f"substrate {desc.name} has no flow_operators() (it does not declare HasTangentSystem), "
                "and without them it must declare Differentiable and Timed; "
                f"it lacks {', '.join(missing)}"
            )
        ops = flow_operators_from_function(
            substrate.evolve,
            time=_check_time(substrate.duration),
            time_unit=desc.time_unit,
            project_tangent=identity_projection,
        )
    return flow_ftmle(
        ops,
        x0.detach(),
        method=method,
        tol=tol,
        max_iter=max_iter,
        exact_max_dim=exact_max_dim,
        seed=seed,
        batch_size=batch_size,
    )


def _check_batch(x: object, size: int, what: str, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[0] < 1 or x.shape[1] != size:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{what} has shape {shape}; expected (batch >= 1, {size}) for {name}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what} for {name} contains non-finite values")


# ----------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------
_STOCHASTIC_IN_TRAINING = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


def model_ftmle(
    model_or_layers: nn.Module | Sequence[Callable[[Tensor], Tensor]],
    x: Tensor,
    layers: Sequence[str | Callable[[Tensor], Tensor]] | None = None,
    *,
    method: str = "auto",
    tol: float = 1e-8,
    max_iter: int = 300,
    exact_max_dim: int = DEFAULT_EXACT_MAX_DIM,
    seed: int = 0,
    batch_size: int | None = None,
) -> ModelFTMLEResult:
    """Layer-wise and whole-composition FTMLE of a network at the samples x (B, ...).

    Layers: ``layers`` if given (callables, or names of submodules of ``model_or_layers`` for
    ``get_submodule``), else the children of an ``nn.Sequential``, else ``model_or_layers`` itself
    when it is a list/tuple of callables. Per layer l: ln sigma_max(d h_{l+1}/d h_l) with time 1
    layer; total: ln sigma_max(d h_L/d h_0) / L (module docstring). "auto" picks the exact method
    when the smaller side of a Jacobian is <= ``exact_max_dim``. Modules with dropout or batch norm
    in training mode raise ``ValueError`` (call ``model.eval()``).
    """
    names, fns = _resolve_layers(model_or_layers, layers)
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[0] < 1 or x.numel() == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x has shape {shape}; expected (batch >= 1, ...) with at least one feature")
    if x.dtype not in _SOLVER_DTYPES:
        raise ValueError(f"x must be a finite float32 or float64 tensor; got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x must be a finite float32 or float64 tensor; it has non-finite values")
    method = _check_method(method)
    exact_max_dim = check_count(exact_max_dim, "exact_max_dim", 1)
    kwargs = dict(tol=tol, max_iter=max_iter, exact_max_dim=exact_max_dim, seed=seed, batch_size=batch_size)
    x = x.detach()
    h = x
    results = []
    for name, fn in zip(names, fns):
        with torch.no_grad():
            out = fn(h)
        if not isinstance(out, torch.Tensor) or out.ndim < 2 or out.shape[0] != h.shape[0]:
            raise ValueError(
                f"layer {name} must map (batch, ...) to (batch, ...); got {type(out).__name__} "
                f"{tuple(out.shape) if isinstance(out, torch.Tensor) else ''}"
            )
        flat = _flattened(fn, h.shape[1:])
        layer_method = _auto(method, h[0].numel(), out[0].numel(), exact_max_dim)
        ops = flow_operators_from_function(flat, time=1.0, time_unit="layer")
        results.append(flow_ftmle(ops, h.reshape(h.shape[0], -1), **{**kwargs, "method": layer_method}))
        h = out.detach()

    def composition(z: Tensor) -> Tensor:
        for fn in fns:
            z = fn(z)
        return z

    total_method = _auto(method, x[0].numel(), h[0].numel(), exact_max_dim)
    ops = flow_operators_from_function(_flattened(composition, x.shape[1:]), time=float(len(fns)), time_unit="layer")
    total = flow_ftmle(ops, x.reshape(x.shape[0], -1), **{**kwargs, "method": total_method})
    return ModelFTMLEResult(names=tuple(names), layers=tuple(results), total=total)


def _auto(method: str, d_in: int, d_out: int, exact_max_dim: int) -> str:
    if method != "auto":
        return method
    return "exact" if min(d_in, d_out) <= exact_max_dim else "lanczos"


def _flattened(fn: Callable[[Tensor], Tensor], sample_shape: torch.Size) -> Callable[[Tensor], Tensor]:
    def flat(z: Tensor) -> Tensor:
        out = fn(z.reshape(z.shape[0], *sample_shape))
        return out.reshape(out.shape[0], -1)

    return flat


def _resolve_layers(model_or_layers: object, layers: object) -> tuple[list[str], list[Callable[[Tensor], Tensor]]]:
    if layers is not None:
        if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence) or len(layers) == 0:
            raise ValueError("layers must be a non-empty list of callables or submodule names")
        names, fns = [], []
        for i, layer in enumerate(layers):
            if isinstance(layer, str):
                if not isinstance(model_or_layers, nn.Module):
                    raise ValueError(f"layer name {layer!r} needs an nn.Module to look it up in")
                try:
                    fn = model_or_layers.get_submodule(layer)
                except AttributeError as err:
                    raise ValueError(f"{type(model_or_layers).__name__} has no submodule {layer!r}") from err
                names.append(layer)
                fns.append(fn)
            elif callable(layer):
                names.append(_layer_name(i, layer))
                fns.append(layer)
            else:
                raise ValueError(f"layers[{i}] is neither a callable nor a submodule name: {layer!r}")
    elif isinstance(model_or_layers, nn.Sequential):
        if len(model_or_layers) == 0:
            raise ValueError("the nn.Sequential has no layers")
        names = [f"{n}:{type(m).__name__}" for n, m in model_or_layers.named_children()]
        fns = list(model_or_layers.children())
    elif isinstance(model_or_layers, (list, tuple)):
        if len(model_or_layers) == 0 or not all(callable(f) for f in model_or_layers):
            raise ValueError("model_or_layers as a list must be a non-empty list of callables")
        names = [_layer_name(i, f) for i, f in enumerate(model_or_layers)]
        fns = list(model_or_layers)
    elif isinstance(model_or_layers, nn.Module):
        raise ValueError(
            f"{type(model_or_layers).__name__} is not an nn.Sequential: pass layers=[...] (callables or "
            "submodule names) to say which maps are the layers"
        )
    else:
        raise ValueError(
            f"model_or_layers must be an nn.Module or a list of callables; got {type(model_or_layers).__name__}"
        )
    for name, fn in zip(names, fns):
        modules = fn.modules() if isinstance(fn, nn.Module) else ()
        for m in modules:
            if m.training and isinstance(m, _STOCHASTIC_IN_TRAINING):
                raise ValueError(
                    f"layer {name} contains {type(m).__name__} in training mode, which makes samples "
                    "random or dependent; call model.eval() first"
                )
    return names, fns


def _layer_name(i: int, fn: object) -> str:
    return f"{i}:{type(fn).__name__ if isinstance(fn, nn.Module) else getattr(fn, '__name__', type(fn).__name__)}"
