"""Running a sweep on dask.distributed with one writer.

The points run as tasks on a ``LocalCluster`` (processes, one thread each, loopback only) or on
an existing scheduler. The calling process is the only writer: it collects outcomes as they
complete (``as_completed``) and rewrites the sweep file atomically at most every
``flush_seconds`` (and at the end), so a sweep killed at any moment keeps every point that had
been saved; ``resume=True`` runs only the points that are not done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from stosim.extras import require
from stosim.storage import output_lock
from stosim.studies.sweep_points import execute_point
from stosim.sweep.spec import Point, ResolvedSweep
from stosim.sweep.store import STATUS_DONE, STATUS_FAILED, SweepState, utc_now

__all__ = [
    "run_sweep",
    "SweepSummary",
    "PointEvent",
    "SweepFailedError",
    "THREAD_ENV",
    "PRE_SPAWN_ENV",
    "local_cluster",
]

# one compute thread per worker process (OpenMP, BLAS); torch and Numba are set in the task. Not
# NUMBA_NUM_THREADS: a nanny applies env= after the worker process may have imported Numba, and a changed
# NUMBA_NUM_THREADS then fails the next compilation (stosim.integrate.threads.one_compute_thread)
THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1",
}
# the environment a worker process starts with: one malloc arena. A point computes in the worker's task
# thread, and glibc gives a thread other than the main one its own arena, whose heap it unmaps and maps
# again as tensor-sized temporaries come and go: a Lorenz 96 training point ran 1.4x slower there than
# in a main thread (benchmarks/bench_worker_heap.py). Workers of an external scheduler: start them with
# MALLOC_ARENA_MAX=1 (README, Sweeps).
PRE_SPAWN_ENV = {"MALLOC_ARENA_MAX": "1"}
# no statistical profiler in the workers: it samples every thread's stack every 10 ms (holding the GIL)
WORKER_CONFIG = {"distributed.worker.profile.enabled": False}
SCHEDULER_WORKER_WAIT_S = 120.0


@dataclasses.dataclass(frozen=True)
class PointEvent:
    """A point finished (reported to ``on_point``)."""

    point: Point
    status: str
    error: str
    wall_time_s: float
    finished: int  # points finished in this invocation so far
    to_run: int  # points this invocation runs


@dataclasses.dataclass
class SweepSummary:
    """Outcome of :func:`run_sweep`."""

    path: Path
    n_points: int
    n_done: int
    n_failed: int
    n_pending: int
    n_run: int  # points run by this invocation
    n_resumed: int  # points taken as done from the file
    workers: int | None
    scheduler: str
    startup_s: float  # cluster start (or connection) until the workers are ready
    run_s: float  # first submission until the last outcome
    wall_time_s: float
    failures: list[tuple[dict[str, Any], str]]
    n_saves: int = 0  # times the file was written by this invocation

    @property
    def points_per_second(self) -> float:
        return self.n_run / self.run_s if self.run_s > 0 else math.nan

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["path"] = str(self.path)
        d["points_per_second"] = self.points_per_second
        d["failures"] = [{"coords": c, "error": e} for c, e in self.failures]
        return d


class SweepFailedError(RuntimeError):
    """``fail_fast``: a point failed; the file holds everything finished so far."""

    def __init__(self, message: str, summary: SweepSummary) -> None:
        super().__init__(message)
        self.summary = summary


@contextlib.contextmanager
def local_cluster(workers: int) -> Iterator[Any]:
    """A loopback ``LocalCluster`` of ``workers`` single-threaded processes and its client."""
    require("distributed", "cluster", "a sweep on dask.distributed")
    from dask.distributed import Client, LocalCluster

    from stosim.sweep.worker import IgnoreInterrupt, stop_workers_now

    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers = {workers!r} must be an integer >= 1")
    import dask

    # set before each worker process starts (glibc reads it then): see PRE_SPAWN_ENV
    settings = {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in PRE_SPAWN_ENV.items()}
    settings.update(WORKER_CONFIG)
    with tempfile.TemporaryDirectory(prefix="stosim-dask-") as scratch, dask.config.set(settings):
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            env=dict(THREAD_ENV),
            local_directory=scratch,
            silence_logs=logging.ERROR,
            plugins=(IgnoreInterrupt(),),  # Ctrl-C: see worker.py
            # no dashboard; the scheduler's small HTTP endpoint (health, metrics) on a
            # free loopback port rather than trying the shared default 8787 first
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        )
        try:
            client = Client(cluster)
            try:
                client.wait_for_workers(workers)
                yield client
            finally:
                client.close()
        except KeyboardInterrupt:  # Ctrl-C: the tasks are cancelled and the file saved; no graceful wait
            stop_workers_now(cluster)
            raise
        finally:
            cluster.close()


@contextlib.contextmanager
def _client(workers: int | None, scheduler: str | None, client: Any) -> Iterator[tuple[Any, str]]:
    if client is not None:
        yield client, "given client"
        return
    if scheduler is not None:
        require("distributed", "cluster", "a sweep on dask.distributed")
        from dask.distributed import Client

        try:
            c = Client(scheduler, timeout="20s")
        except OSError as exc:
            raise ConnectionError(f"cannot connect to the dask scheduler {scheduler}: {exc}") from None
        try:
            try:
                c.wait_for_workers(1, timeout=SCHEDULER_WORKER_WAIT_S)
            except (TimeoutError, OSError):
                raise ConnectionError(
                    f"the dask scheduler {scheduler} has had no workers for "
                    f"{SCHEDULER_WORKER_WAIT_S:g} s; start some (dask worker {scheduler})"
                ) from None
            yield c, scheduler
        finally:
            c.close()
        return
    with local_cluster(workers) as c:
        yield c, f"LocalCluster({workers} workers)"


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover
        return max(1, os.cpu_count() or 1)


def run_sweep(
    sweep: ResolvedSweep,
    out: str | Path,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    resume: bool = False,
    overwrite: bool = False,
    fail_fast: bool = False,
    flush_seconds: float = 1.0,
    on_start: Callable[[int, int], None] | None = None,
    on_point: Callable[[PointEvent], None] | None = None,
) -> SweepSummary:
    """Run the points of ``sweep`` not yet done and store them in ``out`` (HDF5).

    - ``workers``: size of the LocalCluster (default: the CPU cores); ``scheduler``: address of an
      existing scheduler instead (``tcp://HOST:PORT``); ``client``: an existing dask Client.
    - An existing ``out`` needs ``resume`` (continue it: same resolved spec, run what is not done)
      or ``overwrite`` (start again).
    - A failing point is recorded (status "failed", its error message) and the sweep goes on;
      ``fail_fast`` stops at the first failure instead (after saving) with :class:`SweepFailedError`.
    - ``on_start(to_run, total)`` and ``on_point(event)`` report progress.
    """
    out = Path(out)
    if resume and overwrite:
        raise ValueError("resume=True and overwrite=True exclude each other: continue the file or replace it")
    if sum(x is not None for x in (scheduler, client)) > 1 or (workers is not None and (scheduler or client)):
        raise ValueError("give one of workers (a LocalCluster), scheduler (an address) or client")
    if not math.isfinite(flush_seconds) or flush_seconds < 0:
        raise ValueError(f"flush_seconds = {flush_seconds!r} must be >= 0")
    if out.exists() and not (resume or overwrite):
        raise FileExistsError(f"{out} exists; pass resume=True to continue it or overwrite=True to replace it")
    if resume and not out.exists():
        raise FileNotFoundError(f"resume=True: {out} does not exist; run without resume=True to start the sweep")
    if workers is None and scheduler is None and client is None:
        workers = default_workers()

    t_start = time.perf_counter()
    with output_lock(out):  # one writer; temporary files a killed run left beside out are removed
        state = SweepState(sweep)
        n_resumed = state.load_completed(out) if resume else 0
        todo = [p for p in sweep.points if not state.is_done(p)]
        state.started_utc = state.started_utc or utc_now()
        run_record: dict[str, Any] = {
            "started_utc": utc_now(),
            "finished_utc": None,
            "points_to_run": len(todo),
            "resumed_points": n_resumed,
            "cluster": scheduler or (f"LocalCluster({workers})" if workers else "client"),
        }
        failures: list[tuple[dict[str, Any], str]] = []
        startup_s = run_s = 0.0
        stopped: tuple[Point, str] | None = None
        cluster_name = "none (nothing to run)"
        with contextlib.ExitStack() as stack:
            if todo:  # connect (or start the cluster) before touching the file
                t0 = time.perf_counter()
                c, cluster_name = stack.enter_context(_client(workers, scheduler, client))
                startup_s = time.perf_counter() - t0
            state.runs.append(run_record)
            try:
                state.save(out)  # the file exists from here on: all points pending (or as resumed)
                if on_start is not None:
                    on_start(len(todo), len(sweep.points))
                if todo:
                    t1 = time.perf_counter()
                    stopped = _collect(c, sweep, todo, state, out, failures, fail_fast, flush_seconds, on_point)
                    run_s = time.perf_counter() - t1
            finally:
                run_record["finished_utc"] = utc_now()
                state.save(out, finished=True)
        counts = state.counts()
        summary = SweepSummary(
            path=out,
            n_points=len(sweep.points),
            n_done=counts[STATUS_DONE],
            n_failed=counts[STATUS_FAILED],
            n_pending=counts["pending"],
            n_run=sum(1 for p in todo if state.status[p.index] != "pending"),
            n_resumed=n_resumed,
            workers=workers,
            scheduler=cluster_name,
            startup_s=startup_s,
            run_s=run_s,
            wall_time_s=time.perf_counter() - t_start,
            failures=failures,
            n_saves=state.saves,
        )
    if stopped is not None:
        point, error = stopped
        raise SweepFailedError(
            f"point {_where(point)} failed (fail_fast=True): {error}; {summary.n_done} done points "
            f"saved in {out}, {summary.n_pending} pending",
            summary,
        )
    return summary


def _where(point: Point) -> str:
    return ", ".join(f"{k} = {v}" for k, v in point.coords.items()) or "(the only point)"


def _collect(
    client: Any,
    sweep: ResolvedSweep,
    todo: list[Point],
    state: SweepState,
    out: Path,
    failures: list[tuple[dict[str, Any], str]],
    fail_fast: bool,
    flush_seconds: float,
    on_point: Callable[[PointEvent], None] | None,
) -> tuple[Point, str] | None:
    """Submit ``todo``, record outcomes as they complete, save every ``flush_seconds``."""
    from dask.distributed import as_completed

    token = os.urandom(4).hex()
    futures = {}
    for p in todo:
        fut = client.submit(
            execute_point,
            sweep.kind.name,
            p.config,
            key=f"stosim-sweep-{sweep.spec.name}-{p.flat}-{token}",
            priority=-p.flat,
            retries=0,
        )
        futures[fut.key] = (fut, p)
    ac = as_completed([f for f, _ in futures.values()], with_results=False)
    finished = 0
    stopped: tuple[Point, str] | None = None

    def record(fut: Any) -> tuple[Point, str | None]:
        """Store the outcome of a finished future; returns its point and its error (None if done)."""
        nonlocal finished
        _, point = futures[fut.key]
        try:
            outcome = fut.result()
        except Exception as exc:  # a lost worker, a cancelled task
            outcome = {"status": STATUS_FAILED, "error": f"{type(exc).__name__}: {exc}", "wall_time_s": math.nan}
        fut.release()
        state.record(point, outcome)
        finished += 1
        error = outcome.get("error", "")
        if outcome["status"] != STATUS_DONE:
            failures.append((dict(point.coords), error))
        if on_point is not None:
            on_point(
                PointEvent(
                    point=point,
                    status=outcome["status"],
                    error=error,
                    wall_time_s=float(outcome.get("wall_time_s", math.nan)),
                    finished=finished,
                    to_run=len(todo),
                )
            )
        return point, (error if outcome["status"] != STATUS_DONE else None)

    dirty = False
    last_save = time.monotonic()
    try:
        while True:
            now = time.monotonic()
            if dirty and now - last_save >= flush_seconds:
                state.save(out)
                dirty, last_save = False, time.monotonic()
            if ac.is_empty():
                break
            if not dirty:
                batch = ac.next_batch(block=True)
            elif ac.has_ready():
                batch = ac.next_batch(block=False)
            else:
                time.sleep(min(0.05, max(0.0, last_save + flush_seconds - now)))
                continue
            for fut in batch:
                point, error = record(fut)
                dirty = True
                if fail_fast and error is not None and stopped is None:
                    stopped = point, error  # the rest of the batch is finished too: record it as well
            if stopped is not None:
                while ac.has_ready():  # and whatever else has finished by now
                    for fut in ac.next_batch(block=False):
                        record(fut)
                state.save(out)
                return stopped
    finally:
        pending = [f for f, _ in futures.values() if not f.done()]
        if pending:
            client.cancel(pending)
    if dirty:
        state.save(out)
    return None
