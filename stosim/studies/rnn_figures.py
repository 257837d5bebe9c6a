"""Figures of the rate-network studies (:mod:`stosim.studies.rnn_spectra`), one PNG per study summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from stosim.analysis.rate_theory import dmft_discrete_mle

__all__ = ["plot_study"]


def _mle_vs_g(s: dict[str, Any], ax) -> None:
    rows = s["rows"]
    g = np.array([r["g"] for r in rows])
    mle = np.array([r["mle"] for r in rows])
    se = np.array([r["mle_se"] for r in rows])
    unit = s["time_unit"]
    ax.errorbar(g, mle, yerr=se, fmt="o", ms=4, capsize=2, label=f"QR method, N = {s['n']}")
    cc = [(r["g"], r["two_trajectory_mle"]) for r in rows if "two_trajectory_mle" in r]
    if cc:
        ax.plot(*zip(*cc), "x", color="k", label="two-trajectory cross-check")
    below = [(r["g"], r["fixed_point_prediction"]) for r in rows if "fixed_point_prediction" in r]
    if s["study"] == "discrete-mle-vs-g":
        gg = np.linspace(min(g.min(), 0.3), g.max(), 300)
        ax.plot(
            gg,
            [dmft_discrete_mle(v) for v in gg],
            "-",
            color="C1",
            label=r"mean field $\frac{1}{2}\ln(g^2\langle\phi'^2\rangle)$ ($\ln g$ below 1)",
        )
        if below:
            ax.plot(*zip(*below), "s", mfc="none", color="C2", label=r"$\ln\rho(J)$ (fixed point)")
    elif below:
        ax.plot(*zip(*below), "s", mfc="none", color="C2", label=r"max Re eig$(J) - 1$ (fixed point)")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.axvline(1, color="0.6", lw=0.8, ls=":")
    ax.set_xlabel("g")
    ax.set_ylabel(rf"$\lambda_{{max}}$ (1/{unit})")
    ax.legend(fontsize=7)


def _size(s: dict[str, Any], axes) -> None:
    ax, ax2 = axes
    for key, lam in s["spectra"].items():
        n, seed = key.split(":")
        if seed != "0" and len(s["spectra"]) > len(s["rows"]):
            continue
        lam = np.asarray(lam)
        ax.plot((np.arange(1, lam.size + 1) - 0.5) / lam.size, lam, lw=1, label=f"N = {n}")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xlabel("i / N")
    ax.set_ylabel(f"$\\lambda_i$ (1/{s['time_unit']})")
    ax.set_title(f"{s['time']} time, g = {s['g']:g}", fontsize=9)
    ax.legend(fontsize=7)
    rows = s["rows"]
    n = np.array([r["n"] for r in rows])
    ax2.errorbar(
        n,
        [r["dky_over_n"] for r in rows],
        yerr=[r["dky_over_n_se"] for r in rows],
        fmt="o-",
        ms=4,
        capsize=2,
        label="$D_{KY}/N$",
    )
    ax2.errorbar(
        n,
        [r["hks_over_n"] for r in rows],
        yerr=[r["hks_over_n_se"] for r in rows],
        fmt="s-",
        ms=4,
        capsize=2,
        label=f"$h_{{KS}}/N$ (1/{s['time_unit']})",
    )
    ax2.set_xscale("log")
    ax2.minorticks_off()
    ax2.set_xticks(n, [str(v) for v in n])
    ax2.set_xlabel("N")
    ax2.legend(fontsize=7)


def _rmt(s: dict[str, Any], axes) -> None:
    panels = (
        ("onset", "near onset: Re eig(-1 + J<D>)"),
        ("intense", "intense chaos: Re eig(-1 + J<D>)"),
        ("discrete_ginibre", "discrete: Ginibre products"),
    )
    for ax, (key, title) in zip(axes, panels):
        d = s[key]
        lam = np.asarray(d["measured"])
        x = (np.arange(1, lam.size + 1) - 0.5) / lam.size
        ax.plot(x, lam, "-", lw=1.5, label="measured")
        ax.plot(x, d["approximation"], "--", lw=1.2, label="random-matrix approx.")
        if key == "intense":
            ax.plot(x, s["intense_linear"]["approximation"], ":", lw=1.2, label="equally spaced")
        if key == "discrete_ginibre":
            ax.plot(x, s["discrete_annealed"]["approximation"], ":", lw=1.2, label=r"products $J_s D_s$")
        ax.axhline(d["symmetry"]["centre"], color="0.6", lw=0.8, ls=":")
        ax.set_title(f"{title}\ng = {d['g']:g}, N = {lam.size}", fontsize=8)
        ax.set_xlabel("i / N")
        ax.legend(fontsize=6)
    axes[0].set_ylabel(r"$\lambda_i$ (1/tau or 1/step)")


def _input(s: dict[str, Any], axes) -> None:
    ax, ax2 = axes
    rows = s["rows"]
    x = [r["input_std"] for r in rows]
    ax.errorbar(x, [r["ks_entropy"] for r in rows], yerr=[r["ks_entropy_se"] for r in rows], fmt="o-", capsize=2)
    ax.set_ylabel(r"$h_{KS}$ (1/tau)")
    ax2.errorbar(
        x,
        [r["kaplan_yorke_dimension"] for r in rows],
        yerr=[r["kaplan_yorke_dimension_se"] for r in rows],
        fmt="s-",
        color="C1",
        capsize=2,
    )
    ax2.set_ylabel("$D_{KY}$")
    for a in axes:
        a.set_xlabel(f"input std (OU, correlation time {s['input_tau']:g} tau)")
    ax.set_title(f"N = {s['n']}, g = {s['g']:g}", fontsize=9)


def _trained(s: dict[str, Any], ax) -> None:
    for i, r in enumerate(s["rows"]):
        b, a = np.asarray(r["exponents_before"]), np.asarray(r["exponents_after"])
        x = np.arange(1, b.size + 1) / b.size
        ax.plot(x, b, "-", color="C0", lw=1, label="before training" if i == 0 else None)
        ax.plot(x, a, "-", color="C3", lw=1, label="after training (sine generator)" if i == 0 else None)
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xlabel("i / N")
    ax.set_ylabel(r"$\lambda_i$ (1/tau)")
    ax.set_title(f"N = {s['n']}, g = {s['g']:g} at initialization; J trained by BPTT", fontsize=9)
    ax.legend(fontsize=7)


def plot_study(summary: dict[str, Any], path: Path) -> Path:
    """Draw the figure of a study summary to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    study = summary["study"]
    shape = {"size-scaling": (1, 2), "rmt": (1, 3), "input": (1, 2)}.get(study, (1, 1))
    fig, axes = plt.subplots(*shape, figsize=(4.2 * shape[1], 3.4), squeeze=False)
    axes = axes[0]
    try:
        if study in ("discrete-mle-vs-g", "continuous-mle-vs-g"):
            _mle_vs_g(summary, axes[0])
        elif study == "size-scaling":
            _size(summary, axes)
        elif study == "rmt":
            _rmt(summary, axes)
        elif study == "input":
            _input(summary, axes)
        else:
            _trained(summary, axes[0])
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path
