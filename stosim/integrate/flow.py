"""The RK4 flow map of a coupled STO array as a torch autograd function with an exact, fast gradient.

``sto_flow(m0, array, n_steps, dt_s)`` returns m(T) for states m0 (B, N, 3); its backward
pass is the Numba reverse-mode kernel of :mod:`stosim.integrate.adjoint`. Memory stays
within ``checkpoint_bytes`` (default 1 GiB, or ``STOSIM_GRADIENT_MEMORY_MB`` MiB), in the first of these that fits:

- every state, the four stage fields H_x of every step and its 1/|u| (8 numbers per oscillator and step; N > 32):
  the backward pass runs 4 coupling products per step, 8 per step in all with the forward pass's 4, and projects
  its cotangent with the kept new state and 1/|u| (no k4 to evaluate, 4-6 % less time per training step than
  keeping the fields alone); at N = 200, 300 steps this is 1.02 GB at batch 500 in float32 (a training step of the
  MNIST tables; N padded to 208, :func:`padded_oscillator_count`; 16 chunks of 32 samples), 0.25 GB at batch 64 in
  float64;
- every state (3 numbers per oscillator and step): the backward pass recomputes the stage fields, 12 products
  per step in all;
- the state every K ~ sqrt(n_steps) steps: each segment is recomputed from its checkpoint (keeping its stage
  fields) during the backward pass, 12 products per step.

All three give the same gradient, bitwise.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from stosim.integrate import buffers
from stosim.integrate.adjoint import adjoint_chunk, adjoint_chunks, adjoint_kept_chunk, forward_keep_chunk
from stosim.integrate.aligned import ALIGN_BYTES, aligned_copy, aligned_empty
from stosim.integrate.chunks import chunk_count, for_each_chunk, from_chunks, to_chunks
from stosim.integrate.sto_kernels import METHOD_RK4, SMALL_N_MAX, run_chunks
from stosim.integrate.threads import single_threaded_blas
from stosim.physics.array import STOArray, check_step_count, check_time_step
from stosim.physics.llg import reference_for_kernels

__all__ = [
    "sto_flow",
    "checkpoint_segment",
    "keeps_stage_fields",
    "gradient_memory_bytes",
    "DEFAULT_CHECKPOINT_BYTES",
    "GRADIENT_MEMORY_ENV",
]

DEFAULT_CHECKPOINT_BYTES = 1 << 30
GRADIENT_MEMORY_ENV = "STOSIM_GRADIENT_MEMORY_MB"
_NP = {torch.float64: np.float64, torch.float32: np.float32}


def keeps_stage_fields(
    n_steps: int, n_osc: int, state_bytes: int, budget_bytes: int = DEFAULT_CHECKPOINT_BYTES
) -> bool:
    """Whether the forward pass keeps every state, the four stage fields H_x of every step and its 1/|u| (5/3 of
    a state each step), so that the backward pass runs 4 coupling products per step instead of 8: when all of it
    fits the budget and N > SMALL_N_MAX (below it the forward pass runs the fused per-sample loop, no products)."""
    field_bytes = state_bytes // 3 * 5  # the four stage fields and 1/|u| of the projection
    return n_osc > SMALL_N_MAX and (n_steps + 1) * state_bytes + n_steps * field_bytes <= budget_bytes


def checkpoint_segment(n_steps: int, state_bytes: int, budget_bytes: int = DEFAULT_CHECKPOINT_BYTES) -> int:
    """Steps between checkpoints: 1 (keep every state) if that fits the budget, else ceil(sqrt(n_steps))."""
    if (n_steps + 1) * state_bytes <= budget_bytes:
        return 1
    return max(1, math.ceil(math.sqrt(n_steps)))


PAD_MAX_FRACTION = 0.15  # most padding oscillators per real one (padded_oscillator_count)


def padded_oscillator_count(n_osc: int, dtype) -> int:
    """N rounded up to whole 64-byte rows (a multiple of 16 in float32, of 8 in float64) where that adds at most
    :data:`PAD_MAX_FRACTION` N oscillators and N > SMALL_N_MAX (the batched kernels); else N.

    A (3, Bc, N) chunk whose rows are not whole cache lines starts every other row part-way into a line, and each
    row ends in a remainder shorter than a vector (N = 200 in float32: 12 vectors of 16 and 8 left over). The
    kernels then run on N_pad oscillators: the padding ones are uncoupled copies of oscillator 0 (zero rows and
    columns of (mu W)^T: no field to or from them), so the real ones evolve exactly as without them, and their
    cotangents and tangents stay zero. Measured on one 32-sample chunk in float32 (one thread, same process):
    forward + backward per real oscillator and step 0.93 of the unpadded time at N = 200 (N_pad = 208), 0.96 at
    N = 100 (112), the real oscillators' states and gradients bit for bit the same.
    """
    per_line = ALIGN_BYTES // np.dtype(dtype).itemsize
    n_pad = -(-n_osc // per_line) * per_line
    if n_osc <= SMALL_N_MAX or n_pad - n_osc > PAD_MAX_FRACTION * n_osc:
        return n_osc
    return n_pad


class _ArrayTensors:
    """The array's parameters as contiguous numpy arrays of one dtype, for the kernels, padded to ``n_pad``
    oscillators (:func:`padded_oscillator_count`): device rows copied from oscillator 0, coupling rows and
    columns zero. :meth:`states_in`, :meth:`zeros_in` and :meth:`out` pad and cut (B, N, 3) arrays."""

    def __init__(self, array: STOArray, dtype) -> None:
        self.dtype = np.dtype(dtype)
        n = array.n_oscillators
        self.n_osc, self.n_pad = n, padded_oscillator_count(n, self.dtype)
        osc = array.oscillator_parameters()
        self.osc = aligned_copy(np.concatenate([osc, np.repeat(osc[:, :1], self.n_pad - n, axis=1)], axis=1), dtype)
        self.coupling_t = aligned_copy(np.zeros((self.n_pad, self.n_pad)), dtype)
        self.coupling_t[:n, :n] = array.coupling_transposed_oe()
        self.coupling = aligned_copy(self.coupling_t.T)
        self.use_coupling = bool(array.coupling_oe != 0.0 and np.any(array.coupling_matrix))
        self.p = np.asarray(array.device.reference_direction, dtype=dtype)
        self.p_adjoint = reference_for_kernels(self.p)  # the adjoint's cheaper arithmetic where p is along x
        self.lam = self.dtype.type(array.device.torque_asymmetry)

    def states_in(self, m: np.ndarray) -> np.ndarray:
        """States (B, N, 3) -> (B, N_pad, 3) in the working dtype, the padding oscillators copies of oscillator 0."""
        m = np.asarray(m, dtype=self.dtype)
        extra = self.n_pad - self.n_osc
        return np.concatenate([m, np.repeat(m[:, :1], extra, axis=1)], axis=1) if extra else m

    def zeros_in(self, v: np.ndarray) -> np.ndarray:
        """Cotangents or tangents (B, N, 3) -> (B, N_pad, 3) in the working dtype, zero on the padding."""
        v = np.asarray(v, dtype=self.dtype)
        extra = self.n_pad - self.n_osc
        return np.concatenate([v, np.zeros((v.shape[0], extra, 3), self.dtype)], axis=1) if extra else v

    def out(self, x: np.ndarray) -> np.ndarray:
        """(B, N_pad, 3) -> the real oscillators (B, N, 3), C-ordered."""
        return np.ascontiguousarray(x[:, : self.n_osc]) if self.n_pad != self.n_osc else x


def _kept_arrays(flat: np.ndarray, shapes: tuple[tuple[int, ...], tuple[int, ...]]) -> tuple[np.ndarray, np.ndarray]:
    """The states (C, n_steps + 1, 3, Bc, N) and the stage fields with 1/|u| (C, n_steps, 5, Bc, N) as views of one
    1-D buffer."""
    n_states = math.prod(shapes[0])
    return flat[:n_states].reshape(shapes[0]), flat[n_states:].reshape(shapes[1])


class _STOFlow(torch.autograd.Function):
    @staticmethod
    def forward(ctx, m0: torch.Tensor, array: STOArray, n_steps: int, dt_s: float, budget: int) -> torch.Tensor:
        dtype = _NP[m0.dtype]
        prm = _ArrayTensors(array, dtype)
        n_batch, n_osc = m0.shape[0], m0.shape[1]
        n_chunks = chunk_count(n_batch, n_osc)
        m = to_chunks(prm.states_in(m0.detach().cpu().numpy()), n_chunks)  # (C, 3, Bc, N_pad)
        state_bytes = m.nbytes
        if keeps_stage_fields(n_steps, n_osc, state_bytes, budget):
            return _STOFlow._forward_keep(ctx, m, prm, n_batch, n_steps, dtype(dt_s), m0.device)
        segment = checkpoint_segment(n_steps, state_bytes, budget)
        n_ckpt = (n_steps + segment - 1) // segment
        ckpt = aligned_empty((n_chunks, n_ckpt + 1) + m.shape[1:], dtype)
        ckpt[:, 0] = m
        dummy = np.zeros((n_chunks, 1, 3, 1, 1), dtype=dtype)
        stats = np.zeros((n_chunks, 3))
        result = np.zeros((n_chunks, 2), dtype=np.int64)
        with single_threaded_blas():
            # save_offset = segment makes the kernel store the state after step s = jK at ckpt[:, j]
            run_chunks(
                m,
                prm.coupling_t,
                prm.use_coupling,
                prm.osc,
                prm.lam,
                prm.p,
                dtype(dt_s),
                n_steps,
                METHOD_RK4,
                segment,
                segment,
                ckpt,
                dummy,
                False,
                np.zeros(prm.n_pad, dtype=dtype),
                dummy,
                False,
                0.0,
                stats,
                result,
            )
        if (result[:, 0] >= 0).any():
            c = int(np.flatnonzero(result[:, 0] >= 0)[0])
            raise FloatingPointError(
                f"the STO state became non-finite at step {int(result[c, 0]) + 1} of {n_steps}; "
                f"reduce dt (now {dt_s:g} s)"
            )
        ctx.saved = (ckpt, None, prm, n_batch, n_chunks, n_steps, dtype(dt_s), segment)
        return torch.from_numpy(prm.out(from_chunks(m, n_batch))).to(m0.device)

    @staticmethod
    def _forward_keep(ctx, m: np.ndarray, prm: _ArrayTensors, n_batch: int, n_steps: int, dt, device) -> torch.Tensor:
        """Forward pass keeping every state, every stage field and every 1/|u| (:func:`forward_keep_chunk`)."""
        n_chunks = m.shape[0]
        shapes = ((n_chunks, n_steps + 1) + m.shape[1:], (n_chunks, n_steps, 5) + m.shape[2:])
        # one buffer from the pool (reused by the next step of this size: no page faults), saved for backward
        flat = buffers.take(math.prod(shapes[0]) + math.prod(shapes[1]), m.dtype)
        states, fields = _kept_arrays(flat, shapes)
        states[:, 0] = m
        first_bad = np.full(n_chunks, -1, dtype=np.int64)

        def body(c: int) -> None:
            first_bad[c] = forward_keep_chunk(
                states[c], fields[c], prm.coupling_t, prm.use_coupling, prm.osc, prm.lam, prm.p, dt
            )

        with single_threaded_blas():
            for_each_chunk(n_chunks, body)
        if (first_bad >= 0).any():
            step = int(first_bad[first_bad >= 0].min())
            raise FloatingPointError(
                f"the STO state became non-finite at step {step + 1} of {n_steps}; reduce dt (now {float(dt):g} s)"
            )
        ctx.save_for_backward(torch.from_numpy(flat))
        ctx.saved = (None, shapes, prm, n_batch, n_chunks, n_steps, dt, 1)
        return torch.from_numpy(prm.out(from_chunks(states[:, -1], n_batch))).to(device)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        ckpt, kept_shapes, prm, n_batch, n_chunks, n_steps, dt, segment = ctx.saved
        fields = None
        if kept_shapes is not None:
            (flat,) = ctx.saved_tensors
            ckpt, fields = _kept_arrays(flat.numpy(), kept_shapes)
        g = to_chunks(prm.zeros_in(grad_out.detach().cpu().numpy()), n_chunks)
        # padded samples (copies of sample 0) must not receive gradient
        pad_total = g.shape[0] * g.shape[2] - n_batch
        if pad_total:
            rows = g.transpose(0, 2, 1, 3).reshape(-1, 3, g.shape[3])
            rows[n_batch:] = 0.0
            g = aligned_copy(rows.reshape(g.shape[0], g.shape[2], 3, g.shape[3]).transpose(0, 2, 1, 3))
        with single_threaded_blas():
            if fields is not None:

                def body(c: int) -> None:
                    adjoint_kept_chunk(
                        ckpt[c], fields[c], g[c], prm.coupling, prm.use_coupling, prm.osc, prm.lam, prm.p_adjoint, dt
                    )

                for_each_chunk(n_chunks, body)
            elif n_chunks == 1:
                adjoint_chunk(
                    ckpt[0],
                    g[0],
                    prm.coupling_t,
                    prm.coupling,
                    prm.use_coupling,
                    prm.osc,
                    prm.lam,
                    prm.p_adjoint,
                    dt,
                    n_steps,
                    segment,
                )
            else:
                adjoint_chunks(
                    ckpt,
                    g,
                    prm.coupling_t,
                    prm.coupling,
                    prm.use_coupling,
                    prm.osc,
                    prm.lam,
                    prm.p_adjoint,
                    dt,
                    n_steps,
                    segment,
                )
        grad_m0 = torch.from_numpy(prm.out(from_chunks(g, n_batch))).to(grad_out.device)
        return grad_m0, None, None, None, None


def _check_states(norms: np.ndarray, finite: bool, what: str) -> None:
    """States must be finite with non-zero 3-vectors (their directions are what the map uses)."""
    if not finite:
        raise ValueError(f"{what} contains non-finite values (NaN or inf)")
    if not np.all(norms > 0):
        b, i = np.argwhere(~(norms > 0))[0]
        raise ValueError(f"{what} of sample {b}, oscillator {i} is the zero vector; it has no direction")


def gradient_memory_bytes() -> int:
    """The memory budget of :func:`sto_flow`'s gradient: ``STOSIM_GRADIENT_MEMORY_MB`` (MiB, an integer >= 1)
    if set, else :data:`DEFAULT_CHECKPOINT_BYTES` (1 GiB)."""
    raw = os.environ.get(GRADIENT_MEMORY_ENV, "").strip()
    if not raw:
        return DEFAULT_CHECKPOINT_BYTES
    try:
        mib = int(raw)
    except ValueError:
        mib = 0
    if mib < 1:
        raise ValueError(f"{GRADIENT_MEMORY_ENV} = {raw!r} is out of range; valid: an integer number of MiB >= 1")
    return mib << 20


def sto_flow(
    m0: torch.Tensor, array: STOArray, n_steps: int, dt_s: float, checkpoint_bytes: int | None = None
) -> torch.Tensor:
    """m(T) after ``n_steps`` projected RK4 steps of ``dt_s`` s from unit states m0 (B, N, 3) (float32/64).

    Differentiable w.r.t. m0 with the exact gradient of the discrete map (Numba adjoint), which keeps at
    most ``checkpoint_bytes`` (default :func:`gradient_memory_bytes`) for the backward pass (module docstring).
    """
    if checkpoint_bytes is None:
        checkpoint_bytes = gradient_memory_bytes()
    if (
        isinstance(checkpoint_bytes, bool)
        or not isinstance(checkpoint_bytes, (int, np.integer))
        or checkpoint_bytes < 1
    ):
        raise ValueError(f"checkpoint_bytes = {checkpoint_bytes!r} is out of range; valid: an integer >= 1")
    if m0.dtype not in _NP:
        raise ValueError(f"m0 dtype {m0.dtype} must be torch.float64 or torch.float32")
    if m0.ndim != 3 or m0.shape[1:] != (array.n_oscillators, 3):
        raise ValueError(f"m0 has shape {tuple(m0.shape)}; expected (batch, {array.n_oscillators}, 3)")
    check_step_count(n_steps)
    check_time_step(array, dt_s)
    with torch.no_grad():
        _check_states(m0.detach().norm(dim=-1).cpu().numpy(), bool(torch.isfinite(m0).all()), "m0")
    return _STOFlow.apply(m0, array, int(n_steps), float(dt_s), int(checkpoint_bytes))


def sto_jvp(
    m0: np.ndarray, tangent: np.ndarray, array: STOArray, n_steps: int, dt_s: float, dtype=np.float64
) -> tuple[np.ndarray, np.ndarray]:
    """(m(T), J t) for states m0 (B, N, 3) and tangents (B, N, 3) of the projected RK4 map (exact JVP).

    Tangents are first projected onto the tangent planes of m0 (perturbations along m0 are
    undone by the projection onto the unit sphere).
    """
    from stosim.integrate.tangent import tangent_run_chunks

    m0 = np.asarray(m0, dtype=dtype)
    t0 = np.asarray(tangent, dtype=dtype)
    if m0.shape != t0.shape or m0.ndim != 3 or m0.shape[1:] != (array.n_oscillators, 3):
        raise ValueError(f"m0 {m0.shape} and tangent {t0.shape} must both be (batch, {array.n_oscillators}, 3)")
    check_step_count(n_steps)
    check_time_step(array, dt_s)
    _check_states(np.linalg.norm(m0, axis=-1), bool(np.all(np.isfinite(m0))), "m0")
    if not np.all(np.isfinite(t0)):
        raise ValueError("tangent contains non-finite values (NaN or inf)")
    m0 = m0 / np.linalg.norm(m0, axis=-1, keepdims=True)
    t0 = t0 - m0 * np.sum(m0 * t0, axis=-1, keepdims=True)
    prm = _ArrayTensors(array, dtype)
    n_chunks = chunk_count(m0.shape[0], array.n_oscillators)
    m = to_chunks(prm.states_in(m0), n_chunks)
    t = to_chunks(prm.zeros_in(t0), n_chunks)
    with single_threaded_blas():
        tangent_run_chunks(
            m, t, prm.coupling_t, prm.use_coupling, prm.osc, prm.lam, prm.p, prm.dtype.type(dt_s), int(n_steps)
        )
    return prm.out(from_chunks(m, m0.shape[0])), prm.out(from_chunks(t, m0.shape[0]))
