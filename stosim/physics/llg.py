"""Landau-Lifshitz-Gilbert-Slonczewski right-hand side as Numba kernels (docs/physics.md section 1).

For one free layer with unit magnetization m, the explicit Landau-Lifshitz form is

    dm/dt = -gamma/(1+alpha^2) [ m x B + alpha m x (m x B) ],   B = H + H_s (p x m)

with the effective field (Oe)

    H = [H_appl + (H_K - 4 pi M) m_z] e_z + (h_x, h_y, h_z)

where (h_x, h_y, h_z) collects the coupling field (along x) and noise fields, and the
spin-torque field H_s = H_s0 / (1 + lambda m.p), H_s0 = hbar eta I / (2 e M V).
Time is in seconds, fields in Oe, gamma in rad/(Oe s).

Per-oscillator parameters travel as one array ``osc`` of shape (5, N), rows
:data:`OSC_APPLIED_FIELD_OE`, :data:`OSC_ANISOTROPY_OE` (H_K - 4 pi M),
:data:`OSC_TORQUE_FIELD_OE` (H_s0), :data:`OSC_DAMPING` (alpha) and
:data:`OSC_PREFACTOR` (gamma/(1+alpha^2) in rad/(Oe s)), so that device-to-device
variability needs no other kernel. States are stored component-major, (3, B, N),
so that m_x of a batch is one contiguous (B, N) matrix for the coupling product and the
pointwise loops run over contiguous rows (vectorized by LLVM).

One definition for every engine: :func:`llg_point` is plain arithmetic on its arguments, so its
Python body (``llg_point.py_func``) evaluated on torch tensors (:mod:`stosim.physics.torch_llg`)
or NumPy arrays (the NumPy reference of ``benchmarks/bench_simulate.py``) computes the same
formula, elementwise, as the Numba kernels below; :func:`oscillator_rows` unpacks the ``osc``
rows by name for all of them.
"""

from __future__ import annotations

import collections

import numpy as np
from numba import njit, types
from numba.extending import overload

from stosim.physics.kernel_hints import arrays_do_not_overlap, prefer_wide_vectors

OSC_APPLIED_FIELD_OE = 0
OSC_ANISOTROPY_OE = 1
OSC_TORQUE_FIELD_OE = 2
OSC_DAMPING = 3
OSC_PREFACTOR = 4
N_OSC_PARAMS = 5


@njit(inline="always", cache=True, error_model="numpy", fastmath={"contract"})
def oscillator_rows(osc):
    """The rows of ``osc`` (5, N) by name: (H_appl, H_K - 4 pi M, H_s0 (Oe), alpha, gamma/(1+alpha^2) (rad/(Oe s))).

    Pure indexing by the module-level row constants (compile-time constants in Numba), so
    ``oscillator_rows.py_func`` unpacks a torch tensor or NumPy array in the same order.
    """
    return (
        osc[OSC_APPLIED_FIELD_OE],
        osc[OSC_ANISOTROPY_OE],
        osc[OSC_TORQUE_FIELD_OE],
        osc[OSC_DAMPING],
        osc[OSC_PREFACTOR],
    )


@njit(inline="always", cache=True, error_model="numpy", fastmath={"contract"})
def llg_point(mx, my, mz, hx, hy, hz, h_appl, hk_eff, hs0, alpha, pref, lam, px, py, pz, one):
    """dm/dt of one free layer (1/s); (hx, hy, hz) is the coupling + noise field in Oe.

    The applied and anisotropy fields along z and the spin torque are added here. ``one`` is 1
    in the working precision (float literals would promote float32 arithmetic to float64).
    The body is arithmetic only: ``llg_point.py_func`` applied to torch tensors or NumPy arrays
    (any broadcastable shapes; scalars for absent fields) is the same formula elementwise, the
    one definition behind the torch engine and the NumPy benchmark reference.
    """
    bz_h = hz + h_appl + hk_eff * mz
    hs = hs0 / (one + lam * (mx * px + my * py + mz * pz))
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


