"""Two git revisions of stosim side by side in one run: the workloads of ``bench_simulate.py`` and
``bench_train.py`` (a reduced, representative subset), timed for ``--base`` and ``--head``.

What is measured
----------------
Wall-clock seconds of one call of each workload (lower is better), on the API both revisions have
(``stosim.evolve``, ``stosim.STOArray`` / ``stosim.load_device``, ``stosim.integrate.flow.sto_flow``,
``stosim.substrates.CoupledSTOArray`` with its old keywords, ``stosim.models.ReservoirClassifier``):

- ``forward_f64`` / ``forward_f32``: ``stosim.evolve`` of N = 200 coupled STOs, batch 64, 300 RK4 steps of
  1 ps (bench_simulate case (a), at bench_train's batch), float64 / float32;
- ``forward_backward_f64`` / ``forward_backward_f32``: forward + backward of the flow map m(0) -> m(T)
  with the Numba adjoint (``sto_flow``), N = 200, batch 64, 300 x 1 ps (bench_train's batch);
- ``batch1_n1`` / ``batch1_n100``: ``stosim.evolve`` at batch 1, N = 1 and N = 100, 4999 steps of 10 ps,
  float64 (bench_simulate case (b): per-call and per-step overhead);
- ``train_step_f32``: one training step (forward, backward, Adam) of the reservoir model, Linear read-in
  784 -> 600, coupled STOs N = 200 (300 x 1 ps), readout 600 -> 10, batch 64, float32 (bench_train's
  MNIST epoch, at a smaller batch); ``train_step_b500_f32``: the same at batch 500 (the MNIST tables' batch:
  one step is 1/49 of an epoch).

How
---
Each revision is checked out into a temporary git worktree outside the repository (``git worktree add
--detach``, removed at the end; ``--keep-worktrees DIR`` keeps them for the next run); each worktree has
its own Numba cache in its ``__pycache__``. Every round starts one fresh Python process per revision with
``PYTHONPATH`` set to that worktree (the process checks that it imported that worktree's stosim); the
process runs each workload once untimed (JIT compilation or loading the cache, first-call set-up), then
``--repeats`` timed measurements (each repeats the call until ``--min-time`` seconds have passed, 0.2 by
default, and gives the time per call: the batch-1 N = 1 call takes about a millisecond), and reports
their median. Rounds are interleaved and alternate the order (base head, head base, ...), so slow drifts
of the machine's load hit both revisions alike. Figures are medians over rounds (min and max shown).
Torch uses as many threads as Numba (``numba.get_num_threads()``), in both revisions.

Reading the numbers: ``head/base`` = head's median time / base's (1.00: as fast; 1.05: head 5 % slower);
``paired`` = the median over rounds of the per-round ratio (the two processes of a round ran back to
back). The load average before and after is printed: on a loaded machine every time grows and the
spread widens, so compare the ratio with the spread of the rounds. ``agree`` compares a digest of each
workload's result between the revisions (relative difference of the sums of |result|): both compute
the same discrete map, so it should be round-off (a benchmark of a wrong answer is worthless).

Usage: ``python benchmarks/bench_revisions.py [--base REV] [--head REV] [--rounds R] [--repeats K]
[--workloads a,b,...] [--keep-worktrees DIR] [--json]``; defaults: base 2b8bdcf (the last commit before
the restructuring into the substrate registry and studies layer), head HEAD (the committed state, not
uncommitted edits), 5 rounds of 3 timed calls. ``--json`` adds one final line with a JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BASE = "2b8bdcf"  # the last commit before the restructuring (registry, studies layer, physics once)

WORKLOADS = {
    "forward_f64": "evolve N=200 B=64 300x1ps float64",
    "forward_f32": "evolve N=200 B=64 300x1ps float32",
    "forward_backward_f64": "sto_flow fwd+bwd N=200 B=64 300x1ps float64",
    "forward_backward_f32": "sto_flow fwd+bwd N=200 B=64 300x1ps float32",
    "batch1_n1": "evolve N=1 B=1 4999x10ps float64",
    "batch1_n100": "evolve N=100 B=1 4999x10ps float64",
    "train_step_f32": "read-in+STO N=200+readout, B=64, Adam step, float32",
    "train_step_b500_f32": "read-in+STO N=200+readout, B=500 (the MNIST tables' batch), Adam step, float32",
}

# Runs in a fresh process with PYTHONPATH = one revision's worktree; argv[1]: JSON {"workloads", "repeats", "min_s",
# "tree"}.
# Written against the API that both revisions have.
_CHILD = r"""
import json, statistics, sys, time
import numpy as np
import numba
import torch

config = json.loads(sys.argv[1])
import stosim
import os
if not os.path.realpath(stosim.__file__).startswith(os.path.realpath(config["tree"]) + os.sep):
    raise SystemExit(f"imported {stosim.__file__}, not the worktree {config['tree']}")
