"""Throughput of stosim's coupled-STO time stepping against plain NumPy and torchdiffeq, and
against the machine's matrix-multiply peak, all measured in one run.

What is measured
----------------
The unit is **device-steps per second**: batch x N x time steps advanced per wall-clock second
(one "device-step" = one oscillator advanced by one RK4 step). Higher is better.

Three implementations of the same deterministic RK4 step of the coupled LLG-Slonczewski array
(docs/physics.md sections 1 and 3) are timed:

1. ``stosim``      -- ``stosim.evolve(array, m0, n_steps, dt_s, dtype=...)`` (Numba kernels,
   ``prange`` over batch chunks, single-threaded BLAS per chunk). JIT warm-up excluded.
2. ``numpy-rk4``   -- a plain, vectorized NumPy RK4 loop (component arrays (B, N); coupling
   field H_x = m_x @ (mu W)^T; projection onto |m| = 1 after each step, as stosim does) whose
   right-hand side is the Python body of stosim's Numba kernel (``llg_point.py_func``, the one
   definition of the formula) evaluated on NumPy arrays. Its float64 result is checked against stosim's
   (max |diff| < 1e-9 after the run) -- a benchmark of a wrong answer is worthless.
3. ``torchdiffeq`` -- ``stosim.physics.torch_llg.STORightHandSide`` stepped by
   ``torchdiffeq.odeint(func, m0, torch.tensor([0, T]), method="rk4", options={"step_size": dt})``
   under ``torch.no_grad()``. Note torchdiffeq's "rk4" is Kutta's 3/8 rule and it does not
   project onto |m| = 1, so its result differs from stosim's by the truncation error (printed
   for information). The steps it actually took are counted (right-hand-side calls / 4).

Cases:

(a) N = 200, batch 256, T = 300 ps, dt = 1 ps (the seed study's MNIST layer), float64 and float32.
(b) batch 1 (de Jong et al.'s workload): N in {1, 10, 100, 1000, 2500}, 4999 RK4 steps of 10 ps,
    float64 (``batch1_device_steps_per_s``). mu = 500 Oe up to N = 100; for N = 1000 and 2500 mu
    is halved until the step-size check accepts 10 ps (at 500 Oe the coupling field could turn m by
    up to 2.7 rad per step at N = 1000); a step costs the same at any mu. stosim runs 4999 steps
    (N = 2500: 1000 steps unless --full; a rate is a rate); the slow reference paths run fewer
    steps (500; 200 with --quick), so the figures compare directly but the reference figures come
    from shorter runs. NumPy only for N <= 100. Besides ``stosim.evolve`` (which includes its
    per-call checks and set-up, ~20 us at N = 1) the Numba time loop alone is timed
    (``run_chunk``, ``batch1_kernel_device_steps_per_s``, N <= 100; for one sample evolve runs the batch-1 loops
    of ``stosim.integrate.batch1`` instead, faster at N = 1). Both are timed in blocks that repeat a run for at
    least ``PEER_BLOCK_S`` (0.2 s), as in case (d): a single call of 4999 steps at N = 1 lasts 0.4 ms and,
    started right after the pause between tasks, runs on a core that is still waking up (about half the
    sustained rate on this project's machine); that figure is reported too
    (``batch1_single_call_device_steps_per_s``, N <= 100). NumPy is checked against stosim after 100
    steps (1 ns): the array is chaotic, and round-off differences (1e-15) grow over nanoseconds,
    which says nothing about correctness.
(c) Matrix-multiply throughput (GFLOP/s, 2 M K N flops per product) of the coupling product
    shapes (64 x 200)(200 x 200) and (256 x 200)(200 x 200), float64 and float32, by: NumPy with
    1 BLAS thread, torch with 1 thread, NumPy/torch with k threads, a Numba ``prange`` over k
    row-chunks each calling ``np.dot`` under single-threaded BLAS, and the kernels' own gemm
    (:mod:`stosim.integrate.gemm`: torch's MKL where exported, else SciPy's; ``gemm_provider``) on
    stosim's 32-row chunks and chunk threads.
    The **peak** of a dtype is the best figure over methods, both shapes and all repeats (the
    best this machine achieved with the k cores stosim uses). From it, the matmul-bound limit of
    the coupled step is ``peak / (4 (2N + 60))`` device-steps/s (a forward RK4 step costs about
    4 (2N + 60) flops per device) and ``fraction_of_matmul_peak`` = stosim's
    device-steps/s (case a, float64) / that limit. 1.0 would mean stosim runs at the speed of its
    matrix products alone, with the pointwise LLG work free.

(d) With ``--peers-dir DIR`` (a local copy of github.com/mathowl/reservoir_acceleration, de Jong et al.,
    arXiv:2312.01121; it is not a dependency): ``stosim.evolve`` at batch 1 beside their NumPy baseline
    (``Base``: ``CoupledLlg.differential`` stepped by ``RungeKutta.run``), Numba and parallel-Numba codes
    (``frk4`` of ``test_time_numba-vanilla.py`` / ``-parallel.py``), loaded and run unchanged in this
    process, in interleaved rounds, N in ``--sizes`` (1, 10, 100, 1000, 2500), float64, 10 ps steps, their
    workload: mu = 1 Oe (their W m_x field in Oe, spectral radius 1), the same W (stosim's) and start
    (theta = phi = 1 deg). stosim runs 4999 steps (N = 2500: 1000 unless --full); theirs run
    ``PEER_STEPS`` (4999 for N <= 10 down to 100 at N = 2500); each timed block repeats a run for at least
    0.2 s. Their NumPy gets k BLAS threads; their parallel code k Numba threads; stosim runs batch 1 on
    one thread, or from N = 256 split over the k threads when that measures faster
    (:mod:`stosim.integrate.batch1_threads`). Reported: device-steps/s (median over rounds), the
    ratio stosim / best of theirs in each round (median and min over rounds: ``batch1_ratio_vs_best_dejong``;
    with W stored in float32, N >= 1000: ``batch1_ratio_vs_best_dejong_float32_w``),
    and the model check: dm/dt of each of their codes against stosim's at random states (<= 1e-12
    relative), and, for N <= 100, their Numba trajectory against stosim's at dt and dt/4 (their RK4 does
    not project onto |m| = 1, so the two differ by discretization error, which must shrink ~4^4).
    ``--peers-only`` runs case (d) alone.

How
---
k = ``numba.get_num_threads()``; torch gets ``torch.set_num_threads(k)`` and NumPy's BLAS is
limited to k threads (threadpoolctl) for the NumPy RK4 path. The machine is shared and noisy,
so every measurement is repeated R times (5; 2 with --quick) and the repetitions are
*interleaved*: each round runs every path (and the matmul blocks) once, in a rotated order,
with a short pause between tasks (BLAS worker threads spin for a while after a call). Case (a)/(b)
figures are medians over rounds (min and max shown); matmul figures are the best of the
rounds (a peak is a best case). The load average before and after is printed; if another
process used the cores meanwhile, all figures drop, and the spread (min .. max) widens.

How to read the numbers
-----------------------
- ``stosim/torchdiffeq`` and ``stosim/numpy`` > 1: stosim is that many times faster.
- ``fraction_of_matmul_peak`` close to 1: stosim is limited by the coupling product; well below
  1: the pointwise work, chunking, threading or per-call overhead costs more than the products.
- Batch-1 figures for small N measure per-step overhead (nothing to vectorize over); there the
  Python-level reference paths are dominated by interpreter/dispatch cost per operation.

Usage: ``python benchmarks/bench_simulate.py [--json] [--quick] [--rounds R] [--peers-dir DIR [--peers-only]]``.
``--json`` adds one final line with a JSON object (``device_steps_per_s``, ``torchdiffeq_device_steps_per_s``,
``numpy_device_steps_per_s``, ``ratio_vs_torchdiffeq``, ``ratio_vs_torchdiffeq_batch1_n100``,
``fraction_of_matmul_peak``, the ``*_float32`` figures, ``batch1`` per N, thread counts, matmul
GFLOP/s and peaks, agreement diffs, load averages). ``--quick`` is a smoke run (2 rounds,
case (a) 100 steps, case (b) stosim 1000 / reference 200 steps): its figures are not the
benchmark's. The default run takes about 3-5 minutes on 2 shared cores (less when idle). Exit status 1 if the
NumPy/stosim agreement check fails.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numba
import numpy as np
import torch
from threadpoolctl import threadpool_info, threadpool_limits
from torchdiffeq import odeint

import stosim
from stosim.integrate.gemm import GEMM_PROVIDER, gemm_into
from stosim.integrate.threads import single_threaded_blas
from stosim.physics.array import check_time_step
from stosim.physics.llg import llg_point, oscillator_rows
from stosim.physics.torch_llg import STORightHandSide

AGREEMENT_TOL = 1e-9
CHECK_STEPS_B = 100  # case (b) agreement horizon (1 ns at 10 ps); round-off grows chaotically over longer runs
PAUSE_S = 0.1  # between timed tasks: lets BLAS/OpenMP worker threads stop spinning
MATMUL_BLOCK_S = 0.1  # duration of one matmul timing block
COUPLING_OE = 500.0

DTYPES = {"float64": (np.float64, torch.float64), "float32": (np.float32, torch.float32)}


# ----------------------------------------------------------------------------- reference paths


def numpy_rk4(
    m0: np.ndarray, n_steps: int, dt_s: float, coupling_t: np.ndarray, osc: np.ndarray, lam: float, p, dtype
) -> np.ndarray:
    """Plain NumPy RK4 of the coupled array (docs/physics.md 1 + 3), projected onto |m| = 1 each step.

    m0 (B, N, 3); ``coupling_t`` = (mu W)^T in Oe; ``osc`` rows H_appl, H_K - 4 pi M, H_s0 (Oe),
    alpha, gamma/(1 + alpha^2) (rad/(Oe s)). Returns the final state (B, N, 3).
    """
    dt = np.dtype(dtype).type
    ct = np.ascontiguousarray(coupling_t, dtype=dtype)
    h_appl, hk_eff, hs0, alpha, pref = oscillator_rows.py_func(np.asarray(osc, dtype=dtype))
    px, py, pz = (dt(c) for c in p)
    lam = dt(lam)
    one, zero = dt(1.0), dt(0.0)
    h, half = dt(dt_s), dt(0.5 * dt_s)

    def rhs(m):  # m (3, B, N) -> dm/dt (3, B, N) in 1/s
        mx, my, mz = m
        hx = mx @ ct  # Ampere-law coupling field along x (Oe)
        # the LLG-Slonczewski formula itself: the Python body of stosim's Numba kernel, on NumPy arrays
        return np.stack(
            llg_point.py_func(mx, my, mz, hx, zero, zero, h_appl, hk_eff, hs0, alpha, pref, lam, px, py, pz, one)
        )

    m = np.ascontiguousarray(np.moveaxis(np.asarray(m0, dtype=dtype), -1, 0))  # (3, B, N)
    for _ in range(n_steps):
        k1 = rhs(m)
        k2 = rhs(m + half * k1)
        k3 = rhs(m + half * k2)
        k4 = rhs(m + h * k3)
        m = m + h * (k1 / 6 + k2 / 3 + k3 / 3 + k4 / 6)
        m /= np.sqrt(m[0] * m[0] + m[1] * m[1] + m[2] * m[2])
    return np.ascontiguousarray(np.moveaxis(m, 0, -1))


class _Counting(torch.nn.Module):
    """Wraps f(t, m) and counts its calls (torchdiffeq's rk4 makes 4 per step)."""

    def __init__(self, f: torch.nn.Module) -> None:
        super().__init__()
        self.f = f
        self.calls = 0

    def forward(self, t, m):
        self.calls += 1
        return self.f(t, m)


# ----------------------------------------------------------------------------- timed tasks


class Task:
    """One timed configuration; ``run()`` returns (seconds, device-steps done, final state)."""

    def __init__(self, name: str, fn: Callable[[], tuple[float, int, np.ndarray]]) -> None:
        self.name = name
        self.fn = fn
        self.rates: list[float] = []
        self.final: np.ndarray | None = None

    def run(self) -> None:
        seconds, device_steps, final = self.fn()
        self.rates.append(device_steps / seconds)
        self.final = final

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


def stosim_task(array, m0, n_steps, dt_s, np_dtype, coupling_dtype=None):
    n_dev = m0.shape[0] * m0.shape[1]

    def fn():
        t0 = time.perf_counter()
        final, _, _ = stosim.evolve(array, m0, n_steps, dt_s, dtype=np_dtype, coupling_dtype=coupling_dtype)
        return time.perf_counter() - t0, n_dev * n_steps, final

    return fn


def numpy_task(array, m0, n_steps, dt_s, np_dtype, blas_threads):
    dev = array.device
    ct, osc = array.coupling_transposed_oe(), array.oscillator_parameters()
    n_dev = m0.shape[0] * m0.shape[1]

    def fn():
        with threadpool_limits(limits=blas_threads, user_api="blas"):
            t0 = time.perf_counter()
            final = numpy_rk4(m0, n_steps, dt_s, ct, osc, dev.torque_asymmetry, dev.reference_direction, np_dtype)
            return time.perf_counter() - t0, n_dev * n_steps, final

    return fn


def torch_task(array, m0, n_steps, dt_s, torch_dtype):
    dev = array.device
    func = _Counting(
        STORightHandSide(
            array.coupling_transposed_oe(),
            array.oscillator_parameters(),
            dev.torque_asymmetry,
            dev.reference_direction,
            torch_dtype,
        )
    )
    y0 = torch.as_tensor(m0, dtype=torch_dtype)
    t = torch.tensor([0.0, n_steps * dt_s], dtype=torch.float64)
    n_dev = m0.shape[0] * m0.shape[1]

    def fn():
        func.calls = 0
        with torch.no_grad():
            t0 = time.perf_counter()
            y = odeint(func, y0, t, method="rk4", options={"step_size": dt_s})
            seconds = time.perf_counter() - t0
        steps = func.calls // 4
        return seconds, n_dev * steps, y[-1].numpy()

    return fn


def kernel_task(array, m0, n_steps, dt_s):
    """The batched Numba time loop alone (``run_chunk`` on one chunk), without evolve's checks and set-up. For one
    sample ``stosim.evolve`` runs its batch-1 loops instead (``stosim.integrate.batch1``; at N = 1 the uncoupled
    loop, about twice as fast as this one), so this figure is not a bound on evolve's."""
    from stosim.integrate.sto_kernels import METHOD_RK4, run_chunk

    n = m0.shape[1]
    osc = np.ascontiguousarray(array.oscillator_parameters())
    ct = np.ascontiguousarray(array.coupling_transposed_oe())
    use = bool(array.coupling_oe != 0.0 and np.any(array.coupling_matrix))
    p = np.asarray(array.device.reference_direction, dtype=np.float64)
    lam = float(array.device.torque_asymmetry)
    dummy = np.zeros((1, 3, 1, 1))
    traj = np.zeros((1, 3, m0.shape[0], n))
    start = np.ascontiguousarray(np.moveaxis(m0, -1, 0))

    def fn():
        m = start.copy()
        with single_threaded_blas():
            t0 = time.perf_counter()
            run_chunk(
                m,
                ct,
                use,
                osc,
                lam,
                p,
                dt_s,
                n_steps,
                METHOD_RK4,
                n_steps + 1,
                0,
                traj,
                dummy,
                False,
                np.zeros(n),
                dummy,
                False,
                0.0,
                np.zeros(3),
            )
            seconds = time.perf_counter() - t0
        return seconds, m0.shape[0] * n * n_steps, np.ascontiguousarray(np.moveaxis(m, 0, -1))

    return fn


def batch1_array(dev, n: int, dt_s: float) -> stosim.STOArray:
    """The array of case (b): mu = 500 Oe, halved until the step-size check accepts ``dt_s``."""
    mu = COUPLING_OE
    while True:
        arr = stosim.STOArray.generate(dev, n, mu, seed=1)
        try:
            check_time_step(arr, dt_s)
            return arr
        except ValueError:
            mu /= 2


def run_interleaved(tasks: list[Task], rounds: int, extra: Callable[[int], None] | None = None) -> None:
    """Run every task once per round, in an order rotated each round; ``extra(round)`` after."""
    for r in range(rounds):
        k = r % len(tasks)
        for task in tasks[k:] + tasks[:k]:
            task.run()
            time.sleep(PAUSE_S)
        if extra is not None:
            extra(r)


# ----------------------------------------------------------------------------- matmul peak


@numba.njit(parallel=True, cache=False)
def _chunked_dot(a, w, out, reps):
    """For each chunk c in parallel: ``reps`` times out[c] = a[c] @ w (np.dot -> BLAS gemm)."""
    for c in numba.prange(a.shape[0]):
        for _ in range(reps):
            np.dot(a[c], w, out[c])


@numba.njit(nogil=True, cache=False)
def _gemm_reps(a, w, out, reps):
    """``reps`` times out = a @ w through the kernels' gemm (stosim.integrate.gemm)."""
    for _ in range(reps):
        gemm_into(a, w, out)


def _time_loop(call: Callable[[], None], target_s: float) -> tuple[float, int]:
    call()
    n, t0 = 0, time.perf_counter()
    while True:
        call()
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= target_s:
            return elapsed, n


class MatmulBench:
    """GFLOP/s of (M x K)(K x K) products by several methods; keeps the best over repeats."""

    def __init__(self, k_threads: int, w64: np.ndarray, shapes=((64, 200), (256, 200))) -> None:
        self.k = k_threads
        self.best: dict[tuple[str, str, str], float] = {}
        rng = np.random.default_rng(7)
        self.cases = []
        for m_rows, n in shapes:
            for dname, (npd, _) in DTYPES.items():
                a = rng.standard_normal((m_rows, n)).astype(npd)
                w = np.ascontiguousarray(w64[:n, :n], dtype=npd)
                self.cases.append((f"({m_rows}x{n})({n}x{n})", dname, a, w))
        self.methods = {
            "numpy-1thread": self._numpy1,
            "torch-1thread": self._torch1,
            f"numpy-{k_threads}threads": self._numpyk,
            f"torch-{k_threads}threads": self._torchk,
            f"numba-prange-{k_threads}chunks": lambda a, w: self._numba(a, w, self.k),
            "stosim-gemm-32rows (the kernels' gemm, chunks and threads)": self._kernels_gemm,
        }
        self.warm_up()

    # each method returns seconds per product (one block of ~MATMUL_BLOCK_S)
    def _numpy1(self, a, w):
        out = np.empty((a.shape[0], w.shape[1]), a.dtype)
        with threadpool_limits(limits=1, user_api="blas"):
            s, n = _time_loop(lambda: np.dot(a, w, out=out), MATMUL_BLOCK_S)
        return s / n

    def _numpyk(self, a, w):
        out = np.empty((a.shape[0], w.shape[1]), a.dtype)
        with threadpool_limits(limits=self.k, user_api="blas"):
            s, n = _time_loop(lambda: np.dot(a, w, out=out), MATMUL_BLOCK_S)
        return s / n

    def _torch(self, a, w, threads):
        ta, tw = torch.from_numpy(a), torch.from_numpy(w)
        out = torch.empty((a.shape[0], w.shape[1]), dtype=ta.dtype)
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            s, n = _time_loop(lambda: torch.mm(ta, tw, out=out), MATMUL_BLOCK_S)
        finally:
            torch.set_num_threads(old)
        return s / n

    def _torch1(self, a, w):
        return self._torch(a, w, 1)

    def _torchk(self, a, w):
        return self._torch(a, w, self.k)

    @staticmethod
    def _chunked(a, w, chunks, run_reps) -> float:
        """Seconds per full product of ``run_reps(ac, out, reps)`` over ``chunks`` row chunks of ``a``: timed
        once for 3 repeats, then for as many as fill MATMUL_BLOCK_S."""
        rows = a.shape[0] // chunks
        ac = np.ascontiguousarray(a[: rows * chunks].reshape(chunks, rows, a.shape[1]))
        out = np.empty((chunks, rows, w.shape[1]), a.dtype)

        def run(reps: int) -> float:
            t0 = time.perf_counter()
            run_reps(ac, out, reps)
            return time.perf_counter() - t0

        per = run(3) / 3
        reps = max(3, int(MATMUL_BLOCK_S / max(per, 1e-7)))
        return run(reps) / reps * (a.shape[0] / (rows * chunks))  # per full product

    def _kernels_gemm(self, a, w):
        """The kernels' own product (stosim.integrate.gemm, provider GEMM_PROVIDER) on 32-row chunks run by
        the kernels' chunk threads (min(chunks, k) threads, one BLAS thread each)."""
        from stosim.integrate.chunks import for_each_chunk

        chunks = max(1, a.shape[0] // 32)

        def run_reps(ac, out, reps):
            for_each_chunk(chunks, lambda c: _gemm_reps(ac[c], w, out[c], reps))

        return self._chunked(a, w, chunks, run_reps)

    def _numba(self, a, w, chunks):
        with single_threaded_blas():
            return self._chunked(a, w, chunks, lambda ac, out, reps: _chunked_dot(ac, w, out, reps))

    def warm_up(self) -> None:
        for _, _, a, w in self.cases:  # compiles the Numba kernel for both dtypes
            ac = a.reshape(1, *a.shape)
            with single_threaded_blas():
                _chunked_dot(ac, w, np.empty((1, a.shape[0], w.shape[1]), a.dtype), 1)
                _gemm_reps(a, w, np.empty((a.shape[0], w.shape[1]), a.dtype), 1)

    def round(self, r: int) -> None:
        names = list(self.methods)
        k = r % len(names)
        for name in names[k:] + names[:k]:
            for shape, dname, a, w in self.cases:
                sec = self.methods[name](a, w)
                gflops = 2.0 * a.shape[0] * a.shape[1] * w.shape[1] / sec / 1e9
                key = (name, shape, dname)
                self.best[key] = max(self.best.get(key, 0.0), gflops)
            time.sleep(PAUSE_S)

    def peak(self, dname: str, single_thread_only: bool = False) -> tuple[float, str, str]:
        cands = [
            (g, name, shape)
            for (name, shape, d), g in self.best.items()
            if d == dname and (not single_thread_only or "1thread" in name)
        ]
        return max(cands)


# ----------------------------------------------------------------------------- de Jong et al.'s codes

DEJONG_VANILLA = "test_time_numba-vanilla.py"
DEJONG_PARALLEL = "test_time_numba-parallel.py"
DEJONG_MU_OE = 1.0  # their coupling field is W m_x in Oe with spectral radius 1: mu = 1 Oe
DEJONG_THETA0_RAD = math.radians(1.0)  # their start: every oscillator at theta = phi = 1 deg
PEER_STEPS = {1: 4999, 10: 4999, 100: 1000, 1000: 200, 2500: 100}  # steps of their codes per round
PEER_STEPS_QUICK = {1: 1000, 10: 1000, 100: 200, 1000: 40, 2500: 20}
PEER_RHS_TOL = 1e-12  # max |f_theirs - f_stosim| / max |f_stosim| of dm/dt at random states
PEER_MIN_SHRINK = 50.0  # trajectory difference at dt over that at dt/4 (two 4th-order methods: ~256)


def _load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class DeJongPeers:
    """de Jong et al.'s CPU codes (github.com/mathowl/reservoir_acceleration, arXiv:2312.01121), loaded
    unchanged from a local copy: the NumPy baseline (``Base``: ``CoupledLlg.differential`` stepped by
    ``RungeKutta.run``), and ``frk4`` of their Numba and parallel-Numba scripts.

    Their codes integrate the same model in reduced units (fields / H_n with H_n = |H_K - 4 pi M|, time
    gamma H_n t), with classical RK4 and no projection onto |m| = 1. Their parameter arrays are built
    here from stosim's device (the table their ``main()`` writes by hand, with stosim's constants), and
    their NumPy object's torque field is set to stosim's (their hbar and e are older CODATA values, a
    1e-7 relative difference), so that both integrate the same equations with the same W and start.
    """

    def __init__(self, peers_dir: str) -> None:
        hits = sorted(Path(peers_dir).glob(f"**/{DEJONG_VANILLA}"))
        if not hits:
            raise FileNotFoundError(f"--peers-dir {peers_dir}: no {DEJONG_VANILLA} below it (de Jong et al.'s code)")
        self.dir = hits[0].parent
        self.vanilla = _load_module("dejong_numba_vanilla", self.dir / DEJONG_VANILLA)
        self.parallel = _load_module("dejong_numba_parallel", self.dir / DEJONG_PARALLEL)
        base = str(self.dir / "Base")
        sys.path.insert(0, base)
        try:
            self.coupled_llg = importlib.import_module("coupledLlg")
            self.runge_kutta = importlib.import_module("rungeKutta")
            config_file = importlib.import_module("file")
        finally:
            sys.path.remove(base)
        data = self.dir / "Base" / "data"
        self.llg_configs = config_file.loadLlgConfigs(str(data / "llgConfig.txt"), " ")
        self.input_configs = config_file.loadInputLlgConfigs(str(data / "inputLlgConfig.txt"), " ")
        self.coupled_configs = config_file.loadCoupledLlgConfigs(str(data / "coupledLlgConfig.txt"), " ")

    @staticmethod
    def initial_state(n: int) -> np.ndarray:
        t = DEJONG_THETA0_RAD
        return np.tile([math.sin(t) * math.cos(t), math.sin(t) * math.sin(t), math.cos(t)], (n, 1))

    @staticmethod
    def numba_parameters(array: stosim.STOArray, dt_s: float) -> tuple[np.ndarray, np.ndarray, float]:
        """(P1, pvec, h) of their ``frk4``: P1 = [alpha, 1/(1+alpha^2), H_K'/H_n, mu/H_n, (unused),
        H_s0/H_n, lambda, H_appl/H_n], h = gamma H_n dt (their main()'s values, from stosim's device)."""
        dev = array.device
        osc = array.oscillator_parameters()
        hn = abs(float(osc[1, 0]))
        alpha = float(osc[3, 0])
        p1 = np.array(
            [
                alpha,
                1 / (1 + alpha**2),
                osc[1, 0] / hn,
                array.coupling_oe / hn,
                0.0,
                osc[2, 0] / hn,
                dev.torque_asymmetry,
                osc[0, 0] / hn,
            ]
        )
        return (
            p1,
            np.asarray(dev.reference_direction, dtype=np.float64),
            dev.gyromagnetic_ratio_rad_per_oe_s * dt_s * hn,
        )

    def numpy_system(self, array: stosim.STOArray, dt_s: float):
        """Their ``CoupledLlg`` (built for one oscillator: its constructor draws its own W with a full
        eigendecomposition), then given stosim's W (mu = 1 Oe) and torque field; normalized for ``dt_s``."""
        coupled = dict(self.coupled_configs, stoCount=1)
        system = self.coupled_llg.CoupledLlg(dict(self.llg_configs), dict(self.input_configs), coupled)
        system.normalization(dt_s)
        osc = array.oscillator_parameters()
        system.internalWeight = np.array(array.coupling_matrix) * (array.coupling_oe / DEJONG_MU_OE)
        system.h_sst = float(osc[2, 0]) / system.fieldNormalizationFactor
        return system

    def rhs_difference(self, array: stosim.STOArray) -> dict[str, float]:
        """max |dm/dt theirs - dm/dt stosim| / max |dm/dt stosim| at 4 random unit states (their reduced
        dm/dtau times gamma H_n): the same equations, up to round-off."""
        from stosim.physics.llg import llg_rhs_batch

        n = array.n_oscillators
        rng = np.random.default_rng(5)
        p1, pvec, h = self.numba_parameters(array, 1.0)  # h = gamma H_n (1/s) for dt = 1 s
        w = np.ascontiguousarray(array.coupling_matrix, dtype=np.float64) if n > 1 else np.array([[0.0]])
        system = self.numpy_system(array, 1.0)
        p = np.asarray(array.device.reference_direction, dtype=np.float64)
        worst = {"dejong-numpy": 0.0, "dejong-numba": 0.0, "dejong-numba-parallel": 0.0}
        for _ in range(4):
            v = rng.standard_normal((n, 3))
            m = v / np.linalg.norm(v, axis=1, keepdims=True)
            ms = np.ascontiguousarray(m.T[:, None, :])  # (3, 1, N)
            hx = ms[0] @ array.coupling_transposed_oe()
            ref = llg_rhs_batch(ms, hx, array.oscillator_parameters(), array.device.torque_asymmetry, p)[:, 0, :].T
            scale = np.max(np.abs(ref))
            theirs = {
                "dejong-numpy": system.differential(m, 0.0) * h,
                "dejong-numba": self.vanilla.Dfnumba(m, w, p1, pvec) * h,
                "dejong-numba-parallel": self.parallel.Dfnumba(m, w, p1, pvec) * h,
            }
            for name, f in theirs.items():
                worst[name] = max(worst[name], float(np.max(np.abs(f - ref)) / scale))
        return worst

    def convergence(self, array: stosim.STOArray, n_steps: int, dt_s: float) -> dict[str, float]:
        """max |m_theirs - m_stosim| (oscillator 0, their Numba code) after n_steps dt, and after 4 n_steps dt/4."""
        n = array.n_oscillators
        m0 = self.initial_state(n)
        w = np.ascontiguousarray(array.coupling_matrix, dtype=np.float64) if n > 1 else np.array([[0.0]])
        out = {}
        for key, steps, dt in (("dt", n_steps, dt_s), ("dt/4", 4 * n_steps, dt_s / 4)):
            p1, pvec, h = self.numba_parameters(array, dt)
            theirs = self.vanilla.frk4(m0, w, h, p1, pvec, steps)[-1]
            ours, _, _ = stosim.evolve(array, m0[None], steps, dt)
            out[key] = float(np.max(np.abs(theirs - ours[0, 0])))
        out["shrink"] = out["dt"] / out["dt/4"] if out["dt/4"] > 0 else math.inf
        return out

    def tasks(self, array: stosim.STOArray, n_steps: int, dt_s: float) -> dict[str, Callable]:
        """Timed runs of their three codes on ``array`` from their start: name -> fn() -> (s, device-steps, final)."""
        n = array.n_oscillators
        m0 = self.initial_state(n)
        p1, pvec, h = self.numba_parameters(array, dt_s)
        w = np.ascontiguousarray(array.coupling_matrix, dtype=np.float64) if n > 1 else np.array([[0.0]])
        system = self.numpy_system(array, dt_s)
        solver = self.runge_kutta.RungeKutta()

        def numba_fn(module):
            def fn():
                t0 = time.perf_counter()
                y = module.frk4(m0, w, h, p1, pvec, n_steps)
                return time.perf_counter() - t0, n * n_steps, y[-1]  # they log oscillator 0 at every step

            return fn

        def numpy_fn():
            state = m0.copy()
            t0 = time.perf_counter()
            for i in range(n_steps):  # their Ode.run without its (n_steps, N, 3) log
                state = solver.run(state, i * system.dt, system.dt, system)
            return time.perf_counter() - t0, n * n_steps, state

        for module in (self.vanilla, self.parallel):
            module.frk4(m0, w, h, p1, pvec, 1)  # JIT compile (excluded)
        return {
            "dejong-numpy": numpy_fn,
            "dejong-numba": numba_fn(self.vanilla),
            "dejong-numba-parallel": numba_fn(self.parallel),
        }


W32_MIN_N = 1000  # case (d) also times coupling_dtype=float32 from this N
PEER_BLOCK_S = 0.2  # a timed block of case (d) repeats a run until this long (short runs: preemption averages out)


def _repeated(fn: Callable[[], tuple[float, int, np.ndarray]]) -> Callable[[], tuple[float, int, np.ndarray]]:
    """fn run repeatedly until PEER_BLOCK_S have passed; returns (total s, total device-steps, last final)."""

    def block():
        seconds, steps, final = fn()
        while seconds < PEER_BLOCK_S:
            s, d, final = fn()
            seconds, steps = seconds + s, steps + d
        return seconds, steps, final

    return block


def run_peers(peers_dir: str, sizes, dt_s: float, rounds: int, quick: bool, full: bool, blas_threads: int) -> dict:
    """Case (d): stosim.evolve beside de Jong et al.'s codes at batch 1, interleaved rounds, same W and start.

    Returns the JSON block ``peers`` (rates, per-round ratios, agreement)."""
    peers = DeJongPeers(peers_dir)
    dev = stosim.load_device()
    peer_steps = PEER_STEPS_QUICK if quick else PEER_STEPS
    st_steps = {n: (1000 if quick else (4999 if n < 2500 or full else 1000)) for n in sizes}
    per_n: dict[int, dict[str, Task]] = {}
    diffs: dict[int, dict[str, float]] = {}
    rhs_diff: dict[int, dict[str, float]] = {}
    conv: dict[int, dict[str, float]] = {}
    w32_diff: dict[int, float] = {}
    for n in sizes:
        arr = stosim.STOArray.generate(dev, n, DEJONG_MU_OE, seed=1)
        m0 = peers.initial_state(n)[None]
        stosim.evolve(arr, m0, 2, dt_s)  # warm-up (kernel load, cached arrays)
        tasks = {"stosim": Task(f"stosim N={n}", _repeated(stosim_task(arr, m0, st_steps[n], dt_s, np.float64)))}
        for name, fn in peers.tasks(arr, peer_steps[n], dt_s).items():
            tasks[name] = Task(f"{name} N={n}", _repeated(fn))
        if n >= W32_MIN_N:  # the float32-W option: its own ratios (ratio_vs_best_peer_float32_w)
            tasks["stosim-w32"] = Task(
                f"stosim-w32 N={n}", _repeated(stosim_task(arr, m0, st_steps[n], dt_s, np.float64, np.float32))
            )
            full64, _, _ = stosim.evolve(arr, m0, 4999, dt_s)
            full32, _, _ = stosim.evolve(arr, m0, 4999, dt_s, coupling_dtype=np.float32)
            w32_diff[n] = float(np.max(np.abs(full32 - full64)))
        # agreement after the peers' step count: theirs (oscillator 0, or all for NumPy) against stosim's
        ref, _, _ = stosim.evolve(arr, m0, peer_steps[n], dt_s)
        diffs[n] = {}
        for name in ("dejong-numpy", "dejong-numba", "dejong-numba-parallel"):
            with threadpool_limits(limits=blas_threads, user_api="blas"):
                _, _, final = tasks[name].fn()
            diffs[n][name] = float(np.max(np.abs(np.asarray(final) - (ref[0] if final.ndim == 2 else ref[0, 0]))))
        rhs_diff[n] = peers.rhs_difference(arr)
        if n <= 100:  # both are 4th-order: the difference of their trajectories must shrink ~4^4 at dt/4
            conv[n] = peers.convergence(arr, peer_steps[n], dt_s)
        per_n[n] = tasks
    order = [(n, name) for n in sizes for name in per_n[n]]
    ratio_rounds: dict[int, list[float]] = {n: [] for n in sizes}
    w32_rounds: dict[int, list[float]] = {n: [] for n in sizes if "stosim-w32" in per_n[n]}
    for r in range(rounds):
        k = r % len(order)
        for n, name in order[k:] + order[:k]:
            with threadpool_limits(limits=blas_threads, user_api="blas"):  # their NumPy with k BLAS threads
                per_n[n][name].run()
            time.sleep(PAUSE_S)
        for n in sizes:
            best = max(t.rates[-1] for name, t in per_n[n].items() if name.startswith("dejong"))
            ratio_rounds[n].append(per_n[n]["stosim"].rates[-1] / best)
            if n in w32_rounds:
                w32_rounds[n].append(per_n[n]["stosim-w32"].rates[-1] / best)
    return {
        "device_steps_per_s": {str(n): {name: t.median for name, t in per_n[n].items()} for n in sizes},
        "ratio_vs_best_peer": {str(n): statistics.median(ratio_rounds[n]) for n in sizes},
        "ratio_vs_best_peer_min": {str(n): min(ratio_rounds[n]) for n in sizes},
        "ratio_vs_best_peer_float32_w": {str(n): statistics.median(v) for n, v in w32_rounds.items()},
        "ratio_vs_best_peer_float32_w_min": {str(n): min(v) for n, v in w32_rounds.items()},
        "max_abs_diff_vs_stosim": {str(n): diffs[n] for n in sizes},
        "rhs_max_rel_diff_vs_stosim": {str(n): rhs_diff[n] for n in sizes},
        "float32_w_max_abs_diff_after_4999_steps": {str(n): d for n, d in w32_diff.items()},
        "trajectory_diff_at_dt_and_dt_over_4": {str(n): conv[n] for n in conv},
        "agreement_ok": {
            str(n): all(d < PEER_RHS_TOL for d in rhs_diff[n].values())
            and (n not in conv or conv[n]["shrink"] > PEER_MIN_SHRINK)
            for n in sizes
        },
        "steps": {"stosim": {str(n): st_steps[n] for n in sizes}, "peers": {str(n): peer_steps[n] for n in sizes}},
        "coupling_oe": DEJONG_MU_OE,
        "dir": str(peers.dir),
        "loadavg_after": _load(),
        "_tasks": per_n,
    }


def print_peers(res: dict, sizes, dt_s: float) -> None:
    tasks = res["_tasks"]
    names = ["stosim", "dejong-numpy", "dejong-numba", "dejong-numba-parallel"]
    print(
        f"(d) batch 1 beside de Jong et al.'s codes (run unchanged from {res['dir']}), dt = {dt_s * 1e12:g} ps, "
        f"float64, mu = {res['coupling_oe']:g} Oe (theirs), same W and start; device-steps/s, median over rounds"
    )
    print(f"    {'N':>5} " + " ".join(f"{nm:>22}" for nm in names) + f" {'stosim/best':>12} {'[min]':>7}")
    for n in sizes:
        row = " ".join(f"{_fmt(tasks[n][nm].median):>22}" for nm in names)
        print(
            f"    {n:>5} {row} {res['ratio_vs_best_peer'][str(n)]:>12.2f} {res['ratio_vs_best_peer_min'][str(n)]:>7.2f}"
        )
    print("    agreement, max |m_theirs - m_stosim| after their steps (their RK4 is not projected onto |m| = 1):")
    for n in sizes:
        d = res["max_abs_diff_vs_stosim"][str(n)]
        print(f"    {n:>5} " + ", ".join(f"{k}: {v:.1e}" for k, v in d.items()))
    print(
        f"    same equations: max relative |dm/dt theirs - dm/dt stosim| at random states (tolerance {PEER_RHS_TOL:g}):"
    )
    for n in sizes:
        d = res["rhs_max_rel_diff_vs_stosim"][str(n)]
        c = res["trajectory_diff_at_dt_and_dt_over_4"].get(str(n))
        conv = (
            ""
            if c is None
            else (f"; trajectories (their Numba): {c['dt']:.1e} at dt, {c['dt/4']:.1e} at dt/4 (x{c['shrink']:.0f})")
        )
        print(f"    {n:>5} " + ", ".join(f"{k}: {v:.1e}" for k, v in d.items()) + conv)
    for n, d in res["float32_w_max_abs_diff_after_4999_steps"].items():
        rate = tasks[int(n)]["stosim-w32"].median
        print(
            f"    N = {n}, coupling_dtype=float32 (W rounded to float32): {_fmt(rate)} device-steps/s, "
            f"stosim/best {res['ratio_vs_best_peer_float32_w'][n]:.2f} "
            f"[min {res['ratio_vs_best_peer_float32_w_min'][n]:.2f}], max |m - m_float64 W| after 4999 steps = {d:.1e}"
        )
    print(f"    load average after: {res['loadavg_after']}\n")


# ----------------------------------------------------------------------------- main


def _fmt(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.3e}"


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--json", action="store_true", help="print one final line with the results as JSON")
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: 2 rounds, 100 steps in case (a), 1000/200 steps in case (b)"
    )
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; 2 with --quick)")
    ap.add_argument("--full", action="store_true", help="case (b): 4999 steps also at N = 2500")
    ap.add_argument(
        "--peers-dir",
        default=None,
        help="case (d): a local copy of de Jong et al.'s repository (reservoir_acceleration); their codes run "
        "unchanged beside stosim.evolve at batch 1",
    )
    ap.add_argument("--peers-only", action="store_true", help="run case (d) alone (needs --peers-dir)")
    ap.add_argument(
        "--sizes", default="1,10,100,1000,2500", help="case (d): comma-separated N (default 1,10,100,1000,2500)"
    )
    args = ap.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        ap.error("--rounds must be >= 1")
    if args.peers_only and not args.peers_dir:
        ap.error("--peers-only needs --peers-dir")

    t_start = time.perf_counter()
    rounds = args.rounds or (2 if args.quick else 5)
    k = numba.get_num_threads()
    torch.set_num_threads(k)
    load_before = _load()
    peer_sizes = tuple(int(x) for x in args.sizes.split(","))
    if args.peers_only:
        res = run_peers(args.peers_dir, peer_sizes, 1e-11, rounds, args.quick, args.full, k)
        print(f"stosim batch 1 beside de Jong et al. ({os.cpu_count()} CPUs; load average before: {load_before})")
        print_peers(res, peer_sizes, 1e-11)
        res.pop("_tasks")
        summary = {
            "peers": res,
            "batch1_device_steps_per_s": {
                str(n): v["stosim"] for n, v in zip(peer_sizes, res["device_steps_per_s"].values())
            },
            "batch1_ratio_vs_best_dejong": res["ratio_vs_best_peer"],
            "batch1_ratio_vs_best_dejong_float32_w": res["ratio_vs_best_peer_float32_w"],
            "loadavg_before": load_before,
            "numba_threads": k,
            "rounds": rounds,
            "quick": args.quick,
            "elapsed_s": time.perf_counter() - t_start,
        }
        if args.json:
            print(json.dumps(summary))
        ok = all(res["agreement_ok"].values())
        return 0 if ok else 1
    dev = stosim.load_device()
    rng = np.random.default_rng(12345)

    def unit(shape):
        v = rng.standard_normal(shape)
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    # ---------------------------------------------------------------- (a) N = 200, batch 256
    n_a, batch_a, dt_a = 200, 256, 1e-12
    steps_a = 100 if args.quick else 300
    array_a = stosim.STOArray.generate(dev, n_a, COUPLING_OE, seed=1)
    m0_a = unit((batch_a, n_a, 3))
    tasks_a: dict[tuple[str, str], Task] = {}
    for dname, (npd, td) in DTYPES.items():
        stosim.evolve(array_a, m0_a, 2, dt_a, dtype=npd)  # JIT compile / cache load (excluded)
        numpy_rk4(
            m0_a[:2],
            1,
            dt_a,
            array_a.coupling_transposed_oe(),
            array_a.oscillator_parameters(),
            dev.torque_asymmetry,
            dev.reference_direction,
            npd,
        )
        tasks_a["stosim", dname] = Task(f"stosim {dname}", stosim_task(array_a, m0_a, steps_a, dt_a, npd))
        tasks_a["numpy-rk4", dname] = Task(f"numpy {dname}", numpy_task(array_a, m0_a, steps_a, dt_a, npd, k))
        tasks_a["torchdiffeq", dname] = Task(f"torchdiffeq {dname}", torch_task(array_a, m0_a, steps_a, dt_a, td))
        torch_task(array_a, m0_a[:2], 2, dt_a, td)()  # warm-up
    matmul = MatmulBench(k, array_a.coupling_transposed_oe())
    run_interleaved(list(tasks_a.values()), rounds, extra=matmul.round)

    ref64 = tasks_a["stosim", "float64"].final
    diff_numpy = float(np.max(np.abs(tasks_a["numpy-rk4", "float64"].final - ref64)))
    diff_torch = float(np.max(np.abs(tasks_a["torchdiffeq", "float64"].final - ref64)))
    diff_f32 = float(np.max(np.abs(tasks_a["stosim", "float32"].final.astype(np.float64) - ref64)))
    agree = diff_numpy < AGREEMENT_TOL

    # ---------------------------------------------------------------- (b) batch 1
    dt_b = 1e-11
    steps_b = 1000 if args.quick else 4999
    steps_ref = 200 if args.quick else 500
    sizes = (1, 10, 100, 1000, 2500)
    steps_stosim = {n: (steps_b if n < 2500 or args.full else min(steps_b, 1000)) for n in sizes}
    mu_b: dict[int, float] = {}
    tasks_b: dict[tuple[str, int], Task] = {}
    diff_b: dict[int, float] = {}  # after CHECK_STEPS_B steps (checked)
    diff_b_long: dict[int, float] = {}  # after steps_ref steps (information: chaotic growth of round-off)
    for n in sizes:
        arr = batch1_array(dev, n, dt_b)
        mu_b[n] = arr.coupling_oe
        m0 = unit((1, n, 3))
        ref_check, _, _ = stosim.evolve(arr, m0, CHECK_STEPS_B, dt_b)  # warm-up, and the agreement reference
        ref_long, _, _ = stosim.evolve(arr, m0, steps_ref, dt_b)
        # a timed block repeats a run for >= PEER_BLOCK_S (as in case (d)); "stosim-single" is one call right
        # after the pause between tasks (an idle core waking up: at N = 1 about half the sustained rate)
        tasks_b["stosim", n] = Task(f"stosim N={n}", _repeated(stosim_task(arr, m0, steps_stosim[n], dt_b, np.float64)))
        if n <= 100:
            tasks_b["stosim-single", n] = Task(
                f"stosim (one call) N={n}", stosim_task(arr, m0, steps_stosim[n], dt_b, np.float64)
            )
            tasks_b["kernel", n] = Task(f"kernel N={n}", _repeated(kernel_task(arr, m0, steps_b, dt_b)))
            kernel_task(arr, m0, 2, dt_b)()
        tasks_b["torchdiffeq", n] = Task(f"torchdiffeq N={n}", torch_task(arr, m0, steps_ref, dt_b, torch.float64))
        torch_task(arr, m0, 2, dt_b, torch.float64)()
        if n <= 100:
            tasks_b["numpy-rk4", n] = Task(f"numpy N={n}", numpy_task(arr, m0, steps_ref, dt_b, np.float64, k))
            args_np = (
                arr.coupling_transposed_oe(),
                arr.oscillator_parameters(),
                dev.torque_asymmetry,
                dev.reference_direction,
                np.float64,
            )
            diff_b[n] = float(np.max(np.abs(numpy_rk4(m0, CHECK_STEPS_B, dt_b, *args_np) - ref_check)))
            diff_b_long[n] = float(np.max(np.abs(numpy_rk4(m0, steps_ref, dt_b, *args_np) - ref_long)))
    run_interleaved(list(tasks_b.values()), rounds)
    agree = agree and all(d < AGREEMENT_TOL for d in diff_b.values())
    load_after = _load()

    # ---------------------------------------------------------------- summary
    def med(tasks, key):
        return tasks[key].median if key in tasks else None

    def ratio(a, b):
        return a / b if a is not None and b else None

    flops_per_dev_step = 4 * (2 * n_a + 60)
    peak = {d: matmul.peak(d) for d in DTYPES}
    peak1 = {d: matmul.peak(d, single_thread_only=True) for d in DTYPES}
    limit = {d: peak[d][0] * 1e9 / flops_per_dev_step for d in DTYPES}
    s64, s32 = med(tasks_a, ("stosim", "float64")), med(tasks_a, ("stosim", "float32"))
    summary = {
        "device_steps_per_s": s64,
        "torchdiffeq_device_steps_per_s": med(tasks_a, ("torchdiffeq", "float64")),
        "numpy_device_steps_per_s": med(tasks_a, ("numpy-rk4", "float64")),
        "ratio_vs_torchdiffeq": ratio(s64, med(tasks_a, ("torchdiffeq", "float64"))),
        "ratio_vs_numpy": ratio(s64, med(tasks_a, ("numpy-rk4", "float64"))),
        "device_steps_per_s_float32": s32,
        "torchdiffeq_device_steps_per_s_float32": med(tasks_a, ("torchdiffeq", "float32")),
        "numpy_device_steps_per_s_float32": med(tasks_a, ("numpy-rk4", "float32")),
        "ratio_vs_torchdiffeq_float32": ratio(s32, med(tasks_a, ("torchdiffeq", "float32"))),
        "ratio_vs_numpy_float32": ratio(s32, med(tasks_a, ("numpy-rk4", "float32"))),
        "ratio_vs_torchdiffeq_batch1_n100": ratio(med(tasks_b, ("stosim", 100)), med(tasks_b, ("torchdiffeq", 100))),
        "batch1": {
            str(n): {
                "stosim_device_steps_per_s": med(tasks_b, ("stosim", n)),
                "torchdiffeq_device_steps_per_s": med(tasks_b, ("torchdiffeq", n)),
                "numpy_device_steps_per_s": med(tasks_b, ("numpy-rk4", n)),
                "ratio_vs_torchdiffeq": ratio(med(tasks_b, ("stosim", n)), med(tasks_b, ("torchdiffeq", n))),
                "ratio_vs_numpy": ratio(med(tasks_b, ("stosim", n)), med(tasks_b, ("numpy-rk4", n))),
            }
            for n in sizes
        },
        "batch1_device_steps_per_s": {str(n): med(tasks_b, ("stosim", n)) for n in sizes},
        "batch1_kernel_device_steps_per_s": {str(n): med(tasks_b, ("kernel", n)) for n in sizes if n <= 100},
        "batch1_single_call_device_steps_per_s": {
            str(n): med(tasks_b, ("stosim-single", n)) for n in sizes if n <= 100
        },
        "batch1_coupling_oe": {str(n): mu_b[n] for n in sizes},
        "batch1_steps": {
            "stosim": {str(n): steps_stosim[n] for n in sizes},
            "reference_paths": steps_ref,
            "dt_s": dt_b,
        },
        "case_a": {"n_oscillators": n_a, "batch": batch_a, "steps": steps_a, "dt_s": dt_a, "coupling_oe": COUPLING_OE},
        "gemm_provider": GEMM_PROVIDER,
        "matmul_peak_gflops_float64": peak["float64"][0],
        "matmul_peak_gflops_float32": peak["float32"][0],
        "matmul_peak_method_float64": f"{peak['float64'][1]} {peak['float64'][2]}",
        "matmul_peak_method_float32": f"{peak['float32'][1]} {peak['float32'][2]}",
        "matmul_single_thread_gflops_float64": peak1["float64"][0],
        "matmul_single_thread_gflops_float32": peak1["float32"][0],
        "matmul_gflops": {f"{name} {shape} {d}": g for (name, shape, d), g in sorted(matmul.best.items())},
        "flops_per_device_step": flops_per_dev_step,
        "matmul_bound_device_steps_per_s": limit["float64"],
        "matmul_bound_device_steps_per_s_float32": limit["float32"],
        "fraction_of_matmul_peak": s64 / limit["float64"],
        "fraction_of_matmul_peak_float64": s64 / limit["float64"],
        "fraction_of_matmul_peak_float32": s32 / limit["float32"],
        "fraction_of_ideal_peak": s64 / (k * peak1["float64"][0] * 1e9 / flops_per_dev_step),
        "max_abs_diff_numpy_vs_stosim_float64": diff_numpy,
        "max_abs_diff_numpy_vs_stosim_batch1": {str(n): d for n, d in diff_b.items()},
        "max_abs_diff_numpy_vs_stosim_batch1_after_reference_steps": {str(n): d for n, d in diff_b_long.items()},
        "max_abs_diff_torchdiffeq_vs_stosim_float64": diff_torch,
        "max_abs_diff_float32_vs_float64_stosim": diff_f32,
        "agreement_ok": agree,
        "numba_threads": k,
        "numba_threading_layer": numba.threading_layer(),
        "torch_threads": torch.get_num_threads(),
        "numpy_blas_threads": k,
        "cpu_count": os.cpu_count(),
        "rounds": rounds,
        "quick": args.quick,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "elapsed_s": time.perf_counter() - t_start,
        "versions": {
            "stosim": stosim.__version__,
            "numpy": np.__version__,
            "numba": numba.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }

    # ---------------------------------------------------------------- table
    blas = sorted({f"{i['internal_api']} {i.get('version')}" for i in threadpool_info() if i["user_api"] == "blas"})
    print(
        f"stosim simulate benchmark ({platform.node()}, {os.cpu_count()} CPUs; load average before: {load_before}, "
        f"after: {load_after})"
    )
    print(
        f"threads: numba {k} ({summary['numba_threading_layer']}), torch {torch.get_num_threads()}, "
        f"numpy BLAS {k} (RK4 path); BLAS: {', '.join(blas)}"
    )
    print(f"{rounds} interleaved rounds; device-steps/s = batch x N x steps / s; median [min .. max] over rounds\n")

    print(
        f"(a) N = {n_a}, batch {batch_a}, T = {steps_a} ps, dt = 1 ps, mu = {COUPLING_OE:g} Oe, all paths the full run"
    )
    print(f"    {'path':<12} {'dtype':<8} {'median':>10} {'min':>10} {'max':>10} {'stosim/path':>12}")
    for dname in DTYPES:
        for path in ("stosim", "numpy-rk4", "torchdiffeq"):
            t = tasks_a[path, dname]
            r = tasks_a["stosim", dname].median / t.median
            print(
                f"    {path:<12} {dname:<8} {_fmt(t.median):>10} {_fmt(min(t.rates)):>10} {_fmt(max(t.rates)):>10} "
                f"{r:>12.2f}"
            )
    print(
        f"    agreement, float64 after {steps_a} steps: max |m_numpy - m_stosim| = {diff_numpy:.2e} "
        f"({'OK' if diff_numpy < AGREEMENT_TOL else 'FAIL'}, tolerance {AGREEMENT_TOL:g})"
    )
    print(
        f"    for information: max |m_torchdiffeq - m_stosim| = {diff_torch:.2e} (3/8-rule RK4, no projection); "
        f"max |m_stosim,float32 - m_stosim,float64| = {diff_f32:.2e}\n"
    )

    print(
        f"(b) batch 1, dt = {dt_b * 1e12:g} ps, float64: stosim {steps_b} steps (N = 2500: {steps_stosim[2500]}); "
        f"torchdiffeq and numpy {steps_ref} steps (shorter runs, rates compare directly); mu (Oe) per N: "
        + ", ".join(f"{n}: {mu_b[n]:g}" for n in sizes)
    )
    print(
        "    kernel = the batched Numba time loop alone (run_chunk; evolve runs its batch-1 loops instead): "
        + ", ".join(f"N={n}: {_fmt(med(tasks_b, ('kernel', n)))}" for n in sizes if n <= 100)
    )
    print(
        f"    stosim and kernel: blocks of >= {PEER_BLOCK_S:g} s; one call right after the pause between tasks: "
        + ", ".join(f"N={n}: {_fmt(med(tasks_b, ('stosim-single', n)))}" for n in sizes if n <= 100)
    )
    print(
        f"    {'N':>5} {'stosim':>10} {'[min..max]':>23} {'torchdiffeq':>11} {'numpy':>10} {'st/torchdq':>10} "
        f"{'st/numpy':>9} {f'|np-st| {CHECK_STEPS_B * dt_b * 1e9:g}ns':>12} "
        f"{f'|np-st| {steps_ref * dt_b * 1e9:g}ns':>13}"
    )
    for n in sizes:
        s = tasks_b["stosim", n]
        b = summary["batch1"][str(n)]
        rn = b["ratio_vs_numpy"]
        print(
            f"    {n:>5} {_fmt(s.median):>10} {'[' + _fmt(min(s.rates)) + '..' + _fmt(max(s.rates)) + ']':>23} "
            f"{_fmt(b['torchdiffeq_device_steps_per_s']):>11} {_fmt(b['numpy_device_steps_per_s']):>10} "
            f"{b['ratio_vs_torchdiffeq']:>10.2f} {('-' if rn is None else f'{rn:.2f}'):>9} "
            f"{('-' if n not in diff_b else f'{diff_b[n]:.1e}'):>12} "
            f"{('-' if n not in diff_b_long else f'{diff_b_long[n]:.1e}'):>13}"
        )
    print(
        f"    agreement (float64, batch 1) is checked after {CHECK_STEPS_B} steps "
        f"({'OK' if all(d < AGREEMENT_TOL for d in diff_b.values()) else 'FAIL'}, tolerance {AGREEMENT_TOL:g}); "
        "the longer-run difference is shown for information: at mu = 500 Oe the array is chaotic, "
        "so round-off differences grow over nanoseconds\n"
    )

    print("(c) matrix-multiply GFLOP/s (best of rounds)")
    shapes = list(dict.fromkeys(c[0] for c in matmul.cases))
    cols = [(s, d) for s in shapes for d in DTYPES]
    print(f"    {'method':<36} " + " ".join(f"{s + ' ' + d[-2:]:>20}" for s, d in cols))
    for name in matmul.methods:
        print(f"    {name:<36} " + " ".join(f"{matmul.best[name, s, d]:>20.2f}" for s, d in cols))
    for d in DTYPES:
        g, name, shape = peak[d]
        print(
            f"    peak {d}: {g:.2f} GFLOP/s ({name}, {shape}); best single thread {peak1[d][0]:.2f} GFLOP/s "
            f"({peak1[d][1]}); matmul-bound limit peak / (4 (2N + 60)) at N = {n_a}: {_fmt(limit[d])} device-steps/s"
        )
    print(
        f"    fraction_of_matmul_peak (stosim float64 / limit) = {summary['fraction_of_matmul_peak']:.3f}; "
        f"float32: {summary['fraction_of_matmul_peak_float32']:.3f}; vs {k} x best single thread "
        f"(ideal): {summary['fraction_of_ideal_peak']:.3f}"
    )
    if args.peers_dir:
        res = run_peers(args.peers_dir, peer_sizes, dt_b, rounds, args.quick, args.full, k)
        print_peers(res, peer_sizes, dt_b)
        res.pop("_tasks")
        summary["peers"] = res
        summary["batch1_ratio_vs_best_dejong"] = res["ratio_vs_best_peer"]
        summary["batch1_ratio_vs_best_dejong_float32_w"] = res["ratio_vs_best_peer_float32_w"]
        summary["elapsed_s"] = time.perf_counter() - t_start
    print(f"\nelapsed {summary['elapsed_s']:.0f} s")
    if not agree:
        print("AGREEMENT CHECK FAILED: the NumPy reference and stosim disagree", file=sys.stderr)
    if args.json:
        print(json.dumps(summary))
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
