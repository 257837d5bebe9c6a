"""A training point in a dask worker with and without glibc's thresholds set (stosim.integrate.allocator).

dask's nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536``, which fixes glibc's malloc
thresholds: each tensor-sized temporary of a training step is then a fresh mapping, zero-filled page by
page. ``execute_point`` sets the thresholds explicitly (``heap_for_temporaries``). Side by side, in
interleaved rounds on the same machine:

- ``in process``: the point run in this process (no such variable);
- ``worker, thresholds left``: the point's training in a fresh worker of a 1-worker ``LocalCluster``
  with the nanny's environment and nothing set;
- ``worker, execute_point``: the same point through ``execute_point`` in a fresh worker.

The point: Lorenz 96, N = 100, T = 1 (100 RK4 steps), MNIST (``--limit`` training images), batch 500,
one epoch, float64, one thread. Printed: the median seconds per configuration and the ratios.

    python benchmarks/bench_worker_heap.py [--rounds 3] [--limit 4000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from stosim.studies.sweep_points import execute_point

MNIST = Path(os.environ.get("STOSIM_MNIST_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))


def _config(limit: int) -> dict:
    return {
        "substrate": "lorenz96", "dataset": "mnist", "data_dir": str(MNIST), "n": 100, "duration": 1.0,
        "dt": 0.01, "forcing": 8.0, "epochs": 1, "batch_size": 500, "lr": 1e-3, "limit_train": limit,
        "limit_test": 500, "optimizer": "adam", "seed": 0,
    }  # fmt: skip


def _thresholds_left(config: dict) -> float:
    """The training of ``execute_point`` without heap_for_temporaries (one thread, as a worker runs it)."""
    from threadpoolctl import threadpool_limits

    from stosim.integrate.threads import one_compute_thread
    from stosim.studies.sweep_points import TrainPoint
    from stosim.studies.training import train

    one_compute_thread()
    t0 = time.perf_counter()
    with threadpool_limits(limits=1):
        train(TrainPoint.model_validate(config).train_config())
    return time.perf_counter() - t0


def _through_execute_point(config: dict) -> float:
    out = execute_point("train", config)
    if out["status"] != "done":
        raise RuntimeError(out["error"])
    return out["wall_time_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=int, default=4000, help="training images (default 4000)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not (MNIST / "train-images-idx3-ubyte.gz").exists() and not (MNIST / "train-images-idx3-ubyte").exists():
        raise SystemExit(f"MNIST not found in {MNIST}; set STOSIM_MNIST_DIR")
    from stosim.sweep.runner import local_cluster

    config = _config(args.limit)
    warm = {**config, "limit_train": 500}
    times: dict[str, list[float]] = {"in process": [], "worker, thresholds left": [], "worker, execute_point": []}
    _through_execute_point(warm)  # imports, Numba cache
    for _ in range(args.rounds):
        times["in process"].append(_through_execute_point(config))
        for name, run in (
            ("worker, thresholds left", _thresholds_left),
            ("worker, execute_point", _through_execute_point),
        ):
            with local_cluster(1) as client:  # a fresh worker process: glibc's thresholds as the nanny left them
                client.submit(run, warm, pure=False).result()  # warm-up (imports, kernels) the same way
                times[name].append(client.submit(run, config, pure=False).result())
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "seconds": med,
        "rounds": args.rounds,
        "limit_train": args.limit,
        "thresholds_left_over_execute_point": med["worker, thresholds left"] / med["worker, execute_point"],
        "execute_point_over_in_process": med["worker, execute_point"] / med["in process"],
        "load_average": os.getloadavg(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"Lorenz 96 training point (N = 100, T = 1, {args.limit} images, 1 epoch), median of {args.rounds} rounds:")
    for name, value in med.items():
        print(f"  {name:28s} {value:8.2f} s")
    print(f"  worker without / with the thresholds set: {result['thresholds_left_over_execute_point']:.2f}x")
    print(f"  worker with the thresholds set / in process: {result['execute_point_over_in_process']:.2f}x")
    print(f"  load average {result['load_average'][0]:.1f}")


if __name__ == "__main__":
    main()
