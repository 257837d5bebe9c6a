"""Forward + backward through the coupled STO array: stosim's Numba adjoint vs torchdiffeq.

What is measured (side by side in one run, medians of interleaved repeats):

- one training batch, N = 200 oscillators, batch 64, T = 300 ps, dt = 1 ps: forward + backward
  of the flow map m(0) -> m(T) with stosim's exact gradient (``stosim.integrate.flow.sto_flow``),
  with plain backpropagation through a torch loop of projected RK4 steps
  (``stosim.physics.torch_llg.rk4_step_torch``, the same discrete map), with
  ``torchdiffeq.odeint`` (rk4, the same dt) and direct backpropagation through its steps, and with
  ``torchdiffeq.odeint_adjoint``; all on the same torch right-hand side
  (``stosim.physics.torch_llg``), in float64 and float32, with the same thread count
  (torch.set_num_threads = Numba's);
- the gradient difference to stosim's in float64: ``max_rel_grad_diff`` against the torch RK4
  backprop (the same map, so round-off only), and against odeint_adjoint in its tangential parts
  (the torchdiffeq flow is Kutta's 3/8 rule, not projected onto the unit spheres);
- peak memory of forward + backward of each method (N = 200, batch 64, 300 steps, float64) and of
  stosim at batch 256: the resident set's high-water mark (VmHWM, reset before the run) above the
  resident size before it, in a fresh subprocess (Linux);
- the fraction of the matmul-bound limit: forward + backward costs C coupling products
  (B x N)(N x N) per RK4 step, 2 B N^2 flops each: C = 8 when the forward pass keeps every state and
  stage field (4 forward, 4 for the cotangents; the default memory budget allows it at the sizes measured
  here), C = 12 when only the states are kept or segments are recomputed (4 more to recompute the stage
  fields); ``train_fraction_of_matmul_peak`` = (flops / matmul peak) / stosim's time, with
  the peak (best GFLOP/s over NumPy, torch and Numba-chunked products of the same shapes) measured
  in the same run;
- one MNIST epoch of the coupled STOs as trained for the tables (N = 200, T = 300 ps at 1 ps,
  batch 500, float32, 24,345 images = 49 batches): ``mnist_epoch_s`` is **extrapolated** from timing
  a few training batches (forward, backward, Adam step; random pixels of MNIST's shape, which cost
  the same), and ``mnist_epoch_limit_s`` is the matmul-bound limit of the same work: the coupling
  products (flops as above, with the recomputation stosim does at that size) plus the read-in and
  readout layers, at the float32 peak.

Reading the numbers: ``ratio_vs_torch_backprop``, ``ratio_vs_odeint_backprop`` and
``ratio_vs_odeint_adjoint`` = the other method's time / stosim's (higher is better).
"""

from __future__ import annotations

import argparse
import functools
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
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


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


def _torch_rk4_step(rhs, m0, weights, steps, dt):
    from stosim.physics.torch_llg import rk4_step_torch

    x = m0.clone().requires_grad_(True)
    m = x
    for _ in range(steps):
        m = rk4_step_torch(m, dt, rhs.coupling_t, rhs.osc, rhs.lam, rhs.p)
    (m * weights).sum().backward()
    return x.grad


def _odeint_backprop_step(rhs, m0, weights, steps, dt):
    from torchdiffeq import odeint

    x = m0.clone().requires_grad_(True)
    t = torch.tensor([0.0, steps * dt], dtype=m0.dtype)
    out = odeint(rhs, x, t, method="rk4", options={"step_size": dt})
    (out[-1] * weights).sum().backward()
    return x.grad


def _time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


N_TRAIN, BATCH_TRAIN, STEPS_TRAIN, DT_TRAIN = 200, 64, 300, 1e-12


