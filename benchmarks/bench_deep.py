"""The deep coupled STOs (two STO layers) against the plain coupled STOs, one training step side by side.

Both models are built as ``stosim train`` builds them (:func:`stosim.studies.training.build_model`) from the
table's files, ``experiments/table1/sto.toml`` and ``experiments/table1/deep-sto.toml`` (N = 200, mu = 500 Oe,
T = 300 ps at 1 ps, batch 500, float32, Adam): read-in -> STOs -> readout, and read-in -> STOs -> Linear(600,
600) -> STOs -> readout. What is measured, in one process, in interleaved rounds (the order alternates),
medians over the rounds:

- one training step (Adam's zero_grad, forward, cross-entropy, backward, step) on a batch of random pixels of
  MNIST's shape (they cost what images cost: every STO step is the same arithmetic whatever the state);
- one evaluation chunk (forward without a graph, as ``training.evaluate_accuracy`` runs the test set: max(batch, 256)
  images);
- one epoch of the tables' training, **extrapolated**: ceil(24,345 / batch) steps + ceil(10,000 / chunk)
  evaluation chunks (``epoch_time_s`` of ``stosim train`` counts both); ``deep_over_plain_epoch_ratio`` is the
  deep epoch over the plain one;
- where the step's time goes (torch profiler, one extra step of each model): the share spent in the STO layers
  (``_STOFlow`` forward and ``_STOFlowBackward``, the Numba kernels and their adjoint) and the rest (linear
  layers, the read-in normalization and input checks, Adam).

A deep step is two plain steps' STO work plus one more 600 x 600 linear layer, so the ratio is ~2 by
construction; a ratio well above 2 would point at something that only the deep model does.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MNIST_TRAIN, MNIST_TEST, MNIST_PIXELS, MNIST_CLASSES = 24_345, 10_000, 784, 10
KINDS = ("sto", "deep-sto")
_STO_EVENTS = ("_STOFlow", "_STOFlowBackward")


def build(name: str, batch: int | None = None):
    """(model, optimizer, cfg) of ``experiments/table1/<name>.toml`` as ``stosim train`` builds them."""
    from stosim.studies.training import build_model, load_train_config

    overrides = {} if batch is None else {"batch_size": batch}
    cfg = load_train_config(REPO / "experiments" / "table1" / f"{name}.toml", **overrides)
    model = build_model(cfg, MNIST_PIXELS, MNIST_CLASSES, (28, 28))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)  # the files' optimizer
    return model, opt, cfg


def _train_step(model, opt, x, y) -> None:
    model.train()
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def _eval_chunk(model, x) -> None:
    model.eval()
    with torch.no_grad():
        model(x)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def sto_share(model, opt, x, y) -> float:
    """Fraction of one training step's profiled CPU time spent in the STO layers (forward + adjoint)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _train_step(model, opt, x, y)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    sto = sum(e.self_cpu_time_total for e in events if e.key in _STO_EVENTS)
    return sto / total


def bench(batch: int = 500, rounds: int = 3, profile: bool = True) -> dict:
    """Side-by-side plain and deep STO training steps and evaluation chunks; medians over ``rounds``."""
    built = {name: build(name, batch) for name in KINDS}
    batch = built["sto"][2].batch_size
    chunk = max(batch, 256)
    gen = torch.Generator().manual_seed(0)
    dtype = next(built["sto"][0].parameters()).dtype
    x = torch.rand(max(batch, chunk), MNIST_PIXELS, generator=gen).to(dtype)
    y = torch.randint(0, MNIST_CLASSES, (batch,), generator=gen)
    paths = {}
    for name, (model, opt, _) in built.items():
        paths[f"{name}/step"] = lambda m=model, o=opt: _train_step(m, o, x[:batch], y)
        paths[f"{name}/eval"] = lambda m=model: _eval_chunk(m, x[:chunk])
    for fn in paths.values():  # warm up (compiles on a cold Numba cache)
        fn()
    times: dict[str, list[float]] = {k: [] for k in paths}
    for r in range(rounds):
        keys = list(paths) if r % 2 == 0 else list(reversed(paths))
        for key in keys:
            times[key].append(_timed(paths[key]))
    med = {k: statistics.median(v) for k, v in times.items()}
    n_steps, n_chunks = -(-MNIST_TRAIN // batch), -(-MNIST_TEST // chunk)
    out: dict = {
        "batch": batch,
        "eval_chunk": chunk,
        "rounds": rounds,
        "dtype": str(dtype).removeprefix("torch."),
        "threads_torch": torch.get_num_threads(),
        "epoch_steps": n_steps,
        "epoch_eval_chunks": n_chunks,
    }
    for name, label in (("sto", "plain"), ("deep-sto", "deep")):
        out[f"{label}_step_s"] = med[f"{name}/step"]
        out[f"{label}_step_s_min_max"] = [min(times[f"{name}/step"]), max(times[f"{name}/step"])]
        out[f"{label}_eval_chunk_s"] = med[f"{name}/eval"]
        out[f"{label}_epoch_s"] = n_steps * med[f"{name}/step"] + n_chunks * med[f"{name}/eval"]
    out["deep_over_plain_step_ratio"] = out["deep_step_s"] / out["plain_step_s"]
    out["deep_over_plain_eval_ratio"] = out["deep_eval_chunk_s"] / out["plain_eval_chunk_s"]
    out["deep_over_plain_epoch_ratio"] = out["deep_epoch_s"] / out["plain_epoch_s"]
    if profile:
        for name, label in (("sto", "plain"), ("deep-sto", "deep")):
            model, opt, _ = built[name]
            out[f"{label}_sto_layer_share"] = sto_share(model, opt, x[:batch], y)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="add one final JSON line")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: the files', 500)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--no-profile", action="store_true", help="skip the profiled step of each model")
    args = parser.parse_args()
    load_before = " ".join(f"{v:.2f}" for v in os.getloadavg())
    res = bench(args.batch or 500, args.rounds, profile=not args.no_profile)
    res["loadavg_before"] = load_before
    res["loadavg_after"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(
        f"plain vs deep coupled STOs (N = 200, 300 x 1 ps, batch {res['batch']}, {res['dtype']}, "
        f"{res['threads_torch']} torch threads); medians of {res['rounds']} interleaved rounds; "
        f"load average before {load_before}, after {res['loadavg_after']}"
    )
    for what, key in (("training step", "step_s"), (f"evaluation chunk ({res['eval_chunk']})", "eval_chunk_s")):
        print(f"{what:28s} plain {res[f'plain_{key}']:7.2f} s   deep {res[f'deep_{key}']:7.2f} s")
    print(
        f"{'epoch (EXTRAPOLATED)':28s} plain {res['plain_epoch_s']:7.0f} s   deep {res['deep_epoch_s']:7.0f} s   "
        f"({res['epoch_steps']} steps + {res['epoch_eval_chunks']} evaluation chunks)"
    )
    print(
        f"deep / plain: step {res['deep_over_plain_step_ratio']:.2f}, evaluation "
        f"{res['deep_over_plain_eval_ratio']:.2f}, epoch {res['deep_over_plain_epoch_ratio']:.2f}"
    )
    if "plain_sto_layer_share" in res:
        print(
            f"share of a step in the STO layers (forward + adjoint, torch profiler): plain "
            f"{res['plain_sto_layer_share']:.2f}, deep {res['deep_sto_layer_share']:.2f}"
        )
    if args.json:
        print(json.dumps(res))


if __name__ == "__main__":
    main()
