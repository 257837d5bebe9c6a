"""One trajectory of a large coupled STO array on several threads, and the choice of how many.

:func:`stosim.integrate.batch1.run_part` splits a step by oscillator: thread t sums the coupling fields
of its oscillators lo_t <= i < hi_t over all j (a block of columns of C = (mu W)^T), advances them through
the four RK4 stages, and meets the other threads after every stage at a spinning barrier. Two cores then
stream C at about twice the rate of one (and at N ~ 1000 each keeps its half of C in its own L2 cache).
The split never changes the arithmetic: one thread and several give the same trajectory bit for bit.

Threads pay off only when they get their cores: a thread that the scheduler puts aside for a time slice
(another process on its core) holds every other thread at the next barrier. The runner
(:class:`OneTrajectoryRunner`) measures, in chunks of steps, the time per step on one thread and on several,
runs the faster, and measures the other again now and then (a short chunk) so that it follows a load that
comes and goes.
Since the results do not depend on the split, switching between chunks changes nothing but the speed.
"""

from __future__ import annotations

import threading
import time
from typing import NamedTuple

import numpy as np

from stosim.integrate.batch1 import run_one, run_part

__all__ = [
    "CHUNK_SECONDS",
    "THREADS_MIN_N",
    "OneTrajectoryInputs",
    "OneTrajectoryRunner",
    "run_one_threads",
    "thread_bounds",
    "usable_threads",
]

THREADS_MIN_N = 256  # below this a stage (~1-10 us) is too short for barriers to pay off
COLUMNS_PER_THREAD_MIN = 128  # oscillators per thread at least
CHUNK_SECONDS = 0.02  # steps per chunk: about this long at the faster setting
REPROBE_EVERY = 16  # chunks between two measurements of the slower setting
PROBE_FRACTION = 4  # a re-measurement runs chunk / PROBE_FRACTION steps (~5 ms: long enough to time)


