"""State-space pictures of the reservoirs: PCA of state trajectories, 3-D trajectories, the flow of
input samples through STO and deep-STO networks, and long magnetization time series.

Substrates evolve only their final state; the trajectories here come from the same dynamics, recorded
along the way (:func:`substrate_trajectory`): the FFESN map x_(k+1) = tanh(W x_k) step by step, the
Lorenz 96 RK4 steps of the substrate (``rk4_step``), and the coupled STOs through
:func:`stosim.simulation.evolve` with ``save_every`` (RK4, deterministic: the substrate's noise settings
are not applied in these pictures).

PCA: the states of all samples and times, X (S x D), centred by their mean; the principal axes are the
right singular vectors of X - mean, ordered by the variance they explain, sigma_k^2 / sum_j sigma_j^2.

>>> from stosim.visualize import write_figures
>>> write_figures("docs/figures", scale="small")     # state_space_*.png
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import numpy as np
import torch

__all__ = [
    "Trajectory",
    "substrate_trajectory",
    "pca",
    "Scale",
    "SCALES",
    "FIGURES",
    "write_figures",
    "figure_pca",
    "figure_ffesn",
    "figure_lorenz96",
    "figure_sto_flow",
    "figure_sto_timeseries",
]


@dataclasses.dataclass(frozen=True)
class Trajectory:
    """States of a batch over time: ``time`` (S,) in ``time_unit``; ``states`` (S, B, D)."""

    time: np.ndarray
    states: np.ndarray
    time_unit: str


def substrate_trajectory(substrate, state: torch.Tensor, steps: int | None = None, every: int = 1) -> Trajectory:
    """Evolve ``state`` (B, D; a valid state, e.g. ``substrate.initial_state(readin)``) with the dynamics of
    ``substrate`` (FFESN, Lorenz96, CoupledSTOArray) for ``steps`` steps (default: the substrate's own
    duration: K map steps, T / dt RK4 steps) and record it at step 0 and after every ``every`` steps.

    Time units: FFESN steps, Lorenz 96 model time, STO seconds. Deterministic (no noise).
    """
    from stosim.substrates.ffesn import FFESN
    from stosim.substrates.lorenz96 import Lorenz96
    from stosim.substrates.sto_array import CoupledSTOArray

    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every = {every!r} must be an integer >= 1")
    if state.ndim != 2:
        raise ValueError(f"state has shape {tuple(state.shape)}; expected (batch, state size)")
    x = state.detach()
    if isinstance(substrate, CoupledSTOArray):
        from stosim.simulation import evolve

        n_steps = substrate.n_steps if steps is None else steps
        _check_steps(n_steps, every)
        m0 = x.reshape(x.shape[0], -1, 3).cpu().numpy().astype(np.float64)
        _, saved, _ = evolve(substrate.array, m0, n_steps, substrate.dt_s, save_every=every)
        states = np.concatenate([m0[None], saved], axis=0).reshape(saved.shape[0] + 1, x.shape[0], -1)
        return Trajectory(np.arange(states.shape[0]) * every * substrate.dt_s, states, "s")
    if isinstance(substrate, FFESN):
        n_steps = substrate.steps if steps is None else steps
        _check_steps(n_steps, every)
        w_t = substrate.W.T
        step, h, unit = (lambda y: torch.tanh(y @ w_t)), 1.0, "step"
    elif isinstance(substrate, Lorenz96):
        n_steps = substrate.n_steps if steps is None else steps
        _check_steps(n_steps, every)
        h = substrate.duration / substrate.n_steps
        step, unit = (lambda y: substrate.rk4_step(y, h)), "model time unit"
    else:
        raise ValueError(
            f"substrate {type(substrate).__name__}: trajectories are drawn for FFESN, Lorenz96 and CoupledSTOArray"
        )
    out = [x.cpu().numpy()]
    with torch.no_grad():
        for k in range(1, n_steps + 1):
            x = step(x)
            if k % every == 0:
                out.append(x.cpu().numpy())
    states = np.stack(out).astype(np.float64)
    if not np.all(np.isfinite(states)):
        raise FloatingPointError(f"{type(substrate).__name__}: the state became non-finite within {n_steps} steps")
    return Trajectory(np.arange(len(out)) * every * h, states, unit)


def _check_steps(steps: int, every: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < every:
        raise ValueError(f"steps = {steps!r} must be an integer >= every = {every}")


def pca(states: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Principal components of ``states`` (..., D) over all leading axes.

    Returns (projections (..., k), axes (k, D), explained variance ratio (k,)); k is capped at D.
    """
    x = np.asarray(states, dtype=np.float64)
    flat = x.reshape(-1, x.shape[-1])
    mean = flat.mean(axis=0)
    _, s, vt = np.linalg.svd(flat - mean, full_matrices=False)
    k = min(k, vt.shape[0])
    total = float(np.sum(s**2))
    ratio = s[:k] ** 2 / total if total > 0 else np.zeros(k)
    return (x - mean) @ vt[:k].T, vt[:k], ratio


