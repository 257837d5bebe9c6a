"""Landau-Lifshitz-Gilbert-Slonczewski right-hand side as Numba kernels (PHYSICS.md section 1).

For one free layer with unit magnetization m, the explicit Landau-Lifshitz form is

    dm/dt = -gamma/(1+alpha^2) [ m x B + alpha m x (m x B) ],   B = H + H_s (p x m)

with the effective field (Oe)

    H = [H_appl + (H_K - 4 pi M) m_z] e_z + H_coupling e_x + H_extra

and the spin-torque field H_s = H_s0 / (1 + lambda m.p), H_s0 = hbar eta I / (2 e M V).
Time is in seconds, fields in Oe, gamma in rad/(Oe s).

Per-oscillator parameters travel as one array ``osc`` of shape (5, N), rows
:data:`OSC_APPLIED_FIELD_OE`, :data:`OSC_ANISOTROPY_OE` (H_K - 4 pi M),
:data:`OSC_TORQUE_FIELD_OE` (H_s0), :data:`OSC_DAMPING` (alpha) and
:data:`OSC_PREFACTOR` (gamma/(1+alpha^2) in rad/(Oe s)), so that device-to-device
variability needs no other kernel. States are stored component-major, (3, B, N),
so that m_x of a batch is one contiguous (B, N) matrix for the coupling product.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

OSC_APPLIED_FIELD_OE = 0
OSC_ANISOTROPY_OE = 1
OSC_TORQUE_FIELD_OE = 2
OSC_DAMPING = 3
OSC_PREFACTOR = 4
N_OSC_PARAMS = 5

# stage modes of the fused Runge-Kutta stage kernel
STAGE_FIRST = 0
STAGE_MIDDLE = 1
STAGE_FINAL = 2


@njit(inline="always", cache=True)
def llg_point(mx, my, mz, hx, hy, hz, h_appl, hk_eff, hs0, alpha, pref, lam, px, py, pz):
    """dm/dt of one free layer (1/s) for the external in-plane/extra field (hx, hy, hz) in Oe.

    (hx, hy, hz) holds the coupling and noise fields; the applied and anisotropy fields
    along z and the spin torque are added here.
    """
    bz_h = hz + h_appl + hk_eff * mz
    mp = mx * px + my * py + mz * pz
    hs = hs0 / (1.0 + lam * mp)
    # B = H + H_s (p x m)
    bx = hx + hs * (py * mz - pz * my)
    by = hy + hs * (pz * mx - px * mz)
    bz = bz_h + hs * (px * my - py * mx)
    # a = m x B
    ax = my * bz - mz * by
    ay = mz * bx - mx * bz
    az = mx * by - my * bx
    # d = m x (m x B)
    dx = my * az - mz * ay
    dy = mz * ax - mx * az
    dz = mx * ay - my * ax
    return -pref * (ax + alpha * dx), -pref * (ay + alpha * dy), -pref * (az + alpha * dz)


@njit(inline="always", cache=True)
def _stage_point(b, i, m, ms, hc, field_noise, has_field_noise, noise_sigma, osc, lam, p,
                 dt, a_next, w, acc, nxt, mode, bad):
    if has_field_noise:
        s = noise_sigma[i]
        hx = hc[b, i] + s * field_noise[0, b, i]
        hy = s * field_noise[1, b, i]
        hz = s * field_noise[2, b, i]
    else:
        hx = hc[b, i]
        hy = 0.0 * hx
        hz = 0.0 * hx
    kx, ky, kz = llg_point(
        ms[0, b, i], ms[1, b, i], ms[2, b, i], hx, hy, hz,
        osc[0, i], osc[1, i], osc[2, i], osc[3, i], osc[4, i], lam, p[0], p[1], p[2],
    )
    if mode == 0:
        acc[0, b, i] = w * kx
        acc[1, b, i] = w * ky
        acc[2, b, i] = w * kz
        nxt[0, b, i] = m[0, b, i] + a_next * kx
        nxt[1, b, i] = m[1, b, i] + a_next * ky
        nxt[2, b, i] = m[2, b, i] + a_next * kz
    elif mode == 1:
        acc[0, b, i] += w * kx
        acc[1, b, i] += w * ky
        acc[2, b, i] += w * kz
        nxt[0, b, i] = m[0, b, i] + a_next * kx
        nxt[1, b, i] = m[1, b, i] + a_next * ky
        nxt[2, b, i] = m[2, b, i] + a_next * kz
    else:
        x = m[0, b, i] + dt * (acc[0, b, i] + w * kx)
        y = m[1, b, i] + dt * (acc[1, b, i] + w * ky)
        z = m[2, b, i] + dt * (acc[2, b, i] + w * kz)
        norm = np.sqrt(x * x + y * y + z * z)
        if not np.isfinite(norm) or norm == 0.0:
            bad[b] = i
        nxt[0, b, i] = x / norm
        nxt[1, b, i] = y / norm
        nxt[2, b, i] = z / norm


@njit(parallel=True, cache=True)
def stage_parallel(m, ms, hc, field_noise, has_field_noise, noise_sigma, osc, lam, p,
                   dt, a_next, w, acc, nxt, mode, bad):
    """One fused Runge-Kutta stage over the batch, parallel over samples (see :func:`stage_serial`)."""
    n_batch, n_osc = hc.shape
    for b in prange(n_batch):
        for i in range(n_osc):
            _stage_point(b, i, m, ms, hc, field_noise, has_field_noise, noise_sigma, osc, lam, p,
                         dt, a_next, w, acc, nxt, mode, bad)


@njit(cache=True)
def stage_serial(m, ms, hc, field_noise, has_field_noise, noise_sigma, osc, lam, p,
                 dt, a_next, w, acc, nxt, mode, bad):
    """One fused Runge-Kutta stage: k = f(ms), then by ``mode``

    - first:  acc = w k,           nxt = m + a_next k
    - middle: acc += w k,          nxt = m + a_next k
    - final:  nxt = (m + dt (acc + w k)) / |...|   (projection back onto the unit sphere)

    ``hc`` (B, N) is the coupling field along x (Oe); ``field_noise`` (3, B, N) standard
    normal numbers scaled per oscillator by ``noise_sigma`` (Oe) when ``has_field_noise``.
    ``bad[b]`` is set to an oscillator index whose state became non-finite.
    """
    n_batch, n_osc = hc.shape
    for b in range(n_batch):
        for i in range(n_osc):
            _stage_point(b, i, m, ms, hc, field_noise, has_field_noise, noise_sigma, osc, lam, p,
                         dt, a_next, w, acc, nxt, mode, bad)


@njit(cache=True)
def llg_rhs_batch(m, hc, osc, lam, p):
    """dm/dt (3, B, N) in 1/s for states m (3, B, N) and coupling field hc (B, N) in Oe (reference use)."""
    out = np.empty_like(m)
    _, n_batch, n_osc = m.shape
    for b in range(n_batch):
        for i in range(n_osc):
            kx, ky, kz = llg_point(
                m[0, b, i], m[1, b, i], m[2, b, i], hc[b, i], 0.0 * hc[b, i], 0.0 * hc[b, i],
                osc[0, i], osc[1, i], osc[2, i], osc[3, i], osc[4, i], lam, p[0], p[1], p[2],
            )
            out[0, b, i] = kx
            out[1, b, i] = ky
            out[2, b, i] = kz
    return out
