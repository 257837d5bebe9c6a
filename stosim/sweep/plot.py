"""Plots of sweep files: a heat map over two dimensions, a line with a band over one.

Reduction (stated in the plot's title):

- ``seed`` (when it is not an axis) is the spread dimension: the heat map shows the mean over
  seeds; the line shows the mean over seeds with a band, min-max over seeds (``band="minmax"``,
  the default) or mean +/- one standard deviation over seeds (``band="std"``).
- every other dimension that is not an axis is averaged over (NaN-aware: failed or pending points
  are left out); singleton dimensions are simply dropped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

from stosim.plotting import save_figure

__all__ = ["plot_sweep", "PlotError", "lyapunov_time_curve", "LyapunovTimeCurve"]


class PlotError(ValueError):
    """Unknown dimension or variable, or a variable that cannot be plotted."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# display prefixes for coordinates stored in SI base units (the file keeps the internal unit)
_PREFIXES = {
    "s": ((1e-15, "fs"), (1e-12, "ps"), (1e-9, "ns"), (1e-6, "us"), (1e-3, "ms"), (1.0, "s")),
    "A": ((1e-6, "uA"), (1e-3, "mA"), (1.0, "A")),
    "V": ((1e-3, "mV"), (1.0, "V")),
}


def _display_scale(obj) -> tuple[float, str]:
    """(factor, unit) to show a coordinate stored in SI units with a readable prefix (e.g. s -> ps)."""
    units = str(obj.attrs.get("units", ""))
    if units in _PREFIXES and obj.dtype.kind in "iuf":
        finite = np.abs(obj.values[np.isfinite(obj.values)])
        largest = finite.max() if finite.size else 0.0
        factor, unit = _PREFIXES[units][0]
        for f, u in _PREFIXES[units]:
            if largest >= f:
                factor, unit = f, u
        return factor, unit
    return 1.0, units


def _label(obj, name: str) -> str:
    long_name = obj.attrs.get("long_name", name)
    _, units = _display_scale(obj) if name in obj.dims else (1.0, obj.attrs.get("units", ""))
    return f"{long_name} ({units})" if units and units not in ("1", "n/a") else str(long_name)


def _value_display(obj, name: str) -> tuple[float, str]:
    """(factor, axis label) of a plotted variable. Sweep files store accuracies in percent (units "%"),
    drawn as stored; files of earlier versions stored them as fractions (units "1", long name ending in
    "(fraction)"), which are shown in percent too, the convention of every other stosim output."""
    long_name = str(obj.attrs.get("long_name", name))
    if "accuracy" in name and str(obj.attrs.get("units", "")) == "1" and "(fraction)" in long_name:
        return 100.0, f"{long_name.replace(' (fraction)', '')} (%)"
    return 1.0, _label(obj, name)


def _axis_values(coord) -> tuple[np.ndarray, list[str], bool, bool]:
    """(positions, tick labels, log-scale?, categorical?) for a coordinate.

    Numbers sit at their values in display units; text, and numbers with a non-finite one (an SNR of
    ``inf`` dB, the noise-free reference), sit at 0, 1, 2, ... with the values as tick labels
    (categorical), since a point at x = inf is not drawn.
    """
    values = coord.values
    if values.dtype.kind in "iuf":
        factor, _ = _display_scale(coord)
        v = values.astype(float) / factor
        ticks = [f"{x:.4g}" for x in v]
        if not np.all(np.isfinite(v)):
            return np.arange(v.size, dtype=float), ticks, False, True
        positive = np.all(v > 0)
        log = bool(positive and v.size >= 3 and v.max() / v.min() >= 50)
        return v, ticks, log, False
    return np.arange(values.size, dtype=float), [str(x) for x in values], False, True