def coupling_products_per_step(n: int, batch: int, steps: int, dtype: torch.dtype) -> int:
    """Coupling products per RK4 step of stosim's forward + backward with the memory budget the run uses
    (:func:`stosim.integrate.flow.gradient_memory_bytes`: 1 GiB, or ``STOSIM_GRADIENT_MEMORY_MB``): 8 where the
    forward pass keeps every state and stage field, 12 where the backward pass recomputes the stage fields, 16 where
    states are recomputed from checkpoints without keeping the fields (N <= SMALL_N_MAX; not benchmarked here)."""
    from stosim.integrate.chunks import chunk_count
    from stosim.integrate.flow import (
        checkpoint_segment,
        gradient_memory_bytes,
        keeps_stage_fields,
        padded_oscillator_count,
    )

    n_chunks = chunk_count(batch, n)
    itemsize = 8 if dtype == torch.float64 else 4
    n_pad = padded_oscillator_count(n, np.float64 if dtype == torch.float64 else np.float32)  # the kernels' rows
    state_bytes = n_chunks * 3 * (-(-batch // n_chunks)) * n_pad * itemsize
    budget = gradient_memory_bytes()
    if keeps_stage_fields(steps, n, state_bytes, budget):
        return 8
    segment = checkpoint_segment(steps, state_bytes, budget)
    return 12 + (4 if segment > 1 and n <= 32 else 0)


def bench_gradients(repeats: int, matmul=None) -> dict:
    from stosim.physics.torch_llg import STORightHandSide

    threads = numba.get_num_threads()
    torch.set_num_threads(threads)
    n, batch, steps, dt = N_TRAIN, BATCH_TRAIN, STEPS_TRAIN, DT_TRAIN
    out: dict = {"threads": threads}
    for dtype, name in ((torch.float64, "float64"), (torch.float32, "float32")):
        device, array, m0, weights = _setup(n, batch, dtype)
        rhs = STORightHandSide(
            array.coupling_transposed_oe(),
            array.oscillator_parameters(),
            device.torque_asymmetry,
            device.reference_direction,
            dtype=dtype,
        )
        _stosim_step(array, m0, weights, steps, dt)  # compile / warm up
        _odeint_step(rhs, m0, weights, 5, dt)
        _torch_rk4_step(rhs, m0, weights, 5, dt)
        _odeint_backprop_step(rhs, m0, weights, 5, dt)
        case = (m0, weights, steps, dt)
        paths = {
            "stosim": functools.partial(_stosim_step, array, *case),
            "torch_backprop": functools.partial(_torch_rk4_step, rhs, *case),
            "odeint_backprop": functools.partial(_odeint_backprop_step, rhs, *case),
            "odeint_adjoint": functools.partial(_odeint_step, rhs, *case),
        }
        times: dict[str, list[float]] = {k: [] for k in paths}
        for r in range(repeats):  # interleaved, rotated order
            keys = list(paths)
            for key in keys[r % 4 :] + keys[: r % 4]:
                times[key].append(_time(paths[key], 1))
            if matmul is not None:
                matmul.round(r)
        t_st = statistics.median(times["stosim"])
        out[f"stosim_step_s_{name}"] = t_st
        for key in ("torch_backprop", "odeint_backprop", "odeint_adjoint"):
            out[f"{key}_step_s_{name}"] = statistics.median(times[key])
            out[f"ratio_vs_{key}_{name}"] = statistics.median(times[key]) / t_st
        products = coupling_products_per_step(n, batch, steps, dtype)
        flops = products * 2.0 * batch * n * n * steps
        out[f"train_flops_{name}"] = flops
        out[f"train_coupling_products_per_step_{name}"] = products
        if dtype == torch.float64:
            g1 = _stosim_step(array, m0, weights, steps, dt)
            g_bp = _torch_rk4_step(rhs, m0, weights, steps, dt)
            g2 = _odeint_step(rhs, m0, weights, steps, dt)
            out["max_rel_grad_diff"] = float((g1 - g_bp).abs().max() / g_bp.abs().max())
            t1, t2 = (g - m0 * (g * m0).sum(-1, keepdim=True) for g in (g1, g2))
            out["max_rel_grad_diff_vs_odeint_adjoint_tangential"] = float((t1 - t2).abs().max() / t2.abs().max())
    if matmul is not None:
        for name in ("float64", "float32"):
            peak = matmul.peak(name)
            out[f"matmul_peak_gflops_{name}"] = peak[0]
            out[f"matmul_peak_method_{name}"] = f"{peak[1]} {peak[2]}"
            limit_s = out[f"train_flops_{name}"] / (peak[0] * 1e9)
            out[f"train_limit_s_{name}"] = limit_s
            out[f"train_fraction_of_matmul_peak_{name}"] = limit_s / out[f"stosim_step_s_{name}"]
        out["train_fraction_of_matmul_peak"] = out["train_fraction_of_matmul_peak_float64"]
    out["ratio_vs_torch_backprop"] = out["ratio_vs_torch_backprop_float64"]
    out["ratio_vs_odeint_backprop"] = out["ratio_vs_odeint_backprop_float64"]
    out["stosim_step_s"] = out["stosim_step_s_float64"]
    out["odeint_adjoint_step_s"] = out["odeint_adjoint_step_s_float64"]
    out["ratio_vs_odeint_adjoint"] = out["ratio_vs_odeint_adjoint_float64"]
    return out


_MEMORY_CHILD = r"""
import sys, torch
sys.path.insert(0, {repo!r})
import numba
torch.set_num_threads(numba.get_num_threads())
from benchmarks.bench_train import _setup, _stosim_step, _torch_rk4_step, _odeint_backprop_step, _odeint_step
from stosim.physics.torch_llg import STORightHandSide

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

device, array, m0, weights = _setup(200, {batch}, torch.float64)
rhs = STORightHandSide(array.coupling_transposed_oe(), array.oscillator_parameters(), device.torque_asymmetry,
                       device.reference_direction, dtype=torch.float64)
run = {{"stosim": lambda k: _stosim_step(array, m0, weights, k, 1e-12),
        "torch_backprop": lambda k: _torch_rk4_step(rhs, m0, weights, k, 1e-12),
        "odeint_backprop": lambda k: _odeint_backprop_step(rhs, m0, weights, k, 1e-12),
        "odeint_adjoint": lambda k: _odeint_step(rhs, m0, weights, k, 1e-12)}}[{method!r}]
run(3)                                                        # compile / warm up first
base = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:                 # reset the high-water mark VmHWM
    f.write("5")
run(300)
print(status("VmHWM") - base)
"""


def bench_memory(method: str = "stosim", batch: int = 256) -> int:
    """Peak resident-set growth (bytes) of one forward + backward, N = 200, 300 steps, float64, fresh process."""
    res = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD.format(repo=str(REPO), batch=batch, method=method)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(res.stdout.strip().splitlines()[-1])


MNIST_IMAGES, MNIST_BATCH, MNIST_PIXELS = 24_345, 500, 784


def mnist_epoch_flops(substrate: str = "sto") -> float:
    """Matmul flops of one epoch (N = 200, 300 steps, batch 500, float32): coupling products of forward +
    backward per STO layer, plus read-in (784 -> 600), inner (600 -> 600, deep) and readout (600 -> 10) layers
    (forward, weight gradient, input gradient: 3 products each)."""
    n, steps = 200, 300
    n_batches = -(-MNIST_IMAGES // MNIST_BATCH)
    per_layer = coupling_products_per_step(n, MNIST_BATCH, steps, torch.float32) * 2.0 * MNIST_BATCH * n * n * steps
    layers = 2 if substrate == "deep-sto" else 1
    dense = 3 * 2.0 * MNIST_BATCH * (MNIST_PIXELS * 3 * n + 3 * n * 10 + (layers - 1) * (3 * n) ** 2)
    return n_batches * (layers * per_layer + dense)


def bench_mnist_epoch(batches: int, substrate: str = "sto") -> tuple[float, str]:
    """One MNIST epoch (N = 200, T = 300 ps at 1 ps, batch 500, float32), extrapolated from ``batches`` batches."""
    from stosim.studies.training import TrainConfig, build_model

    cfg = TrainConfig(substrate=substrate, dataset="mnist", n=200, batch_size=MNIST_BATCH, dtype="float32", lr=1e-3)
    model = build_model(cfg, MNIST_PIXELS, 10, (28, 28))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(MNIST_BATCH, MNIST_PIXELS, generator=gen, dtype=torch.float32)
    y = torch.randint(0, 10, (MNIST_BATCH,), generator=gen)
    n_batches = -(-MNIST_IMAGES // MNIST_BATCH)

    def one() -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    one()  # warm up (compiles on a cold cache)
    times = [_time(one, 1) for _ in range(batches)]
    return (
        statistics.median(times) * n_batches,
        (
            f"EXTRAPOLATED: median of {batches} timed batches x {n_batches} batches ({MNIST_IMAGES} images, "
            f"batch {MNIST_BATCH}, {substrate}, random pixels of MNIST's shape)"
        ),
    )


def main() -> None:
    import os

    from benchmarks.bench_simulate import MatmulBench
    from stosim.integrate.gemm import GEMM_PROVIDER

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and MNIST batches")
    parser.add_argument("--deep", action="store_true", help="also extrapolate an epoch of the deep STOs (two layers)")
    args = parser.parse_args()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    _, array, _, _ = _setup(N_TRAIN, 2, torch.float64)
    matmul = MatmulBench(
        numba.get_num_threads(), array.coupling_transposed_oe(), shapes=((32, N_TRAIN), (64, N_TRAIN), (256, N_TRAIN))
    )
    res = bench_gradients(repeats=2 if args.quick else 3, matmul=matmul)
    res["gemm_provider"] = GEMM_PROVIDER
    res["peak_memory_bytes_n200_b256_300steps"] = bench_memory("stosim", 256)
    for key in ("stosim", "torch_backprop", "odeint_backprop", "odeint_adjoint"):
        res[f"peak_memory_bytes_{key}_n200_b64_300steps"] = bench_memory(key, BATCH_TRAIN)
    res["mnist_epoch_s"], res["mnist_epoch_note"] = bench_mnist_epoch(2 if args.quick else 4)
    res["mnist_epoch_flops"] = mnist_epoch_flops()
    res["mnist_epoch_limit_s"] = res["mnist_epoch_flops"] / (res["matmul_peak_gflops_float32"] * 1e9)
    if args.deep:
        res["deep_mnist_epoch_s"], res["deep_mnist_epoch_note"] = bench_mnist_epoch(2, "deep-sto")
        res["deep_mnist_epoch_limit_s"] = mnist_epoch_flops("deep-sto") / (res["matmul_peak_gflops_float32"] * 1e9)
    res["loadavg_before"] = load_before
    res["loadavg_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"threads: {res['threads']} (Numba and torch); load average before {load_before}, after {res['loadavg_after']}"
    )
    print(
        f"{'one batch (N=200, B=64, 300 x 1 ps)':36s} {'stosim':>8s} {'torch RK4 bp':>13s} {'odeint bp':>10s} "
        f"{'odeint_adj':>10s}   ratios (other / stosim)"
    )
    for name in ("float64", "float32"):
        print(
            f"{'forward+backward ' + name:36s} {res[f'stosim_step_s_{name}']:7.3f}s "
            f"{res[f'torch_backprop_step_s_{name}']:12.3f}s {res[f'odeint_backprop_step_s_{name}']:9.3f}s "
            f"{res[f'odeint_adjoint_step_s_{name}']:9.3f}s   {res[f'ratio_vs_torch_backprop_{name}']:.1f}x "
            f"{res[f'ratio_vs_odeint_backprop_{name}']:.1f}x {res[f'ratio_vs_odeint_adjoint_{name}']:.1f}x"
        )

    def mib(key: str) -> float:
        return res[f"peak_memory_bytes_{key}_n200_b64_300steps"] / 2**20

    print(
        f"{'peak memory float64 (MiB)':36s} {mib('stosim'):7.0f}  {mib('torch_backprop'):12.0f}  "
        f"{mib('odeint_backprop'):9.0f}  {mib('odeint_adjoint'):9.0f}"
    )
    for name in ("float64", "float32"):
        print(
            f"matmul-bound limit {name}: {res[f'train_coupling_products_per_step_{name}']} coupling products "
            f"(B x N)(N x N) per step = {res[f'train_flops_{name}']:.3g} flops at the peak "
            f"{res[f'matmul_peak_gflops_{name}']:.1f} GFLOP/s ({res[f'matmul_peak_method_{name}']}, same run) = "
            f"{res[f'train_limit_s_{name}']:.3f} s; train_fraction_of_matmul_peak "
            f"{res[f'train_fraction_of_matmul_peak_{name}']:.2f}"
        )
    print(
        f"max relative gradient difference (float64) vs torch RK4 backprop: {res['max_rel_grad_diff']:.2e}; "
        f"vs odeint_adjoint (tangential): {res['max_rel_grad_diff_vs_odeint_adjoint_tangential']:.2e}"
    )
    print(
        f"peak memory of stosim, N=200, batch 256, 300 steps: "
        f"{res['peak_memory_bytes_n200_b256_300steps'] / 2**20:.0f} MiB"
    )
    print(
        f"one MNIST epoch (N=200, T=300 ps, batch 500, float32): {res['mnist_epoch_s']:.0f} s "
        f"({res['mnist_epoch_note']}); matmul-bound limit {res['mnist_epoch_limit_s']:.0f} s "
        f"({res['mnist_epoch_flops']:.3g} flops at the float32 peak)"
    )
    if args.deep:
        print(
            f"deep STOs: {res['deep_mnist_epoch_s']:.0f} s ({res['deep_mnist_epoch_note']}); "
            f"limit {res['deep_mnist_epoch_limit_s']:.0f} s"
        )
    if args.json:
        print(json.dumps(res))


if __name__ == "__main__":
    main()
