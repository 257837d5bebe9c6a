"""Noise-robustness figures and tables from ``noise`` sweeps: models trained without noise beside models
trained with it, accuracy against the evaluation noise level, mean +/- standard deviation over seeds.

Inputs: the sweep file of the noiselessly trained models (``train_with_noise = false``, evaluated at
every level; ``experiments/noise/mnist/noiseless-training.toml``) and, per kind of noise, a file of models
trained with that noise at one level and evaluated at every level of the same kind
(``trained-with-*.toml``). Both are over ``coupling`` and ``seed``.

    python -m stosim.sweep.noise_figure data/studies --out docs/figures    # noise-mnist-*.h5 in data/studies

writes ``noise-mnist-{observation,dynamical,thermal}.png`` and prints the Markdown tables of
experiments/noise/RESULTS.md (mean +/- std over seeds, in %).
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

from stosim.plotting import save_figure

__all__ = ["KINDS", "noise_curves", "plot_noise_kind", "noise_table", "main"]

# kind -> (accuracy variable, level dimension, level label, file of the noise-trained models)
KINDS = {
    "observation": ("accuracy_vs_observation_snr", "eval_observation_snr", "observation SNR (dB)"),
    "dynamical": ("accuracy_vs_dynamical_snr", "eval_dynamical_snr", "dynamical SNR (dB)"),
    "thermal": ("accuracy_vs_temperature", "eval_temperature", "temperature (K)"),
}
NOISELESS_FILE = "noise-mnist-noiseless.h5"
TRAINED_FILE = "noise-mnist-trained-{kind}.h5"


def _training_noise(ds) -> str:
    """How the models of a noise sweep were trained, from its resolved spec (``sweep_spec_json`` attribute)."""
    spec = json.loads(ds.attrs.get("sweep_spec_json", "{}"))
    base = spec.get("base", {})
    if not base.get("train_with_noise", True):
        return "trained without noise"
    parts = []
    if base.get("observation_snr") not in (None, "inf"):
        parts.append(f"observation SNR {base['observation_snr']:g} dB")
    if base.get("dynamical_snr") not in (None, "inf"):
        parts.append(f"dynamical SNR {base['dynamical_snr']:g} dB")
    if base.get("temperature"):
        parts.append(f"{base['temperature']:g} K")
    return "trained with " + (", ".join(parts) if parts else "no noise")


def noise_curves(ds, kind: str) -> dict[float, tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """{coupling (Oe): (levels, mean, std over seeds, seeds finished)} of the accuracy under ``kind`` noise in
    ``ds``; a seed whose point has not finished (all NaN) is left out of the mean and not counted."""
    var, dim, _ = KINDS[kind]
    if var not in ds.data_vars:
        raise ValueError(f"{var}: not in this sweep file; its noise points were not evaluated under {kind} noise")
    da = ds[var].transpose("coupling", "seed", dim)
    levels = ds[dim].values
    out = {}
    for k, mu in enumerate(ds["coupling"].values):
        values = da.values[k]
        with warnings.catch_warnings():  # a level no seed has finished yet is NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            finished = int(np.isfinite(values).any(axis=1).sum())
            out[float(mu)] = (levels, np.nanmean(values, axis=0), np.nanstd(values, axis=0), finished)
    return out


def _level_label(ds, kind: str) -> str:
    label = KINDS[kind][2]
    if kind == "dynamical":
        reference = json.loads(ds.attrs.get("sweep_spec_json", "{}")).get("base", {}).get("dynamical_noise_reference")
        where = "per integration step" if reference is None else f"over {reference * 1e12:g} ps"
        label = f"dynamical SNR {where} (dB)"
    return label


def plot_noise_kind(noiseless, trained, kind: str, out: str | Path, title: str = "") -> Path:
    """One figure: accuracy vs the ``kind`` noise level, per coupling, for the noiselessly trained models
    (solid) and the models trained with the noise (dashed; ``trained`` may be None), error bars one
    standard deviation over seeds."""
    from stosim.sweep.plot import _pyplot

    plt = _pyplot()
    label = _level_label(noiseless, kind)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), constrained_layout=True)
    sets = [(noiseless, "-", "o")] + ([(trained, "--", "s")] if trained is not None else [])
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ds, style, marker in sets:
        how = _training_noise(ds)
        n_seeds = ds.sizes.get("seed", 1)
        for c, (mu, (levels, mean, std, finished)) in enumerate(noise_curves(ds, kind).items()):
            if finished == 0:
                continue  # no seed of this curve has finished yet
            seeds = f"{finished} seeds" if finished == n_seeds else f"{finished} of {n_seeds} seeds"
            pos = np.where(np.isfinite(levels), levels, np.nan)
            ax.errorbar(
                pos, mean, yerr=std, linestyle=style, marker=marker, capsize=3, color=colors[c % len(colors)],
                label=f"mu = {mu:g} Oe, {how} ({seeds})",
            )  # fmt: skip
    ax.set_xlabel(label)
    ax.set_ylabel("test accuracy (%), mean +/- std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    out = Path(out)
    save_figure(fig, out)
    plt.close(fig)
    return out


def noise_table(datasets: list, kind: str) -> str:
    """Markdown table: one row per (training, coupling), one column per level, cells mean +/- std (%)."""
    _, dim, _ = KINDS[kind]
    label = _level_label(datasets[0], kind)
    levels = datasets[0][dim].values
    head = f"| models | {' | '.join(f'{v:g}' for v in levels)} |"
    lines = [f"{label}:", "", head, "| --- |" + " --- |" * len(levels)]
    for ds in datasets:
        how = _training_noise(ds)
        n_seeds = ds.sizes.get("seed", 1)
        for mu, (lv, mean, std, finished) in noise_curves(ds, kind).items():
            if not np.array_equal(lv, levels):
                raise ValueError(f"{dim}: the files are evaluated at different levels ({lv} and {levels})")
            if finished == 0:
                continue
            cells = " | ".join(f"{m:.1f} +/- {s:.1f}" for m, s in zip(mean, std))
            seeds = "" if finished == n_seeds else f" ({finished} of {n_seeds} seeds)"
            lines.append(f"| mu = {mu:g} Oe, {how}{seeds} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from stosim.sweep.store import read_sweep

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help=f"folder of {NOISELESS_FILE} and {TRAINED_FILE.format(kind='*')}")
    parser.add_argument("--out", type=Path, required=True, help="folder of the figures")
    args = parser.parse_args(argv)
    noiseless = read_sweep(args.folder / NOISELESS_FILE)
    for kind in KINDS:
        path = args.folder / TRAINED_FILE.format(kind=kind)
        trained = read_sweep(path) if path.exists() else None
        figure = plot_noise_kind(
            noiseless, trained, kind, args.out / f"noise-mnist-{kind}.png", title=f"coupled STOs on MNIST: {kind} noise"
        )
        print(f"wrote {figure}\n")
        print(noise_table([noiseless] + ([trained] if trained is not None else []), kind) + "\n")


if __name__ == "__main__":
    main()
