"""MLPs initialised with chaotic weights (the seed study's appendix C.3).

Model: :class:`stosim.models.MLPClassifier` with ``depth = hidden_layers + 1``: a read-in
Linear(784 -> H) + activation, then ``hidden_layers`` square Linear(H -> H) + activation layers whose
weights start at spectral radius rho (max |eigenvalue| = rho exactly, uniform [-1, 1] draws
rescaled), then Linear(H -> 10). The study: three square hidden layers, H = 256, SGD with
learning rate 1e-3 (plain SGD here, momentum 0, batch 64: the study does not state them), MNIST.

Per epoch the study records the test loss L_e (cross-entropy) and rho of each square weight
matrix. Epochs to converge (the study's Eq. 34, whose formula was lost in the text we have; the
prose says: the first epoch whose test loss is within a threshold of the minimal test loss of the
run): e* = min { e : (L_e - L_min) / L_min <= ``converge_tolerance`` }. Also reported: the first
epoch with L_e <= ``loss_level`` (a fixed level, added here: at reduced budgets the loss is still
falling at the last epoch, so e* only marks the end of the run).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from stosim.models import MLPClassifier

__all__ = ["ChaoticInitSpec", "chaotic_mlp", "epochs_to_converge", "run_chaotic_init_study", "spectral_radius"]


class ChaoticInitSpec(BaseModel):
    """C.3: test loss over rho x epochs of MLPs whose square hidden weights start at spectral radius rho."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    study: Literal["chaotic-init"]
    name: str = "chaotic-init"
    data_dir: str = "../shared/data/mnist"
    rhos: list[float] = Field(default_factory=lambda: [0.3, 0.7, 1.0, 1.3, 1.7, 2.3, 3.0, 5.0, 10.0], min_length=1)
    hidden: int = Field(default=256, ge=2, le=4096)
    hidden_layers: int = Field(default=3, ge=1, le=50, description="square hidden-to-hidden layers")
    activation: Literal["relu", "tanh"] = "tanh"
    n_train: int = Field(default=5000, ge=10, le=60_000)
    n_test: int = Field(default=2000, ge=10, le=10_000)
    epochs: int = Field(default=20, ge=2, le=10_000)
    batch_size: int = Field(default=64, ge=1, le=60_000)
    lr: float = Field(default=1e-3, gt=0, le=10)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    converge_tolerance: float = Field(default=0.01, gt=0, lt=10)
    loss_level: float = Field(default=1.0, gt=0, description="also report the first epoch with test loss <= this")
    track_rhos: list[float] = Field(default_factory=lambda: [0.3, 1.3, 2.3, 10.0])
    seed: int = Field(default=0, ge=0)


def spectral_radius(weight: torch.Tensor | np.ndarray) -> float:
    """max |eigenvalue| of a square matrix, computed in float64 (``numpy.linalg.eigvals``)."""
    w = weight.detach().cpu().numpy() if isinstance(weight, torch.Tensor) else np.asarray(weight)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"weight has shape {w.shape}; the spectral radius needs a square matrix")
    return float(np.max(np.abs(np.linalg.eigvals(w.astype(np.float64)))))


def epochs_to_converge(test_loss: list[float] | np.ndarray, tolerance: float) -> int:
    """First epoch e (1-based) with (L_e - L_min) / L_min <= ``tolerance``; L_min = min_e L_e > 0."""
    loss = np.asarray(test_loss, dtype=np.float64)
    if loss.ndim != 1 or loss.size == 0 or not np.all(np.isfinite(loss)) or loss.min() <= 0:
        raise ValueError("test_loss must be a non-empty list of finite losses > 0")
    if not 0 < tolerance:
        raise ValueError(f"tolerance = {tolerance!r} is out of range; valid: > 0")
    lmin = loss.min()
    return int(np.argmax((loss - lmin) / lmin <= tolerance)) + 1


def chaotic_mlp(
    n_inputs: int,
    n_classes: int,
    hidden: int,
    hidden_layers: int,
    rho: float,
    activation: str = "tanh",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> MLPClassifier:
    """The C.3 MLP: read-in, ``hidden_layers`` square layers at spectral radius ``rho``, readout."""
    torch.manual_seed(seed)
    return MLPClassifier(
        n_inputs,
        n_classes,
        hidden,
        dtype,
        depth=hidden_layers + 1,
        activation=activation,
        spectral_radius=rho,
        init_seed=seed,
    )


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x[i : i + 2048]) for i in range(0, x.shape[0], 2048)])
    return (
        float(nn.functional.cross_entropy(logits, y, reduction="mean")),
        float((logits.argmax(1) == y).double().mean()),
    )


