"""Plots (matplotlib, Agg backend): trajectories of a few oscillators and their TMR signal."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stosim.storage import atomic_output

__all__ = ["plot_trajectory", "plot_learning_curve", "plot_histogram", "save_figure"]


def save_figure(fig, path: str | Path, **savefig_kwargs) -> Path:  # noqa: ANN001
    """Save ``fig`` atomically; the format comes from the suffix (none: PNG, and ``.png`` is appended,
    as matplotlib does). Returns the path written."""
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".png")
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format=path.suffix[1:].lower(), **savefig_kwargs)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_trajectory(ds, path: str | Path, *, max_oscillators: int = 4) -> Path:
    """m_x, m_y, m_z(t) and the TMR voltage of the first few oscillators of a trajectory Dataset; saved as PNG."""
    plt = _pyplot()
    if "sample" in ds.dims:
        ds = ds.isel(sample=0)
    n_show = min(max_oscillators, ds.sizes["oscillator"])
    t_ns = ds["time"].values * 1e9
    fig, axes = plt.subplots(4, 1, figsize=(8, 9), sharex=True, constrained_layout=True)
    for i in range(n_show):
        for c, ax in enumerate(axes[:3]):
            ax.plot(t_ns, ds["m"].values[:, i, c], lw=1, label=f"oscillator {i}")
        axes[3].plot(t_ns, ds["tmr_voltage"].values[:, i] * 1e3, lw=1, label=f"oscillator {i}")
    for c, ax in enumerate(axes[:3]):
        ax.set_ylabel(f"m_{'xyz'[c]}")
        ax.set_ylim(-1.05, 1.05) if np.nanmax(np.abs(ds["m"].values)) <= 1.05 else None
    axes[3].set_ylabel("TMR voltage (mV)")
    axes[3].set_xlabel("time (ns)")
    axes[0].legend(loc="upper right", fontsize=8, ncol=n_show)
    axes[0].set_title(
        f"{ds.attrs.get('n_oscillators', '?')} coupled STOs, mu = {ds.attrs.get('coupling_oe', float('nan')):g} Oe, "
        f"I = {ds.attrs.get('current_a', float('nan')) * 1e3:g} mA"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path = save_figure(fig, path)
    plt.close(fig)
    return path


def plot_learning_curve(history: list[dict[str, float]], path: str | Path, *, title: str = "") -> Path:
    """Train and test accuracy (%) per epoch; saved as PNG."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    ax.plot(epochs, [100 * h["train_accuracy"] for h in history], "o-", label="train")
    ax.plot(epochs, [100 * h["test_accuracy"] for h in history], "s-", label="test")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    path = Path(path)
    path = save_figure(fig, path)
    plt.close(fig)
    return path


def plot_histogram(values_by_label: dict[str, "np.ndarray"], path: str | Path, *, xlabel: str, title: str = "",
                   bins: int = 40) -> Path:
    """Overlaid histograms (density) of one or more distributions; saved as PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    finite = [v[np.isfinite(v)] for v in values_by_label.values()]
    lo = min(float(v.min()) for v in finite if v.size)
    hi = max(float(v.max()) for v in finite if v.size)
    edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
    for (label, _), v in zip(values_by_label.items(), finite):
        ax.hist(v, bins=edges, density=True, alpha=0.5, label=f"{label} (mean {v.mean():.3g})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path = save_figure(fig, path)
    plt.close(fig)
    return path
