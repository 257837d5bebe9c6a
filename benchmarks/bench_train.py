"""Forward + backward through the coupled STO array: stosim's Numba adjoint vs torchdiffeq.

What is measured (side by side in one run, medians of interleaved repeats):

- one training batch, N = 200 oscillators, batch 64, T = 300 ps, dt = 1 ps: forward + backward
  of the flow map m(0) -> m(T) with stosim's exact gradient (``stosim.integrate.flow.sto_flow``)
  and with ``torchdiffeq.odeint_adjoint`` (method rk4, the same dt) on the same torch right-hand
  side, in float64 and float32, with the same thread count (torch.set_num_threads = Numba's);
- the gradient difference between the two in float64 (tangential parts: the torchdiffeq flow is
  not projected onto the unit spheres, so its gradient has an extra radial part);
- peak memory of forward + backward for N = 200, batch 256, 300 steps: the resident set's
  high-water mark (VmHWM, reset before the run) above the resident size before it, in a fresh
  subprocess (Linux);
- one MNIST epoch of the README's coupled-STO model (N = 200, batch 64) on ../shared/data/mnist
  (24,345 training images): measured in full, or with ``--quick`` extrapolated from 20 batches.

Reading the numbers: ``ratio_vs_odeint_adjoint`` = torchdiffeq time / stosim time (higher is
better). A forward + backward costs about three coupling products per RK4 stage, so the ideal
is about 3x a forward pass.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numba
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO.parent / "shared" / "data" / "mnist"


def _setup(n: int, batch: int, dtype: torch.dtype):
    from stosim import STOArray, load_device

    device = load_device()
    array = STOArray.generate(device, n, 500.0, seed=1)
    m0 = torch.randn(batch, n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    m0 = (m0 / m0.norm(dim=-1, keepdim=True)).to(dtype)
    weights = torch.randn(batch, n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(dtype)
    return device, array, m0, weights


def _stosim_step(array, m0, weights, steps, dt):
    from stosim.integrate.flow import sto_flow

    x = m0.clone().requires_grad_(True)
    (sto_flow(x, array, steps, dt) * weights).sum().backward()
    return x.grad


def _odeint_step(rhs, m0, weights, steps, dt):
    from torchdiffeq import odeint_adjoint

    x = m0.clone().requires_grad_(True)
    t = torch.tensor([0.0, steps * dt], dtype=m0.dtype)
    out = odeint_adjoint(rhs, x, t, method="rk4", options={"step_size": dt}, adjoint_params=())
    (out[-1] * weights).sum().backward()
    return x.grad


def _time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_gradients(repeats: int) -> dict:
    from stosim.physics.torch_llg import STORightHandSide

    threads = numba.get_num_threads()
    torch.set_num_threads(threads)
    n, batch, steps, dt = 200, 64, 300, 1e-12
    out: dict = {"threads": threads}
    for dtype, name in ((torch.float64, "float64"), (torch.float32, "float32")):
        device, array, m0, weights = _setup(n, batch, dtype)
        rhs = STORightHandSide(array.coupling_transposed_oe(), array.oscillator_parameters(), device.torque_asymmetry,
                               device.reference_direction, dtype=dtype)
        _stosim_step(array, m0, weights, steps, dt)  # compile / warm up
        _odeint_step(rhs, m0, weights, 5, dt)
        ts, to = [], []
        for _ in range(repeats):  # interleaved
            ts.append(_time(lambda: _stosim_step(array, m0, weights, steps, dt), 1))
            to.append(_time(lambda: _odeint_step(rhs, m0, weights, steps, dt), 1))
        out[f"stosim_step_s_{name}"] = statistics.median(ts)
        out[f"odeint_adjoint_step_s_{name}"] = statistics.median(to)
        out[f"ratio_vs_odeint_adjoint_{name}"] = statistics.median(to) / statistics.median(ts)
        if dtype == torch.float64:
            g1 = _stosim_step(array, m0, weights, steps, dt)
            g2 = _odeint_step(rhs, m0, weights, steps, dt)
            tang = lambda g: g - m0 * (g * m0).sum(-1, keepdim=True)  # noqa: E731
            out["max_rel_grad_diff"] = float((tang(g1) - tang(g2)).abs().max() / tang(g2).abs().max())
    out["stosim_step_s"] = out["stosim_step_s_float64"]
    out["odeint_adjoint_step_s"] = out["odeint_adjoint_step_s_float64"]
    out["ratio_vs_odeint_adjoint"] = out["ratio_vs_odeint_adjoint_float64"]
    return out


_MEMORY_CHILD = r"""
import sys, torch
sys.path.insert(0, {repo!r})
from benchmarks.bench_train import _setup, _stosim_step

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

