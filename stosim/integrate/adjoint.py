"""Exact gradients of the discretized RK4 flow of a coupled STO array (reverse mode, Numba).

The forward pass runs the Numba RK4 loop and keeps what the backward pass needs (see the plans below);
the backward pass walks the steps in reverse (recomputing, where the plan asks for it, the states of a
segment from its checkpoint) and propagates the cotangent through each step. For one step

    s1 = m, s2 = m + h/2 k1, s3 = m + h/2 k2, s4 = m + h k3,  k_j = f(s_j, H_x(s_j))
    u = m + h (k1/6 + k2/3 + k3/3 + k4/6),  m' = u/|u|,

the cotangent g' of m' gives g_u = (g' - m' (m'.g'))/|u|, then each stage in reverse adds
g_s = J_m(s)^T g_k (pointwise) plus the coupling term (g_hx @ mu W) (one matrix product, since
H_x = s_x @ (mu W)^T). Three plans, chosen by :mod:`stosim.integrate.flow` from its memory budget:

- the forward pass keeps every state, the four stage fields H_x(s_j) of every step and its 1/|u|
  (:func:`forward_keep_chunk`, :func:`adjoint_kept_chunk`): a step's gradient costs the 4 products of the
  cotangents, 8 per step with the forward pass, and with m' and 1/|u| kept the cotangent's projection needs no
  k4 and the recomputed stage states no sum of the stages (:func:`_step_vjp_kept`);
- every state kept (K = 1): the backward pass recomputes the stage fields, 8 products per backward step;
- checkpoints every K > 1 steps: the recomputation of a segment keeps the four stage fields of each of its
  steps (bitwise the ones the forward pass computed), so a backward step again costs 8 products, not 12.

All give the same gradient, bitwise. This is the gradient of the discrete map, so it agrees with backprop
through a torch RK4 loop to round-off.

Passes over memory per backward step (besides its products): three recomputed stages, one pass that
projects the cotangent (evaluating k4 and u first unless 1/|u| was kept), one pass per stage that evaluates the
vector-Jacobian product and updates the step's cotangents in place (y and z at once; x, known after the
stage's gemm, in the next stage's pass), and one pass for the last x part. The helpers are separate compiled
functions, not ``inline="always"``: inlined into the step, their loops were left unvectorized (3-4x slower);
and one function per stage kind, not one with a mode argument choosing among three loops (1 ns per oscillator
slower in the loop it took). They are vectorized 512 bits wide and promise LLVM that the arrays they write
overlap no other argument (:mod:`stosim.physics.kernel_hints`): every call below passes separate buffers.
Where the reference layer lies along x (the seed device) the reverse stages are compiled for a
:class:`~stosim.physics.llg.ReferenceAlongX` and skip the terms of p_y and p_z
(:func:`~stosim.physics.llg.llg_vjp_point_along_x`: 4-7 % less time per backward step, the gradient equal to
round-off); any other p runs the generic arithmetic.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from stosim.integrate.aligned import aligned_zeros
from stosim.integrate.chunks import for_each_chunk
from stosim.integrate.gemm import gemm_accumulate, gemm_into
from stosim.integrate.sto_kernels import SMALL_N_MAX, copy_into, run_small
from stosim.physics.kernel_hints import arrays_do_not_overlap, prefer_wide_vectors
from stosim.physics.llg import (
    llg_point,
    llg_vjp_noiseless,
    oscillator_rows,
    reference_array,
    stage_accumulate,
    stage_final,
    stage_final_keep_norm,
    stage_next,
)

__all__ = ["adjoint_chunks", "forward_keep_chunk", "adjoint_kept_chunk"]


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def _coupled_field(s, coupling_t, use_coupling, hx):
    if use_coupling:
        gemm_into(s[0], coupling_t, hx)


@njit(inline="always", cache=True, error_model="numpy", fastmath={"contract"})
def _step_vjp(
    m, g, coupling_t, coupling, use_coupling, osc, lam, p, p_vjp, dt, work, hxs, zero, g_hx, g_sx, fields_given=False
):
    """g <- (d m'/d m)^T g for one projected RK4 step from m (all (3, Bc, N)), in place.

    ``p`` is the reference direction (3,) of the stages, ``p_vjp`` the same as the reverse stages take it (an
    array or a :class:`~stosim.physics.llg.ReferenceAlongX`, :func:`~stosim.physics.llg.llg_vjp_noiseless`).
    ``hxs`` (4, Bc, N) receives the stage fields H_x(s_j), or holds them when ``fields_given``."""
    s2, s3, s4, acc, gu = work[0], work[1], work[2], work[3], work[6]
    consts = np.array([0.5, 1.0 / 6.0, 1.0 / 3.0, 0.0, 1.0]).astype(m.dtype)  # in working precision
    half, sixth, third, c_zero, c_one = dt * consts[0], consts[1], consts[2], consts[3], consts[4]
    # recompute the stage states s_j and acc = k1/6 + k2/3 + k3/3, as the forward pass computes them (bitwise)
    if not fields_given:
        _coupled_field(m, coupling_t, use_coupling, hxs[0])
    stage_accumulate(m, m, hxs[0], zero, zero, osc, lam, p, half, c_zero, sixth, acc, s2)
    if not fields_given:
        _coupled_field(s2, coupling_t, use_coupling, hxs[1])
    stage_accumulate(m, s2, hxs[1], zero, zero, osc, lam, p, half, c_one, third, acc, s3)
    if not fields_given:
        _coupled_field(s3, coupling_t, use_coupling, hxs[2])
    stage_accumulate(m, s3, hxs[2], zero, zero, osc, lam, p, dt, c_one, third, acc, s4)
    if not fields_given:
        _coupled_field(s4, coupling_t, use_coupling, hxs[3])
    # k4 = f(s4) and u = m + h (acc + k4/6) in one pass with gu = g_u = (g - m'(m'.g))/|u|, m' = u/|u|
    _project_back(m, s4, hxs[3], osc, lam, p, acc, g, dt, sixth, gu)
    _stages_back(m, g, coupling, use_coupling, osc, lam, p_vjp, dt, work, hxs, g_hx, g_sx)


@njit(inline="always", cache=True, error_model="numpy", fastmath={"contract"})
def _step_vjp_kept(m, m_next, kept, g, coupling, use_coupling, osc, lam, p, p_vjp, dt, work, g_hx, g_sx):
    """:func:`_step_vjp` from what the forward pass kept of the step (:func:`forward_keep_chunk`): its four stage
    fields and 1/|u| (``kept`` (5, Bc, N)) and the new state m' = u/|u| (``m_next``). The stage states s2, s3, s4 are
    recomputed without their sum (:func:`~stosim.physics.llg.stage_next`) and g_u = (g - m'(m'.g))/|u| needs no
    k4: bitwise the result of :func:`_step_vjp`, with one right-hand side and 18 array streams less per step."""
    s2, s3, s4, gu = work[0], work[1], work[2], work[6]
    half = dt * np.array([0.5]).astype(m.dtype)[0]  # in working precision, as _step_vjp
    stage_next(m, m, kept[0], osc, lam, p, half, s2)
    stage_next(m, s2, kept[1], osc, lam, p, half, s3)
    stage_next(m, s3, kept[2], osc, lam, p, dt, s4)
    _project_kept(m_next, kept[4], g, gu)
    _stages_back(m, g, coupling, use_coupling, osc, lam, p_vjp, dt, work, kept, g_hx, g_sx)


@njit(inline="always", cache=True, error_model="numpy", fastmath={"contract"})
def _stages_back(m, g, coupling, use_coupling, osc, lam, p_vjp, dt, work, hxs, g_hx, g_sx):
    """The four stages of one step in reverse, from the stage states s2, s3, s4 (``work[0:3]``), the stage fields
    ``hxs[0:4]`` and g_u (``work[6]``): g <- the cotangent of m."""
    s2, s3, s4, gk, out, gu = work[0], work[1], work[2], work[4], work[5], work[6]
    consts = np.array([0.5, 1.0 / 6.0, 1.0 / 3.0]).astype(m.dtype)  # in working precision
    half, sixth, third = dt * consts[0], consts[1], consts[2]
    h_sixth, h_third = dt * sixth, dt * third
    # the cotangent of m (``out``) collects g_u (the identity path m -> u) and each stage's g_s.
    # stage 4 (g_k4 = h/6 g_u; s4 = m + h k3): g_k3 = h/3 g_u + h g_s4; stage 3 (s3 = m + h/2 k2):
    # g_k2 = h/3 g_u + h/2 g_s3; stage 2: g_k1 = h/6 g_u + h/2 g_s2; stage 1 (s1 = m): g = out + g_s1.
    # Each stage's x part (known after its gemm) is completed in the next stage's pass, with that stage's
    # coefficients (a, b) of g_k = a g_u + b g_s passed on.
    _stage_back_first(s4, hxs[3], gk, gu, out, coupling, use_coupling, osc, lam, p_vjp, h_third, dt, g_hx, g_sx)
    _stage_back_middle(
        s3, hxs[2], gk, gu, out, coupling, use_coupling, osc, lam, p_vjp, h_third, dt, h_third, half, g_hx, g_sx
    )
    _stage_back_middle(
        s2, hxs[1], gk, gu, out, coupling, use_coupling, osc, lam, p_vjp, h_third, half, h_sixth, half, g_hx, g_sx
    )
    _stage_back_last(m, hxs[0], gk, gu, out, coupling, use_coupling, osc, lam, p_vjp, h_sixth, half, g_hx, g_sx, g)


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def _project_back(m, s4, hx4, osc, lam, p, acc, g, dt, sixth, gu):
    """k4 = f(s4, hx4) and u = m + h (acc + k4/6) per oscillator (the forward pass's last stage, k4 not
    stored); gu = (g - m'(m'.g))/|u| with m' = u/|u|, the cotangent of u."""
    arrays_do_not_overlap()
    prefer_wide_vectors()
    _, n_batch, n_osc = m.shape
    h_appl, hk_eff, hs0, alpha, pref = oscillator_rows(osc)
    px, py, pz = p[0], p[1], p[2]
    one = np.ones(1, dtype=m.dtype)[0]
    zero = one - one
    for b in range(n_batch):
        sx, sy, sz, fx = s4[0, b], s4[1, b], s4[2, b], hx4[b]
        mx, my, mz = m[0, b], m[1, b], m[2, b]
        ax, ay, az = acc[0, b], acc[1, b], acc[2, b]
        gx, gy, gz = g[0, b], g[1, b], g[2, b]
        ox, oy, oz = gu[0, b], gu[1, b], gu[2, b]
        for i in range(n_osc):
            k4x, k4y, k4z = llg_point(
                sx[i], sy[i], sz[i], fx[i], zero, zero,
                h_appl[i], hk_eff[i], hs0[i], alpha[i], pref[i], lam, px, py, pz, one,
            )  # fmt: skip
            ux = mx[i] + dt * (ax[i] + sixth * k4x)
            uy = my[i] + dt * (ay[i] + sixth * k4y)
            uz = mz[i] + dt * (az[i] + sixth * k4z)
            inv = one / np.sqrt(ux * ux + uy * uy + uz * uz)
            nx, ny, nz = ux * inv, uy * inv, uz * inv
            dot = nx * gx[i] + ny * gy[i] + nz * gz[i]
            ox[i] = (gx[i] - nx * dot) * inv
            oy[i] = (gy[i] - ny * dot) * inv
            oz[i] = (gz[i] - nz * dot) * inv


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def _project_kept(mn, inv_norm, g, gu):
    """gu = (g - m'(m'.g)) / |u| from m' = u/|u| (``mn``) and 1/|u| (``inv_norm``) as the forward pass kept them:
    the arithmetic of :func:`_project_back` after its u, so bitwise its result."""
    arrays_do_not_overlap()
    prefer_wide_vectors()
    _, n_batch, n_osc = mn.shape
    for b in range(n_batch):
        nxb, nyb, nzb, ivb = mn[0, b], mn[1, b], mn[2, b], inv_norm[b]
        gx, gy, gz = g[0, b], g[1, b], g[2, b]
        ox, oy, oz = gu[0, b], gu[1, b], gu[2, b]
        for i in range(n_osc):
            nx, ny, nz, inv = nxb[i], nyb[i], nzb[i], ivb[i]
            dot = nx * gx[i] + ny * gy[i] + nz * gz[i]
            ox[i] = (gx[i] - nx * dot) * inv
            oy[i] = (gy[i] - ny * dot) * inv
            oz[i] = (gz[i] - nz * dot) * inv


