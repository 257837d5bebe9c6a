"""Time-stepping loops for coupled STO arrays (Numba; the whole loop runs compiled).

Each step evaluates the Ampere-law coupling field of every stage as one matrix
product, hc = m_x @ (mu W)^T (B x N)(N x N) through BLAS, followed by one fused,
batch-parallel pointwise kernel (:mod:`stosim.physics.llg`).

Methods
-------
- ``METHOD_RK4``: classical 4th-order Runge-Kutta, then projection onto |m| = 1.
- ``METHOD_HEUN``: stochastic Heun (Stratonovich), for the thermal field that is held
  fixed within a step: m* = m + dt f(m, h), m' = m + dt/2 [f(m, h) + f(m*, h)], projected.

Dynamical (state) noise is added after each step: m <- (m + s_b xi) / |...| with
s_b = std(m[b]) 10^(-SNR/20), the standard deviation taken over the sample's N x 3 components.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from stosim.physics.llg import STAGE_FINAL, STAGE_FIRST, STAGE_MIDDLE, stage_parallel, stage_serial

METHOD_RK4 = 0
METHOD_HEUN = 1

# the result codes of run_steps
STATUS_OK = 0
STATUS_NONFINITE = 1


@njit(cache=True)
def _stage(parallel, m, ms, hc, field_noise, has_field_noise, noise_sigma, osc, lam, p,
           dt, a_next, w, acc, nxt, mode, bad):
    if parallel:
        stage_parallel(m, ms, hc, field_noise, has_field_noise, noise_sigma, osc, lam, p,
                       dt, a_next, w, acc, nxt, mode, bad)
    else:
        stage_serial(m, ms, hc, field_noise, has_field_noise, noise_sigma, osc, lam, p,
                     dt, a_next, w, acc, nxt, mode, bad)


@njit(cache=True)
def _coupling(ms, coupling_t, use_coupling, hc):
    if use_coupling:
        np.dot(ms[0], coupling_t, hc)


@njit(cache=True)
def _add_state_noise(m, xi, factor, stats):
    """m <- normalize(m + s_b xi), s_b = std(m[:, b, :]) * factor; stats += (signal var, noise var, count)."""
    _, n_batch, n_osc = m.shape
    n_val = 3 * n_osc
    for b in range(n_batch):
        mean = 0.0
        for c in range(3):
            for i in range(n_osc):
                mean += m[c, b, i]
        mean /= n_val
        var = 0.0
        for c in range(3):
            for i in range(n_osc):
                d = m[c, b, i] - mean
                var += d * d
        var /= n_val
        s = np.sqrt(var) * factor
        noise_sq = 0.0
        for i in range(n_osc):
            x = m[0, b, i] + s * xi[0, b, i]
            y = m[1, b, i] + s * xi[1, b, i]
            z = m[2, b, i] + s * xi[2, b, i]
            noise_sq += (s * xi[0, b, i]) ** 2 + (s * xi[1, b, i]) ** 2 + (s * xi[2, b, i]) ** 2
            norm = np.sqrt(x * x + y * y + z * z)
            m[0, b, i] = x / norm
            m[1, b, i] = y / norm
            m[2, b, i] = z / norm
        stats[0] += var
        stats[1] += noise_sq / n_val
        stats[2] += 1.0


@njit(cache=True)
def run_steps(m, coupling_t, use_coupling, osc, lam, p, dt, n_steps, method,
              save_every, save_offset, traj,
              field_noise, has_field_noise, noise_sigma,
              state_noise, has_state_noise, state_noise_factor, stats, parallel):
    """Advance m (3, B, N) in place by ``n_steps`` steps of ``dt`` seconds.

    ``traj`` (S, 3, B, N) receives m after every step k (counted from ``save_offset``) with
    (save_offset + k + 1) % save_every == 0, at index (save_offset + k + 1) // save_every - 1.
    ``field_noise`` (n_steps, 3, B, N) and ``state_noise`` (n_steps, 3, B, N) hold the standard
    normal numbers of this chunk. Returns (status, step, sample, oscillator); a non-finite
    state stops the loop at once with ``STATUS_NONFINITE`` and where it happened.
    """
    _, n_batch, n_osc = m.shape
    hc = np.zeros((n_batch, n_osc), dtype=m.dtype)
    acc = np.empty_like(m)
    tmp = np.empty_like(m)
    tmp2 = np.empty_like(m)
    bad = np.full(n_batch, -1, dtype=np.int64)
    half = dt * 0.5
    sixth = dt * 0.0 + 1.0 / 6.0
    third = dt * 0.0 + 1.0 / 3.0
    for k in range(n_steps):
        fn = field_noise[k if has_field_noise else 0]
        if method == METHOD_RK4:
            _coupling(m, coupling_t, use_coupling, hc)
            _stage(parallel, m, m, hc, fn, has_field_noise, noise_sigma, osc, lam, p, dt, half, sixth, acc, tmp, STAGE_FIRST, bad)
            _coupling(tmp, coupling_t, use_coupling, hc)
            _stage(parallel, m, tmp, hc, fn, has_field_noise, noise_sigma, osc, lam, p, dt, half, third, acc, tmp2, STAGE_MIDDLE, bad)
            _coupling(tmp2, coupling_t, use_coupling, hc)
            _stage(parallel, m, tmp2, hc, fn, has_field_noise, noise_sigma, osc, lam, p, dt, dt, third, acc, tmp, STAGE_MIDDLE, bad)
            _coupling(tmp, coupling_t, use_coupling, hc)
            _stage(parallel, m, tmp, hc, fn, has_field_noise, noise_sigma, osc, lam, p, dt, dt, sixth, acc, m, STAGE_FINAL, bad)
        else:
            _coupling(m, coupling_t, use_coupling, hc)
            _stage(parallel, m, m, hc, fn, has_field_noise, noise_sigma, osc, lam, p, dt, dt, half / dt, acc, tmp, STAGE_FIRST, bad)
            _coupling(tmp, coupling_t, use_coupling, hc)
            _stage(parallel, m, tmp, hc, fn, has_field_noise, noise_sigma, osc, lam, p, dt, dt, half / dt, acc, m, STAGE_FINAL, bad)
        for b in range(n_batch):
            if bad[b] >= 0:
                return STATUS_NONFINITE, k, b, bad[b]
        if has_state_noise:
            _add_state_noise(m, state_noise[k], state_noise_factor, stats)
        step = save_offset + k + 1
        if step % save_every == 0:
            traj[step // save_every - 1] = m
    return STATUS_OK, -1, -1, -1