# ----------------------------------------------------------------------------------------------
# figure sizes
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Scale:
    """Sizes of the pictures: ``tiny`` for tests, ``small`` for docs/figures (minutes on 2 cores)."""

    samples: int  # input samples per panel
    ffesn_n: int
    ffesn_steps: int
    lorenz_n: int
    lorenz_time: float  # model time recorded (after a transient of the same length)
    sto_n: int
    sto_flow_ps: float  # evolution time of the flow pictures
    sto_series_ns: float  # length of the magnetization time series
    sto_series_n: int


SCALES = {
    "tiny": Scale(
        samples=6,
        ffesn_n=20,
        ffesn_steps=6,
        lorenz_n=8,
        lorenz_time=2.0,
        sto_n=6,
        sto_flow_ps=20.0,
        sto_series_ns=0.2,
        sto_series_n=4,
    ),
    "small": Scale(
        samples=30,
        ffesn_n=200,
        ffesn_steps=30,
        lorenz_n=40,
        lorenz_time=20.0,
        sto_n=50,
        sto_flow_ps=300.0,
        sto_series_ns=20.0,
        sto_series_n=200,
    ),
}

FFESN_RHOS = (0.5, 1.5)  # contracting (MLE = ln 0.5 < 0) and chaotic (MLE > 0) FFESN
LORENZ_FORCINGS = (2.0, 4.5, 8.0)  # fixed point / periodic, near the onset, chaotic
STO_COUPLINGS_OE = (0.1, 500.0)  # periodic (below the 0.2-0.5 Oe transition) and chaotic coupled STOs


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> Path:
    from stosim.plotting import save_figure

    out.parent.mkdir(parents=True, exist_ok=True)
    path = save_figure(fig, out, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def _paths_2d(ax, proj: np.ndarray, colors=None, marker: str = "") -> None:
    """Draw each sample's path (S, B, >=2) in the PC1-PC2 plane: start o, end x (``marker`` on every state)."""
    cmap = _pyplot().get_cmap("tab10")
    for b in range(proj.shape[1]):
        c = cmap(b % 10) if colors is None else colors[b]
        ax.plot(proj[:, b, 0], proj[:, b, 1], marker + "-", color=c, linewidth=0.9, alpha=0.8, markersize=3)
        ax.plot(proj[0, b, 0], proj[0, b, 1], "o", color=c, markersize=3)
        ax.plot(proj[-1, b, 0], proj[-1, b, 1], "x", color=c, markersize=4)
    ax.set_xlabel("PC1")
    ax.set_ylabel("PC2")
    ax.grid(alpha=0.3)


def _pc_title(name: str, ratio: np.ndarray) -> str:
    return f"{name}\nPC1-3 explain " + ", ".join(f"{100 * r:.0f}%" for r in ratio[:3])


def _random_readin(size: int, samples: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(samples, size, generator=g, dtype=torch.float64)


def _lorenz_start(n: int, forcing: float, samples: int, seed: int) -> torch.Tensor:
    """x_i = F + small perturbation: the fixed point x_i = F nudged, the usual Lorenz 96 start."""
    g = torch.Generator().manual_seed(seed)
    return forcing + 0.01 * torch.randn(samples, n, generator=g, dtype=torch.float64)


def _sto(n: int, coupling_oe: float, duration_s: float, seed: int = 0):
    from stosim.substrates.sto_array import CoupledSTOArray

    return CoupledSTOArray(n=n, coupling_oe=coupling_oe, duration_s=duration_s, dt_s=1e-12, seed=seed)


# ----------------------------------------------------------------------------------------------
# the figures
# ----------------------------------------------------------------------------------------------


def figure_pca(out: Path, scale: Scale, seed: int = 0) -> Path:
    """PC1-PC2 of state trajectories of random read-ins for each substrate (STO at 500 Oe, FFESN at
    rho = 1.5, Lorenz 96 at F = 8)."""
    from stosim.substrates.ffesn import FFESN
    from stosim.substrates.lorenz96 import Lorenz96

    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), constrained_layout=True)
    sto = _sto(scale.sto_n, 500.0, scale.sto_flow_ps * 1e-12, seed)
    every = max(1, sto.n_steps // 60)
    cases = [
        (
            f"coupled STOs, N = {scale.sto_n}, mu = 500 Oe, T = {scale.sto_flow_ps:g} ps",
            sto,
            sto.initial_state(_random_readin(3 * scale.sto_n, scale.samples, seed)),
            None,
            every,
        ),
    ]
    few = max(3, scale.samples // 5)  # long, space-filling paths: fewer samples to keep them apart
    k = min(scale.ffesn_steps, 10)
    cases.append(
        (
            f"FFESN, N = {scale.ffesn_n}, rho = 1.5, K = {k} ({few} samples)",
            FFESN(n=scale.ffesn_n, spectral_radius=1.5, steps=k, seed=seed),
            _random_readin(scale.ffesn_n, few, seed),
            None,
            1,
        )
    )
    t = min(scale.lorenz_time, 2.0)
    l96 = Lorenz96(n=scale.lorenz_n, forcing=8.0, duration=t, dt=0.01)
    cases.append(
        (
            f"Lorenz 96, N = {scale.lorenz_n}, F = 8, T = {t:g} ({few} samples)",
            l96,
            _random_readin(scale.lorenz_n, few, seed) + 8.0,
            None,
            1,
        )
    )
    for ax, (name, sub, x0, steps, every) in zip(axes, cases, strict=True):
        traj = substrate_trajectory(sub, x0, steps, every)
        proj, _, ratio = pca(traj.states, 3)
        _paths_2d(ax, proj, marker="." if "FFESN" in name else "")
        ax.set_title(_pc_title(name, ratio), fontsize=9)
    fig.suptitle(
        "state trajectories of random read-ins (standard normal; Lorenz 96: F + standard normal) "
        "from o to x, PCA over all states of each panel",
        fontsize=10,
    )
    return _save(fig, out)


def figure_ffesn(out: Path, scale: Scale, seed: int = 0) -> Path:
    """Non-chaotic (rho = 0.5) vs chaotic (rho = 1.5) FFESN: PC1-PC2 paths of random read-ins and the
    spread of the samples' states over the steps."""
    from stosim.substrates.ffesn import FFESN

    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), constrained_layout=True)
    x0 = _random_readin(scale.ffesn_n, scale.samples, seed)
    few = max(3, scale.samples // 5)
    for ax, rho in zip(axes[:2], FFESN_RHOS, strict=True):
        sub = FFESN(n=scale.ffesn_n, spectral_radius=rho, steps=scale.ffesn_steps, seed=seed)
        traj = substrate_trajectory(sub, x0)
        k = min(scale.ffesn_steps, 10)
        proj, _, ratio = pca(traj.states[: k + 1, :few], 3)
        _paths_2d(ax, proj, marker=".")
        kind = "contracting" if rho < 1 else "chaotic"
        ax.set_title(
            _pc_title(f"FFESN rho = {rho:g} ({kind}), N = {scale.ffesn_n}, steps 0-{k}, {few} samples", ratio),
            fontsize=9,
        )
        spread = np.sqrt(np.mean(np.var(traj.states, axis=1), axis=-1))  # rms spread over samples, per step
        axes[2].semilogy(traj.time, np.maximum(spread, 1e-300), "o-", markersize=3, label=f"rho = {rho:g}")
    axes[2].set_xlabel("step k")
    axes[2].set_ylabel("rms spread of the states over samples")
    axes[2].grid(alpha=0.3)
    axes[2].legend(fontsize=8)
    axes[2].set_title(
        "the samples collapse onto the origin (rho < 1)\nor stay apart on the attractor (rho > 1)", fontsize=9
    )
    return _save(fig, out)


def figure_lorenz96(out: Path, scale: Scale, seed: int = 0) -> Path:
    """Lorenz 96 at three forcings: 3-D trajectory of sites (x_0, x_1, x_2) and of the first three PCs,
    one long run per F after a transient as long as the recorded time."""
    from stosim.substrates.lorenz96 import Lorenz96

    plt = _pyplot()
    fig = plt.figure(figsize=(13, 8.4), constrained_layout=True)
    for j, forcing in enumerate(LORENZ_FORCINGS):
        sub = Lorenz96(n=scale.lorenz_n, forcing=forcing, duration=scale.lorenz_time, dt=0.01)
        start = substrate_trajectory(
            sub, _lorenz_start(scale.lorenz_n, forcing, 1, seed), sub.n_steps, sub.n_steps
        ).states[-1]
        traj = substrate_trajectory(sub, torch.as_tensor(start), sub.n_steps, 2)
        x = traj.states[:, 0]  # (S, N)
        proj, _, ratio = pca(x, 3)
        for row, (data, names) in enumerate(((x[:, :3], ("x_0", "x_1", "x_2")), (proj, ("PC1", "PC2", "PC3")))):
            ax = fig.add_subplot(2, 3, 1 + j + 3 * row, projection="3d")
            ax.plot(data[:, 0], data[:, 1], data[:, 2], linewidth=0.6)
            ax.set_xlabel(names[0])
            ax.set_ylabel(names[1])
            ax.set_zlabel(names[2])
            title = f"Lorenz 96, F = {forcing:g}, N = {scale.lorenz_n}, T = {scale.lorenz_time:g}"
            ax.set_title(title if row == 0 else _pc_title("first three PCs", ratio), fontsize=9)
    return _save(fig, out)


def figure_sto_flow(out: Path, scale: Scale, seed: int = 0) -> Path:
    """Flow of digits samples (two per class for five classes) through an STO network and a deep-STO
    network (random, untrained read-in; 500 Oe, chaotic): each sample's state over time projected on the
    PCs of all states of that layer, coloured by class."""
    from stosim.datasets import load_dataset
    from stosim.models import DeepReservoirClassifier, ReservoirClassifier

    _, test = load_dataset("digits", seed=seed)
    per_class = max(1, scale.samples // 10)
    idx = np.concatenate([np.flatnonzero(test.labels == c)[:per_class] for c in range(5)])
    u = torch.as_tensor(test.images[idx].reshape(len(idx), -1), dtype=torch.float64)
    labels = test.labels[idx]
    cmap = _pyplot().get_cmap("tab10")
    colors = [cmap(int(c)) for c in labels]
    duration = scale.sto_flow_ps * 1e-12
    torch.manual_seed(seed)
    shallow = ReservoirClassifier(u.shape[1], 10, _sto(scale.sto_n, 500.0, duration, seed))
    deep = DeepReservoirClassifier(
        u.shape[1], 10, _sto(scale.sto_n, 500.0, duration, seed), _sto(scale.sto_n, 500.0, duration, seed + 1)
    )
    panels = []
    with torch.no_grad():
        sub = shallow.substrate
        panels.append(
            (
                "STO network",
                substrate_trajectory(sub, sub.initial_state(shallow.read_in(u)), None, max(1, sub.n_steps // 60)),
            )
        )
        first = substrate_trajectory(
            deep.first, deep.first.initial_state(deep.read_in(u)), None, max(1, deep.first.n_steps // 60)
        )
        x1 = torch.as_tensor(first.states[-1])
        second = substrate_trajectory(
            deep.second, deep.second.initial_state(deep.inner(x1)), None, max(1, deep.second.n_steps // 60)
        )
        panels += [("deep STO, first layer", first), ("deep STO, second layer", second)]
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), constrained_layout=True)
    for ax, (name, traj) in zip(axes, panels, strict=True):
        proj, _, ratio = pca(traj.states, 3)
        _paths_2d(ax, proj, colors)
        ax.set_title(_pc_title(f"{name}, N = {scale.sto_n}, 500 Oe, T = {scale.sto_flow_ps:g} ps", ratio), fontsize=9)
    handles = [plt.Line2D([], [], color=cmap(c), label=f"digit {c}") for c in range(5)]
    axes[-1].legend(handles=handles, fontsize=7, loc="best")
    fig.suptitle(f"flow of {len(idx)} digits test samples (random read-in; o start, x end)", fontsize=10)
    return _save(fig, out)


def figure_sto_timeseries(out: Path, scale: Scale, seed: int = 0) -> Path:
    """Long magnetization time series of a coupled STO array at weak (periodic) and strong (chaotic)
    coupling: m_x(t) of three oscillators over the last half of the run, and m_x vs m_y of one."""
    from stosim.config import load_device
    from stosim.physics.array import STOArray
    from stosim.simulation import random_initial_state, simulate

    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(13, 6.4), constrained_layout=True, gridspec_kw={"width_ratios": [3, 1]})
    duration = scale.sto_series_ns * 1e-9
    n = scale.sto_series_n
    for row, mu in enumerate(STO_COUPLINGS_OE):
        array = STOArray.generate(load_device(), n, mu, seed=seed)
        traj = simulate(array, random_initial_state(n, seed), duration, 1e-12, save_every=2, seed=seed)
        keep = traj.time_s >= duration / 2
        t_ns, m = traj.time_s[keep] * 1e9, traj.m[keep, 0]
        for i in range(min(3, n)):
            axes[row, 0].plot(t_ns, m[:, i, 0], linewidth=0.7, label=f"oscillator {i}")
        kind = "weak: MLE ~ 0 for N = 200, periodic" if mu < 0.2 else "strong: MLE > 0 for N = 200, chaotic"
        axes[row, 0].set_title(f"mu = {mu:g} Oe ({kind}; experiments/chaos/RESULTS.md), N = {n}: m_x(t)", fontsize=9)
        axes[row, 0].set_xlabel("time (ns)")
        axes[row, 0].set_ylabel("m_x")
        axes[row, 0].legend(fontsize=7, loc="upper right")
        axes[row, 1].plot(m[:, 0, 0], m[:, 0, 1], linewidth=0.4)
        axes[row, 1].set_xlabel("m_x")
        axes[row, 1].set_ylabel("m_y")
        axes[row, 1].set_aspect("equal")
        axes[row, 1].set_title("oscillator 0", fontsize=9)
    fig.suptitle(
        f"free-running coupled STOs, last {scale.sto_series_ns / 2:g} ns of {scale.sto_series_ns:g} ns "
        "(RK4, dt = 1 ps)",
        fontsize=10,
    )
    return _save(fig, out)


FIGURES = {
    "pca": figure_pca,
    "ffesn": figure_ffesn,
    "lorenz96": figure_lorenz96,
    "sto-flow": figure_sto_flow,
    "sto-timeseries": figure_sto_timeseries,
}


def write_figures(
    out_dir: str | Path, figures: list[str] | None = None, scale: Literal["tiny", "small"] = "small", seed: int = 0
) -> list[Path]:
    """Write ``state_space_<figure>.png`` (``-`` -> ``_``) into ``out_dir`` for ``figures`` (default all of
    :data:`FIGURES`); returns the paths written."""
    if scale not in SCALES:
        raise ValueError(f"scale = {scale!r}; valid: {', '.join(SCALES)}")
    names = list(FIGURES) if not figures else list(figures)
    unknown = [f for f in names if f not in FIGURES]
    if unknown:
        raise ValueError(f"figure {unknown[0]!r} is unknown; valid: {', '.join(FIGURES)}")
    out_dir = Path(out_dir)
    return [FIGURES[name](out_dir / f"state_space_{name.replace('-', '_')}.png", SCALES[scale], seed) for name in names]