# One compiled function per stage kind, each with one pointwise loop: a single function switching between
# three loops on a mode argument ran the loop it took 1 ns per oscillator slower (float64 and float32).


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def _stage_back_first(s, hx, gk, gu, out, coupling, use_coupling, osc, lam, p, a, b_coef, g_hx, g_sx):
    """The last RK4 stage (k4 = f(s4, H_x(s4))) in reverse, for the cotangent v = g_k4 = (a/2) g_u (a = h/3).

    (g_m, g_hx) = (J_m(s)^T v, J_hx(s)^T v) pointwise, g_s = g_m + e_x (g_hx @ mu W) (one gemm): out = g_u + g_s
    and g_k3 = a g_u + b g_s in their y and z parts; out_x = g_u,x and g_sx (Bc, N) = g_s,x after the gemm, which
    the next stage's pass adds (:func:`_stage_back_middle`). All (3, Bc, N) except hx, g_hx, g_sx (Bc, N)."""
    arrays_do_not_overlap()
    prefer_wide_vectors()
    _, n_batch, n_osc = s.shape
    h_appl, hk_eff, hs0, alpha, pref = oscillator_rows(osc)
    one = np.ones(1, dtype=s.dtype)[0]
    v_scale = a / (one + one)
    for b in range(n_batch):
        mx, my, mz, fx = s[0, b], s[1, b], s[2, b], hx[b]
        vy, vz = gk[1, b], gk[2, b]
        ux, uy, uz = gu[0, b], gu[1, b], gu[2, b]
        ox, oy, oz, hxb, gxb = out[0, b], out[1, b], out[2, b], g_hx[b], g_sx[b]
        for i in range(n_osc):
            gmx, gmy, gmz, gbx = llg_vjp_noiseless(
                p, mx[i], my[i], mz[i], fx[i], v_scale * ux[i], v_scale * uy[i], v_scale * uz[i],
                h_appl[i], hk_eff[i], hs0[i], alpha[i], pref[i], lam, one,
            )  # fmt: skip
            gxb[i] = gmx
            hxb[i] = gbx
            ox[i] = ux[i]
            oy[i] = uy[i] + gmy
            oz[i] = uz[i] + gmz
            vy[i] = a * uy[i] + b_coef * gmy
            vz[i] = a * uz[i] + b_coef * gmz
    if use_coupling:
        gemm_accumulate(g_hx, coupling, g_sx)  # g_s_x += g_hx @ (mu W): one gemm, no temporary


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def _stage_back_middle(
    s, hx, gk, gu, out, coupling, use_coupling, osc, lam, p, a_prev, b_prev, a, b_coef, g_hx, g_sx
):  # fmt: skip
    """Stage 3 or 2 in reverse: first the previous stage's x part (out_x += g_sx; its v_x = a_prev g_u,x +
    b_prev g_sx, used here and not stored), then as :func:`_stage_back_first` for v = g_k: out += g_s and
    g_k(previous stage) = a g_u + b g_s in y and z, g_sx = this stage's g_s,x after the gemm."""
    arrays_do_not_overlap()
    prefer_wide_vectors()
    _, n_batch, n_osc = s.shape
    h_appl, hk_eff, hs0, alpha, pref = oscillator_rows(osc)
    one = np.ones(1, dtype=s.dtype)[0]
    for b in range(n_batch):
        mx, my, mz, fx = s[0, b], s[1, b], s[2, b], hx[b]
        vy, vz = gk[1, b], gk[2, b]
        ux, uy, uz = gu[0, b], gu[1, b], gu[2, b]
        ox, oy, oz, hxb, gxb = out[0, b], out[1, b], out[2, b], g_hx[b], g_sx[b]
        for i in range(n_osc):
            gs_prev = gxb[i]
            ox[i] += gs_prev
            vx = a_prev * ux[i] + b_prev * gs_prev
            gmx, gmy, gmz, gbx = llg_vjp_noiseless(
                p, mx[i], my[i], mz[i], fx[i], vx, vy[i], vz[i],
                h_appl[i], hk_eff[i], hs0[i], alpha[i], pref[i], lam, one,
            )  # fmt: skip
            gxb[i] = gmx
            hxb[i] = gbx
            oy[i] += gmy
            oz[i] += gmz
            vy[i] = a * uy[i] + b_coef * gmy
            vz[i] = a * uz[i] + b_coef * gmz
    if use_coupling:
        gemm_accumulate(g_hx, coupling, g_sx)


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def _stage_back_last(s, hx, gk, gu, out, coupling, use_coupling, osc, lam, p, a_prev, b_prev, g_hx, g_sx, res):
    """Stage 1 (s1 = m) in reverse: the previous stage's x part as in :func:`_stage_back_middle`, then
    res = out + g_s1, the cotangent of m (its x part after the gemm, in one more pass)."""
    arrays_do_not_overlap()
    prefer_wide_vectors()
    _, n_batch, n_osc = s.shape
    h_appl, hk_eff, hs0, alpha, pref = oscillator_rows(osc)
    one = np.ones(1, dtype=s.dtype)[0]
    for b in range(n_batch):
        mx, my, mz, fx = s[0, b], s[1, b], s[2, b], hx[b]
        vy, vz = gk[1, b], gk[2, b]
        ux = gu[0, b]
        ox, oy, oz, hxb, gxb = out[0, b], out[1, b], out[2, b], g_hx[b], g_sx[b]
        ry, rz = res[1, b], res[2, b]
        for i in range(n_osc):
            gs_prev = gxb[i]
            ox[i] += gs_prev
            vx = a_prev * ux[i] + b_prev * gs_prev
            gmx, gmy, gmz, gbx = llg_vjp_noiseless(
                p, mx[i], my[i], mz[i], fx[i], vx, vy[i], vz[i],
                h_appl[i], hk_eff[i], hs0[i], alpha[i], pref[i], lam, one,
            )  # fmt: skip
            gxb[i] = gmx
            hxb[i] = gbx
            ry[i] = oy[i] + gmy
            rz[i] = oz[i] + gmz
    if use_coupling:
        gemm_accumulate(g_hx, coupling, g_sx)
    for b in range(n_batch):
        ox, gxb, rx = out[0, b], g_sx[b], res[0, b]
        for i in range(n_osc):
            rx[i] = ox[i] + gxb[i]


