"""The heat-map workload: time of one point and of a whole map, on one worker and on k Dask workers.

For a ``train`` sweep spec (default: the study-scale coupled-STO heat map,
``experiments/heatmap-sto-coupling-duration.toml``; ``--spec reduced``: its reduced-scale protocol,
``experiments/heatmaps/sto-coupling-duration-reduced.toml``) the benchmark takes the grid point with the
largest ``duration``, builds its model exactly as a sweep point does (the spec's point configuration
validated as :class:`~stosim.studies.sweep_points.TrainPoint`, its ``train_config()`` built by
:func:`~stosim.studies.training.build_model`, the optimizer of ``training._optimizer``), with one compute
thread as a sweep worker runs (``sweep_points._one_thread`` and a BLAS limit of 1), on real MNIST images
(the spec's ``data_dir``, or ``STOSIM_MNIST_DIR`` when set). After one warm-up call of each (Numba
compilation, not timed) it times, with ``time.process_time`` (CPU) and ``time.perf_counter`` (wall):

- ``--steps`` training steps (zero_grad, forward, cross-entropy, backward, optimizer step) at the spec's
  batch size and dtype (median);
- one evaluation chunk (forward without a graph over max(batch, 256) test images, as ``training.evaluate_accuracy``);
- when the spec sets ``ftmle_samples``: the FTMLE of one test sample (``run_ftmle.dataset_ftmle`` with
  ``limit = 1``, so it includes its data loading and model building), scaled to the point's
  2 x ftmle_samples samples (before and after training).

Cost model (EXTRAPOLATED, printed with the numbers)::

    point(T_max) = epochs x (ceil(n_train / batch) x step + ceil(n_test / chunk) x eval_chunk)
                   + 2 x ftmle_samples x ftmle_sample
    point(T)     = point(T_max) x T / T_max          (every cost is T / dt RK4 steps of the same batch)
    map          = sum over grid points and seeds of point(T)
    map(k)       = map / (k x efficiency),  efficiency = sweep_speedup / 2

``sweep_speedup`` is ``speedup_2_vs_1`` of ``bench_sweep.py`` (points/s on 2 workers over 1 worker;
default 1.9). A row for k workers assumes k free cores scaling as the 2-worker measurement did; nothing
beyond 2 workers was measured on this machine. Left out: each point's data loading and model building
(8-9 s per point of the reduced map as run) and the sweep's scheduling and writes (``bench_sweep.py``).
The machine is shared: the load average is printed, and on a loaded machine wall time exceeds CPU time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SPECS = {
    "study": REPO / "experiments" / "heatmap-sto-coupling-duration.toml",
    "reduced": REPO / "experiments" / "heatmaps" / "sto-coupling-duration-reduced.toml",
}
WORKERS = (1, 2, 4, 8, 16, 32)
# The reduced map as run (experiments/heatmaps/RESULTS.md): 20 points in 6,065 s wall on 1 worker at low
# priority under load 6-16; its largest point measured at 66 CPU-s per training epoch (the spec's comments);
# the fastest point of each duration in that run's sweep file (wall_time_s; 5 couplings each), in s by T in ps.
REDUCED_MEASURED = {"map_wall_s_one_worker": 6065.0, "largest_epoch_cpu_s": 66.0}
REDUCED_FASTEST_WALL_S = {50: 32.7, 100: 57.4, 200: 108.4, 300: 155.4}


def _timed(fn) -> tuple[float, float]:
    """(CPU seconds of this process, wall seconds) of one call of ``fn``."""
    c0, w0 = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c0, time.perf_counter() - w0


def _data_dir(spec_dir: str | None) -> Path:
    """MNIST folder: ``STOSIM_MNIST_DIR`` when set, else the spec's ``data_dir`` (relative to the repository)."""
    env = os.environ.get("STOSIM_MNIST_DIR")
    if env:
        return Path(env)
    path = Path(spec_dir or "data/mnist")
    return path if path.is_absolute() else REPO / path


def largest_point(spec_path: Path):
    """(sweep, point configuration validated as a TrainPoint) of the grid point with the largest duration (of
    those, the largest coupling: the cost does not depend on it, the reduced map's timing was taken there)."""
    from stosim.studies.sweep_points import TrainPoint
    from stosim.sweep.spec import load_spec

    sweep = load_spec(spec_path)
    if sweep.kind.name != "train":
        raise SystemExit(f"--spec: a train sweep is needed, {spec_path} is kind = {sweep.kind.name!r}")
    point = max(sweep.points, key=lambda p: (p.config["duration"], p.config.get("coupling", 0.0)))
    return sweep, TrainPoint.model_validate(point.config)