torch.set_num_threads(numba.get_num_threads())
from stosim import STOArray, evolve, load_device

device = load_device()


def unit_states(batch, n, seed):
    m = np.random.default_rng(seed).standard_normal((batch, n, 3))
    return m / np.linalg.norm(m, axis=-1, keepdims=True)


def forward(dtype):
    array = STOArray.generate(device, 200, 500.0, seed=1)
    m0 = unit_states(64, 200, 0)
    return lambda: evolve(array, m0, 300, 1e-12, dtype=dtype)[0]


def batch1(n):
    array = STOArray.generate(device, n, 500.0, seed=1)
    m0 = unit_states(1, n, 0)
    return lambda: evolve(array, m0, 4999, 10e-12, dtype=np.float64)[0]


def forward_backward(dtype):
    from stosim.integrate.flow import sto_flow

    array = STOArray.generate(device, 200, 500.0, seed=1)
    m0 = torch.as_tensor(unit_states(64, 200, 0), dtype=dtype)
    weights = torch.as_tensor(np.random.default_rng(1).standard_normal((64, 200, 3)), dtype=dtype)

    def run():
        x = m0.clone().requires_grad_(True)
        (sto_flow(x, array, 300, 1e-12) * weights).sum().backward()
        return x.grad

    return run


def train_step(batch=64):
    from stosim.models import ReservoirClassifier
    from stosim.substrates import CoupledSTOArray

    torch.manual_seed(0)
    sub = CoupledSTOArray(n=200, coupling_oe=500.0, duration_s=300e-12, dt_s=1e-12, seed=1, dtype=torch.float32)
    model = ReservoirClassifier(784, 10, sub)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 784, generator=gen, dtype=torch.float32)
    y = torch.randint(0, 10, (batch,), generator=gen)

    def run():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.detach()

    return run


BUILD = {
    "forward_f64": lambda: forward(np.float64),
    "forward_f32": lambda: forward(np.float32),
    "forward_backward_f64": lambda: forward_backward(torch.float64),
    "forward_backward_f32": lambda: forward_backward(torch.float32),
    "batch1_n1": lambda: batch1(1),
    "batch1_n100": lambda: batch1(100),
    "train_step_f32": train_step,
    "train_step_b500_f32": lambda: train_step(500),
}


def digest(out):
    a = out.detach().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
    return float(np.abs(a.astype(np.float64)).sum())


results = {}
for name in config["workloads"]:
    try:
        fn = BUILD[name]()
        t0 = time.perf_counter()
        first = digest(fn())  # untimed: JIT compilation (or loading the cache) and first-call set-up
        warmup = time.perf_counter() - t0
        times = []
        for _ in range(config["repeats"]):  # a short workload is called until min_s has passed: time per call
            calls, t0 = 0, time.perf_counter()
            while True:
                fn()
                calls += 1
                elapsed = time.perf_counter() - t0
                if elapsed >= config["min_s"]:
                    break
            times.append(elapsed / calls)
        results[name] = {"times": times, "median": statistics.median(times), "warmup": warmup, "digest": first}
    except Exception as exc:  # an API this revision lacks: reported, not fatal to the others
        results[name] = {"error": f"{type(exc).__name__}: {exc}"}
