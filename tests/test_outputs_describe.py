"""Outputs describe their run: metrics.json and trajectory files hold the resolved configuration with units,
the version and the seeds; plots show readable units (integer epochs, legends in the axis' unit, rates
without offsets) and say when an exponent is consistent with zero."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import stosim
from stosim.cli import main
from stosim.studies.training import TrainConfig, resolved_config, run_seeds, train


def _no_none(obj: object) -> bool:
    if isinstance(obj, dict):
        return all(_no_none(v) for v in obj.values())
    if isinstance(obj, list):
        return all(_no_none(v) for v in obj)
    return obj is not None


def test_resolved_config_of_the_stos_has_units_and_no_defaults_left_open() -> None:
    cfg = TrainConfig(substrate="sto")
    resolved = resolved_config(cfg)
    assert _no_none(resolved)
    assert resolved["coupling"] == "500 Oe" and resolved["duration"] == "300 ps" and resolved["dt"] == "1 ps"
    assert resolved["current"] == "2.5 mA" and resolved["temperature"] == "0 K" and resolved["n"] == 100
    assert resolved["observation_snr"] == "off" and "seed-pmtj" in resolved["device"]
    assert "spectral_radius" not in resolved and "forcing" not in resolved and "hidden" not in resolved
    lorenz = resolved_config(TrainConfig(substrate="lorenz96", duration=2.0))
    assert lorenz["duration"] == 2.0 and lorenz["dt"] == 0.01 and "coupling" not in lorenz
    assert run_seeds(TrainConfig(substrate="deep-sto", seed=4))["second_substrate_matrix"] == 5


def test_metrics_json_records_the_resolved_run(tmp_path: Path) -> None:
    cfg = TrainConfig(substrate="ffesn", n=20, epochs=2, limit_train=60, limit_test=30, seed=3)
    result = train(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    resolved = metrics["resolved_config"]
    assert _no_none(resolved) and resolved["n"] == 20 and resolved["steps"] == 5 and resolved["spectral_radius"] == 1.0
    assert metrics["stosim_version"] == stosim.__version__ and metrics["versions"]["torch"]
    assert metrics["seeds"]["seed"] == 3 and metrics["seeds"]["substrate_matrix"] == 3
    # files in percent (like the sweep files), TrainResult in fractions
    assert metrics["test_accuracy"] == pytest.approx(100 * result.test_accuracy, rel=1e-12)
    assert metrics["accuracy_units"] == "%"
    assert [h["test_accuracy"] for h in metrics["history"]] == pytest.approx(
        [100 * h["test_accuracy"] for h in result.history], rel=1e-12
    )
    assert metrics["config"]["n"] == 20  # the configuration as given is still there (resume, compare)


def test_trajectory_file_has_the_coupling_matrix_the_noise_free_state_and_the_config(tmp_path: Path) -> None:
    out = tmp_path / "traj.h5"
    args = ["simulate", "--n", "3", "--duration", "200 ps", "--dt", "1 ps", "--seed", "5"]
    assert main([*args, "--observation-snr", "20", "--out", str(out)]) == 0
    assert main([*args, "--out", str(tmp_path / "clean.h5")]) == 0
    with (
        xr.open_dataset(out, engine="h5netcdf") as ds,
        xr.open_dataset(tmp_path / "clean.h5", engine="h5netcdf") as clean,
    ):
        # oracle: the noise-free state of the noisy run is the state of the same run without observation noise
        np.testing.assert_array_equal(ds["m_noiseless"].values, clean["m"].values)
        np.testing.assert_array_equal(ds["tmr_voltage_noiseless"].values, clean["tmr_voltage"].values)
        assert not np.array_equal(ds["m"].values, clean["m"].values)
        assert "m_noiseless" not in clean  # no noise: nothing to tell apart
        array = stosim.STOArray.generate(stosim.load_device(), 3, 500.0, seed=5)
        np.testing.assert_array_equal(ds["coupling_matrix"].values, array.coupling_matrix)
        assert ds["tmr_voltage"].attrs["units"] == "V"
        config = json.loads(ds.attrs["config"])
        assert config == {
            **config,
            "coupling": "500 Oe",
            "duration": "200 ps",
            "dt": "1 ps",
            "n": 3,
            "seed": 5,
            "observation_snr": "20.0 dB",
            "current": "2.5 mA",
            "temperature": "0 K",
        }
        assert ds.attrs["version_stosim"] == stosim.__version__


def _captured_figures(monkeypatch: pytest.MonkeyPatch, module) -> list:
    """Figures passed to ``module.save_figure`` (drawn, so that tick labels exist), saved nowhere."""
    figures = []

    def capture(fig, path, **kwargs):
        fig.canvas.draw()
        figures.append(fig)
        return Path(path)

    monkeypatch.setattr(module, "save_figure", capture)
    return figures


def test_learning_curve_has_integer_epoch_ticks(monkeypatch: pytest.MonkeyPatch) -> None:
    from stosim import plotting

    figures = _captured_figures(monkeypatch, plotting)
    history = [{"epoch": e, "train_accuracy": 0.5 + 0.1 * e, "test_accuracy": 0.4 + 0.1 * e} for e in (1, 2, 3)]
    plotting.plot_learning_curve(history, "curve.png")
    ticks = figures[0].axes[0].get_xticks()
    assert len(ticks) >= 2 and np.all(ticks == np.round(ticks))


def test_histogram_of_large_rates_has_no_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    from stosim import plotting

    figures = _captured_figures(monkeypatch, plotting)
    from stosim.cli import _rate_display

    rates, unit = _rate_display(2.0e9 + np.linspace(0, 1e3, 50), "1/s")  # 1/s values that differ in the 7th digit
    assert unit == "1/ns" and np.allclose(rates, 2.0 + np.linspace(0, 1e-6, 50), rtol=1e-15, atol=0)
    plotting.plot_histogram({"untrained": rates}, "h.png", xlabel=f"FTMLE ({unit})")
    assert figures[0].axes[0].xaxis.get_major_formatter().get_offset() == ""  # no "+2" to add back


def test_sweep_legend_values_are_in_the_axis_unit() -> None:
    from stosim.sweep.plot import _format_value

    duration = xr.DataArray([1e-10, 3e-10], dims="duration", attrs={"units": "s"})
    assert [_format_value(duration, v) for v in duration.values] == ["100 ps", "300 ps"]
    coupling = xr.DataArray([500.0], dims="coupling", attrs={"units": "Oe"})
    assert _format_value(coupling, 500.0) == "500 Oe"


def test_lyapunov_exponents_within_two_standard_errors_read_as_zero(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from stosim.analysis.lyapunov import LyapunovResult
    from stosim.studies import run_lyapunov

    def fake(*args, **kwargs):
        return LyapunovResult(
            exponents=np.array([0.9, 7.5e-5, -1.2]),
            standard_error=np.array([0.05, 1.4e-4, 0.05]),
            running_time=np.array([1.0]),
            running_estimates=np.zeros((1, 3)),
            relative_change_last_quarter=np.zeros(3),
            time_unit="model time unit",
            duration=10.0,
            transient=1.0,
        )

    monkeypatch.setattr(run_lyapunov, "substrate_lyapunov", fake)
    assert main(["lyapunov", "--substrate", "lorenz96", "--exponents", "3"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "lambda_" in line]
    assert ["consistent with zero" in line for line in lines] == [False, True, False]


def test_sweep_plots_show_accuracy_in_percent_and_legends_in_the_axis_unit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from stosim.sweep import plot as sweep_plot

    figures = _captured_figures(monkeypatch, sweep_plot)
    acc = np.array([[[0.5, 0.7], [0.6, 0.8]], [[0.55, 0.75], [0.65, 0.85]]])  # (coupling, duration, seed)
    ds = xr.Dataset(
        {
            "test_accuracy": (
                ("coupling", "duration", "seed"),
                acc,
                {"units": "1", "long_name": "test accuracy after the last epoch (fraction)"},
            )
        },
        coords={
            "coupling": ("coupling", [200.0, 500.0], {"units": "Oe", "long_name": "coupling"}),
            "duration": ("duration", [1e-10, 3e-10], {"units": "s", "long_name": "duration"}),
            "seed": ("seed", [0, 1], {"units": "1", "long_name": "seed"}),
        },
    )
    sweep_plot.plot_sweep(ds, "test_accuracy", "coupling", hue="duration", out=tmp_path / "line.png")
    ax = figures[0].axes[0]
    assert ax.get_ylabel() == "test accuracy after the last epoch (%)"
    means = [line.get_ydata() for line in ax.get_lines()]
    np.testing.assert_allclose(means[0], 100 * acc[:, 0].mean(axis=1), rtol=1e-12)  # duration 100 ps
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("duration = 100 ps" in t for t in legend) and any("duration = 300 ps" in t for t in legend)
    assert not any("e-10" in t for t in legend)