def bench(spec_path: Path, steps: int = 3) -> dict:
    """Time the largest point's training step, evaluation chunk and FTMLE sample; extrapolate (module docstring)."""
    from stosim.datasets import load_dataset
    from stosim.studies.sweep_points import _one_thread
    from stosim.studies.training import _optimizer, _torch_dtype, build_model, model_inputs

    sweep, point = largest_point(spec_path)
    data_dir = _data_dir(point.data_dir)
    if not data_dir.is_dir() or not any(data_dir.glob("train-images*")):
        raise SystemExit(
            f"MNIST not found in {data_dir} (the spec's data_dir, or set STOSIM_MNIST_DIR); nothing measured"
        )
    point = point.model_copy(update={"data_dir": str(data_dir)})
    cfg = point.train_config()
    _one_thread()
    out: dict = {}
    with threadpool_limits(limits=1):
        train_ds, test_ds = load_dataset(
            cfg.dataset, cfg.data_dir, False, seed=cfg.seed, limit_train=cfg.limit_train, limit_test=cfg.limit_test
        )
        n_train, n_test = len(train_ds), len(test_ds)
        dtype = _torch_dtype(cfg)
        batch, chunk = cfg.batch_size, max(cfg.batch_size, 256)
        x_train, y_train = model_inputs(cfg, train_ds, dtype), torch.as_tensor(train_ds.labels, dtype=torch.int64)
        x_test = model_inputs(cfg, test_ds, dtype)
        model = build_model(cfg, x_train.shape[1], train_ds.n_classes, train_ds.image_shape)
        opt = _optimizer(cfg, [p for p in model.parameters() if p.requires_grad])

        def step(k: int) -> None:
            i = (k * batch) % max(1, n_train - batch)
            model.train()
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x_train[i : i + batch]), y_train[i : i + batch])
            loss.backward()
            opt.step()

        def evaluate() -> None:
            model.eval()
            with torch.no_grad():
                model(x_test[:chunk])

        t_compile = _timed(lambda: (step(0), evaluate()))  # warm-up: Numba compilation / cache loading
        step_times = [_timed(lambda k=k: step(k + 1)) for k in range(steps)]
        eval_time = _timed(evaluate)
        ftmle_time = (0.0, 0.0)
        if point.ftmle_samples > 0:
            from stosim.studies.run_ftmle import dataset_ftmle

            dataset_ftmle(cfg, None, limit=1)  # warm-up (the FTMLE kernels compile)
            ftmle_time = _timed(lambda: dataset_ftmle(cfg, None, limit=1))
    n_batches, n_chunks = math.ceil(n_train / batch), math.ceil(n_test / chunk)
    t_max = max(p.config["duration"] for p in sweep.points)
    weight = sum(p.config["duration"] / t_max for p in sweep.points)  # map cost in units of the largest point
    for clock, j in (("cpu", 0), ("wall", 1)):
        step_s = statistics.median(t[j] for t in step_times)
        epoch_s = n_batches * step_s + n_chunks * eval_time[j]
        ftmle_s = 2 * point.ftmle_samples * ftmle_time[j]
        point_s = cfg.epochs * epoch_s + ftmle_s
        out[clock] = {
            "step_s": step_s,
            "eval_chunk_s": eval_time[j],
            "ftmle_sample_s": ftmle_time[j],
            "epoch_s": epoch_s,
            "ftmle_s": ftmle_s,
            "point_s_largest": point_s,
            "map_s_one_worker": point_s * weight,
            "warmup_s": t_compile[j],
        }
    out.update(
        spec=str(spec_path.relative_to(REPO) if spec_path.is_relative_to(REPO) else spec_path),
        largest_point={
            "coupling_oe": point.coupling,
            "duration_s": point.duration,
            "n": cfg.n,
            "substrate": cfg.substrate,
        },
        dtype=cfg.dtype,
        batch=batch,
        eval_chunk=chunk,
        steps_timed=steps,
        n_train=n_train,
        n_test=n_test,
        epochs=cfg.epochs,
        batches_per_epoch=n_batches,
        eval_chunks_per_epoch=n_chunks,
        ftmle_samples=point.ftmle_samples,
        points=len(sweep.points),
        map_weight_in_largest_points=weight,
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--spec", default="study", help="'study' (default), 'reduced' or the path of a train sweep spec"
    )
    parser.add_argument("--steps", type=int, default=3, help="training steps timed after the warm-up (default 3)")
    parser.add_argument(
        "--sweep-speedup",
        type=float,
        default=1.9,
        help="points/s on 2 workers over 1 worker, speedup_2_vs_1 of bench_sweep.py (default 1.9)",
    )
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu", help="clock of the map rows (default cpu)")
    parser.add_argument("--json", action="store_true", help="add one final JSON line")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error(f"--steps: at least 1, got {args.steps}")
    if not 0 < args.sweep_speedup <= 2:
        parser.error(f"--sweep-speedup: in (0, 2] (2 workers over 1), got {args.sweep_speedup}")
    spec = SPECS.get(args.spec, Path(args.spec))
    load_before = " ".join(f"{v:.2f}" for v in os.getloadavg())
    res = bench(spec, args.steps)
    res["loadavg_before"] = load_before
    res["loadavg_after"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    efficiency = args.sweep_speedup / 2
    res["sweep_speedup_2_vs_1"] = args.sweep_speedup
    res["clock"] = args.clock
    c = res[args.clock]
    res["point_s_largest"] = c["point_s_largest"]
    res["map_s_one_worker"] = c["map_s_one_worker"]
    res["map_s_by_workers"] = {str(k): c["map_s_one_worker"] / (1.0 if k == 1 else k * efficiency) for k in WORKERS}
    lp = res["largest_point"]
    print(
        f"{res['spec']}: largest point "
        + (
            f"mu = {lp['coupling_oe']:g} Oe, T = {lp['duration_s'] * 1e12:g} ps, "
            if lp["substrate"] == "sto"
            else f"{lp['substrate']}, T = {lp['duration_s']:g} (its time unit), "
        )
        + f"N = {lp['n']}, {res['dtype']}, batch {res['batch']}, 1 compute thread; load average before "
        f"{load_before}, after {res['loadavg_after']}"
    )
    print(f"{'measured':32s} {'CPU s':>10s} {'wall s':>10s}")
    for label, key in (
        (f"training step (median of {res['steps_timed']})", "step_s"),
        (f"evaluation chunk ({res['eval_chunk']})", "eval_chunk_s"),
        ("FTMLE, one sample (with loading)", "ftmle_sample_s"),
        ("warm-up (compile), not counted", "warmup_s"),
    ):
        print(f"{label:32s} {res['cpu'][key]:10.2f} {res['wall'][key]:10.2f}")
    print(
        f"cost model (EXTRAPOLATED): epoch = {res['batches_per_epoch']} steps + {res['eval_chunks_per_epoch']} "
        f"evaluation chunks ({res['n_train']} train, {res['n_test']} test images); point = {res['epochs']} epochs "
        f"+ 2 x {res['ftmle_samples']} FTMLE samples; point(T) = point(T_max) T / T_max; map = "
        f"{res['map_weight_in_largest_points']:.2f} largest points ({res['points']} points)"
    )
    for label, key in (("epoch", "epoch_s"), ("FTMLE of a point", "ftmle_s"), ("largest point", "point_s_largest")):
        print(f"{label:32s} {res['cpu'][key]:10.0f} {res['wall'][key]:10.0f}")
    print(
        f"map on k workers ({args.clock} clock; map / (k x {efficiency:.2f}), efficiency = speed-up "
        f"{args.sweep_speedup:g} of 2 workers / 2 from bench_sweep.py; k > 2 assumes k free cores scaling "
        "as 2 did, not measured):"
    )
    for k, s in res["map_s_by_workers"].items():
        print(f"  k = {k:>2s}: {s:12.0f} s = {s / 3600:8.2f} h")
    if Path(res["spec"]) == SPECS["reduced"].relative_to(REPO):
        m = REDUCED_MEASURED
        print(
            f"check against the reduced map as run: largest point's epoch measured "
            f"{m['largest_epoch_cpu_s']:.0f} CPU-s "
            f"(here {res['cpu']['epoch_s']:.0f}, ratio {res['cpu']['epoch_s'] / m['largest_epoch_cpu_s']:.2f}); "
            f"map measured {m['map_wall_s_one_worker']:.0f} s wall on 1 worker at low priority under load 6-16 "
            f"(here {res['cpu']['map_s_one_worker']:.0f} CPU-s, {res['wall']['map_s_one_worker']:.0f} wall-s)"
        )
        t_max_ps = lp["duration_s"] * 1e12
        rows = ", ".join(
            f"T = {t:g} ps: {w:.0f} s vs {res['wall']['point_s_largest'] * t / t_max_ps:.0f} s"
            for t, w in REDUCED_FASTEST_WALL_S.items()
        )
        print(f"fastest point of each T in that run (wall) vs this extrapolation (wall): {rows}")
    if args.json:
        print(json.dumps(res))


if __name__ == "__main__":
    main()