print(json.dumps({"threads": numba.get_num_threads(), "stosim": stosim.__file__, "results": results}))
"""


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout.strip()


def _add_worktree(rev: str, parent: Path, label: str) -> Path:
    path = parent / f"{label}-{rev[:10]}"
    if path.exists():  # a kept worktree of this commit (--keep-worktrees): reused with its Numba cache
        at = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
        if at.returncode == 0 and at.stdout.strip() == rev:
            return path
        raise RuntimeError(f"{path} exists and is not a worktree of {rev}; remove it or choose another folder")
    _git("worktree", "add", "--detach", "--quiet", str(path), rev)
    return path


def _remove_worktree(path: Path) -> None:
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], capture_output=True, check=False
    )


def _run_child(tree: Path, workloads: list[str], repeats: int, min_s: float, timeout_s: float) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    config = json.dumps({"workloads": workloads, "repeats": repeats, "min_s": min_s, "tree": str(tree)})
    res = subprocess.run(
        [sys.executable, "-c", _CHILD, config],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if res.returncode != 0:
        raise RuntimeError(f"the benchmark process in {tree} failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=DEFAULT_BASE, help=f"the reference revision (default {DEFAULT_BASE})")
    parser.add_argument("--head", default="HEAD", help="the revision compared with it (default HEAD)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds, one process per revision each")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per workload in each process")
    parser.add_argument(
        "--min-time",
        type=float,
        default=0.2,
        help="s: a timed measurement repeats a short workload until this much time has passed (time per call)",
    )
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help=f"comma-separated subset of: {', '.join(WORKLOADS)}"
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds one process may take (compiles)")
    parser.add_argument(
        "--keep-worktrees",
        metavar="DIR",
        help="create the worktrees in DIR (outside the repository) and keep them, with their Numba caches, for "
        "the next run (default: a temporary folder, removed at the end)",
    )
    parser.add_argument("--json", action="store_true", help="add one final JSON line")
    args = parser.parse_args(argv)
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = sorted(set(workloads) - set(WORKLOADS))
    if unknown:
        parser.error(f"--workloads: unknown {', '.join(unknown)}; valid: {', '.join(WORKLOADS)}")
    if args.rounds < 1 or args.repeats < 1:
        parser.error("--rounds and --repeats must be >= 1")
    revs = {"base": _git("rev-parse", "--verify", f"{args.base}^{{commit}}")}
    revs["head"] = _git("rev-parse", "--verify", f"{args.head}^{{commit}}")
    load_before = _loadavg()
    print(
        f"base {revs['base'][:10]} ({args.base}), head {revs['head'][:10]} ({args.head}); {args.rounds} rounds x "
        f"{args.repeats} timed calls; {os.cpu_count()} CPUs, load average before {load_before}",
        flush=True,
    )
    medians: dict[str, dict[str, list[float]]] = {label: {w: [] for w in workloads} for label in revs}
    digests: dict[str, dict[str, float]] = {label: {} for label in revs}
    errors: dict[str, dict[str, str]] = {label: {} for label in revs}
    threads: dict[str, int] = {}
    keep = args.keep_worktrees is not None
    parent = Path(args.keep_worktrees).resolve() if keep else Path(tempfile.mkdtemp(prefix="stosim-bench-revisions-"))
    if parent == REPO or REPO in parent.parents:
        parser.error(f"--keep-worktrees {parent}: the worktrees go outside the repository {REPO}")
    parent.mkdir(parents=True, exist_ok=True)
    trees: dict[str, Path] = {}
    t_start = time.perf_counter()
    try:
        for label, sha in revs.items():
            trees[label] = _add_worktree(sha, parent, label)
        for r in range(args.rounds):
            order = ("base", "head") if r % 2 == 0 else ("head", "base")
            for label in order:
                out = _run_child(trees[label], workloads, args.repeats, args.min_time, args.timeout)
                threads[label] = out["threads"]
                for w, res in out["results"].items():
                    if "error" in res:
                        errors[label][w] = res["error"]
                        continue
                    medians[label][w].append(res["median"])
                    digests[label][w] = res["digest"]
            print(f"round {r + 1}/{args.rounds} done ({time.perf_counter() - t_start:.0f} s)", flush=True)
    finally:
        if not keep:
            for tree in trees.values():  # deregisters each of them too (no prune: other worktrees are not ours)
                _remove_worktree(tree)
            with contextlib.suppress(OSError):
                parent.rmdir()
    load_after = _loadavg()

    summary: dict[str, dict] = {}
    print(f"threads (Numba = torch): base {threads.get('base')}, head {threads.get('head')}")
    print(
        f"{'workload':22s} {'base s (min..max)':>24s} {'head s (min..max)':>24s} {'head/base':>9s} {'paired':>7s} "
        f"{'agree':>8s}"
    )
    for w in workloads:
        if w in errors["base"] or w in errors["head"]:
            why = "; ".join(f"{label}: {errors[label][w]}" for label in revs if w in errors[label])
            print(f"{w:22s} not measured ({why})")
            summary[w] = {"error": why}
            continue
        b, h = medians["base"][w], medians["head"][w]
        mb, mh = statistics.median(b), statistics.median(h)
        paired = statistics.median(hh / bb for hh, bb in zip(h, b))
        db, dh = digests["base"][w], digests["head"][w]
        agree = abs(dh - db) / max(abs(db), 1e-300)
        summary[w] = {
            "description": WORKLOADS[w],
            "base_s": mb,
            "head_s": mh,
            "ratio": mh / mb,
            "paired_ratio": paired,
            "base_round_s": b,
            "head_round_s": h,
            "digest_rel_diff": agree,
        }
        print(
            f"{w:22s} {mb:9.4f} ({min(b):.4f}..{max(b):.4f}) {mh:9.4f} ({min(h):.4f}..{max(h):.4f}) "
            f"{mh / mb:9.3f} {paired:7.3f} {agree:8.1e}"
        )
    print(f"load average before {load_before}, after {load_after}; {time.perf_counter() - t_start:.0f} s in all")
    if args.json:
        print(
            json.dumps(
                {
                    "base": revs["base"],
                    "head": revs["head"],
                    "rounds": args.rounds,
                    "repeats": args.repeats,
                    "threads": threads,
                    "cpus": os.cpu_count(),
                    "loadavg_before": load_before,
                    "loadavg_after": load_after,
                    "workloads": summary,
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
