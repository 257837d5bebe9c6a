"""Sweeps on fresh workers (empty Numba caches, LocalCluster and an external scheduler) and Ctrl-C.

A worker with an empty Numba cache compiles the kernels of its first point; Numba re-reads its
environment before each compilation, so a worker whose ``NUMBA_NUM_THREADS`` changed after Numba was
imported failed every point. The sweep is started the way the installed ``stosim`` script starts it: a
file run as ``__main__`` (a spawned dask worker imports it again, and with it Numba, before the nanny
applies the worker's environment).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import stosim
from stosim.cli import main
from stosim.sweep import load_spec, read_sweep, run_sweep
from stosim.sweep.runner import local_cluster

ROOT = Path(stosim.__file__).resolve().parent.parent
# what pip writes as the `stosim` console script
ENTRY_POINT = "import sys\nfrom stosim.cli import main\nif __name__ == '__main__':\n    sys.exit(main())\n"

# 2 points of the coupled STOs (Numba kernels) on the embedded digits, as small as a train point gets
STO_SPEC = """
name = "fresh"
kind = "train"
seeds = [0]
[base]
substrate = "sto"
dataset = "digits"
n = 4
dt = "1 ps"
duration = "20 ps"
epochs = 1
batch_size = 32
limit_train = 64
limit_test = 32
[grid]
coupling = ["100 Oe", "500 Oe"]
"""
# 12 quick points without Numba (a linear model): Ctrl-C lands while most are still to run
QUICK_SPEC = """
name = "quick"
kind = "train"
seeds = [0, 1, 2]
[base]
substrate = "linear"
dataset = "digits"
epochs = 1
batch_size = 32
limit_train = 200
limit_test = 50
[grid]
lr = [0.01, 0.02, 0.03, 0.05]
"""
INTERRUPT_EXIT_S = 10.0


def _write(folder: Path, text: str, name: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def _entry_point(folder: Path) -> Path:
    return _write(folder, ENTRY_POINT, "stosim_script.py")


def _values(path: Path) -> dict[str, np.ndarray]:
    """Every data variable of a sweep file (the per-point results, their status and errors)."""
    ds = read_sweep(path)
    return {name: ds[name].values for name in ds.data_vars if not name.startswith("wall_time")}


def _stop(proc: subprocess.Popen) -> None:
    """End a process this test started, and its process group (its dask workers)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)


# ---------------------------------------------------------------------------------------------
# Numba's thread pool in a worker
# ---------------------------------------------------------------------------------------------
PROBE = """
import os, sys
import numba
numba.set_num_threads(1)                # the pool runs, its size read at import (NUMBA_NUM_THREADS=2)
os.environ["NUMBA_NUM_THREADS"] = "1"   # as a dask nanny's env= sets it after that
if sys.argv[1] == "worker-setup":
    from stosim.studies.sweep_points import _one_thread
    _one_thread()
@numba.njit
def twice(x):
    return 2 * x
print(twice(21), numba.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
"""