def plot_sweep(
    ds_or_path,
    var: str,
    x: str,
    y: str | None = None,
    out: str | Path | None = None,
    *,
    band: Literal["minmax", "std"] = "minmax",
    hue: str | None = None,
    lyapunov_time=None,
    lyapunov_var: str = "mle",
) -> Path:
    """Plot ``var`` of a sweep (Dataset or file) against ``x`` (line) or ``x`` and ``y`` (heat map); save a PNG.

    With ``hue`` (line plots only) one line, with its band over seeds, is drawn per value of that dimension.
    With ``lyapunov_time`` (heat maps only; an MLE sweep, Dataset or file, over the dimension ``x``) the
    Lyapunov time T_L = 1 / ``lyapunov_var`` (mean over seeds) is drawn as a curve over ``x`` in the units
    of ``y`` (:func:`lyapunov_time_curve`).

    Default ``out``: beside the file, ``<file stem>-<var>-<x>[-<y>].png``. Returns the PNG path.
    """
    from stosim.sweep.store import read_sweep

    path = None
    if isinstance(ds_or_path, (str, Path)):
        path = Path(ds_or_path)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        ds = read_sweep(path)
    else:
        ds = ds_or_path
    numeric = [v for v in ds.data_vars if ds[v].dtype.kind in "iuf"]
    if var not in ds.data_vars:
        raise PlotError(f"var={var!r}: no such variable; variables: {', '.join(numeric)}")
    if var not in numeric:
        raise PlotError(f"var={var!r} is not numeric; variables: {', '.join(numeric)}")
    da = ds[var]
    scale, var_label = _value_display(ds[var], var)
    if scale != 1.0:
        da = da * scale
    if hue is not None and y is not None:
        raise PlotError(f"hue={hue!r} draws one line per value; it cannot be combined with y={y!r} (a heat map)")
    if hue is not None and hue == x:
        raise PlotError(f"hue={hue!r} and x={x!r}: give two different dimensions")
    for flag, dim in (("x", x), ("y", y), ("hue", hue)):
        if dim is not None and dim not in da.dims:
            raise PlotError(f"{flag}={dim!r} is not a dimension of {var}; dimensions: {', '.join(da.dims)}")
    if y is not None and x == y:
        raise PlotError(f"x={x!r} and y={y!r}: give two different dimensions")
    if band not in ("minmax", "std"):
        raise PlotError(f"band = {band!r}; valid: minmax, std")
    if lyapunov_time is not None and y is None:
        raise PlotError(
            "the Lyapunov-time curve (lyapunov_time=...) draws T = 1/MLE over a heat map; "
            "it needs y=... (the time axis)"
        )
    curve = None if lyapunov_time is None else lyapunov_time_curve(lyapunov_time, ds, x, y, lyapunov_var)
    axes = [x] if y is None else [x, y]
    if hue is not None:
        axes.append(hue)
    spread = "seed" if "seed" in da.dims and "seed" not in axes else None
    dropped = [d for d in da.dims if d not in axes and d != spread and da.sizes[d] == 1]
    averaged = [d for d in da.dims if d not in axes and d != spread and da.sizes[d] > 1]
    da = da.isel({d: 0 for d in dropped})
    if averaged:
        with _quiet():
            da = da.mean(averaged, skipna=True, keep_attrs=True)
    notes = []
    if averaged:
        notes.append("mean over " + ", ".join(f"{d} ({ds.sizes[d]})" for d in averaged))
    fixed = [f"{d} = {ds[d].values[0]}" for d in dropped if d in ds.coords]
    if fixed:
        notes.append(", ".join(fixed))

    plt = _pyplot()
    if y is None:
        fig, ax = plt.subplots(figsize=(6.4, 4.4), constrained_layout=True)
        pos, ticks, log, categorical = _axis_values(ds[x])
        lines = (
            [(None, da)]
            if hue is None
            else [
                (f"{_label(ds[hue], hue).split(' (')[0]} = {_format_value(ds[hue], v)}", da.isel({hue: k}))
                for k, v in enumerate(ds[hue].values)
            ]
        )
        for name, line in lines:
            prefix = f"{name}: " if name else ""
            if spread:
                values = line.transpose(x, spread).values
                n_seeds = values.shape[1]
                with _quiet():
                    mean = np.nanmean(values, axis=1)
                    if band == "minmax":
                        lo, hi = np.nanmin(values, axis=1), np.nanmax(values, axis=1)
                        band_label = f"min-max over {n_seeds} seeds"
                    else:
                        sd = np.nanstd(values, axis=1)
                        lo, hi = mean - sd, mean + sd
                        band_label = f"mean +/- std over {n_seeds} seeds"
                (drawn,) = ax.plot(pos, mean, "o-", label=f"{prefix}mean over {n_seeds} seeds")
                ax.fill_between(pos, lo, hi, alpha=0.25, color=drawn.get_color(), label=f"{prefix}{band_label}")
            else:
                ax.plot(pos, line.transpose(x).values, "o-", label=name)
        if spread or hue is not None:
            ax.legend(fontsize=8)
        if log:
            ax.set_xscale("log")
        if categorical:
            ax.set_xticks(pos, ticks)
        ax.set_xlabel(_label(ds[x], x))
        ax.set_ylabel(var_label)
        ax.grid(alpha=0.3)
    else:
        if spread:
            with _quiet():
                da = da.mean(spread, skipna=True, keep_attrs=True)
            notes.insert(0, f"mean over {ds.sizes['seed']} seeds")
        values = da.transpose(y, x).values
        nx, ny = values.shape[1], values.shape[0]
        fig, ax = plt.subplots(figsize=(1.2 + 0.9 * max(nx, 4), 1.0 + 0.7 * max(ny, 4)), constrained_layout=True)
        mesh = ax.pcolormesh(
            np.arange(nx + 1) - 0.5,
            np.arange(ny + 1) - 0.5,
            np.ma.masked_invalid(values),
            cmap="viridis",
            shading="flat",
        )
        cbar = fig.colorbar(mesh, ax=ax)
        cbar.set_label(var_label)
        xticks, yticks = _axis_values(ds[x])[1], _axis_values(ds[y])[1]
        ax.set_xticks(np.arange(nx), xticks, rotation=45 if nx > 6 else 0)
        ax.set_yticks(np.arange(ny), yticks)
        ax.set_xlabel(_label(ds[x], x))
        ax.set_ylabel(_label(ds[y], y))
        if nx * ny <= 144:
            finite = values[np.isfinite(values)]
            mid = (finite.min() + finite.max()) / 2 if finite.size else 0.0
            for j in range(ny):
                for i in range(nx):
                    v = values[j, i]
                    ax.text(
                        i,
                        j,
                        "n/a" if not np.isfinite(v) else f"{v:.3g}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if np.isfinite(v) and v < mid else "black",
                    )
        if curve is not None:
            _draw_lyapunov_time(ax, curve)
    title = str(ds.attrs.get("sweep_name", "sweep"))
    ax.set_title(title + (f"\n{'; '.join(notes)}" if notes else ""), fontsize=9)
    if out is None:
        stem = path.with_suffix("") if path is not None else Path(title)
        out = Path(f"{stem}-{var}-{x}" + (f"-{y}" if y else "") + ".png")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out = save_figure(fig, out, bbox_inches="tight")
    plt.close(fig)
    return out


