"""Time-stepping loops for coupled STO arrays (Numba; the whole loop runs compiled).

The batch is split into C chunks laid out as (C, 3, Bc, N) arrays. Samples never interact,
so each chunk runs its whole time loop on its own thread with no
synchronisation between steps. Within a chunk each Runge-Kutta stage evaluates the
Ampere-law coupling field as one matrix product hx = m_x @ (mu W)^T, (Bc x N)(N x N)
through a single-threaded BLAS gemm (:mod:`stosim.integrate.gemm`), followed by one pointwise pass
(:mod:`stosim.physics.llg`).
The chunks run on Python threads; :func:`run_chunk` releases the GIL (``nogil=True``).

Methods
-------
- ``METHOD_RK4``: classical 4th-order Runge-Kutta, then projection onto |m| = 1.
- ``METHOD_HEUN``: stochastic Heun (Stratonovich) for a random field held fixed within
  a step: m* = m + dt f(m, h), m' = m + dt/2 [f(m, h) + f(m*, h)], projected.

Dynamical (state) noise is added after each step: m <- (m + s_b xi) / |...| with
s_b = std(m[b]) f, the standard deviation over the sample's N x 3 components times the per-step
factor f; the update is :func:`stosim.physics.noise.make_state_noise_point`, shared with the torch
steps.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from stosim.integrate.aligned import aligned_zeros
from stosim.integrate.chunks import for_each_chunk
from stosim.integrate.gemm import gemm_into
from stosim.physics.llg import llg_point, oscillator_rows, stage_accumulate, stage_final
from stosim.physics.noise import make_state_noise_point

METHOD_RK4 = 0
METHOD_HEUN = 1
SMALL_N_MAX = 32  # up to this many oscillators a noiseless RK4 run uses the fused per-sample loop

# the dynamical-noise update of one oscillator, the body the torch steps evaluate too (one = 1.0 here:
# s is accumulated in float64, and float32 states are updated in float64 and stored, as always)
_state_noise_point = njit(inline="always", cache=True, error_model="numpy", fastmath={"contract"})(
    make_state_noise_point(np.sqrt)
)


@njit(inline="always", cache=True, error_model="numpy", fastmath={"contract"})
def copy_into(dst, src):
    """dst[...] = src for C-contiguous arrays of one shape, as a loop.

    The kernels copy arrays with this rather than slice assignment (``dst[:] = src``): Numba compiles a
    slice assignment together with the formatting of its shape-mismatch message (string and tuple
    formatting, about 3 s of the first run's compilation), and a loop needs none of it."""
    if dst.shape != src.shape:
        raise ValueError("copy_into: the arrays differ in shape")
    d = dst.reshape(dst.size)
    s = src.reshape(src.size)
    for k in range(d.size):
        d[k] = s[k]


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def _small_field(sx, coupling_t, use_coupling, hx):
    """hx = s_x @ (mu W)^T for one sample, written out (no BLAS call for a small N)."""
    n_osc = sx.shape[0]
    for i in range(n_osc):
        hx[i] = 0.0
    if use_coupling:
        for j in range(n_osc):
            sj = sx[j]
            for i in range(n_osc):
                hx[i] += sj * coupling_t[j, i]


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def run_small(m, coupling_t, use_coupling, osc, lam, p, dt, n_steps, save_every, save_offset, traj):
    """Noiseless projected RK4 for a small N: each sample's whole time loop on its own, all four stages
    fused into scalar loops over the N oscillators (same scheme as :func:`run_chunk`; the per-step
    cost is the arithmetic, with no per-stage BLAS call or array pass). Returns like :func:`run_chunk`."""
    _, n_batch, n_osc = m.shape
    dtp = m.dtype
    h_appl, hk_eff, hs0, alpha, pref = oscillator_rows(osc)
    px, py, pz = p[0], p[1], p[2]
    consts = np.array([0.5, 1.0 / 6.0, 1.0 / 3.0, 0.0, 1.0]).astype(dtp)
    half, sixth, third, one = dt * consts[0], consts[1], consts[2], consts[4]
    x0 = np.empty((3, n_osc), dtype=dtp)  # state at the start of the step
    s = np.empty((3, n_osc), dtype=dtp)  # stage state
    acc = np.empty((3, n_osc), dtype=dtp)
    hx = np.empty(n_osc, dtype=dtp)
    zero = consts[3]
    first_k, first_bad = -1, -1
    for b in range(n_batch):
        for c in range(3):
            for i in range(n_osc):
                x0[c, i] = m[c, b, i]
        for k in range(n_steps):
            if first_k >= 0 and k >= first_k:
                break
            # stage 1: k1 = f(x0); acc = k1/6; s = x0 + h/2 k1
            _small_field(x0[0], coupling_t, use_coupling, hx)
            for i in range(n_osc):
                kx, ky, kz = llg_point(
                    x0[0, i],
                    x0[1, i],
                    x0[2, i],
                    hx[i],
                    zero,
                    zero,
                    h_appl[i],
                    hk_eff[i],
                    hs0[i],
                    alpha[i],
                    pref[i],
                    lam,
                    px,
                    py,
                    pz,
                    one,
                )
                acc[0, i] = sixth * kx
                acc[1, i] = sixth * ky
                acc[2, i] = sixth * kz
                s[0, i] = x0[0, i] + half * kx
                s[1, i] = x0[1, i] + half * ky
                s[2, i] = x0[2, i] + half * kz
            # stages 2 and 3: acc += k/3; s = x0 + a k (a = h/2, then h)
            for a_next in (half, dt):
                _small_field(s[0], coupling_t, use_coupling, hx)
                for i in range(n_osc):
                    kx, ky, kz = llg_point(
                        s[0, i],
                        s[1, i],
                        s[2, i],
                        hx[i],
                        zero,
                        zero,
                        h_appl[i],
                        hk_eff[i],
                        hs0[i],
                        alpha[i],
                        pref[i],
                        lam,
                        px,
                        py,
                        pz,
                        one,
                    )
                    acc[0, i] += third * kx
                    acc[1, i] += third * ky
                    acc[2, i] += third * kz
                    s[0, i] = x0[0, i] + a_next * kx
                    s[1, i] = x0[1, i] + a_next * ky
                    s[2, i] = x0[2, i] + a_next * kz
            # stage 4 and the projection: x0 = (x0 + h (acc + k4/6)) / |...|
            _small_field(s[0], coupling_t, use_coupling, hx)
            bad = -1
            for i in range(n_osc):
                kx, ky, kz = llg_point(
                    s[0, i],
                    s[1, i],
                    s[2, i],
                    hx[i],
                    zero,
                    zero,
                    h_appl[i],
                    hk_eff[i],
                    hs0[i],
                    alpha[i],
                    pref[i],
                    lam,
                    px,
                    py,
                    pz,
                    one,
                )
                x = x0[0, i] + dt * (acc[0, i] + sixth * kx)
                y = x0[1, i] + dt * (acc[1, i] + sixth * ky)
                z = x0[2, i] + dt * (acc[2, i] + sixth * kz)
                inv = one / np.sqrt(x * x + y * y + z * z)
                x0[0, i] = x * inv
                x0[1, i] = y * inv
                x0[2, i] = z * inv
                norm2 = x0[0, i] * x0[0, i] + x0[1, i] * x0[1, i] + x0[2, i] * x0[2, i]
                if bad < 0 and not abs(norm2 - one) < 0.5:  # non-finite, overflowed or vanished
                    bad = i
            if bad >= 0:
                if first_k < 0 or k < first_k:
                    first_k, first_bad = k, b * n_osc + bad
                break
            step = save_offset + k + 1
            if step % save_every == 0:
                for c in range(3):
                    for i in range(n_osc):
                        traj[step // save_every - 1, c, b, i] = x0[c, i]
        for c in range(3):
            for i in range(n_osc):
                m[c, b, i] = x0[c, i]
    return first_k, first_bad


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def _coupling(ms, coupling_t, use_coupling, hx, field_x, has_field):
    """hx = m_x @ (mu W)^T (+ the random field along x)."""
    if use_coupling:
        gemm_into(ms[0], coupling_t, hx)
        if has_field:
            hx += field_x
    elif has_field:
        copy_into(hx, field_x)


@njit(cache=True, error_model="numpy", fastmath={"contract"})
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
            dx = s * xi[0, b, i]
            dy = s * xi[1, b, i]
            dz = s * xi[2, b, i]
            noise_sq += dx * dx + dy * dy + dz * dz
            m[0, b, i], m[1, b, i], m[2, b, i] = _state_noise_point(
                m[0, b, i], m[1, b, i], m[2, b, i], s, xi[0, b, i], xi[1, b, i], xi[2, b, i], 1.0
            )
        stats[0] += var
        stats[1] += noise_sq / n_val
        stats[2] += 1.0


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def run_chunk(
    m,
    coupling_t,
    use_coupling,
    osc,
    lam,
    p,
    dt,
    n_steps,
    method,
    save_every,
    save_offset,
    traj,
    field_noise,
    has_field_noise,
    noise_sigma,
    state_noise,
    has_state_noise,
    state_noise_factor,
    stats,
):
    """Advance one chunk m (3, Bc, N) in place by ``n_steps`` steps of ``dt`` seconds.

    ``traj`` (S, 3, Bc, N) receives m after global step s = save_offset + k + 1 whenever
    s % save_every == 0, at index s // save_every - 1. ``field_noise`` (n_steps, 3, Bc, N)
    holds standard normal numbers scaled per oscillator by ``noise_sigma`` (Oe);
    ``state_noise`` (n_steps, 3, Bc, N) those of the dynamical noise.
    Returns (-1, -1), or (step k, flat index b * N + i) where the state became non-finite.
    """
    _, n_batch, n_osc = m.shape
    if n_osc <= SMALL_N_MAX and method == METHOD_RK4 and not has_field_noise and not has_state_noise:
        return run_small(m, coupling_t, use_coupling, osc, lam, p, dt, n_steps, save_every, save_offset, traj)
    # work arrays on 64-byte boundaries (:mod:`stosim.integrate.aligned`)
    hx = aligned_zeros((n_batch, n_osc), m)
    hy = aligned_zeros((n_batch, n_osc), m)
    # without a random field, h_y and h_z are the same zero array (half the cache footprint)
    hz = aligned_zeros((n_batch, n_osc), m) if has_field_noise else hy
    fx = aligned_zeros((n_batch, n_osc), m)
    acc = aligned_zeros((3, n_batch, n_osc), m)
    tmp = aligned_zeros((3, n_batch, n_osc), m)
    tmp2 = aligned_zeros((3, n_batch, n_osc), m)
    consts = np.array([0.5, 1.0 / 6.0, 1.0 / 3.0, 0.0, 1.0]).astype(m.dtype)  # in working precision
    half, sixth, third, zero, one = dt * consts[0], consts[1], consts[2], consts[3], consts[4]
    # the state lives in two buffers that swap roles every step: the last stage writes the new state into the
    # other one, never over its own input (an output that aliases an input makes LLVM run the scalar loop,
    # 3.4-4.3x slower per oscillator than the vectorized one)
    cur = aligned_zeros((3, n_batch, n_osc), m)
    spare = aligned_zeros((3, n_batch, n_osc), m)
    copy_into(cur, m)
    for k in range(n_steps):
        if has_field_noise:
            for b in range(n_batch):
                for i in range(n_osc):
                    fx[b, i] = noise_sigma[i] * field_noise[k, 0, b, i]
                    hy[b, i] = noise_sigma[i] * field_noise[k, 1, b, i]
                    hz[b, i] = noise_sigma[i] * field_noise[k, 2, b, i]
        if method == METHOD_RK4:
            _coupling(cur, coupling_t, use_coupling, hx, fx, has_field_noise)
            stage_accumulate(cur, cur, hx, hy, hz, osc, lam, p, half, zero, sixth, acc, tmp)
            _coupling(tmp, coupling_t, use_coupling, hx, fx, has_field_noise)
            stage_accumulate(cur, tmp, hx, hy, hz, osc, lam, p, half, one, third, acc, tmp2)
            _coupling(tmp2, coupling_t, use_coupling, hx, fx, has_field_noise)
            stage_accumulate(cur, tmp2, hx, hy, hz, osc, lam, p, dt, one, third, acc, tmp)
            _coupling(tmp, coupling_t, use_coupling, hx, fx, has_field_noise)
            bad = stage_final(cur, tmp, hx, hy, hz, osc, lam, p, dt, sixth, acc, spare)
        else:
            _coupling(cur, coupling_t, use_coupling, hx, fx, has_field_noise)
            stage_accumulate(cur, cur, hx, hy, hz, osc, lam, p, dt, zero, consts[0], acc, tmp)
            _coupling(tmp, coupling_t, use_coupling, hx, fx, has_field_noise)
            bad = stage_final(cur, tmp, hx, hy, hz, osc, lam, p, dt, consts[0], acc, spare)
        cur, spare = spare, cur
        if bad >= 0:
            copy_into(m, cur)
            return k, bad
        if has_state_noise:
            _add_state_noise(cur, state_noise[k], state_noise_factor, stats)
        step = save_offset + k + 1
        if step % save_every == 0:
            copy_into(traj[step // save_every - 1], cur)
    copy_into(m, cur)
    return -1, -1


def run_chunks(
    m,
    coupling_t,
    use_coupling,
    osc,
    lam,
    p,
    dt,
    n_steps,
    method,
    save_every,
    save_offset,
    traj,
    field_noise,
    has_field_noise,
    noise_sigma,
    state_noise,
    has_state_noise,
    state_noise_factor,
    stats,
    result,
) -> None:
    """:func:`run_chunk` on every chunk, chunks on parallel threads (:func:`~stosim.integrate.chunks.for_each_chunk`).

    m (C, 3, Bc, N), traj (C, S, 3, Bc, N), noise (C, n_steps, 3, Bc, N) (or a dummy (C, 1, 3, 1, 1)),
    stats (C, 3), result (C, 2) receives each chunk's (step, index) as :func:`run_chunk` returns it."""

    def body(c: int) -> None:
        result[c] = run_chunk(
            m[c],
            coupling_t,
            use_coupling,
            osc,
            lam,
            p,
            dt,
            n_steps,
            method,
            save_every,
            save_offset,
            traj[c],
            field_noise[c],
            has_field_noise,
            noise_sigma,
            state_noise[c],
            has_state_noise,
            state_noise_factor,
            stats[c],
        )

    for_each_chunk(m.shape[0], body)
