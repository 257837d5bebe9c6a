"""Heat-map sweep specs (study and reduced scale, with their MLE sweeps) and the Lyapunov-time line."""

from __future__ import annotations

import tomllib

import numpy as np
import pytest
import xarray as xr
from conftest import REPO_ROOT

from stosim.cli import main
from stosim.sweep import PlotError, load_spec, plot_sweep
from stosim.sweep.plot import lyapunov_time_curve

EXPERIMENTS = REPO_ROOT / "experiments"
STUDY = {
    "ffesn": "heatmap-ffesn-rho-steps.toml",
    "lorenz96": "heatmap-lorenz96-forcing-duration.toml",
    "sto": "heatmap-sto-coupling-duration.toml",
}
STUDY_MLE = {
    "ffesn": "chaos/mle-vs-rho-ffesn.toml",
    "lorenz96": "chaos/mle-vs-forcing-lorenz96.toml",
    "sto": "chaos/mle-vs-coupling-sto.toml",
}
REDUCED = {
    "ffesn": ("heatmaps/ffesn-rho-steps-reduced.toml", "heatmaps/mle-ffesn-reduced.toml"),
    "lorenz96": ("heatmaps/lorenz96-forcing-duration-reduced.toml", "heatmaps/mle-lorenz96-reduced.toml"),
    "sto": ("heatmaps/sto-coupling-duration-reduced.toml", "heatmaps/mle-sto-reduced.toml"),
}
X_AXIS = {"ffesn": "spectral_radius", "lorenz96": "forcing", "sto": "coupling"}


def _pairs():
    for substrate, heat in STUDY.items():
        yield substrate, heat, STUDY_MLE[substrate]
    for substrate, (heat, mle) in REDUCED.items():
        yield substrate, heat, mle


@pytest.mark.parametrize(("substrate", "heat", "mle"), list(_pairs()))
def test_heatmap_specs_are_valid_and_match_their_mle_sweep(substrate, heat, mle):
    """Each heat map computes the mean FTMLE; its MLE sweep is of the same substrate and size and spans
    its x axis, so the Lyapunov-time line covers the whole heat map."""
    hs, ms = load_spec(EXPERIMENTS / heat), load_spec(EXPERIMENTS / mle)
    assert hs.spec.kind == "train" and ms.spec.kind == "mle"
    base, mbase = hs.spec.base, ms.spec.base
    assert base["substrate"] == mbase["substrate"] == substrate
    assert base["ftmle_samples"] > 0
    assert base["n"] == mbase["n"]
    x = X_AXIS[substrate]
    hx = next(d.values for d in hs.dims if d.name == x).astype(float)
    mx = next(d.values for d in ms.dims if d.name == x).astype(float)
    assert mx.min() <= hx.min() and mx.max() >= hx.max()
    assert main(["sweep", str(EXPERIMENTS / heat), "--dry-run"]) == 0
    assert main(["validate", str(EXPERIMENTS / heat), str(EXPERIMENTS / mle)]) == 0


def test_ffesn_heatmaps_train_80_epochs():
    for path in (STUDY["ffesn"], REDUCED["ffesn"][0]):
        assert tomllib.loads((EXPERIMENTS / path).read_text())["base"]["epochs"] == 80, path


def _heatmap(units_y: str = "1") -> xr.Dataset:
    rho = xr.DataArray([0.5, 1.0, 1.5, 2.0], dims="spectral_radius", attrs={"units": "1", "long_name": "rho"})
    steps = xr.DataArray([1, 2, 5, 10], dims="steps", attrs={"units": units_y, "long_name": "K"})
    acc = np.random.default_rng(0).uniform(0.8, 0.9, (4, 4, 2))
    ds = xr.Dataset(
        {"best_test_accuracy": (("spectral_radius", "steps", "seed"), acc, {"units": "1"})},
        coords={"spectral_radius": rho, "steps": steps, "seed": [0, 1]},
    )
    ds.attrs["sweep_name"] = "synthetic"
    return ds