def thread_bounds(n_osc: int, n_threads: int) -> list[tuple[int, int]]:
    """Oscillator ranges [lo, hi) of ``n_threads`` threads: equal up to a multiple of 8 (64-byte lines apart)."""
    edges = [0] + [min(n_osc, (round(t * n_osc / n_threads) + 7) // 8 * 8) for t in range(1, n_threads)] + [n_osc]
    return [(edges[t], edges[t + 1]) for t in range(n_threads)]


class OneTrajectoryInputs(NamedTuple):
    """What :func:`stosim.integrate.batch1.run_one` takes besides the state and the step counts."""

    coupling_t: np.ndarray  # (N, N) (mu W)^T in Oe, float32 or the state's dtype
    use_coupling: bool
    osc: np.ndarray  # (5, N) per-oscillator parameters
    lam: float  # torque asymmetry
    p: np.ndarray  # (3,) reference-layer direction
    dt: float  # time step in the kernel's time unit, in the state's dtype


def run_one_threads(
    m: np.ndarray,
    inputs: OneTrajectoryInputs,
    n_steps: int,
    save_every: int,
    save_offset: int,
    traj: np.ndarray,
    n_threads: int,
) -> tuple[int, int]:
    """:func:`stosim.integrate.batch1.run_one` on ``n_threads`` threads: the calling one and n_threads - 1
    started for the call (they always run concurrently, whatever other thread pools are doing).

    Same arguments (``inputs`` gathered) and results as ``run_one`` (bit for bit): (-1, -1), or (step k,
    oscillator i) of the first oscillator in index order whose state became non-finite, at the first such step."""
    if not isinstance(n_threads, int) or n_threads < 1:
        raise ValueError(f"n_threads = {n_threads!r} must be an integer >= 1")
    n_osc = m.shape[2]
    if n_threads == 1:
        k, bad = run_one(m, *inputs, n_steps, save_every, save_offset, traj)
        return int(k), int(bad)
    bounds = thread_bounds(n_osc, n_threads)
    shared_x = np.empty((2, n_osc), dtype=m.dtype)
    fail = np.full((n_threads, 2), -1, dtype=np.int64)
    counter = np.zeros(2, dtype=np.int64)  # arrivals; set by a thread that fails (the others stop waiting)
    errors: list[BaseException] = []

    def part(t: int) -> None:
        lo, hi = bounds[t]
        try:
            run_part(m, *inputs, n_steps, save_every, save_offset, traj, shared_x, fail, counter, t, n_threads, lo, hi)
        except BaseException as exc:  # noqa: BLE001  (re-raised in the calling thread)
            counter[1] = 1
            errors.append(exc)

    threads = [threading.Thread(target=part, args=(t,), name=f"stosim-batch1-{t}") for t in range(1, n_threads)]
    for th in threads:
        th.start()
    part(0)
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    failed = [t for t in range(n_threads) if fail[t, 0] >= 0]
    if not failed:
        return -1, -1
    k = min(int(fail[t, 0]) for t in failed)
    first = min(t for t in failed if fail[t, 0] == k)
    return k, int(fail[first, 1])


def usable_threads(n_osc: int, max_threads: int) -> int:
    """Threads worth trying for one trajectory of ``n_osc`` oscillators (1: run on the calling thread)."""
    if n_osc < THREADS_MIN_N:
        return 1
    return max(1, min(max_threads, n_osc // COLUMNS_PER_THREAD_MIN))


class OneTrajectoryRunner:
    """Runs :func:`run_one_threads` on one thread or ``usable_threads(N, max_threads)``, whichever is faster now.

    The steps run in chunks of about :data:`CHUNK_SECONDS`; the first four chunks (a few steps) time one
    thread and several twice each, later chunks run the faster, and every :data:`REPROBE_EVERY` chunks a short chunk
    times the slower again. The timings carry over from one :meth:`run` to the next (a run in pieces, as
    with progress reports). Same arguments and results as ``run_one`` (bit for bit, whatever was chosen)."""

    def __init__(self, n_osc: int, max_threads: int) -> None:
        self.threads = usable_threads(n_osc, max_threads)
        self.seconds_per_step: dict[int, float] = {}  # the latest time per step of each setting
        self._timed: dict[int, int] = {}  # chunks timed per setting
        self._chunks = 0
        self._chunk_steps = 4

    def _next(self) -> tuple[int, int]:
        """(threads, steps) of the next chunk: each setting is timed twice first (its first call may load or
        compile a kernel), then the faster runs, and every REPROBE_EVERY chunks a short chunk times the slower."""
        for t in (1, self.threads):
            if self._timed.get(t, 0) < 2:
                return t, self._chunk_steps
        best = min(self.seconds_per_step, key=self.seconds_per_step.get)
        if self._chunks % REPROBE_EVERY == 0:
            return (self.threads if best == 1 else 1), max(2, self._chunk_steps // PROBE_FRACTION)
        return best, self._chunk_steps

    def run(
        self,
        m: np.ndarray,
        inputs: OneTrajectoryInputs,
        n_steps: int,
        save_every: int,
        save_offset: int,
        traj: np.ndarray,
    ) -> tuple[int, int]:
        """``run_one(m, *inputs, ...)`` in chunks on the faster setting; returns as ``run_one`` does."""
        if self.threads == 1 or not inputs.use_coupling:
            return run_one_threads(m, inputs, n_steps, save_every, save_offset, traj, 1)
        done = 0
        while done < n_steps:
            t, k = self._next()
            k = min(k, n_steps - done)
            start = time.perf_counter()
            bad_step, bad_osc = run_one_threads(m, inputs, k, save_every, save_offset + done, traj, t)
            self.seconds_per_step[t] = (time.perf_counter() - start) / k
            self._timed[t] = self._timed.get(t, 0) + 1
            if bad_step >= 0:
                return done + bad_step, bad_osc
            done += k
            self._chunks += 1
            self._chunk_steps = max(4, int(CHUNK_SECONDS / min(self.seconds_per_step.values())))
        return -1, -1