device, array, m0, weights = _setup(200, 256, torch.float64)
_stosim_step(array, m0[:2], weights[:2], 3, 1e-12)          # compile first
base = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:                 # reset the high-water mark VmHWM
    f.write("5")
_stosim_step(array, m0, weights, 300, 1e-12)
print(status("VmHWM") - base)
"""


def bench_memory() -> int:
    res = subprocess.run([sys.executable, "-c", _MEMORY_CHILD.format(repo=str(REPO))], capture_output=True, text=True,
                         check=True)
    return int(res.stdout.strip().splitlines()[-1])


def bench_mnist_epoch(quick: bool) -> tuple[float | None, str]:
    if not MNIST.exists():
        return None, f"skipped: {MNIST} not found"
    from stosim.datasets import load_dataset
    from stosim.studies.training import TrainConfig, build_model

    train, _ = load_dataset("mnist", MNIST)
    cfg = TrainConfig(substrate="sto", dataset="mnist", n=200)
    model = build_model(cfg, train.n_features, 10, train.image_shape)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    x = torch.as_tensor(train.flat(), dtype=torch.float64)
    y = torch.as_tensor(train.labels)
    n_batches = (x.shape[0] + 63) // 64
    todo = 20 if quick else n_batches
    t0 = time.perf_counter()
    for k in range(todo):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[k * 64:(k + 1) * 64]), y[k * 64:(k + 1) * 64])
        loss.backward()
        opt.step()
    elapsed = time.perf_counter() - t0
    if quick:
        return elapsed * n_batches / todo, f"extrapolated from {todo} of {n_batches} batches"
    return elapsed, f"measured over all {n_batches} batches"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true", help="fewer repeats; MNIST epoch extrapolated")
    args = parser.parse_args()
    res = bench_gradients(repeats=2 if args.quick else 3)
    res["peak_memory_bytes_n200_b256_300steps"] = bench_memory()
    res["mnist_epoch_s"], res["mnist_epoch_note"] = bench_mnist_epoch(args.quick)
    print(f"threads: {res['threads']} (Numba and torch)")
    print(f"{'one batch (N=200, B=64, 300 x 1 ps)':40s} {'stosim':>10s} {'odeint_adjoint':>15s} {'ratio':>8s}")
    for name in ("float64", "float32"):
        print(f"{'forward+backward ' + name:40s} {res[f'stosim_step_s_{name}']:9.3f}s "
              f"{res[f'odeint_adjoint_step_s_{name}']:14.3f}s {res[f'ratio_vs_odeint_adjoint_{name}']:7.1f}x")
    print(f"max relative gradient difference (float64, tangential): {res['max_rel_grad_diff']:.2e}")
    print(f"peak memory, N=200, batch 256, 300 steps: {res['peak_memory_bytes_n200_b256_300steps'] / 2**20:.0f} MiB")
    if res["mnist_epoch_s"] is not None:
        print(f"one MNIST epoch (N=200, batch 64): {res['mnist_epoch_s']:.0f} s ({res['mnist_epoch_note']})")
    if args.json:
        print(json.dumps(res))


if __name__ == "__main__":
    main()
