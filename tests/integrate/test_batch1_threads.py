"""One trajectory split over threads (stosim.integrate.batch1_threads, .barrier): equal to one thread bit for bit."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from numba import njit

from stosim.integrate import batch1_threads
from stosim.integrate.barrier import wait_at_barrier
from stosim.integrate.batch1 import run_one, run_part
from stosim.integrate.batch1_threads import (
    OneTrajectoryInputs,
    OneTrajectoryRunner,
    run_one_threads,
    thread_bounds,
    usable_threads,
)
from stosim.physics.array import STOArray


def _kernel_args(array: STOArray, dt: float, cdtype=np.float64) -> OneTrajectoryInputs:
    return OneTrajectoryInputs(
        np.ascontiguousarray(array.coupling_transposed_oe(), dtype=cdtype),
        True,
        np.ascontiguousarray(array.oscillator_parameters()),
        array.device.torque_asymmetry,
        np.asarray(array.device.reference_direction, dtype=np.float64),
        dt,
    )


def _start(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((3, 1, n))
    return v / np.linalg.norm(v, axis=0)


@njit(nogil=True)
def _rounds(counter, shared, tid, n_threads, rounds):
    """Each round: write this thread's slot, meet, check every slot holds this round, meet. Returns mismatches."""
    gen = 0
    wrong = 0
    for r in range(rounds):
        shared[tid] = r
        gen += 1
        wait_at_barrier(counter, n_threads, gen)
        for t in range(n_threads):
            if shared[t] != r:
                wrong += 1
        gen += 1
        wait_at_barrier(counter, n_threads, gen)
    return wrong


@pytest.mark.parametrize("n_threads", [2, 3])
def test_barrier_makes_every_threads_writes_visible(n_threads):
    """3 threads on 2 cores too: a waiting thread gives its core away, so an oversubscribed barrier still passes."""
    counter = np.zeros(2, dtype=np.int64)
    shared = np.full(n_threads, -1, dtype=np.int64)
    wrong = [0] * n_threads
    rounds = 20_000

    def body(t):
        wrong[t] = _rounds(counter, shared, t, n_threads, rounds)

    threads = [threading.Thread(target=body, args=(t,)) for t in range(1, n_threads)]
    for th in threads:
        th.start()
    body(0)
    for th in threads:
        th.join()
    assert wrong == [0] * n_threads
    assert counter[0] == 2 * rounds * n_threads


def test_a_failed_thread_releases_the_others(device):
    """A thread that fails sets counter[1]: the barrier is abandoned instead of waited on forever, and the
    kernel of a thread left alone returns without writing the state."""
    counter = np.array([0, 1], dtype=np.int64)
    assert wait_at_barrier(counter, 2, 1)  # alone at a barrier of two: abandoned, not a hang
    n = 300
    args = _kernel_args(STOArray.generate(device, n, 300.0, seed=4), 1e-12)
    m = _start(n, 5)
    m_before = m.copy()
    fail = np.full((2, 2), -1, dtype=np.int64)
    counter = np.array([0, 1], dtype=np.int64)
    shared_x = np.empty((2, n))
    run_part(m, *args, 10, 20, 0, np.zeros((1, 3, 1, n)), shared_x, fail, counter, 0, 2, 0, 152)
    np.testing.assert_array_equal(m, m_before)
    assert np.all(fail == -1)


@pytest.mark.parametrize(("n", "t"), [(1000, 2), (1001, 2), (300, 3), (17, 4), (8, 3)])
def test_thread_bounds_cover_the_oscillators_in_order(n, t):
    bounds = thread_bounds(n, t)
    assert len(bounds) == t and bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds[:-1], bounds[1:], strict=True))
    assert all(lo <= hi for lo, hi in bounds)
    assert all(hi % 8 == 0 for _, hi in bounds[:-1])  # 64-byte lines apart (float64)


def test_usable_threads():
    assert usable_threads(100, 8) == 1  # below THREADS_MIN_N
    assert usable_threads(300, 8) == 2  # at least 128 oscillators per thread
    assert usable_threads(1000, 2) == 2
    assert usable_threads(1000, 1) == 1


@pytest.mark.parametrize("n_threads", [2, 3])
@pytest.mark.parametrize("cdtype", [np.float64, np.float32])
def test_split_trajectory_equals_one_thread_bit_for_bit(device, n_threads, cdtype):
    """N = 300, mu = 300 Oe, 60 steps of 2 ps saved every 7: every field sums over j in the same order."""
    n = 300
    args = _kernel_args(STOArray.generate(device, n, 300.0, seed=4), 2e-12, cdtype)
    m_ref, m_split = _start(n, 1), _start(n, 1)
    traj_ref, traj_split = np.zeros((8, 3, 1, n)), np.zeros((8, 3, 1, n))
    assert run_one(m_ref, *args, 60, 7, 0, traj_ref) == (-1, -1)
    assert run_one_threads(m_split, args, 60, 7, 0, traj_split, n_threads) == (-1, -1)
    np.testing.assert_array_equal(m_split, m_ref)
    np.testing.assert_array_equal(traj_split, traj_ref)
    assert np.max(np.abs(m_ref - _start(n, 1))) > 1e-2  # it moved


def test_split_trajectory_reports_a_non_finite_state_as_one_thread_does(device):
    n = 300
    args = _kernel_args(STOArray.generate(device, n, 300.0, seed=4), 1e-12)
    m0 = _start(n, 2)
    m0[0, 0, 250] = np.inf  # in the second thread's oscillators
    m_ref, m_split = m0.copy(), m0.copy()
    traj = np.zeros((1, 3, 1, n))
    expected = run_one(m_ref, *args, 5, 10, 0, traj)
    assert expected[0] == 0
    assert run_one_threads(m_split, args, 5, 10, 0, traj, 2) == expected
    np.testing.assert_array_equal(m_split, m0)  # the state before the failing step


def test_n_threads_is_checked(device):
    args = _kernel_args(STOArray.generate(device, 300, 300.0, seed=4), 1e-12)
    with pytest.raises(ValueError, match="n_threads = 0 must be an integer >= 1"):
        run_one_threads(_start(300, 0), args, 1, 2, 0, np.zeros((1, 3, 1, 300)), 0)


def test_runner_switches_settings_without_changing_the_trajectory(device, monkeypatch):
    """Tiny chunks and a measurement of the slower setting every other chunk: many switches, the same result."""
    monkeypatch.setattr(batch1_threads, "CHUNK_SECONDS", 1e-6)
    monkeypatch.setattr(batch1_threads, "REPROBE_EVERY", 2)
    n = 264
    args = _kernel_args(STOArray.generate(device, n, 300.0, seed=7), 2e-12)
    m_ref, m_run = _start(n, 3), _start(n, 3)
    traj_ref, traj_run = np.zeros((10, 3, 1, n)), np.zeros((10, 3, 1, n))
    run_one(m_ref, *args, 100, 10, 0, traj_ref)
    runner = OneTrajectoryRunner(n, 2)
    assert runner.threads == 2
    assert runner.run(m_run, args, 40, 10, 0, traj_run) == (-1, -1)  # in two pieces, as with progress
    assert runner.run(m_run, args, 60, 10, 40, traj_run) == (-1, -1)
    assert set(runner.seconds_per_step) == {1, 2}
    assert runner._chunks >= 20
    np.testing.assert_array_equal(m_run, m_ref)
    np.testing.assert_array_equal(traj_run, traj_ref)