@dataclasses.dataclass(frozen=True)
class LyapunovTimeCurve:
    """T_L = 1 / MLE over the heat map's x axis, in the heat map's cell coordinates.

    ``x_values`` / ``lyapunov_time``: the MLE sweep's x values and 1 / MLE (internal units of the heat
    map's y coordinate: s for the STOs, model time for Lorenz 96, steps for the FFESN; inf where
    MLE <= 0); ``x_pos`` / ``y_pos``: where they fall on the heat map (cell i is centred on i; NaN
    outside the drawn range); ``label``: legend text.
    """

    x_values: np.ndarray
    lyapunov_time: np.ndarray
    x_pos: np.ndarray
    y_pos: np.ndarray
    label: str


def _cell_position(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Position of ``values`` on a heat-map axis whose cell i is centred on ``grid[i]`` (sorted, finite):
    piecewise-linear between cell centres, in log(value) when the grid is positive and spans >= 50 (as
    the tick labels); NaN outside [grid[0], grid[-1]]."""
    grid = np.asarray(grid, dtype=float)
    values = np.asarray(values, dtype=float)
    if not np.all(np.isfinite(grid)) or grid.size < 2 or not np.all(np.diff(grid) > 0):
        raise PlotError("the Lyapunov-time curve needs numeric, increasing, finite coordinates on both heat-map axes")
    log = bool(np.all(grid > 0) and grid[-1] / grid[0] >= 50)
    with _quiet():
        g, v = (np.log(grid), np.log(values)) if log else (grid, values)
    pos = np.interp(v, g, np.arange(grid.size, dtype=float), left=np.nan, right=np.nan)
    pos[~np.isfinite(v)] = np.nan
    return pos


def lyapunov_time_curve(mle_sweep, heatmap, x: str, y: str, var: str = "mle") -> LyapunovTimeCurve:
    """The Lyapunov time T_L = 1 / MLE of ``mle_sweep`` (Dataset or file; ``var`` over the dimension ``x``,
    mean over seeds and every other dimension) placed on the heat map ``heatmap`` over (``x``, ``y``).

    Units: ``var`` must be a rate in 1/(units of ``y``) (MLE in 1/s and T in s for the STOs, 1/(model
    time unit) for Lorenz 96, 1/step and K in steps for the FFESN); anything else is refused
    (:class:`PlotError` naming both units). Where the MLE is <= 0 there is no Lyapunov time (T_L = inf):
    the curve has a gap there.
    """
    from stosim.sweep.store import read_sweep

    if isinstance(mle_sweep, (str, Path)):
        if not Path(mle_sweep).exists():
            raise FileNotFoundError(f"lyapunov_time={mle_sweep} does not exist")
        mle_sweep = read_sweep(Path(mle_sweep))
    if var not in mle_sweep.data_vars:
        raise PlotError(
            f"lyapunov_var={var!r}: not a variable of the MLE sweep (lyapunov_time); variables: "
            f"{', '.join(v for v in mle_sweep.data_vars if mle_sweep[v].dtype.kind in 'iuf')}"
        )
    da = mle_sweep[var]
    if x not in da.dims:
        raise PlotError(f"the MLE sweep's {var} is not swept over x={x!r}; its dimensions: {', '.join(da.dims)}")
    rate_units = str(da.attrs.get("units", ""))
    time_units = str(heatmap[y].attrs.get("units", ""))
    accepted = {f"1/{time_units}", f"1/({time_units})"} | ({"1/step", "1"} if time_units in ("1", "step") else set())
    if rate_units not in accepted:
        raise PlotError(
            f"the MLE sweep's {var} is in {rate_units!r}, not a rate in 1/({time_units}) of y={y!r}; "
            "the Lyapunov time 1/MLE must be in the units of the heat map's time axis"
        )
    other = [d for d in da.dims if d != x]
    with _quiet():
        mle = (da.mean(other, skipna=True) if other else da).transpose(x).values.astype(float)
        t_l = np.where(mle > 0, 1.0 / mle, np.inf)
    xs = mle_sweep[x].values.astype(float)
    order = np.argsort(xs)
    xs, t_l = xs[order], t_l[order]
    x_pos = _cell_position(xs, heatmap[x].values)
    y_pos = _cell_position(t_l, heatmap[y].values)
    _, unit = _display_scale(heatmap[y])
    unit = "steps" if time_units in ("1", "step") else unit
    n_seeds = f", mean over {mle_sweep.sizes['seed']} seeds" if "seed" in da.dims else ""
    return LyapunovTimeCurve(
        x_values=xs, lyapunov_time=t_l, x_pos=x_pos, y_pos=y_pos, label=f"Lyapunov time 1/{var} ({unit}{n_seeds})"
    )


def _draw_lyapunov_time(ax, curve: LyapunovTimeCurve) -> None:
    """The curve as a white-edged red line with markers; gaps where MLE <= 0 or off the drawn range."""
    ax.plot(
        curve.x_pos,
        curve.y_pos,
        "-o",
        color="red",
        markersize=3,
        linewidth=2,
        label=curve.label,
        path_effects=_outline(),
    )
    ax.legend(fontsize=7, loc="upper right", framealpha=0.8)


def _outline():
    import matplotlib.patheffects as pe

    return [pe.Stroke(linewidth=3.5, foreground="white"), pe.Normal()]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence 'mean of empty slice' warnings for all-NaN cells (failed or pending points plot as gaps)."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _format_value(coord, value) -> str:
    """A coordinate value with its unit, for legends: in the unit the axes show it in (300 ps, not 3e-10 s)."""
    if isinstance(value, (int, float, np.integer, np.floating)):
        factor, unit = _display_scale(coord)
        text = f"{value / factor:.4g}"
    else:
        unit, text = coord.attrs.get("units", ""), str(value)
    return f"{text} {unit}".strip() if unit not in ("", "1", "n/a") else text
