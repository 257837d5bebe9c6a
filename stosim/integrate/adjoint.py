"""Exact gradients of the discretized RK4 flow of a coupled STO array (reverse mode, Numba).

The forward pass runs the Numba RK4 loop and keeps the state every K steps (checkpoints);
the backward pass walks the segments in reverse, recomputes the states of a segment from its
checkpoint, and propagates the cotangent through each step. For one step

    s1 = m, s2 = m + h/2 k1, s3 = m + h/2 k2, s4 = m + h k3,  k_j = f(s_j, H_x(s_j))
    u = m + h (k1/6 + k2/3 + k3/3 + k4/6),  m' = u/|u|,

the cotangent g' of m' gives g_u = (g' - m' (m'.g'))/|u|, then each stage in reverse adds
g_s = J_m(s)^T g_k (pointwise) plus the coupling term (g_hx @ mu W) (one matrix product, since
H_x = s_x @ (mu W)^T). When all states are kept (K = 1), a step's gradient costs 8 coupling
products on top of the 4 of the forward pass (4 to recompute the stage fields, 4 for the cotangents).
When K > 1, the recomputation of a segment keeps the four stage fields H_x(s_j) of each of its
steps (bitwise the ones the forward pass computed), so a step again costs 8 products, not 12. This is the
gradient of the discrete map, so it agrees with backprop through a torch RK4 loop to round-off.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from stosim.integrate.chunks import for_each_chunk
from stosim.integrate.sto_kernels import SMALL_N_MAX, copy_into, run_small
from stosim.physics.llg import stage_accumulate, stage_final, stage_vjp

__all__ = ["adjoint_chunks"]


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def _coupled_field(s, coupling_t, use_coupling, hx):
    if use_coupling:
        np.dot(s[0], coupling_t, hx)


@njit(inline="always", cache=True, error_model="numpy", fastmath={"contract"})
def _step_vjp(
    m, g, coupling_t, coupling, use_coupling, osc, lam, p, dt, work, hxs, zero, g_hx, g_s, out, fields_given=False
):
    """out = (d m'/d m)^T g for one projected RK4 step from m (all (3, Bc, N)).

    ``hxs`` (4, Bc, N) receives the stage fields H_x(s_j), or holds them when ``fields_given``."""
    s2, s3, s4, k1, k2, k3, k4, gk = work[0], work[1], work[2], work[3], work[4], work[5], work[6], work[7]
    consts = np.array([0.5, 1.0 / 6.0, 1.0 / 3.0, 0.0, 1.0]).astype(m.dtype)  # in working precision
    half, c_zero, c_one = dt * consts[0], consts[3], consts[4]
    # recompute the stages (k_j via stage_accumulate with keep = 0, w = 1)
    if not fields_given:
        _coupled_field(m, coupling_t, use_coupling, hxs[0])
    stage_accumulate(m, m, hxs[0], zero, zero, osc, lam, p, half, c_zero, c_one, k1, s2)
    if not fields_given:
        _coupled_field(s2, coupling_t, use_coupling, hxs[1])
    stage_accumulate(m, s2, hxs[1], zero, zero, osc, lam, p, half, c_zero, c_one, k2, s3)
    if not fields_given:
        _coupled_field(s3, coupling_t, use_coupling, hxs[2])
    stage_accumulate(m, s3, hxs[2], zero, zero, osc, lam, p, dt, c_zero, c_one, k3, s4)
    if not fields_given:
        _coupled_field(s4, coupling_t, use_coupling, hxs[3])
    stage_accumulate(m, s4, hxs[3], zero, zero, osc, lam, p, c_zero, c_zero, c_one, k4, gk)  # gk: scratch
    _, n_batch, n_osc = m.shape
    sixth = dt * consts[1]
    third = dt * consts[2]
    # g_u = (g - m'(m'.g))/|u|; out starts as g_u (the identity path m -> u)
    for b in range(n_batch):
        for i in range(n_osc):
            ux = m[0, b, i] + sixth * (k1[0, b, i] + k4[0, b, i]) + third * (k2[0, b, i] + k3[0, b, i])
            uy = m[1, b, i] + sixth * (k1[1, b, i] + k4[1, b, i]) + third * (k2[1, b, i] + k3[1, b, i])
            uz = m[2, b, i] + sixth * (k1[2, b, i] + k4[2, b, i]) + third * (k2[2, b, i] + k3[2, b, i])
            inv = c_one / np.sqrt(ux * ux + uy * uy + uz * uz)
            nx, ny, nz = ux * inv, uy * inv, uz * inv
            gx, gy, gz = g[0, b, i], g[1, b, i], g[2, b, i]
            dot = nx * gx + ny * gy + nz * gz
            out[0, b, i] = (gx - nx * dot) * inv
            out[1, b, i] = (gy - ny * dot) * inv
            out[2, b, i] = (gz - nz * dot) * inv
    gu = work[8]
    copy_into(gu, out)
    # stage 4: g_k4 = h/6 g_u; s4 = m + h k3
    for c in range(3):
        for b in range(n_batch):
            for i in range(n_osc):
                gk[c, b, i] = sixth * gu[c, b, i]
    _stage_back(s4, hxs[3], zero, gk, coupling, use_coupling, osc, lam, p, g_hx, g_s)
    _next_gk(out, gk, gu, g_s, third, dt)  # g_k3
    _stage_back(s3, hxs[2], zero, gk, coupling, use_coupling, osc, lam, p, g_hx, g_s)
    _next_gk(out, gk, gu, g_s, third, half)  # g_k2
    _stage_back(s2, hxs[1], zero, gk, coupling, use_coupling, osc, lam, p, g_hx, g_s)
    _next_gk(out, gk, gu, g_s, sixth, half)  # g_k1
    _stage_back(m, hxs[0], zero, gk, coupling, use_coupling, osc, lam, p, g_hx, g_s)
    out += g_s  # on whole arrays: an augmented assignment to a subscript (out[c] += ...) is a slice assignment


@njit(inline="always", cache=True, error_model="numpy", fastmath={"contract"})
def _next_gk(out, gk, gu, g_s, a, b_coef):
    """out += g_s; g_k = a g_u + b g_s, elementwise over (3, Bc, N) (loops: see :func:`copy_into`)."""
    _, n_batch, n_osc = out.shape
    for c in range(3):
        for b in range(n_batch):
            for i in range(n_osc):
                out[c, b, i] += g_s[c, b, i]
                gk[c, b, i] = a * gu[c, b, i] + b_coef * g_s[c, b, i]


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def _stage_back(s, hx, zero, gk, coupling, use_coupling, osc, lam, p, g_hx, g_s):
    """g_s = J_m(s)^T g_k + e_x (g_hx @ mu W), g_hx = J_hx(s)^T g_k."""
    stage_vjp(s, hx, zero, zero, gk, osc, lam, p, g_s, g_hx)
    if use_coupling:
        g_sx = g_s[0]
        g_sx += np.dot(g_hx, coupling)  # in place on the view (g_s[0] += ... would be a slice assignment)


@njit(inline="always", cache=True, error_model="numpy", fastmath={"contract"})
def _recompute_segment(x, seg, fields, coupling_t, use_coupling, osc, lam, p, dt, length, zero, acc, tmp, tmp2):
    """Recompute ``length`` RK4 steps from x = seg[0] (as :func:`run_chunk` does, bitwise): seg[q] = state at
    step q (q < length), fields[q, j] = H_x of stage j of step q. ``x`` is overwritten."""
    consts = np.array([0.5, 1.0 / 6.0, 1.0 / 3.0, 0.0, 1.0]).astype(x.dtype)  # in working precision
    half, sixth, third, c_zero, c_one = dt * consts[0], consts[1], consts[2], consts[3], consts[4]
    for q in range(length):
        f = fields[q]
        _coupled_field(x, coupling_t, use_coupling, f[0])
        stage_accumulate(x, x, f[0], zero, zero, osc, lam, p, half, c_zero, sixth, acc, tmp)
        _coupled_field(tmp, coupling_t, use_coupling, f[1])
        stage_accumulate(x, tmp, f[1], zero, zero, osc, lam, p, half, c_one, third, acc, tmp2)
        _coupled_field(tmp2, coupling_t, use_coupling, f[2])
        stage_accumulate(x, tmp2, f[2], zero, zero, osc, lam, p, dt, c_one, third, acc, tmp)
        _coupled_field(tmp, coupling_t, use_coupling, f[3])
        if q + 1 < length:
            # into seg[q + 1], not over x: an output aliasing an input runs the scalar loop
            stage_final(x, tmp, f[3], zero, zero, osc, lam, p, dt, sixth, acc, seg[q + 1])
            copy_into(x, seg[q + 1])


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def adjoint_chunk(ckpt, grad, coupling_t, coupling, use_coupling, osc, lam, p, dt, n_steps, segment):
    """Gradient of the projected RK4 flow over ``n_steps`` w.r.t. the initial state of one chunk.

    ``ckpt`` (J + 1, 3, Bc, N) holds the state at steps 0, K, 2K, ... (K = ``segment``);
    ``grad`` (3, Bc, N) is the cotangent of the final state and is overwritten by the result.
    """
    _, n_batch, n_osc = grad.shape
    seg = np.empty((segment, 3, n_batch, n_osc), dtype=grad.dtype)
    work = np.zeros((9, 3, n_batch, n_osc), dtype=grad.dtype)
    hxs = np.zeros((4, n_batch, n_osc), dtype=grad.dtype)
    zero = np.zeros((n_batch, n_osc), dtype=grad.dtype)
    g_hx = np.zeros((n_batch, n_osc), dtype=grad.dtype)
    g_s = np.empty((3, n_batch, n_osc), dtype=grad.dtype)
    nxt = np.empty_like(grad)
    # below SMALL_N_MAX the forward pass ran the fused small-N loop: recompute with it, fields in _step_vjp
    keep_fields = segment > 1 and n_osc > SMALL_N_MAX
    fields = np.zeros((segment if keep_fields else 1, 4, n_batch, n_osc), dtype=grad.dtype)
    n_seg = (n_steps + segment - 1) // segment
    for j in range(n_seg - 1, -1, -1):
        start = j * segment
        length = min(segment, n_steps - start)
        copy_into(seg[0], ckpt[j])
        given = keep_fields and length > 1
        if given:
            # states seg[q] at step start + q and the stage fields of each step of the segment
            _recompute_segment(
                seg[0].copy(),
                seg,
                fields,
                coupling_t,
                use_coupling,
                osc,
                lam,
                p,
                dt,
                length,
                zero,
                work[0],
                work[1],
                work[2],
            )
        elif length > 1:
            # N <= SMALL_N_MAX: recompute the states seg[q] at step start + q with the forward pass's fused loop
            # (what run_chunk runs there; calling it directly compiles no second signature of run_chunk; the
            # np.int64 casts keep literal 1 and 0 from compiling a second signature of run_small itself)
            run_small(
                seg[0].copy(), coupling_t, use_coupling, osc, lam, p, dt, length - 1, np.int64(1), np.int64(0), seg[1:]
            )
        for q in range(length - 1, -1, -1):
            _step_vjp(
                seg[q],
                grad,
                coupling_t,
                coupling,
                use_coupling,
                osc,
                lam,
                p,
                dt,
                work,
                fields[q] if given else hxs,
                zero,
                g_hx,
                g_s,
                nxt,
                given,
            )
            copy_into(grad, nxt)
    return grad


def adjoint_chunks(ckpt, grad, coupling_t, coupling, use_coupling, osc, lam, p, dt, n_steps, segment) -> None:
    """:func:`adjoint_chunk` over chunks on parallel threads: ckpt (C, J + 1, 3, Bc, N), grad (C, 3, Bc, N)."""

    def body(c: int) -> None:
        adjoint_chunk(ckpt[c], grad[c], coupling_t, coupling, use_coupling, osc, lam, p, dt, n_steps, segment)

    for_each_chunk(grad.shape[0], body)
