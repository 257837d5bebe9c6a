"""Plots (matplotlib, Agg backend): trajectories of a few oscillators and their TMR signal."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stosim.storage import atomic_output

__all__ = ["plot_trajectory", "plot_learning_curve", "plot_histogram", "save_figure"]


def save_figure(fig, path: str | Path, *, dpi: float = 110, **savefig_kwargs) -> Path:
    """Save ``fig`` atomically at ``dpi`` (the resolution of every stosim figure); the format comes from
    the suffix (none: PNG, and ``.png`` is appended, as matplotlib does). Returns the path written."""
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".png")
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format=path.suffix[1:].lower(), dpi=dpi, **savefig_kwargs)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _attr_text(ds, name: str, scale: float = 1.0) -> str:
    """Attribute ``name`` times ``scale`` for a title (``?`` when missing or not a number)."""
    value = ds.attrs.get(name)
    try:
        return f"{float(value) * scale:g}"
    except (TypeError, ValueError):
        return "?"


def _fits_unit_range(values: np.ndarray) -> bool:
    """Whether every finite value lies in [-1.05, 1.05] (true when none is finite)."""
    finite = values[np.isfinite(values)]
    return finite.size == 0 or float(np.max(np.abs(finite))) <= 1.05


def plot_trajectory(ds, path: str | Path, *, max_oscillators: int = 4) -> Path:
    """m_x, m_y, m_z(t) and the TMR voltage of the first few oscillators of a trajectory Dataset; saved as PNG."""
    plt = _pyplot()
    if "sample" in ds.dims:
        ds = ds.isel(sample=0)
    n_show = min(max_oscillators, ds.sizes["oscillator"])
    t_ns = ds["time"].values * 1e9
    fig, axes = plt.subplots(4, 1, figsize=(8, 9), sharex=True, constrained_layout=True)
    try:
        for i in range(n_show):
            for c, ax in enumerate(axes[:3]):
                ax.plot(t_ns, ds["m"].values[:, i, c], lw=1, label=f"oscillator {i}")
            axes[3].plot(t_ns, ds["tmr_voltage"].values[:, i] * 1e3, lw=1, label=f"oscillator {i}")
        unit_range = _fits_unit_range(ds["m"].values)
        for c, ax in enumerate(axes[:3]):
            ax.set_ylabel(f"m_{'xyz'[c]}")
            if unit_range:
                ax.set_ylim(-1.05, 1.05)
        axes[3].set_ylabel("TMR voltage (mV)")
        axes[3].set_xlabel("time (ns)")
        axes[0].legend(loc="upper right", fontsize=8, ncol=n_show)
        axes[0].set_title(
            f"{ds.attrs.get('n_oscillators', '?')} coupled STOs, "
            f"mu = {_attr_text(ds, 'coupling_oe')} Oe, "
            f"I = {_attr_text(ds, 'current_a', 1e3)} mA"
        )
        return save_figure(fig, path)
    finally:
        plt.close(fig)  # also on an error: a long sweep must not pile up open figures


def plot_learning_curve(history: list[dict[str, float]], path: str | Path, *, title: str = "") -> Path:
    """Train and test accuracy (%) per epoch; saved as PNG."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    try:
        ax.plot(epochs, [100 * h["train_accuracy"] for h in history], "o-", label="train")
        ax.plot(epochs, [100 * h["test_accuracy"] for h in history], "s-", label="test")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(_integer_locator())  # epochs are whole numbers: no 1.5 ticks
        ax.set_ylabel("accuracy (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def _integer_locator():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _histogram_edges(finite: list[np.ndarray], bins: int) -> np.ndarray:
    """``bins + 1`` increasing edges over the finite values (a unit-wide range when there are none,
    a range around the value when they are all equal, however large)."""
    values = np.concatenate([np.ravel(v) for v in finite]) if finite else np.empty(0)
    if values.size == 0:
        return np.linspace(0.0, 1.0, bins + 1)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo or np.any(np.diff(np.linspace(lo, hi, bins + 1)) <= 0):
        half = max(abs(lo) * 1e-3, 0.5)
        lo, hi = lo - half, hi + half
    return np.linspace(lo, hi, bins + 1)


def _histogram_label(label: str, values: np.ndarray, n_not_finite: int) -> str:
    """Legend entry: the mean of the finite values and how many values are not finite (not drawn)."""
    mean = f"mean {values.mean():.3g}" if values.size else "no finite value"
    dropped = f", {n_not_finite} not finite, not shown" if n_not_finite else ""
    return f"{label} ({mean}{dropped})"


def plot_histogram(
    values_by_label: dict[str, "np.ndarray"], path: str | Path, *, xlabel: str, title: str = "", bins: int = 40
) -> Path:
    """Overlaid histograms (density) of one or more distributions; saved as PNG. NaN and inf values are
    not drawn; the legend says how many each distribution has."""
    plt = _pyplot()
    arrays = [np.asarray(v, dtype=np.float64).ravel() for v in values_by_label.values()]
    finite = [v[np.isfinite(v)] for v in arrays]
    edges = _histogram_edges(finite, bins)
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    try:
        for label, v, all_v in zip(values_by_label, finite, arrays):
            ax.hist(
                v, bins=edges, density=bool(v.size), alpha=0.5, label=_histogram_label(label, v, all_v.size - v.size)
            )
        ax.ticklabel_format(axis="x", useOffset=False)  # values as they are, no "+1e9" offset to add back
        ax.set_xlabel(xlabel)
        ax.set_ylabel("density")
        ax.set_title(title)
        ax.legend()
        return save_figure(fig, path)
    finally:
        plt.close(fig)
