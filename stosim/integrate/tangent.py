"""Forward-mode (tangent) propagation through the projected RK4 map of a coupled STO array (Numba).

For one step m' = u/|u|, u = m + h (k1/6 + k2/3 + k3/3 + k4/6), a tangent t is carried along
each stage, dk_j = J_f(s_j) ds_j (pointwise Jacobian plus the coupling term, whose x-field
tangent is t_x @ (mu W)^T: one matrix product per stage), and projected at the end:
t' = (du - m'(m'.du))/|u|. This is the exact Jacobian-vector product of the discrete map, used
for finite-time and asymptotic Lyapunov exponents. Tangents stay in the tangent planes of the
unit spheres.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from stosim.integrate.aligned import aligned_zeros
from stosim.integrate.chunks import for_each_chunk
from stosim.integrate.gemm import gemm_into
from stosim.physics.llg import stage_accumulate, stage_jvp

__all__ = ["tangent_run", "tangent_run_chunks"]


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def _tangent_step(m, t, coupling_t, use_coupling, osc, lam, p, dt, work, hx, thx, zero):
    """One projected RK4 step of (m, t) in place; m, t (3, B, N)."""
    s, ds, k1, k2, k3, k4, d1, d2, d3, d4, scratch = (
        work[0],
        work[1],
        work[2],
        work[3],
        work[4],
        work[5],
        work[6],
        work[7],
        work[8],
        work[9],
        work[10],
    )
    consts = np.array([0.5, 1.0 / 6.0, 1.0 / 3.0, 0.0, 1.0]).astype(m.dtype)  # in working precision
    half, c_zero, c_one = dt * consts[0], consts[3], consts[4]
    # stage 1
    if use_coupling:
        gemm_into(m[0], coupling_t, hx)
        gemm_into(t[0], coupling_t, thx)
    stage_accumulate(m, m, hx, zero, zero, osc, lam, p, half, c_zero, c_one, k1, s)
    stage_jvp(m, hx, zero, zero, t, thx, osc, lam, p, d1)
    ds[:] = t + half * d1
    # stage 2
    if use_coupling:
        gemm_into(s[0], coupling_t, hx)
        gemm_into(ds[0], coupling_t, thx)
    stage_accumulate(m, s, hx, zero, zero, osc, lam, p, half, c_zero, c_one, k2, scratch)
    stage_jvp(s, hx, zero, zero, ds, thx, osc, lam, p, d2)
    s[:] = scratch
    ds[:] = t + half * d2
    # stage 3
    if use_coupling:
        gemm_into(s[0], coupling_t, hx)
        gemm_into(ds[0], coupling_t, thx)
    stage_accumulate(m, s, hx, zero, zero, osc, lam, p, dt, c_zero, c_one, k3, scratch)
    stage_jvp(s, hx, zero, zero, ds, thx, osc, lam, p, d3)
    s[:] = scratch
    ds[:] = t + dt * d3
    # stage 4
    if use_coupling:
        gemm_into(s[0], coupling_t, hx)
        gemm_into(ds[0], coupling_t, thx)
    stage_accumulate(m, s, hx, zero, zero, osc, lam, p, c_zero, c_zero, c_one, k4, scratch)
    stage_jvp(s, hx, zero, zero, ds, thx, osc, lam, p, d4)
    _, n_batch, n_osc = m.shape
    sixth = dt * consts[1]
    third = dt * consts[2]
    for b in range(n_batch):
        for i in range(n_osc):
            ux = m[0, b, i] + sixth * (k1[0, b, i] + k4[0, b, i]) + third * (k2[0, b, i] + k3[0, b, i])
            uy = m[1, b, i] + sixth * (k1[1, b, i] + k4[1, b, i]) + third * (k2[1, b, i] + k3[1, b, i])
            uz = m[2, b, i] + sixth * (k1[2, b, i] + k4[2, b, i]) + third * (k2[2, b, i] + k3[2, b, i])
            vx = t[0, b, i] + sixth * (d1[0, b, i] + d4[0, b, i]) + third * (d2[0, b, i] + d3[0, b, i])
            vy = t[1, b, i] + sixth * (d1[1, b, i] + d4[1, b, i]) + third * (d2[1, b, i] + d3[1, b, i])
            vz = t[2, b, i] + sixth * (d1[2, b, i] + d4[2, b, i]) + third * (d2[2, b, i] + d3[2, b, i])
            inv = c_one / np.sqrt(ux * ux + uy * uy + uz * uz)
            nx, ny, nz = ux * inv, uy * inv, uz * inv
            dot = nx * vx + ny * vy + nz * vz
            m[0, b, i] = nx
            m[1, b, i] = ny
            m[2, b, i] = nz
            t[0, b, i] = (vx - nx * dot) * inv
            t[1, b, i] = (vy - ny * dot) * inv
            t[2, b, i] = (vz - nz * dot) * inv


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def tangent_run(m, t, coupling_t, use_coupling, osc, lam, p, dt, n_steps):
    """Advance states m (3, B, N) and their tangents t (3, B, N) in place by ``n_steps`` steps."""
    _, n_batch, n_osc = m.shape
    work = aligned_zeros((11, 3, n_batch, n_osc), m)
    hx = aligned_zeros((n_batch, n_osc), m)
    thx = aligned_zeros((n_batch, n_osc), m)
    zero = aligned_zeros((n_batch, n_osc), m)
    for _ in range(n_steps):
        _tangent_step(m, t, coupling_t, use_coupling, osc, lam, p, dt, work, hx, thx, zero)


def tangent_run_chunks(m, t, coupling_t, use_coupling, osc, lam, p, dt, n_steps) -> None:
    """:func:`tangent_run` over chunks (C, 3, Bc, N) on parallel threads."""

    def body(c: int) -> None:
        tangent_run(m[c], t[c], coupling_t, use_coupling, osc, lam, p, dt, n_steps)

    for_each_chunk(m.shape[0], body)
