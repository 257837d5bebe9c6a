"""One trajectory (batch 1) of a large coupled STO array: the noiseless projected RK4 fused into one loop.

At batch 1 the Ampere-law coupling field h_x = s_x @ (mu W)^T is a matrix-vector product, and for
N >~ 100 it is almost the whole cost of a step: each of the four RK4 stages streams the N x N matrix
(mu W)^T once. A (1 x N)(N x N) product through BLAS gemm, or a plain loop that reads and writes
h_x once per row of the matrix, runs at a fraction of the memory bandwidth. Here the product is

    h_i = sum_j s_j C_ji,   C = (mu W)^T,

swept in blocks of 8 rows j of C: h_i += s_j C_ji + ... + s_{j+7} C_{j+7,i}, vectorized over i, so
h is loaded and stored once per 8 rows and the loop is bound by reading C alone (the summation order
differs from BLAS's; the results agree to round-off, ~1e-16 relative per field).

C may be stored in float32 while the state is float64 (:func:`run_one` accepts either): the products are
then formed in float64 from the float32 entries (exactly: a float32 times a float64 is promoted), so the
only change is W rounded to float32 (relative 2^-24 ~ 6e-8 per entry), and the sweep reads half the
bytes. Which storage a run uses is the caller's choice (:func:`stosim.simulation.evolve`,
``coupling_dtype``).

A step can be split over threads by oscillator (:func:`run_part`; driven by
:mod:`stosim.integrate.batch1_threads`): each thread sums the fields of its oscillators over all j, so its
share of C is a block of columns, and the threads meet at a spinning barrier after every stage
(:mod:`stosim.integrate.barrier`) instead of opening a parallel region per product, which costs more than
the product itself when the cores are shared (measured: 6-11 ms per region instead of 0.1-0.3 ms of work at
N = 1000 under a load average of 5 on 2 cores). Every field sums over j in the same order in every split,
so one thread and several give the same trajectory bit for bit.

The scheme is that of :func:`stosim.integrate.sto_kernels.run_small` (classical RK4, then projection
onto |m| = 1); the right-hand side is :func:`stosim.physics.llg.llg_point` (docs/physics.md section 1).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from stosim.integrate.barrier import wait_at_barrier
from stosim.physics.llg import llg_point, llg_point_short_chain

__all__ = ["ROW_BLOCK", "coupling_field", "coupling_field_part", "run_one", "run_part", "run_uncoupled"]

ROW_BLOCK = 8  # rows of C per sweep over h


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def coupling_field_part(sx, coupling_t, use_coupling, hx, lo, hi):
    """hx[i] = sum_j sx[j] coupling_t[j, i] (Oe) for lo <= i < hi: the fields of one thread's oscillators.

    Every field sums over all j in the same order (blocks of 8 rows, then the rest), whatever the range,
    so the fields of a split product equal those of the whole one bit for bit. The loops run over views
    from index 0: an index the compiler cannot prove non-negative gets a wrap-around test per access,
    which keeps the loop from vectorizing."""
    n = sx.shape[0]
    h = hx[lo:hi]
    width = h.shape[0]
    for i in range(width):
        h[i] = 0.0
    if not use_coupling:
        return
    c = coupling_t
    j = 0
    while j + 8 <= n:  # rows as contiguous views c[j, lo:hi] (c[:, lo:hi][j] would be strided)
        s0, s1, s2, s3 = sx[j], sx[j + 1], sx[j + 2], sx[j + 3]
        s4, s5, s6, s7 = sx[j + 4], sx[j + 5], sx[j + 6], sx[j + 7]
        c0, c1, c2, c3 = c[j, lo:hi], c[j + 1, lo:hi], c[j + 2, lo:hi], c[j + 3, lo:hi]
        c4, c5, c6, c7 = c[j + 4, lo:hi], c[j + 5, lo:hi], c[j + 6, lo:hi], c[j + 7, lo:hi]
        for i in range(width):
            h[i] += (s0 * c0[i] + s1 * c1[i] + s2 * c2[i] + s3 * c3[i]) + (
                s4 * c4[i] + s5 * c5[i] + s6 * c6[i] + s7 * c7[i]
            )
        j += 8
    while j < n:
        sj = sx[j]
        cj = c[j, lo:hi]
        for i in range(width):
            h[i] += sj * cj[i]
        j += 1


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def coupling_field(sx, coupling_t, use_coupling, hx):
    """hx = sx @ coupling_t (Oe) for one sample: sx (N,), coupling_t (N, N) = (mu W)^T, float32 or float64.

    Products and sums are in the precision of ``sx`` and ``hx`` (float32 entries of C are promoted)."""
    coupling_field_part(sx, coupling_t, use_coupling, hx, 0, sx.shape[0])


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def _stage(state, hx, osc, lam, p, one, x0, w, a_next, acc, keep, nxt, lo, hi):
    """k = f(state, hx); acc = keep acc + w k; nxt = x0 + a_next k (all (3, N); hx (N,) in Oe), for lo <= i < hi."""
    zero = one - one
    for i in range(lo, hi):
        kx, ky, kz = llg_point(
            state[0, i],
            state[1, i],
            state[2, i],
            hx[i],
            zero,
            zero,
            osc[0, i],
            osc[1, i],
            osc[2, i],
            osc[3, i],
            osc[4, i],
            lam,
            p[0],
            p[1],
            p[2],
            one,
        )
        acc[0, i] = keep * acc[0, i] + w * kx
        acc[1, i] = keep * acc[1, i] + w * ky
        acc[2, i] = keep * acc[2, i] + w * kz
        nxt[0, i] = x0[0, i] + a_next * kx
        nxt[1, i] = x0[1, i] + a_next * ky
        nxt[2, i] = x0[2, i] + a_next * kz


@njit(cache=True, nogil=True)
def _meet(counter, n_threads, generation):
    """The next barrier of a thread (none with one thread); returns its generation number, or -1 when another
    thread has failed (``counter[1]`` set) and the run is abandoned."""
    if n_threads > 1 and wait_at_barrier(counter, n_threads, generation + 1):
        return -1
    return generation + 1


@njit(cache=True, nogil=True)
def _publish(src, shared, lo, hi):
    """shared[lo:hi] = src[lo:hi]: a thread's part of the x components every thread's fields are summed from."""
    for i in range(lo, hi):
        shared[i] = src[i]


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def _stage_shared(x_in, state, nxt, x_out, w, a_next, keep, kernel, hx, x0, acc, counter, n_threads, gen, lo, hi):
    """One RK4 stage of a thread: fields from the shared x components ``x_in``, k = f(state), acc = keep acc + w k,
    nxt = x0 + a_next k, nxt's x components into the shared ``x_out``; then the barrier. Returns _meet's value.

    Writing ``x_out`` is safe: every thread last read it before the latest barrier (a stage or more ago)."""
    coupling_t, use_coupling, osc, lam, p, one = kernel
    coupling_field_part(x_in, coupling_t, use_coupling, hx, lo, hi)
    _stage(state, hx, osc, lam, p, one, x0, w, a_next, acc, keep, nxt, lo, hi)
    _publish(nxt[0], x_out, lo, hi)
    return _meet(counter, n_threads, gen)


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def run_part(
    m, coupling_t, use_coupling, osc, lam, p, dt, n_steps, save_every, save_offset, traj, shared_x, fail, counter,
    tid, n_threads, lo, hi,
):  # fmt: skip
    """Thread ``tid`` of ``n_threads`` running the noiseless projected RK4 of one sample for oscillators lo <= i < hi.

    Shared by the threads: m (3, 1, N) and traj (S, 3, 1, N) as in :func:`run_one`; ``shared_x`` (2, N), the x
    components of the stage states (two buffers used in turn); ``fail`` (n_threads, 2) int64, -1 on entry, receives
    (step, oscillator) of the thread's first non-finite state; ``counter`` (2,) int64, zeros on entry, the
    barrier's (:func:`stosim.integrate.barrier.wait_at_barrier`; a thread left alone returns without writing m).
    Each thread computes the fields and stages of its oscillators from the whole stage state (all j), and the
    threads meet after every stage (4 barriers per step): a step is the same arithmetic as :func:`run_one`'s, so
    the results are equal bit for bit whatever the split. All threads stop after the same step when any thread's
    state became non-finite; ``m`` then holds the state before that step.

    The stage states, their sum and the fields are the thread's own arrays, allocated here: the compiler then
    knows that the field sweep's stores do not alias the matrix it reads, and vectorizes it without run-time
    checks (with the fields passed in, it did not: 1.7x slower per product).
    """
    dtp = m.dtype
    n_osc = m.shape[2]
    consts = np.array([0.5, 1.0 / 6.0, 1.0 / 3.0, 0.0, 1.0]).astype(dtp)  # in working precision
    half, sixth, third, zero, one = dt * consts[0], consts[1], consts[2], consts[3], consts[4]
    work = np.zeros((4, 3, n_osc), dtype=dtp)
    hx = np.empty(n_osc, dtype=dtp)
    x0, s, s2, acc = work[0], work[1], work[2], work[3]
    xa, xb = shared_x[0], shared_x[1]
    kernel = (coupling_t, use_coupling, osc, lam, p, one)
    for c in range(3):
        for i in range(lo, hi):
            x0[c, i] = m[c, 0, i]
    _publish(x0[0], xa, lo, hi)
    gen = _meet(counter, n_threads, 0)
    for k in range(n_steps):
        if gen < 0:  # another thread failed (an exception, not a non-finite state): stop without writing m
            return
        gen = _stage_shared(xa, x0, s, xb, sixth, half, zero, kernel, hx, x0, acc, counter, n_threads, gen, lo, hi)
        if gen < 0:
            return
        gen = _stage_shared(xb, s, s2, xa, third, half, one, kernel, hx, x0, acc, counter, n_threads, gen, lo, hi)
        if gen < 0:
            return
        gen = _stage_shared(xa, s2, s, xb, third, dt, one, kernel, hx, x0, acc, counter, n_threads, gen, lo, hi)
        if gen < 0:
            return
        coupling_field_part(xb, coupling_t, use_coupling, hx, lo, hi)
        # stage 4 and the projection: x = (x0 + h (acc + k4/6)) / |...|, into s2 (x0 kept until checked)
        _stage(s, hx, osc, lam, p, one, x0, sixth, zero, acc, one, s2, lo, hi)
        bad = -1
        for i in range(lo, hi):
            x = x0[0, i] + dt * acc[0, i]
            y = x0[1, i] + dt * acc[1, i]
            z = x0[2, i] + dt * acc[2, i]
            inv = one / np.sqrt(x * x + y * y + z * z)
            s2[0, i] = x * inv
            s2[1, i] = y * inv
            s2[2, i] = z * inv
            norm2 = s2[0, i] * s2[0, i] + s2[1, i] * s2[1, i] + s2[2, i] * s2[2, i]
            if bad < 0 and not abs(norm2 - one) < 0.5:  # non-finite, overflowed or vanished
                bad = i
        if bad >= 0:
            fail[tid, 0] = k
            fail[tid, 1] = bad
        _publish(s2[0], xa, lo, hi)  # the next step's state
        gen = _meet(counter, n_threads, gen)  # every thread's part of xa and its fail written
        if gen < 0:
            return
        stop = False
        for t in range(n_threads):
            stop = stop or fail[t, 0] == k
        if stop:
            break
        for c in range(3):
            for i in range(lo, hi):
                x0[c, i] = s2[c, i]
        step = save_offset + k + 1
        if step % save_every == 0:
            for c in range(3):
                for i in range(lo, hi):
                    traj[step // save_every - 1, c, 0, i] = x0[c, i]
    for c in range(3):
        for i in range(lo, hi):
            m[c, 0, i] = x0[c, i]


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def run_one(m, coupling_t, use_coupling, osc, lam, p, dt, n_steps, save_every, save_offset, traj):
    """Noiseless projected RK4 of one sample, in place, on the calling thread: m (3, 1, N), traj (S, 3, 1, N).

    Per step: k1 = f(x), k2 = f(x + h/2 k1), k3 = f(x + h/2 k2), k4 = f(x + h k3),
    x <- (x + h (k1 + 2 k2 + 2 k3 + k4)/6) / |...|, each f with the coupling field of its stage state.
    ``traj`` receives x after global step s = save_offset + k + 1 whenever s % save_every == 0, at index
    s // save_every - 1. Returns (-1, -1), or (step k, oscillator i) where the state became non-finite
    (that step's state is not written back; m holds the state before it).
    """
    n_osc = m.shape[2]
    shared_x = np.empty((2, n_osc), dtype=m.dtype)
    fail = np.full((1, 2), -1, dtype=np.int64)
    counter = np.zeros(2, dtype=np.int64)
    run_part(
        m, coupling_t, use_coupling, osc, lam, p, dt, n_steps, save_every, save_offset, traj, shared_x, fail, counter,
        0, 1, 0, n_osc,
    )  # fmt: skip
    return fail[0, 0], fail[0, 1]


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def run_uncoupled(m, osc, lam, p, dt, n_steps, save_every, save_offset, traj):
    """Noiseless projected RK4 without coupling (mu W = 0), in place: m (3, B, N), traj (S, 3, B, N).

    Every oscillator then evolves on its own, so each runs its whole time loop with its state in registers
    (the RK4 of :func:`stosim.integrate.sto_kernels.run_small`, with the right-hand side arranged for a short
    dependent chain: :func:`stosim.physics.llg.llg_point_short_chain`, equal to round-off). Returns (-1, -1), or
    (step k, flat index b * N + i) of the first oscillator (in that order) whose state became non-finite.
    """
    _, n_batch, n_osc = m.shape
    consts = np.array([0.5, 1.0 / 6.0, 1.0 / 3.0, 0.0, 1.0]).astype(m.dtype)
    half, sixth, third, zero, one = dt * consts[0], consts[1], consts[2], consts[3], consts[4]
    px, py, pz = p[0], p[1], p[2]
    first_k, first_bad = -1, -1
    for b in range(n_batch):
        for i in range(n_osc):
            h_appl, hk_eff, hs0, alpha, pref = osc[0, i], osc[1, i], osc[2, i], osc[3, i], osc[4, i]
            x0, y0, z0 = m[0, b, i], m[1, b, i], m[2, b, i]
            for k in range(n_steps):
                kx, ky, kz = llg_point_short_chain(
                    x0, y0, z0, zero, zero, zero, h_appl, hk_eff, hs0, alpha, pref, lam, px, py, pz, one
                )
                ax, ay, az = sixth * kx, sixth * ky, sixth * kz
                sx, sy, sz = x0 + half * kx, y0 + half * ky, z0 + half * kz
                kx, ky, kz = llg_point_short_chain(
                    sx, sy, sz, zero, zero, zero, h_appl, hk_eff, hs0, alpha, pref, lam, px, py, pz, one
                )
                ax += third * kx
                ay += third * ky
                az += third * kz
                sx, sy, sz = x0 + half * kx, y0 + half * ky, z0 + half * kz
                kx, ky, kz = llg_point_short_chain(
                    sx, sy, sz, zero, zero, zero, h_appl, hk_eff, hs0, alpha, pref, lam, px, py, pz, one
                )
                ax += third * kx
                ay += third * ky
                az += third * kz
                sx, sy, sz = x0 + dt * kx, y0 + dt * ky, z0 + dt * kz
                kx, ky, kz = llg_point_short_chain(
                    sx, sy, sz, zero, zero, zero, h_appl, hk_eff, hs0, alpha, pref, lam, px, py, pz, one
                )
                x = x0 + dt * (ax + sixth * kx)
                y = y0 + dt * (ay + sixth * ky)
                z = z0 + dt * (az + sixth * kz)
                inv = one / np.sqrt(x * x + y * y + z * z)
                x0, y0, z0 = x * inv, y * inv, z * inv
                if not abs(x0 * x0 + y0 * y0 + z0 * z0 - one) < 0.5:  # non-finite, overflowed or vanished
                    if first_k < 0 or k < first_k:
                        first_k, first_bad = k, b * n_osc + i
                    break
                step = save_offset + k + 1
                if step % save_every == 0:
                    j = step // save_every - 1
                    traj[j, 0, b, i] = x0
                    traj[j, 1, b, i] = y0
                    traj[j, 2, b, i] = z0
            m[0, b, i], m[1, b, i], m[2, b, i] = x0, y0, z0
    return first_k, first_bad
