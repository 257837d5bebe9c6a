"""Sweep machinery: points per second with 1 and 2 dask workers, and its overhead per point.

What is measured, on one small ``train`` sweep (coupled STOs, N = 16, digits, 300 training
images, 2 epochs, T = 100 ps, about 0.5 s each; 3 couplings x ``--seeds`` seeds):

- ``loop``: the same points run one after the other in this process, through the kind's own
  run function with the same thread limits as a worker (1 torch / Numba / BLAS thread), after
  one warm-up point (imports, Numba cache loading);
- ``sweep, k workers``: :func:`stosim.sweep.run_sweep` on a warm ``LocalCluster`` of k processes
  (each worker already ran one point), from the first submission to the last stored result,
  the sweep file rewritten as results arrive (default ``flush_seconds`` = 1 s). The cluster's
  start-up and the workers' first point are reported apart (``startup_s``, ``warmup_s``): they
  are paid once per sweep, not per point.

Reading the numbers: ``speedup_2_vs_1`` = points/s with 2 workers / points/s with 1 (the ideal
on 2 free cores is 2); ``overhead_per_point_ms`` = (sweep with 1 worker - loop) / points, the cost
of scheduling, serialization and the single writer for each point; ``save_ms`` is one atomic
rewrite of this sweep's file. The machine is shared: the load average is printed, and other jobs
lower every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from threadpoolctl import threadpool_limits

from stosim.studies.sweep_points import _one_thread, execute_point
from stosim.sweep import load_spec, read_sweep, run_sweep
from stosim.sweep.runner import local_cluster
from stosim.sweep.store import SweepState

SPEC = """
name = "bench"
kind = "train"
seeds = {seeds}
[base]
substrate = "sto"
dataset = "digits"
n = 16
epochs = 2
limit_train = 300
limit_test = 200
batch_size = 50
duration = "100 ps"
dt = "1 ps"
[grid]
coupling = ["100 Oe", "500 Oe", "1000 Oe"]
"""


def _loop(sweep) -> float:
    """Seconds to run every point in this process (after a warm-up point)."""
    kind = sweep.kind
    _one_thread()
    with threadpool_limits(limits=1):
        kind.run(kind.config.model_validate(sweep.points[0].config))  # warm-up
        t0 = time.perf_counter()
        for p in sweep.points:
            kind.run(kind.config.model_validate(p.config))
        return time.perf_counter() - t0


def _sweep(sweep, workers: int, folder: Path) -> dict:
    t0 = time.perf_counter()
    with local_cluster(workers) as client:
        startup = time.perf_counter() - t0
        t1 = time.perf_counter()
        warm = [
            client.submit(
                execute_point,
                sweep.kind.name,
                sweep.points[0].config,
                workers=[w],
                pure=False,
                allow_other_workers=False,
            )
            for w in client.scheduler_info()["workers"]
        ]
        for f in warm:
            assert f.result()["status"] == "done"
        warmup = time.perf_counter() - t1
        summary = run_sweep(sweep, folder / f"bench-{workers}.h5", client=client, overwrite=True)
    assert summary.n_done == len(sweep.points), summary.failures
    point_s = read_sweep(folder / f"bench-{workers}.h5")["wall_time_s"].values.ravel()
    return {
        "workers": workers,
        "startup_s": startup,
        "warmup_s": warmup,
        "run_s": summary.run_s,
        "points_per_second": summary.points_per_second,
        "saves": summary.n_saves,
        "wall_time_s": summary.wall_time_s,
        "mean_point_s": float(point_s.mean()),
        "busy_fraction": float(point_s.sum() / (workers * summary.run_s)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4, help="seeds per coupling (points = 3 x seeds; default 4)")
    parser.add_argument("--json", action="store_true", help="print one final JSON line")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        folder = Path(tmp)
        (folder / "bench.toml").write_text(SPEC.format(seeds=list(range(args.seeds))), encoding="utf-8")
        sweep = load_spec(folder / "bench.toml")
        n = len(sweep.points)
        loop_s = _loop(sweep)
        one = _sweep(sweep, 1, folder)
        two = _sweep(sweep, 2, folder)
        state = SweepState(sweep)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            state.save(folder / "save.h5")
            times.append(time.perf_counter() - t0)
        save_ms = 1e3 * statistics.median(times)
    load_after = os.getloadavg()
    loop_pps = n / loop_s
    res = {
        "points": n,
        "loop_s": loop_s,
        "loop_points_per_second": loop_pps,
        "sweep_1_worker": one,
        "sweep_2_workers": two,
        "speedup_2_vs_1": two["points_per_second"] / one["points_per_second"],
        "speedup_2_vs_loop": two["points_per_second"] / loop_pps,
        "overhead_per_point_ms": 1e3 * (one["run_s"] - loop_s) / n,
        "save_ms": save_ms,
        "load_average_before": load_before[0],
        "load_average_after": load_after[0],
        "cpus": len(os.sched_getaffinity(0)),
    }
    print(
        f"sweep benchmark: {n} train points (N = 16, digits, 300 images, 2 epochs, T = 100 ps); "
        f"{res['cpus']} CPUs, load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    print(
        f"{'how':<24}{'run (s)':>8}{'points/s':>9}{'s/point':>9}{'busy':>6}{'start-up (s)':>13}"
        f"{'warm-up (s)':>12}{'writes':>7}"
    )
    print(
        f"{'plain loop, 1 process':<24}{loop_s:>8.2f}{loop_pps:>9.2f}{loop_s / n:>9.3f}{'-':>6}{'-':>13}{'-':>12}"
        f"{'-':>7}"
    )
    for r in (one, two):
        print(
            f"{'sweep, %d worker%s' % (r['workers'], 's' if r['workers'] > 1 else ''):<24}{r['run_s']:>8.2f}"
            f"{r['points_per_second']:>9.2f}{r['mean_point_s']:>9.3f}{100 * r['busy_fraction']:>5.0f}%"
            f"{r['startup_s']:>13.2f}{r['warmup_s']:>12.2f}{r['saves']:>7d}"
        )
    print(
        "(s/point: a point's wall time inside its worker; busy: sum of point times / (workers x run time);\n"
        " a longer s/point with 2 workers is CPU contention on the machine, a low busy share is scheduling idle)"
    )
    print(
        f"speed-up 2 vs 1 worker: {res['speedup_2_vs_1']:.2f}x (ideal 2 on 2 free cores); "
        f"2 workers vs the plain loop: {res['speedup_2_vs_loop']:.2f}x"
    )
    print(
        f"overhead of the sweep machinery: {res['overhead_per_point_ms']:.0f} ms per point "
        f"(1 worker vs the loop); one atomic rewrite of the file: {save_ms:.1f} ms"
    )
    if args.json:
        print(json.dumps(res))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
