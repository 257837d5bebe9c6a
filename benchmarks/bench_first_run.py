"""First-run overhead of the main job: `stosim train` on an empty Numba cache against a warm one.

The main job (README quickstart: coupled STOs, N = 100, digits, experiments/digits-sto.toml defaults) runs
for ``--epochs`` epochs (default 1) in a child process twice, both with the same fresh ``NUMBA_CACHE_DIR``:
first with the directory empty (every kernel the run needs compiles and is written to the cache), then
with the cache the first run left (kernels load from disk). Printed for each: wall time and CPU time
(``time.process_time`` of the child, all its threads), and overhead = cold - warm for both. The machine
may be shared: CPU time is the fairer figure under load (wall time counts other jobs' time slices).

The cold child also records every Numba compilation (``numba.core.event`` "numba:compile": the kernel,
its argument types, wall and CPU seconds exclusive of the compilations nested in it, and the CPU seconds
of those spent inside LLVM (the "numba:llvm_lock" event: optimization and machine code), printed
as a table (``--json``: one JSON line with keys ``cold_wall_s``, ``cold_cpu_s``, ``warm_wall_s``, ``warm_cpu_s``,
``overhead_wall_s``, ``overhead_cpu_s``, ``compile_cpu_s``, ``compile_llvm_cpu_s``, ``compiles``,
``load_average``).

    python benchmarks/bench_first_run.py [--epochs 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _child(out: str, epochs: int, record: str | None) -> None:
    """Run the main job in this process; write {wall_s, cpu_s, compiles} to ``record`` (JSON)."""
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    compiles: list[dict] = []
    if record:
        from numba.core import event

        stack: list[list[float]] = []  # per open compilation: wall, CPU at start; nested wall, CPU; LLVM CPU

        class _Compiles(event.Listener):
            """Wall and CPU time of each compilation, exclusive of the ones nested in it."""

            def on_start(self, ev) -> None:
                stack.append([time.perf_counter(), time.process_time(), 0.0, 0.0, 0.0])

            def on_end(self, ev) -> None:
                w0, c0, w_in, c_in, llvm = stack.pop()
                wall, cpu = time.perf_counter() - w0, time.process_time() - c0
                if stack:  # nested: its time is not the parent's own
                    stack[-1][2] += wall
                    stack[-1][3] += cpu
                disp = ev.data["dispatcher"]
                compiles.append(
                    {
                        "kernel": f"{disp.py_func.__module__}.{disp.py_func.__qualname__}",
                        "args": ", ".join(str(a) for a in ev.data["args"]),
                        "wall_s": round(wall - w_in, 2),
                        "cpu_s": round(cpu - c_in, 2),
                        "llvm_cpu_s": round(llvm, 2),
                    }
                )

        class _LLVM(event.Listener):
            """CPU time inside LLVM (the LLVM lock held), added to the innermost open compilation."""

            depth, t0 = 0, 0.0

            def on_start(self, ev) -> None:
                self.depth += 1
                if self.depth == 1:
                    self.t0 = time.process_time()

            def on_end(self, ev) -> None:
                self.depth -= 1
                if self.depth == 0 and stack:
                    stack[-1][4] += time.process_time() - self.t0

        event.register("numba:compile", _Compiles())
        event.register("numba:llvm_lock", _LLVM())
    from stosim.cli import main

    rc = main(["train", "--epochs", str(epochs), "--out", out])
    if rc != 0:
        raise SystemExit(rc)
    result = {"wall_s": time.perf_counter() - t_wall, "cpu_s": time.process_time() - t_cpu, "compiles": compiles}
    if record:
        Path(record).write_text(json.dumps(result))


def _run(cache: str, epochs: int, tmp: str, tag: str) -> dict:
    """One child run of the main job with NUMBA_CACHE_DIR = ``cache``; its record."""
    record = os.path.join(tmp, f"{tag}.json")
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    cmd = [sys.executable, __file__, "--child", os.path.join(tmp, f"out-{tag}"), "--epochs", str(epochs)]
    subprocess.run(cmd + ["--record", record], env=env, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads(Path(record).read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="one JSON line")
    parser.add_argument("--child", metavar="OUT", help=argparse.SUPPRESS)
    parser.add_argument("--record", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.epochs, args.record)
        return 0
    with tempfile.TemporaryDirectory(prefix="stosim-first-run-") as tmp:
        cache = os.path.join(tmp, "numba-cache")
        os.makedirs(cache)
        cold = _run(cache, args.epochs, tmp, "cold")
        warm = _run(cache, args.epochs, tmp, "warm")
    out = {
        "epochs": args.epochs,
        "cold_wall_s": round(cold["wall_s"], 1),
        "cold_cpu_s": round(cold["cpu_s"], 1),
        "warm_wall_s": round(warm["wall_s"], 1),
        "warm_cpu_s": round(warm["cpu_s"], 1),
        "overhead_wall_s": round(cold["wall_s"] - warm["wall_s"], 1),
        "overhead_cpu_s": round(cold["cpu_s"] - warm["cpu_s"], 1),
        "compile_cpu_s": round(sum(c["cpu_s"] for c in cold["compiles"]), 1),
        "compile_llvm_cpu_s": round(sum(c["llvm_cpu_s"] for c in cold["compiles"]), 1),
        "compiles": cold["compiles"],
        "warm_compiles": len(warm["compiles"]),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"main job, {args.epochs} epoch(s); load average {out['load_average']}")
    print(f"{'':8s} {'wall s':>8s} {'CPU s':>8s}")
    for tag in ("cold", "warm", "overhead"):
        print(f"{tag:8s} {out[tag + '_wall_s']:8.1f} {out[tag + '_cpu_s']:8.1f}")
    print(
        f"compilations on the empty cache: {out['compile_cpu_s']} s CPU, {out['compile_llvm_cpu_s']} s of it in LLVM "
        f"({len(cold['compiles'])} functions, {out['warm_compiles']} on the warm cache); the ones over 0.2 s CPU "
        "(exclusive of nested compilations):"
    )
    for c in sorted(cold["compiles"], key=lambda c: -c["cpu_s"]):
        if c["cpu_s"] > 0.2:
            print(
                f"  {c['cpu_s']:6.2f} s CPU ({c['llvm_cpu_s']:5.2f} LLVM) {c['wall_s']:6.2f} s wall  "
                f"{c['kernel']}({c['args'][:70]})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