def run_chaotic_init_study(
    spec: ChaoticInitSpec, out: Path, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Train one MLP per rho; results.json / results.md and three figures (dnn_chaotic_*.png)."""
    from stosim.datasets import load_dataset
    from stosim.studies.results import write_results

    train, test = load_dataset("mnist", spec.data_dir, limit_train=spec.n_train, limit_test=spec.n_test)
    x = torch.as_tensor(train.flat(), dtype=torch.float32)
    y = torch.as_tensor(train.labels, dtype=torch.int64)
    xt = torch.as_tensor(test.flat(), dtype=torch.float32)
    yt = torch.as_tensor(test.labels, dtype=torch.int64)
    runs = {}
    for rho in spec.rhos:
        t0 = time.perf_counter()
        model = chaotic_mlp(x.shape[1], 10, spec.hidden, spec.hidden_layers, rho, spec.activation, spec.seed)
        opt = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum)
        gen = torch.Generator().manual_seed(spec.seed)
        loss0, acc0 = _loss(model, xt, yt)
        rec = {
            "test_loss": [],
            "test_accuracy": [],
            "train_loss": [],
            "rho": [[spectral_radius(w) for w in model.hidden_weights()]],
        }
        for _ in range(spec.epochs):
            model.train()
            order = torch.randperm(x.shape[0], generator=gen)
            total = 0.0
            for i in range(0, x.shape[0], spec.batch_size):
                idx = order[i : i + spec.batch_size]
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"rho = {rho}: the loss became non-finite; lower lr = {spec.lr}")
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            tl, ta = _loss(model, xt, yt)
            rec["test_loss"].append(tl)
            rec["test_accuracy"].append(ta)
            rec["train_loss"].append(total / x.shape[0])
            rec["rho"].append([spectral_radius(w) for w in model.hidden_weights()])
        rec["initial_test_loss"], rec["initial_test_accuracy"] = loss0, acc0
        rec["min_test_loss"] = min(rec["test_loss"])
        rec["min_test_loss_epoch"] = int(np.argmin(rec["test_loss"])) + 1  # == epochs: still decreasing
        below = [e + 1 for e, v in enumerate(rec["test_loss"]) if v <= spec.loss_level]
        rec["epochs_to_loss_level"] = below[0] if below else None
        rec["epochs_to_converge"] = epochs_to_converge(rec["test_loss"], spec.converge_tolerance)
        rec["wall_time_s"] = time.perf_counter() - t0
        runs[str(rho)] = rec
        if progress:
            progress(
                f"rho {rho:g}: min test loss {rec['min_test_loss']:.4f}, final test acc "
                f"{100 * rec['test_accuracy'][-1]:.1f}%, converged at epoch {rec['epochs_to_converge']}, "
                f"rho per layer {rec['rho'][0][0]:.3g} -> {', '.join(f'{r:.3g}' for r in rec['rho'][-1])} "
                f"({rec['wall_time_s']:.0f} s)"
            )
    results = {"spec": spec.model_dump(), "runs": runs}
    _plot(out, spec, runs)
    write_results(results, out, _markdown(spec, runs))
    return results


def _markdown(spec: ChaoticInitSpec, runs: dict) -> str:
    lines = [
        (
            "| rho | initial test loss | min test loss (epoch) | final test acc | epochs to converge | "
            f"epochs to test loss <= {spec.loss_level:g} | rho after training |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for rho, r in runs.items():
        lines.append(
            f"| {rho} | {r['initial_test_loss']:.3f} | "
            f"{r['min_test_loss']:.4f} ({r['min_test_loss_epoch']}) | "
            f"{100 * r['test_accuracy'][-1]:.2f}% | {r['epochs_to_converge']} | "
            f"{r['epochs_to_loss_level'] if r['epochs_to_loss_level'] is not None else 'never'} | "
            f"{', '.join(f'{v:.3f}' for v in r['rho'][-1])} |"
        )
    return "\n".join(lines) + "\n"


def _plot(out: Path, spec: ChaoticInitSpec, runs: dict) -> None:
    from matplotlib.colors import LogNorm

    from stosim.plotting import _pyplot, save_figure

    plt = _pyplot()
    rhos = [float(r) for r in runs]
    loss = np.array([runs[r]["test_loss"] for r in runs])
    fig, ax = plt.subplots(figsize=(6, 3.6), constrained_layout=True)
    try:
        im = ax.imshow(
            loss,
            aspect="auto",
            origin="lower",
            cmap="viridis",
            norm=LogNorm(),
            extent=(0.5, spec.epochs + 0.5, -0.5, len(rhos) - 0.5),
        )
        ax.set_yticks(range(len(rhos)), [f"{r:g}" for r in rhos])
        ax.set_xlabel("epoch")
        ax.set_ylabel("initial spectral radius rho")
        ax.set_title(f"test loss (cross-entropy), SGD lr {spec.lr:g}, {spec.n_train} MNIST images")
        fig.colorbar(im, ax=ax)
        save_figure(fig, out / "dnn_chaotic_test_loss.png")
    finally:
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.4), constrained_layout=True)
    try:
        ax.plot(rhos, [runs[r]["epochs_to_converge"] for r in runs], "o-")
        ax.set_xscale("log")
        ax.set_xlabel("initial spectral radius rho")
        ax.set_ylabel(f"epochs to converge (tol {spec.converge_tolerance:g})")
        ax2 = ax.twinx()
        ax2.plot(rhos, [runs[r]["min_test_loss"] for r in runs], "s--", color="C1")
        ax2.set_ylabel("min test loss", color="C1")
        save_figure(fig, out / "dnn_chaotic_convergence.png")
    finally:
        plt.close(fig)
    tracked = [r for r in runs if float(r) in spec.track_rhos] or list(runs)[:4]
    fig, axes = plt.subplots(1, len(tracked), figsize=(3 * len(tracked), 2.8), constrained_layout=True, squeeze=False)
    try:
        for ax, r in zip(axes[0], tracked):
            traj = np.array(runs[r]["rho"])
            for k in range(traj.shape[1]):
                ax.plot(range(traj.shape[0]), traj[:, k], label=f"hidden W{k + 1}")
            ax.set_title(f"rho_0 = {r}", fontsize=9)
            ax.set_xlabel("epoch")
        axes[0][0].set_ylabel("spectral radius")
        axes[0][0].legend(fontsize=7)
        save_figure(fig, out / "dnn_chaotic_rho_tracks.png")
    finally:
        plt.close(fig)