@njit(inline="always", cache=True, error_model="numpy", fastmath={"contract"})
def _recompute_segment(seg, fields, coupling_t, use_coupling, osc, lam, p, dt, length, zero, acc, tmp, tmp2):
    """Run ``length`` RK4 steps from seg[0] (as :func:`run_chunk` does, bitwise): seg[q] = state at step q
    (q < seg.shape[0]), fields[q, j] = H_x of stage j of step q (q < length), and fields[q, 4] = 1/|u| of the step's
    projection where ``fields`` has a fifth row (the kept plan).

    Returns the first step whose new state is non-finite, or -1."""
    consts = np.array([0.5, 1.0 / 6.0, 1.0 / 3.0, 0.0, 1.0]).astype(seg.dtype)  # in working precision
    half, sixth, third, c_zero, c_one = dt * consts[0], consts[1], consts[2], consts[3], consts[4]
    first_bad = -1
    for q in range(length):
        f, x = fields[q], seg[q]
        _coupled_field(x, coupling_t, use_coupling, f[0])
        stage_accumulate(x, x, f[0], zero, zero, osc, lam, p, half, c_zero, sixth, acc, tmp)
        _coupled_field(tmp, coupling_t, use_coupling, f[1])
        stage_accumulate(x, tmp, f[1], zero, zero, osc, lam, p, half, c_one, third, acc, tmp2)
        _coupled_field(tmp2, coupling_t, use_coupling, f[2])
        stage_accumulate(x, tmp2, f[2], zero, zero, osc, lam, p, dt, c_one, third, acc, tmp)
        _coupled_field(tmp, coupling_t, use_coupling, f[3])
        if q + 1 < seg.shape[0]:
            if f.shape[0] > 4:  # 1/|u| kept too (forward_keep_chunk)
                bad = stage_final_keep_norm(x, tmp, f[3], osc, lam, p, dt, sixth, acc, seg[q + 1], f[4])
            else:
                bad = stage_final(x, tmp, f[3], zero, zero, osc, lam, p, dt, sixth, acc, seg[q + 1])
            if bad >= 0 and first_bad < 0:
                first_bad = q
    return first_bad


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def forward_keep_chunk(states, kept, coupling_t, use_coupling, osc, lam, p, dt):
    """The forward pass of one chunk keeping what the backward pass needs, so that it recomputes nothing
    with a coupling product: states[k] (3, Bc, N) = m after step k (states[0] given, k <= n_steps =
    kept.shape[0]), kept[k, j] (Bc, N) = H_x(s_j) (Oe) of stage j of step k (as :func:`run_chunk`
    computes them, bitwise) and kept[k, 4] = 1/|u| of its projection m' = u/|u|. Returns the first step whose new
    state is non-finite, or -1."""
    if kept.shape[1] != 5 or states.shape[0] != kept.shape[0] + 1:
        raise ValueError("forward_keep_chunk: kept must be (n_steps, 5, Bc, N) and states (n_steps + 1, 3, Bc, N)")
    _, n_batch, n_osc = states[0].shape
    zero = aligned_zeros((n_batch, n_osc), states)
    acc = aligned_zeros((3, n_batch, n_osc), states)
    tmp = aligned_zeros((3, n_batch, n_osc), states)
    tmp2 = aligned_zeros((3, n_batch, n_osc), states)
    return _recompute_segment(
        states, kept, coupling_t, use_coupling, osc, lam, p, dt, kept.shape[0], zero, acc, tmp, tmp2
    )


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def adjoint_kept_chunk(states, kept, grad, coupling, use_coupling, osc, lam, p, dt):
    """Gradient w.r.t. the initial state of one chunk from what :func:`forward_keep_chunk` kept (the states and, per
    step, the four stage fields and 1/|u|: ``kept`` (n_steps, 5, Bc, N)): 4 coupling products per step (the
    cotangents'), none recomputed.

    ``grad`` (3, Bc, N) is the cotangent of the final state and is overwritten by the result; ``p`` the reference
    direction as :func:`~stosim.physics.llg.reference_for_kernels` gives it."""
    if kept.shape[1] != 5 or states.shape[0] != kept.shape[0] + 1:
        raise ValueError("adjoint_kept_chunk: kept must be (n_steps, 5, Bc, N) and states (n_steps + 1, 3, Bc, N)")
    _, n_batch, n_osc = grad.shape
    p_arr = reference_array(p)
    work = aligned_zeros((7, 3, n_batch, n_osc), grad)
    g_hx = aligned_zeros((n_batch, n_osc), grad)
    g_sx = aligned_zeros((n_batch, n_osc), grad)
    for q in range(kept.shape[0] - 1, -1, -1):
        _step_vjp_kept(
            states[q], states[q + 1], kept[q], grad, coupling, use_coupling, osc, lam, p_arr, p, dt, work, g_hx, g_sx
        )
    return grad


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def adjoint_chunk(ckpt, grad, coupling_t, coupling, use_coupling, osc, lam, p, dt, n_steps, segment):
    """Gradient of the projected RK4 flow over ``n_steps`` w.r.t. the initial state of one chunk.

    ``ckpt`` (J + 1, 3, Bc, N) holds the state at steps 0, K, 2K, ... (K = ``segment``);
    ``grad`` (3, Bc, N) is the cotangent of the final state and is overwritten by the result; ``p`` the
    reference direction as :func:`~stosim.physics.llg.reference_for_kernels` gives it.
    """
    _, n_batch, n_osc = grad.shape
    p_arr = reference_array(p)
    seg = aligned_zeros((segment, 3, n_batch, n_osc), grad)
    work = aligned_zeros((7, 3, n_batch, n_osc), grad)
    hxs = aligned_zeros((4, n_batch, n_osc), grad)
    zero = aligned_zeros((n_batch, n_osc), grad)
    g_hx = aligned_zeros((n_batch, n_osc), grad)
    g_sx = aligned_zeros((n_batch, n_osc), grad)
    # below SMALL_N_MAX the forward pass ran the fused small-N loop: recompute with it, fields in _step_vjp
    keep_fields = segment > 1 and n_osc > SMALL_N_MAX
    fields = aligned_zeros((segment if keep_fields else 1, 4, n_batch, n_osc), grad)
    n_seg = (n_steps + segment - 1) // segment
    for j in range(n_seg - 1, -1, -1):
        start = j * segment
        length = min(segment, n_steps - start)
        copy_into(seg[0], ckpt[j])
        given = keep_fields and length > 1
        if given:
            # states seg[q] at step start + q and the stage fields of each step of the segment
            _ = _recompute_segment(
                seg,
                fields,
                coupling_t,
                use_coupling,
                osc,
                lam,
                p_arr,
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
                seg[0].copy(), coupling_t, use_coupling, osc, lam, p_arr, dt, length - 1, np.int64(1), np.int64(0),
                seg[1:],
            )  # fmt: skip
        for q in range(length - 1, -1, -1):
            _step_vjp(
                seg[q],
                grad,
                coupling_t,
                coupling,
                use_coupling,
                osc,
                lam,
                p_arr,
                p,
                dt,
                work,
                fields[q] if given else hxs,
                zero,
                g_hx,
                g_sx,
                given,
            )
    return grad


def adjoint_chunks(ckpt, grad, coupling_t, coupling, use_coupling, osc, lam, p, dt, n_steps, segment) -> None:
    """:func:`adjoint_chunk` over chunks on parallel threads: ckpt (C, J + 1, 3, Bc, N), grad (C, 3, Bc, N)."""

    def body(c: int) -> None:
        adjoint_chunk(ckpt[c], grad[c], coupling_t, coupling, use_coupling, osc, lam, p, dt, n_steps, segment)

    for_each_chunk(grad.shape[0], body)