def _mle(values, units: str = "1/step") -> xr.Dataset:
    rho = np.array([0.5, 1.0, 1.5, 2.0, 3.0])
    mle = np.stack([values, values], axis=-1)  # two identical seeds
    return xr.Dataset(
        {"mle": (("spectral_radius", "seed"), mle, {"units": units})},
        coords={"spectral_radius": xr.DataArray(rho, dims="spectral_radius", attrs={"units": "1"}), "seed": [0, 1]},
    )


def test_lyapunov_time_curve_positions():
    """K_L = 1/MLE placed between the cell centres: MLE 0.5 -> K_L = 2 steps (cell 1); 0.2 -> 5 (cell 2);
    0.4 -> 2.5, a sixth of the way from 2 to 5 in log(K) (the K grid 1...10 spans < 50: linear, 1/6);
    MLE <= 0 -> no Lyapunov time (gap); x = 3.0 beyond the heat map's rho range -> gap."""
    curve = lyapunov_time_curve(_mle([-0.1, 0.5, 0.2, 0.4, 0.3]), _heatmap(), "spectral_radius", "steps")
    np.testing.assert_allclose(curve.lyapunov_time, [np.inf, 2.0, 5.0, 2.5, 1 / 0.3])
    np.testing.assert_allclose(curve.x_pos[:4], [0, 1, 2, 3])
    assert np.isnan(curve.x_pos[4])
    assert np.isnan(curve.y_pos[0])
    np.testing.assert_allclose(curve.y_pos[1:4], [1.0, 2.0, 1 + 0.5 / 3], rtol=1e-12)
    assert "steps" in curve.label


def test_lyapunov_time_units_must_match_the_time_axis():
    with pytest.raises(PlotError, match="1/s"):
        lyapunov_time_curve(_mle([0.1] * 5, units="1/s"), _heatmap(), "spectral_radius", "steps")
    sto = lyapunov_time_curve(_mle([2e10] * 5, units="1/s"), _heatmap(units_y="s"), "spectral_radius", "steps")
    np.testing.assert_allclose(sto.lyapunov_time, 5e-11)
    with pytest.raises(PlotError, match="lyapunov_var="):
        lyapunov_time_curve(_mle([0.1] * 5), _heatmap(), "spectral_radius", "steps", var="lle")


def test_plot_draws_the_lyapunov_time_line(tmp_path, monkeypatch):
    import stosim.sweep.plot as plot

    drawn = {}

    def capture(fig, out, **kwargs):
        line = [ln for ln in fig.axes[0].lines if ln.get_label().startswith("Lyapunov time")][0]
        drawn["y"] = np.asarray(line.get_ydata(), dtype=float)
        fig.savefig(out)
        return out

    monkeypatch.setattr(plot, "save_figure", capture)
    out = plot_sweep(
        _heatmap(),
        "best_test_accuracy",
        "spectral_radius",
        "steps",
        tmp_path / "h.png",
        lyapunov_time=_mle([-0.1, 0.5, 0.2, 0.4, 0.3]),
    )
    assert out.stat().st_size > 1000
    np.testing.assert_allclose(drawn["y"][1:3], [1.0, 2.0])
    with pytest.raises(PlotError, match=r"needs y=\.\.\."):
        plot_sweep(
            _heatmap(), "best_test_accuracy", "spectral_radius", None, tmp_path / "l.png", lyapunov_time=_mle([0.1] * 5)
        )


def test_dry_run_lists_every_point(capsys):
    spec = EXPERIMENTS / REDUCED["sto"][0]
    assert main(["sweep", str(spec), "--dry-run", "--list-points"]) == 0
    lines = capsys.readouterr().out.splitlines()
    n = len(load_spec(spec))
    assert f"{n} points" in lines[0] and len(lines) == 1 + n
    assert lines[1].strip().startswith("0: coupling=1, duration=5e-11")