def test_a_changed_numba_thread_count_does_not_fail_the_next_compilation(tmp_path):
    probe = _write(tmp_path, PROBE, "probe.py")
    env = _env(NUMBA_NUM_THREADS="2", NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    bare = subprocess.run(
        [sys.executable, str(probe), "bare"], env=env, capture_output=True, text=True, check=False, timeout=300
    )
    assert bare.returncode != 0 and "Cannot set NUMBA_NUM_THREADS" in bare.stderr, bare.stderr  # the failure
    setup = subprocess.run(
        [sys.executable, str(probe), "worker-setup"], env=env, capture_output=True, text=True, check=False, timeout=300
    )
    assert setup.returncode == 0, setup.stderr
    assert setup.stdout.split() == ["42", "1", "2"]  # compiled; one thread used of a pool of two


# ---------------------------------------------------------------------------------------------
# fresh workers: empty Numba caches
# ---------------------------------------------------------------------------------------------
def _all_done(path: Path, n_points: int) -> dict[str, np.ndarray]:
    values = _values(path)
    status = values["status"].astype(str)
    errors = [e for e in values["error"].astype(str).ravel() if e]
    assert status.size == n_points and (status == "done").all(), errors
    acc = values["test_accuracy"]
    assert np.isfinite(acc).all() and ((acc >= 0) & (acc <= 100)).all()  # percent
    return values


@pytest.fixture(scope="module")
def fresh_local_run(tmp_path_factory):
    """The STO sweep by the `stosim` script on a 2-worker LocalCluster whose Numba cache is empty."""
    folder = tmp_path_factory.mktemp("fresh-local")
    spec, out, cache = _write(folder, STO_SPEC, "fresh.toml"), folder / "fresh.h5", folder / "numba-cache"
    cache.mkdir()
    cmd = [sys.executable, str(_entry_point(folder)), "sweep", str(spec), "--out", str(out), "--workers", "2", "--json"]
    done = subprocess.run(
        cmd, env=_env(NUMBA_CACHE_DIR=str(cache)), capture_output=True, text=True, check=False, timeout=1200
    )
    return spec, out, cache, done


@pytest.mark.slow  # every worker compiles the STO kernels: 1-3 minutes on 2 cores
def test_local_cluster_sweep_with_an_empty_numba_cache(fresh_local_run):
    _, out, cache, done = fresh_local_run
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert (summary["n_done"], summary["n_failed"], summary["n_pending"]) == (2, 0, 0)
    _all_done(out, 2)
    assert any(cache.rglob("*.nbi")), "the workers compiled nothing: the cache was not the empty one given"


@pytest.mark.slow  # two fresh worker processes compile the STO kernels: 1-3 minutes on 2 cores
def test_external_scheduler_and_workers_with_their_own_empty_caches(fresh_local_run, tmp_path, capsys):
    """A `dask scheduler` and two `dask worker` processes on 127.0.0.1, each worker with its own empty
    Numba cache (as on two machines); the sweep connects with --scheduler; same values as the LocalCluster."""
    spec, local_out, _, _ = fresh_local_run
    scheduler_file = tmp_path / "scheduler.json"
    procs: list[subprocess.Popen] = []
    try:
        with open(tmp_path / "scheduler.log", "wb") as log:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "distributed.cli.dask_scheduler",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        "0",
                        "--no-dashboard",
                        "--scheduler-file",
                        str(scheduler_file),
                    ],
                    env=_env(),
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                    cwd=tmp_path,
                )
            )
        t0 = time.monotonic()
        while not scheduler_file.exists() or not scheduler_file.read_text(encoding="utf-8").strip():
            assert time.monotonic() - t0 < 120, (tmp_path / "scheduler.log").read_text()
            assert procs[0].poll() is None, (tmp_path / "scheduler.log").read_text()
            time.sleep(0.2)
        time.sleep(0.2)  # the file is written at once, but give it a moment to be complete
        address = json.loads(scheduler_file.read_text(encoding="utf-8"))["address"]
        caches = []
        for k in range(2):
            cache = tmp_path / f"worker-{k}-numba-cache"
            cache.mkdir()
            caches.append(cache)
            with open(tmp_path / f"worker-{k}.log", "wb") as log:
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "distributed.cli.dask_worker",
                            address,
                            "--nthreads",
                            "1",
                            "--nworkers",
                            "1",
                            "--host",
                            "127.0.0.1",
                            "--no-dashboard",
                            "--local-directory",
                            str(tmp_path / f"worker-{k}"),
                        ],
                        env=_env(NUMBA_CACHE_DIR=str(cache)),
                        stdout=log,
                        stderr=log,
                        start_new_session=True,
                        cwd=tmp_path,
                    )
                )
        from dask.distributed import Client

        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
        out = tmp_path / "external.h5"
        capsys.readouterr()
        rc = main(["sweep", str(spec), "--out", str(out), "--scheduler", address, "--json"])
        captured = capsys.readouterr()
        assert rc == 0, captured.err
        summary = json.loads(captured.out.strip().splitlines()[-1])
        assert (summary["n_done"], summary["n_failed"]) == (2, 0)
        values = _all_done(out, 2)
        assert any(any(c.rglob("*.nbi")) for c in caches)  # compiled in a worker's own, empty cache
        reference = _values(local_out)
        for name, value in reference.items():
            np.testing.assert_array_equal(values[name], value, err_msg=name)
    finally:
        for proc in reversed(procs):
            _stop(proc)


# ---------------------------------------------------------------------------------------------
# Ctrl-C
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow  # three sweeps of 12 points and two cluster starts: ~1 minute on 2 cores
def test_ctrl_c_stops_the_sweep_and_resume_finishes_it_bit_identical(tmp_path):
    spec = _write(tmp_path, QUICK_SPEC, "quick.toml")
    out = tmp_path / "interrupted.h5"
    cmd = [
        sys.executable,
        str(_entry_point(tmp_path)),
        "sweep",
        str(spec),
        "--out",
        str(out),
        "--workers",
        "2",
        "--flush-seconds",
        "0",
    ]
    # a session of its own: SIGINT to its process group is what Ctrl-C in a terminal sends (workers included)
    proc = subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    lines: list[str] = []
    first_done = threading.Event()

    def read_stderr() -> None:
        for line in proc.stderr:
            lines.append(line)
            if "points run" in line:
                first_done.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert first_done.wait(timeout=300), "".join(lines)
        os.killpg(proc.pid, signal.SIGINT)
        t0 = time.monotonic()
        try:
            rc = proc.wait(timeout=INTERRUPT_EXIT_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {INTERRUPT_EXIT_S} s after Ctrl-C:\n{''.join(lines)}") from None
        exit_s = time.monotonic() - t0
    finally:
        _stop(proc)
        reader.join(timeout=10)
        proc.stderr.close()
    err = "".join(lines)
    assert rc == 130 and "interrupted" in err, err
    assert "Traceback" not in err, err
    assert exit_s < INTERRUPT_EXIT_S
    partial = _values(out)
    status = partial["status"].astype(str)
    assert (status == "done").any(), "the points done before Ctrl-C were not kept"
    assert (status == "pending").any(), "the sweep finished before Ctrl-C; nothing left to resume"

    reference = tmp_path / "uninterrupted.h5"
    sweep = load_spec(spec)
    with local_cluster(2) as client:
        summary = run_sweep(sweep, out, client=client, resume=True)
        assert summary.n_resumed == int((status == "done").sum()) and summary.n_pending == 0
        run_sweep(sweep, reference, client=client)
    resumed, full = _values(out), _values(reference)
    assert set(resumed) == set(full)
    for name, value in full.items():
        np.testing.assert_array_equal(resumed[name], value, err_msg=name)
    done = status == "done"
    for name, value in partial.items():  # the points done before Ctrl-C were kept, not run again
        np.testing.assert_array_equal(resumed[name][done], value[done], err_msg=name)