@njit(inline="always", cache=True, error_model="numpy", fastmath={"contract"})
def llg_point_short_chain(mx, my, mz, hx, hy, hz, h_appl, hk_eff, hs0, alpha, pref, lam, px, py, pz, one):
    """:func:`llg_point` arranged for one trajectory, whose steps run one after another: the same dm/dt
    (equal to round-off) with the division of H_s off the other terms' path. B = H + H_s q is affine in H_s, so

        f = G + H_s Q,  G = -pref (a_H + alpha m x a_H),  a_H = m x H,
        Q = -pref (m x q - alpha |m|^2 q),  m x q = m x (p x m) = p |m|^2 - m (m.p),  m x (m x q) = -|m|^2 q,

    (exact for any m, on or off the unit sphere). G and Q are computed while H_s = H_s0/(1 + lambda m.p) is
    divided, so a stage's dependent chain is m.p, the division and one fused multiply-add, not the division
    followed by two cross products (latency, not throughput, bounds a single trajectory's step)."""
    mp = mx * px + my * py + mz * pz
    hs = hs0 / (one + lam * mp)
    bx, by, bz = hx, hy, hz + h_appl + hk_eff * mz
    # a_H = m x H, d_H = m x a_H
    ax = my * bz - mz * by
    ay = mz * bx - mx * bz
    az = mx * by - my * bx
    dx = my * az - mz * ay
    dy = mz * ax - mx * az
    dz = mx * ay - my * ax
    gx, gy, gz = -pref * (ax + alpha * dx), -pref * (ay + alpha * dy), -pref * (az + alpha * dz)
    mm = mx * mx + my * my + mz * mz
    qx = py * mz - pz * my
    qy = pz * mx - px * mz
    qz = px * my - py * mx
    am = alpha * mm
    cx = -pref * (px * mm - mx * mp - am * qx)
    cy = -pref * (py * mm - my * mp - am * qy)
    cz = -pref * (pz * mm - mz * mp - am * qz)
    return gx + hs * cx, gy + hs * cy, gz + hs * cz


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def stage_accumulate(m, ms, hx, hy, hz, osc, lam, p, a_next, keep, w, acc, nxt):
    """Runge-Kutta stage: k = f(ms); acc = keep * acc + w k; nxt = m + a_next k.

    All state arrays are (3, B, N); hx, hy, hz (B, N) in Oe; ``keep`` is 0 for the first
    stage of a step (acc must hold finite numbers) and 1 afterwards. ``acc`` and ``nxt`` must not overlap
    each other or an input (:func:`~stosim.physics.kernel_hints.arrays_do_not_overlap`); m may be ms.
    """
    arrays_do_not_overlap()
    prefer_wide_vectors()
    _, n_batch, n_osc = m.shape
    h_appl, hk_eff, hs0, alpha, pref = oscillator_rows(osc)
    px, py, pz = p[0], p[1], p[2]
    one = np.ones(1, dtype=m.dtype)[0]
    for b in range(n_batch):
        mx, my, mz = ms[0, b], ms[1, b], ms[2, b]
        m0x, m0y, m0z = m[0, b], m[1, b], m[2, b]
        ax, ay, az = acc[0, b], acc[1, b], acc[2, b]
        nx, ny, nz = nxt[0, b], nxt[1, b], nxt[2, b]
        fx, fy, fz = hx[b], hy[b], hz[b]
        for i in range(n_osc):
            kx, ky, kz = llg_point(
                mx[i],
                my[i],
                mz[i],
                fx[i],
                fy[i],
                fz[i],
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
            ax[i] = keep * ax[i] + w * kx
            ay[i] = keep * ay[i] + w * ky
            az[i] = keep * az[i] + w * kz
            nx[i] = m0x[i] + a_next * kx
            ny[i] = m0y[i] + a_next * ky
            nz[i] = m0z[i] + a_next * kz


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def stage_final(m, ms, hx, hy, hz, osc, lam, p, dt, w, acc, out):
    """Last stage: out = (m + dt (acc + w f(ms))) / |...| (projection onto the unit sphere).

    ``out`` must not overlap any input (:func:`~stosim.physics.kernel_hints.arrays_do_not_overlap`; the
    kernels pass a second state buffer). Returns -1, or the flat index b * N + i of the first
    oscillator whose new state is not finite (or whose norm overflowed or vanished).
    """
    arrays_do_not_overlap()
    prefer_wide_vectors()
    _, n_batch, n_osc = m.shape
    h_appl, hk_eff, hs0, alpha, pref = oscillator_rows(osc)
    px, py, pz = p[0], p[1], p[2]
    one = np.ones(1, dtype=m.dtype)[0]
    zero = one - one  # a float literal here would widen the float32 loop to float64 (4 lanes instead of 8)
    for b in range(n_batch):
        mx, my, mz = ms[0, b], ms[1, b], ms[2, b]
        m0x, m0y, m0z = m[0, b], m[1, b], m[2, b]
        ax, ay, az = acc[0, b], acc[1, b], acc[2, b]
        ox, oy, oz = out[0, b], out[1, b], out[2, b]
        fx, fy, fz = hx[b], hy[b], hz[b]
        failed = False
        for i in range(n_osc):
            kx, ky, kz = llg_point(
                mx[i],
                my[i],
                mz[i],
                fx[i],
                fy[i],
                fz[i],
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
            x = m0x[i] + dt * (ax[i] + w * kx)
            y = m0y[i] + dt * (ay[i] + w * ky)
            z = m0z[i] + dt * (az[i] + w * kz)
            norm2 = x * x + y * y + z * z
            inv = one / np.sqrt(norm2)
            # a zero, NaN or overflowed |.|^2 makes norm2 + inv inf or NaN (both terms are >= 0 otherwise): a
            # failure. A boolean OR keeps the loop vectorized at the working precision's width (an integer count
            # would widen float32 lanes to int64's)
            failed |= (norm2 + inv) * zero != zero
            ox[i] = x * inv
            oy[i] = y * inv
            oz[i] = z * inv
        if failed:
            for i in range(n_osc):
                norm2 = ox[i] * ox[i] + oy[i] * oy[i] + oz[i] * oz[i]
                if not abs(norm2 - one) < 0.5:  # also catches NaN
                    return b * n_osc + i
    return -1


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def stage_final_keep_norm(m, ms, hx, osc, lam, p, dt, w, acc, out, inv_norm):
    """:func:`stage_final` without a noise field (hy = hz = 0), also keeping inv_norm (B, N) = 1/|...|, the factor
    of the projection (the gradient's backward pass projects its cotangent with it and the kept new state). Same
    return value; bitwise the same ``out`` as :func:`stage_final` with zero hy, hz. Its own loop, written as
    :func:`stage_final`'s: the same loop with the store behind a branch pruned at compile time, or with the
    projection moved into an inlined helper, ran 15-80 % slower."""
    arrays_do_not_overlap()
    prefer_wide_vectors()
    _, n_batch, n_osc = m.shape
    h_appl, hk_eff, hs0, alpha, pref = oscillator_rows(osc)
    px, py, pz = p[0], p[1], p[2]
    one = np.ones(1, dtype=m.dtype)[0]
    zero = one - one
    for b in range(n_batch):
        mx, my, mz = ms[0, b], ms[1, b], ms[2, b]
        m0x, m0y, m0z = m[0, b], m[1, b], m[2, b]
        ax, ay, az = acc[0, b], acc[1, b], acc[2, b]
        ox, oy, oz, ib = out[0, b], out[1, b], out[2, b], inv_norm[b]
        fx = hx[b]
        failed = False
        for i in range(n_osc):
            kx, ky, kz = llg_point(
                mx[i], my[i], mz[i], fx[i], zero, zero,
                h_appl[i], hk_eff[i], hs0[i], alpha[i], pref[i], lam, px, py, pz, one,
            )  # fmt: skip
            x = m0x[i] + dt * (ax[i] + w * kx)
            y = m0y[i] + dt * (ay[i] + w * ky)
            z = m0z[i] + dt * (az[i] + w * kz)
            norm2 = x * x + y * y + z * z
            inv = one / np.sqrt(norm2)
            failed |= (norm2 + inv) * zero != zero  # as in stage_final
            ox[i] = x * inv
            oy[i] = y * inv
            oz[i] = z * inv
            ib[i] = inv
        if failed:
            for i in range(n_osc):
                norm2 = ox[i] * ox[i] + oy[i] * oy[i] + oz[i] * oz[i]
                if not abs(norm2 - one) < 0.5:  # also catches NaN
                    return b * n_osc + i
    return -1


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def stage_next(m, ms, hx, osc, lam, p, a_next, nxt):
    """A Runge-Kutta stage state without a noise field and without the sum of the stages: nxt = m + a_next
    f(ms, hx), bitwise :func:`stage_accumulate`'s ``nxt`` for hy = hz = 0 (the gradient's recomputed stages,
    whose sum the backward pass does not need). ``nxt`` must not overlap an input."""
    arrays_do_not_overlap()
    prefer_wide_vectors()
    _, n_batch, n_osc = m.shape
    h_appl, hk_eff, hs0, alpha, pref = oscillator_rows(osc)
    px, py, pz = p[0], p[1], p[2]
    one = np.ones(1, dtype=m.dtype)[0]
    zero = one - one
    for b in range(n_batch):
        mx, my, mz = ms[0, b], ms[1, b], ms[2, b]
        m0x, m0y, m0z = m[0, b], m[1, b], m[2, b]
        nx, ny, nz = nxt[0, b], nxt[1, b], nxt[2, b]
        fx = hx[b]
        for i in range(n_osc):
            kx, ky, kz = llg_point(
                mx[i], my[i], mz[i], fx[i], zero, zero,
                h_appl[i], hk_eff[i], hs0[i], alpha[i], pref[i], lam, px, py, pz, one,
            )  # fmt: skip
            nx[i] = m0x[i] + a_next * kx
            ny[i] = m0y[i] + a_next * ky
            nz[i] = m0z[i] + a_next * kz


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def llg_rhs_batch(m, hx, osc, lam, p):
    """dm/dt (3, B, N) in 1/s for states m (3, B, N) and coupling field hx (B, N) in Oe (no other field)."""
    out = np.zeros_like(m)
    zero = np.zeros_like(hx)
    stage_accumulate(m, m, hx, zero, zero, osc, lam, p, 0.0, 0.0, 1.0, out, np.empty_like(m))
    return out


@njit(inline="always", cache=True, error_model="numpy", fastmath={"contract"})
def _torque_field(mx, my, mz, hx, hy, hz, h_appl, hk_eff, hs0, lam, px, py, pz, one):
    """The field B = H + H_s q of :func:`llg_point` with the pieces its derivatives reuse:
    (1/(1 + lambda m.p), H_s, q = p x m, B) with H_s = H_s0/(1 + lambda m.p) computed as H_s0 times the
    reciprocal (the derivatives need both)."""
    mp = mx * px + my * py + mz * pz
    den = one / (one + lam * mp)
    hs = hs0 * den
    qx = py * mz - pz * my
    qy = pz * mx - px * mz
    qz = px * my - py * mx
    bx = hx + hs * qx
    by = hy + hs * qy
    bz = hz + h_appl + hk_eff * mz + hs * qz
    return den, hs, qx, qy, qz, bx, by, bz


@njit(inline="always", cache=True, error_model="numpy", fastmath={"contract"})
def _vjp_through_a_and_d(mx, my, mz, bx, by, bz, vx, vy, vz, alpha, pref):
    """The part of the vector-Jacobian product of f = -pref (a + alpha d), a = m x B, d = m x a that every
    reference direction shares: the cotangent v of f taken back through d and a to (g_m, g_B) (g_m without the
    terms of B's own dependence on m). For c = u x w the cotangents are g_u = w x g_c and g_w = g_c x u."""
    ax = my * bz - mz * by
    ay = mz * bx - mx * bz
    az = mx * by - my * bx
    # cotangents of a and d
    gax = -pref * vx
    gay = -pref * vy
    gaz = -pref * vz
    gdx = alpha * gax
    gdy = alpha * gay
    gdz = alpha * gaz
    # d = m x a: g_m += a x g_d, g_a += g_d x m
    gmx = ay * gdz - az * gdy
    gmy = az * gdx - ax * gdz
    gmz = ax * gdy - ay * gdx
    gax += gdy * mz - gdz * my
    gay += gdz * mx - gdx * mz
    gaz += gdx * my - gdy * mx
    # a = m x B: g_m += B x g_a, g_B = g_a x m
    gmx += by * gaz - bz * gay
    gmy += bz * gax - bx * gaz
    gmz += bx * gay - by * gax
    gbx = gay * mz - gaz * my
    gby = gaz * mx - gax * mz
    gbz = gax * my - gay * mx
    return gmx, gmy, gmz, gbx, gby, gbz


@njit(inline="always", cache=True, error_model="numpy", fastmath={"contract"})
def llg_vjp_point(mx, my, mz, hx, hy, hz, vx, vy, vz, h_appl, hk_eff, hs0, alpha, pref, lam, px, py, pz, one):
    """Vector-Jacobian product of :func:`llg_point`: v^T (df/dm) and v^T (df/dh_x).

    f = -pref (a + alpha d), a = m x B, d = m x a, B = H + H_s q, q = p x m,
    H_s = H_s0/(1 + lambda m.p), H_z = hz + H_appl + H_K' m_z. For c = u x w the cotangents
    are g_u = w x g_c and g_w = g_c x u. Returns (g_mx, g_my, g_mz, g_hx).
    """
    den, hs, qx, qy, qz, bx, by, bz = _torque_field(mx, my, mz, hx, hy, hz, h_appl, hk_eff, hs0, lam, px, py, pz, one)
    gmx, gmy, gmz, gbx, gby, gbz = _vjp_through_a_and_d(mx, my, mz, bx, by, bz, vx, vy, vz, alpha, pref)
    # B = H + H_s q
    ghs = gbx * qx + gby * qy + gbz * qz
    gqx = hs * gbx
    gqy = hs * gby
    gqz = hs * gbz
    # q = p x m: g_m += g_q x p
    gmx += gqy * pz - gqz * py
    gmy += gqz * px - gqx * pz
    gmz += gqx * py - gqy * px
    # H_s = H_s0 / (1 + lambda m.p): dH_s/dm = -H_s lambda/(1 + lambda m.p) p
    c = -ghs * hs * lam * den
    gmx += c * px
    gmy += c * py
    gmz += c * pz
    # H_z = ... + H_K' m_z
    gmz += hk_eff * gbz
    return gmx, gmy, gmz, gbx


@njit(inline="always", cache=True, error_model="numpy", fastmath={"contract"})
def llg_vjp_point_along_x(mx, my, mz, hx, vx, vy, vz, h_appl, hk_eff, hs0, alpha, pref, lam, px, one):
    """:func:`llg_vjp_point` for a reference layer along x, p = (p_x, 0, 0), and no field along y or z
    (h_y = h_z = 0: the noiseless stage fields of training): the same cotangents with the terms that vanish
    dropped (about a fifth of the arithmetic, equal to round-off). With p = p_x e_x,

        m.p = p_x m_x,  q = p x m = p_x (0, -m_z, m_y),  B = (h_x, -H_s p_x m_z, H_z + H_s p_x m_y),
        g_m += g_q x p = p_x (0, g_qz, -g_qy),  g_m += c p = (c p_x, 0, 0).

    Returns (g_mx, g_my, g_mz, g_hx) as :func:`llg_vjp_point` does.
    """
    den = one / (one + lam * (mx * px))
    hs = hs0 * den
    qy = -(px * mz)
    qz = px * my
    bx = hx
    by = hs * qy
    bz = h_appl + hk_eff * mz + hs * qz
    gmx, gmy, gmz, gbx, gby, gbz = _vjp_through_a_and_d(mx, my, mz, bx, by, bz, vx, vy, vz, alpha, pref)
    # B = H + H_s q (q_x = 0)
    ghs = gby * qy + gbz * qz
    # q = p x m: g_m += g_q x p with g_q = H_s g_B
    hsp = hs * px
    gmy += hsp * gbz
    gmz -= hsp * gby
    # H_s = H_s0 / (1 + lambda m.p): dH_s/dm = -H_s lambda/(1 + lambda m.p) p
    gmx -= ghs * hs * lam * den * px
    # H_z = ... + H_K' m_z
    gmz += hk_eff * gbz
    return gmx, gmy, gmz, gbx


ReferenceAlongX = collections.namedtuple("ReferenceAlongX", ["px", "py", "pz"])
ReferenceAlongX.__doc__ = """The reference direction p = (p_x, 0, 0) as the kernels take it where p lies along x: a
type of its own, so that :func:`llg_vjp_noiseless` compiles the arithmetic of :func:`llg_vjp_point_along_x` for it (and
only that), and the generic :func:`llg_vjp_point` for a p given as an array. Indexing gives (p_x, p_y, p_z) as
for the array (:func:`reference_array`)."""


def reference_for_kernels(p: np.ndarray) -> np.ndarray | tuple:
    """The reference direction p (3,) as the gradient kernels take it: a :class:`ReferenceAlongX` of the
    array's scalar type where p_y = p_z = 0 (the seed device's in-plane reference layer), else p itself."""
    p = np.asarray(p)
    if p.shape != (3,):
        raise ValueError(f"reference direction p must have shape (3,), got {p.shape}")
    if p[1] == 0 and p[2] == 0:
        return ReferenceAlongX(p[0], p[1], p[2])
    return p


def reference_array(p):
    """p as a (3,) array inside the kernels, given a :class:`ReferenceAlongX` or an array (returned as is)."""
    return np.asarray(p)


@overload(reference_array, inline="always")
def _reference_array(p):
    if isinstance(p, types.Array):
        return lambda p: p
    return lambda p: np.array((p[0], p[1], p[2]))


def _vjp_along_x(p, mx, my, mz, hx, vx, vy, vz, h_appl, hk_eff, hs0, alpha, pref, lam, one):
    return llg_vjp_point_along_x(mx, my, mz, hx, vx, vy, vz, h_appl, hk_eff, hs0, alpha, pref, lam, p[0], one)


def _vjp_generic(p, mx, my, mz, hx, vx, vy, vz, h_appl, hk_eff, hs0, alpha, pref, lam, one):
    zero = one - one
    return llg_vjp_point(
        mx, my, mz, hx, zero, zero, vx, vy, vz, h_appl, hk_eff, hs0, alpha, pref, lam, p[0], p[1], p[2], one
    )


def llg_vjp_noiseless(p, mx, my, mz, hx, vx, vy, vz, h_appl, hk_eff, hs0, alpha, pref, lam, one):
    """v^T (df/dm), v^T (df/dh_x) at h_y = h_z = 0: :func:`llg_vjp_point_along_x` for a :class:`ReferenceAlongX`
    p, :func:`llg_vjp_point` for an array p (chosen when the kernel is compiled, by the type of p)."""
    impl = _vjp_along_x if isinstance(p, ReferenceAlongX) else _vjp_generic
    return impl(p, mx, my, mz, hx, vx, vy, vz, h_appl, hk_eff, hs0, alpha, pref, lam, one)


@overload(llg_vjp_noiseless, inline="always")
def _llg_vjp_noiseless(p, mx, my, mz, hx, vx, vy, vz, h_appl, hk_eff, hs0, alpha, pref, lam, one):
    along_x = isinstance(p, types.NamedUniTuple) and p.instance_class is ReferenceAlongX
    return _vjp_along_x if along_x else _vjp_generic


@njit(inline="always", cache=True, error_model="numpy", fastmath={"contract"})
def llg_jvp_point(mx, my, mz, hx, hy, hz, tx, ty, tz, thx, h_appl, hk_eff, hs0, alpha, pref, lam, px, py, pz, one):
    """Jacobian-vector product of :func:`llg_point`: (df/dm) t + (df/dh_x) t_hx, for a tangent (t, t_hx)."""
    den, hs, qx, qy, qz, bx, by, bz = _torque_field(mx, my, mz, hx, hy, hz, h_appl, hk_eff, hs0, lam, px, py, pz, one)
    dhs = -hs * lam * den * (tx * px + ty * py + tz * pz)
    dqx = py * tz - pz * ty
    dqy = pz * tx - px * tz
    dqz = px * ty - py * tx
    dbx = thx + dhs * qx + hs * dqx
    dby = dhs * qy + hs * dqy
    dbz = hk_eff * tz + dhs * qz + hs * dqz
    # a = m x B, da = t x B + m x dB
    ax = my * bz - mz * by
    ay = mz * bx - mx * bz
    az = mx * by - my * bx
    dax = ty * bz - tz * by + my * dbz - mz * dby
    day = tz * bx - tx * bz + mz * dbx - mx * dbz
    daz = tx * by - ty * bx + mx * dby - my * dbx
    # d = m x a, dd = t x a + m x da
    ddx = ty * az - tz * ay + my * daz - mz * day
    ddy = tz * ax - tx * az + mz * dax - mx * daz
    ddz = tx * ay - ty * ax + mx * day - my * dax
    return -pref * (dax + alpha * ddx), -pref * (day + alpha * ddy), -pref * (daz + alpha * ddz)


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def stage_jvp(ms, hx, hy, hz, t, thx, osc, lam, p, out):
    """out = (df/dm)(ms) t + (df/dh_x) thx for every oscillator; (3, B, N) arrays, hx/hy/hz/thx (B, N).

    ``out`` must not overlap an input (:func:`~stosim.physics.kernel_hints.arrays_do_not_overlap`)."""
    arrays_do_not_overlap()
    prefer_wide_vectors()
    _, n_batch, n_osc = ms.shape
    h_appl, hk_eff, hs0, alpha, pref = oscillator_rows(osc)
    px, py, pz = p[0], p[1], p[2]
    one = np.ones(1, dtype=ms.dtype)[0]
    for b in range(n_batch):
        mx, my, mz = ms[0, b], ms[1, b], ms[2, b]
        tx, ty, tz = t[0, b], t[1, b], t[2, b]
        fx, fy, fz, fh = hx[b], hy[b], hz[b], thx[b]
        ox, oy, oz = out[0, b], out[1, b], out[2, b]
        for i in range(n_osc):
            a, bb, c = llg_jvp_point(
                mx[i],
                my[i],
                mz[i],
                fx[i],
                fy[i],
                fz[i],
                tx[i],
                ty[i],
                tz[i],
                fh[i],
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
            ox[i] = a
            oy[i] = bb
            oz[i] = c
