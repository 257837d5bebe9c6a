"""Sweeps: spec validation, the dask runner with one writer, the file, kill-and-resume, failures, plots."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

from stosim.cli import main
from stosim.config import DEVICES_DIR, load_device
from stosim.studies.sweep_points import device_toml, execute_point
from stosim.sweep import (
    PlotError,
    ResumeError,
    SpecError,
    SweepFailedError,
    load_spec,
    parse_spec,
    plot_sweep,
    read_sweep,
    resolve_spec,
    run_sweep,
)
from stosim.sweep.runner import local_cluster
from stosim.sweep.store import SweepState

# 8 points: 2 couplings x 2 time steps x 2 seeds; dt = 5 ps does not divide 12 ps, so those 4 points fail
TINY = """
name = "tiny"
kind = "train"
seeds = [0, 1]
[base]
substrate = "sto"
dataset = "digits"
n = 4
epochs = 1
limit_train = 100
limit_test = 50
batch_size = 50
duration = "12 ps"
[grid]
coupling = ["100 Oe", "1000 Oe"]
dt = ["1 ps", "5 ps"]
"""
COMPARED = [
    "test_accuracy",
    "best_test_accuracy",
    "final_train_accuracy",
    "epochs_to_converge",
    "epochs_run",
    "test_accuracy_curve",
    "run_seed",
    "status",
    "error",
]


def _write(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture(scope="module", autouse=True)
def _points_may_fail_when_run():
    """TINY's dt = 5 ps points stand for points that fail when they run (a missing data file, a diverging
    loss): `load_spec` refuses them before any worker starts, by the run's own checks applied to every point
    (tests/test_validate_consistency.py), so those checks are off in this module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("stosim.sweep.spec._run_checks", lambda kind, cfg: None)
        yield


@pytest.fixture(scope="module")
def client():
    with local_cluster(2) as c:
        yield c


@pytest.fixture(scope="module")
def tiny_run(client, tmp_path_factory):
    """The tiny sweep, uninterrupted, on the shared 2-worker LocalCluster."""
    folder = tmp_path_factory.mktemp("tiny")
    spec = _write(folder, TINY)
    events = []
    summary = run_sweep(load_spec(spec), folder / "tiny.h5", client=client, flush_seconds=0, on_point=events.append)
    return spec, folder / "tiny.h5", summary, events


# ---------------------------------------------------------------------------------------------
# the spec
# ---------------------------------------------------------------------------------------------
BASE_OK = {"name": "t", "kind": "train", "base": {"n": 4, "epochs": 1}, "grid": {"coupling": ["100 Oe"]}}


@pytest.mark.parametrize(
    "change, names",
    [
        ({"colour": "red"}, "colour: unknown key"),
        ({"kind": "dance"}, "kind: unknown kind; valid: train, mle, simulate, ftmle"),
        ({"base": {"n": 4, "epochz": 1}}, "base.epochz: unknown key for kind = 'train'"),
        ({"grid": {"coupling": []}}, "grid.coupling: empty list"),
        ({"grid": {"coupling": ["100 Oe", "5 kg"]}}, "grid.coupling[1]: unit 'kg' in '5 kg' is not a field unit"),
        ({"grid": {"duration": [300, 100]}}, "grid.duration[0]: 300 has no unit"),
        ({"grid": {"coupling": ["100 Oe", "100 Oe"]}}, "grid.coupling: value '100 Oe' appears twice"),
        ({"grid": {"coupling": ["500 Oe", "0.5 kOe"]}}, "grid.coupling[0] and grid.coupling[1] are the same value"),
        ({"grid": {"spectral_radius": [1, 1.0]}}, "grid.spectral_radius[0] and grid.spectral_radius[1] are the same"),
        # equal after unit conversion, bit for bit ("0.1 ns" once gave 1.0000000000000002e-10 s, "100 ps" 1e-10 s)
        ({"grid": {"duration": ["0.1 ns", "100 ps"]}}, "grid.duration[0] and grid.duration[1] are the same value"),
        ({"grid": {"coupling": ["0.07 T", "700 Oe"]}}, "grid.coupling[0] and grid.coupling[1] are the same value"),
        ({"grid": {"limit_train": [100, 0]}}, "grid.limit_train[1]: Input should be greater than or equal to 1"),
        ({"grid": {"damping": [0.01, 1.5]}}, "grid.damping[1]: Input should be less than 1"),
        ({"base": {"n": 4, "seed": 3}}, "base.seed: set seeds with the top-level"),
        ({"base": {"n": 4}, "grid": {"n": [4, 8]}}, "grid.n: also set in [base]"),
        ({"seeds": []}, "seeds: empty list"),
        ({"seed": 1, "seeds": [0, 1]}, "seed, seeds: give either seed"),
        ({"independent_seeds": True}, "independent_seeds: needs seeds"),
        ({"name": "a b"}, "name: use letters"),
        (
            {"base": {"substrate": "mlp", "damping": 0.01}},
            "base.damping: device parameters apply to STO substrates only",
        ),
        (
            {"grid": {"observation_snr": [20, "loud"]}},
            "grid.observation_snr[1]: expected a signal-to-noise ratio in dB",
        ),
        (
            {"base": {"n": 4, "observation_snr": float("nan")}},
            "base.observation_snr: observation_snr = nan dB is out of range; valid: [-100 dB, inf dB]",
        ),
        (
            {"kind": "simulate", "base": {"dynamical_snr": float("nan")}},
            "base.dynamical_snr: dynamical_snr = nan dB is out of range",
        ),
        (
            {"kind": "ftmle", "base": {"n": 4, "readin_scale": float("inf")}},
            "base.readin_scale: Input should be a finite",
        ),
    ],
)
def test_invalid_specs_fail_naming_the_key(change, names):
    with pytest.raises(SpecError) as err:
        resolve_spec(parse_spec({**BASE_OK, **change}, "spec.toml"), source="spec.toml")
    assert names in str(err.value)
    assert str(err.value).startswith("spec.toml: ")


def test_point_count_limit_holds_for_grids_beyond_int64():
    # 8 keys x 256 values = 2**64 points: a product in int64 wraps around to 0 and would pass the limit
    # (then the first point's error, or an endless loop); counted exactly, the spec fails at once
    keys = [
        "lr",
        "momentum",
        "weight_decay",
        "input_offset",
        "ridge_alpha",
        "spectral_radius",
        "forcing",
        "variability",
    ]
    grid = {k: [-1.0] + [float(i) / 256 for i in range(1, 256)] for k in keys}
    with pytest.raises(SpecError, match=r"spec\.toml: grid: 18446744073709551616 points, more than 1000000"):
        resolve_spec(parse_spec({"name": "big", "kind": "train", "grid": grid}), source="spec.toml")


def test_rules_across_keys_are_checked_on_whole_points():
    # transient < duration holds at every point, though not for [base] with the default duration
    ok = {"name": "s", "kind": "simulate", "base": {"transient": "30 ns"}, "grid": {"duration": ["40 ns", "50 ns"]}}
    assert len(resolve_spec(parse_spec(ok))) == 2
    both = {"name": "s", "kind": "simulate", "grid": {"transient": ["30 ns"], "duration": ["40 ns", "50 ns"]}}
    assert len(resolve_spec(parse_spec(both))) == 2
    bad = {**ok, "grid": {"duration": ["20 ns", "50 ns"]}}
    with pytest.raises(SpecError, match=r"base\.transient: 3e-08 s must be shorter than duration = 2e-08 s"):
        resolve_spec(parse_spec(bad))


FTMLE_VARS = {"ftmle_untrained_mean", "ftmle_untrained_std", "ftmle_trained_mean", "ftmle_trained_std"}


@pytest.mark.parametrize("substrate", ["linear", "mlp", "cnn"])
def test_train_sweeps_of_the_baselines_resolve(substrate):
    # no dynamics, so no FTMLE: no ftmle_* variables even when ftmle_samples asks for them
    sweep = resolve_spec(
        parse_spec(
            {
                "name": "b",
                "kind": "train",
                "base": {"substrate": substrate, "epochs": 1, "ftmle_samples": 4},
                "grid": {"lr": [0.1, 0.01]},
            }
        )
    )
    assert len(sweep) == 2 and not FTMLE_VARS & set(sweep.output_units)
    assert sweep.output_units["test_accuracy"] == "%"


def test_train_sweep_has_ftmle_variables_only_with_ftmle_samples(tmp_path):
    def sweep_for(grid: dict, **base) -> object:
        return resolve_spec(
            parse_spec(
                {
                    "name": "f",
                    "kind": "train",
                    "seed": 1,
                    "base": {"substrate": "ffesn", "n": 8, "epochs": 1, **base},
                    "grid": grid,
                }
            )
        )

    def saved_variables(sweep) -> set[str]:
        state = SweepState(sweep)
        values = {o.name: np.array([50.0]) if o.extra_dims else 50.0 for o in sweep.kind.outputs}
        state.record(sweep.points[0], {"status": "done", "values": values, "wall_time_s": 1.0})
        return set(read_sweep(state.save(tmp_path / f"{len(list(tmp_path.iterdir()))}.h5")).data_vars)

    without = sweep_for({"lr": [0.1, 0.01]})
    assert {o.name for o in without.outputs} == {o.name for o in without.kind.outputs} - FTMLE_VARS
    assert not FTMLE_VARS & saved_variables(without) and "test_accuracy" in saved_variables(without)
    with_ftmle = sweep_for({"lr": [0.1, 0.01]}, ftmle_samples=4)
    assert FTMLE_VARS <= saved_variables(with_ftmle)
    assert {with_ftmle.output_units[v] for v in FTMLE_VARS} == {"1/step"}
    # a grid over ftmle_samples: the variables exist (NaN at the points with ftmle_samples = 0)
    assert FTMLE_VARS <= {o.name for o in sweep_for({"ftmle_samples": [0, 4]}).outputs}
    # a point with FTMLE returns them, one without does not compute them (NaN)
    point = {"substrate": "ffesn", "n": 8, "epochs": 1, "limit_train": 60, "limit_test": 30, "batch_size": 30}
    values = execute_point("train", {**point, "ftmle_samples": 3})
    assert values["status"] == "done", values.get("error")
    assert all(np.isfinite(values["values"][v]) for v in FTMLE_VARS)
    assert 0 <= values["values"]["test_accuracy"] <= 100


def test_spec_errors_from_files_and_cli(tmp_path, capsys):
    bad = _write(tmp_path, 'name = "x"\nkind = "mle"\n[base]\nsubstrate = "sto"\n[grid]\ncoupling = ["1 Oe", "2 A"]\n')
    with pytest.raises(SpecError, match=r"grid\.coupling\[1\]: unit 'A'"):
        load_spec(bad)
    assert main(["sweep", str(bad), "--out", str(tmp_path / "x.h5")]) == 2
    assert "grid.coupling[1]" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()  # validated before any work
    smoke = Path(__file__).resolve().parents[2] / "experiments" / "smoke-sweep.toml"
    assert main(["sweep", str(smoke), "--dry-run"]) == 0
    assert "12 points; coupling = 100, 500, 1000 (Oe); duration = 1e-10, 3e-10 (s)" in capsys.readouterr().out
    l96 = _write(
        tmp_path, 'name = "y"\nkind = "mle"\n[base]\nsubstrate = "lorenz96"\n[grid]\nduration = ["3 ps"]\n', "l96.toml"
    )
    with pytest.raises(SpecError, match=r"grid\.duration\[0\]: lorenz96 time is a plain number"):
        load_spec(l96)


def test_resolved_spec_coordinates_and_seeds(tmp_path):
    sweep = load_spec(_write(tmp_path, TINY))
    assert sweep.dim_names == ("coupling", "dt", "seed") and sweep.shape == (2, 2, 2) and len(sweep) == 8
    coupling, dt, seed = sweep.dims
    np.testing.assert_array_equal(coupling.values, [100.0, 1000.0])
    np.testing.assert_allclose(dt.values, [1e-12, 5e-12], rtol=1e-15)
    assert (coupling.attrs["units"], dt.attrs["units"], seed.attrs["units"]) == ("Oe", "s", "1")
    assert [p.seed for p in sweep.points[:2]] == [0, 1]  # the seed coordinate, used as is
    # units are parsed once: the same spec written in other units resolves to the same thing
    other = load_spec(_write(tmp_path, TINY.replace('"100 Oe"', '"10 mT"').replace('"12 ps"', '"0.012 ns"'), "b.toml"))
    assert other.resolved == sweep.resolved
    assert sweep.resolved["base"]["epochs"] == 1 and sweep.resolved["base"]["lr"] == 0.01  # defaults filled in
    # noise and device parameters: SNR in dB (plain or "20 dB"), temperature in K, current in A
    noisy = resolve_spec(
        parse_spec(
            {
                **BASE_OK,
                "grid": {
                    "observation_snr": ["10 dB", 20, "inf dB"],
                    "temperature": ["0 K", "300 K"],
                    "current": ["2.5 mA"],
                },
            }
        )
    )
    snr, temperature, current = noisy.dims
    assert snr.attrs["units"] == "dB" and snr.values.tolist() == [10.0, 20.0, float("inf")]
    assert temperature.attrs["units"] == "K" and current.attrs["units"] == "A" and current.values[0] == 2.5e-3
    assert noisy.resolved["grid"]["observation_snr"] == [10.0, 20.0, "inf"]
    # without `seeds`: per-point seeds from SeedSequence(seed, spawn_key=(point index,)), reproducible
    derived = TINY.replace("seeds = [0, 1]", "seed = 7")
    a = load_spec(_write(tmp_path, derived, "c.toml"))
    b = load_spec(_write(tmp_path, derived, "d.toml"))
    assert a.dim_names == ("coupling", "dt")
    seeds = [p.seed for p in a.points]
    assert seeds == [p.seed for p in b.points] and len(set(seeds)) == 4
    assert seeds[1] == int(np.random.SeedSequence(7, spawn_key=(1,)).generate_state(1)[0] >> 1)


def test_device_override_file_round_trips_exactly(tmp_path):
    dev = load_device().replace(damping=0.0123, applied_field_oe=345.6)
    path = tmp_path / "dev.toml"
    path.write_text(device_toml(dev), encoding="utf-8")
    assert load_device(path) == dev


def test_point_kinds_run_in_process():
    sim = execute_point("simulate", {"n": 3, "duration": 50e-12, "dt": 1e-12, "save_every": 5, "applied_field": 300.0})
    assert sim["status"] == "done", sim.get("error")
    assert 0 < sim["values"]["tmr_voltage_mean"] and -1 <= sim["values"]["mz_mean"] <= 1
    mle = execute_point(
        "mle", {"substrate": "ffesn", "n": 30, "spectral_radius": 0.5, "duration": 200.0, "transient": 50.0}
    )
    assert mle["status"] == "done", mle.get("error")
    assert mle["values"]["mle"] == pytest.approx(np.log(0.5), abs=1e-3)  # docs/physics.md 6: MLE = ln(rho) for rho < 1
    ftmle = execute_point("ftmle", {"substrate": "ffesn", "n": 20, "samples": 3, "spectral_radius": 0.5, "steps": 3})
    assert ftmle["status"] == "done", ftmle.get("error")
    assert ftmle["values"]["ftmle_samples"].shape == (3,) and ftmle["values"]["ftmle_max"] < 0  # contracting
    bad = execute_point("simulate", {"n": 3, "duration": 10e-12, "dt": 3e-12})
    assert bad["status"] == "failed" and "whole multiple" in bad["error"]
    trained = execute_point(
        "train",
        {"n": 4, "epochs": 1, "limit_train": 60, "limit_test": 30, "duration": 5e-12, "dt": 1e-12, "damping": 0.02},
    )  # via a written device file
    assert trained["status"] == "done", trained.get("error")


# ---------------------------------------------------------------------------------------------
# running and storing
# ---------------------------------------------------------------------------------------------
def test_tiny_sweep_file_is_complete_and_readable(tiny_run):
    spec, out, summary, events = tiny_run
    assert (summary.n_points, summary.n_done, summary.n_failed, summary.n_pending) == (8, 4, 4, 0)
    assert len(events) == 8 and events[-1].finished == 8
    ds = xr.open_dataset(out, engine="h5netcdf")
    try:
        for name in list(ds.data_vars) + list(ds.coords):
            assert ds[name].attrs.get("units") is not None and ds[name].attrs.get("long_name"), name
        assert ds["coupling"].attrs["units"] == "Oe" and ds["dt"].attrs["units"] == "s"
        assert ds["test_accuracy"].dims == ("coupling", "dt", "seed")
        assert ds["test_accuracy_curve"].dims == ("coupling", "dt", "seed", "epoch")
        status = ds["status"].values.astype(str)
        ok = ds["dt"].values == 1e-12
        assert (status[:, ok] == "done").all() and (status[:, ~ok] == "failed").all()
        acc = ds["test_accuracy"].values
        assert np.isfinite(acc[:, ok]).all() and np.isnan(acc[:, ~ok]).all()
        assert ((acc[:, ok] >= 0) & (acc[:, ok] <= 100)).all()
        for name in ("test_accuracy", "best_test_accuracy", "final_train_accuracy", "test_accuracy_curve"):
            assert ds[name].attrs["units"] == "%" and "fraction" not in ds[name].attrs["long_name"], name
        assert not FTMLE_VARS & set(ds.data_vars)  # ftmle_samples = 0: no FTMLE variables
        errors = ds["error"].values.astype(str)
        assert all("must be a whole multiple" in e for e in errors[:, ~ok].ravel())
        assert all(e == "" for e in errors[:, ok].ravel())
        spec_json = json.loads(ds.attrs["sweep_spec_json"])
        assert spec_json["grid"]["coupling"] == [100.0, 1000.0] and spec_json["seeds"] == [0, 1]
        assert ds.attrs["version_stosim"] and ds.attrs["sweep_finished_utc"] != "none"
        assert ds.attrs["n_done"] == 4 and ds.attrs["n_failed"] == 4
        assert ds["test_accuracy"].attrs["n_done_not_finite"] == 0
        assert "n_done_not_finite" not in ds["test_accuracy_curve"].attrs
    finally:
        ds.close()
    with h5py.File(out, "r") as f:  # plain HDF5
        assert f["test_accuracy"].attrs["units"] in ("%", b"%")
        assert f["test_accuracy"].shape == (2, 2, 2)
        status = f["status"][...]
        assert {s.decode() if isinstance(s, bytes) else s for s in status.ravel()} == {"done", "failed"}
        assert "sweep_spec_json" in f.attrs


def test_sweep_accuracies_are_100_times_the_training_result(tiny_run, tmp_path):
    from stosim.studies.sweep_points import TrainPoint
    from stosim.studies.training import train

    spec, out, _, _ = tiny_run
    ds = read_sweep(out)
    point = next(p for p in load_spec(spec).points if p.coords["dt"] == 1e-12 and p.coords["seed"] == 1)
    result = train(TrainPoint.model_validate(point.config).train_config(), tmp_path / "run")
    assert 0 < result.test_accuracy <= 1  # the training result: a fraction
    curve = [100 * h["test_accuracy"] for h in result.history]
    expected = {
        "test_accuracy": 100 * result.test_accuracy,
        "best_test_accuracy": 100 * result.best_test_accuracy,
        "final_train_accuracy": 100 * result.history[-1]["train_accuracy"],
    }
    for name, value in expected.items():
        np.testing.assert_allclose(ds[name].values[point.index], value, rtol=1e-12, err_msg=name)
    np.testing.assert_allclose(ds["test_accuracy_curve"].values[point.index][: len(curve)], curve, rtol=1e-12)


def _as_fraction_file(reference: Path, out: Path) -> None:
    """``reference`` rewritten as an earlier version wrote it: accuracies as fractions (units "1")."""
    out.write_bytes(reference.read_bytes())
    with h5py.File(out, "r+") as f:
        for name in ("test_accuracy", "best_test_accuracy", "final_train_accuracy", "test_accuracy_curve"):
            f[name][...] = f[name][...] / 100
            f[name].attrs["units"] = "1"
            f[name].attrs["long_name"] = f"{f[name].attrs['long_name']} (fraction)"


def test_resuming_a_file_with_fraction_accuracies_is_refused(tiny_run, tmp_path, capsys):
    spec, reference, _, _ = tiny_run
    old = tmp_path / "old.h5"
    _as_fraction_file(reference, old)
    message = (
        rf"{re.escape(str(old))}: test_accuracy was written with accuracy as a fraction by an earlier "
        r"version .*start a new file"
    )
    with pytest.raises(ResumeError, match=message):
        SweepState(load_spec(spec)).load_completed(old)
    with pytest.raises(ResumeError, match=message):
        run_sweep(load_spec(spec), old, resume=True)
    assert main(["sweep", str(spec), "--out", str(old), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "test_accuracy was written with accuracy as a fraction" in err and str(old) in err
    with h5py.File(old, "r+") as f:  # any other change of units is refused too, naming the variable
        f["test_accuracy"].attrs["units"] = "%"
        f["best_test_accuracy"].attrs["units"] = "percent"
    with pytest.raises(ResumeError, match=r"best_test_accuracy has units 'percent', this version writes '%'"):
        SweepState(load_spec(spec)).load_completed(old)


def test_plots_show_percent_for_old_and_new_files(tiny_run, tmp_path, monkeypatch):
    from stosim.sweep import plot as sweep_plot

    figures = []

    def capture(fig, path, **kwargs):
        figures.append(fig)
        return Path(path)

    monkeypatch.setattr(sweep_plot, "save_figure", capture)
    _, new, _, _ = tiny_run
    old = tmp_path / "old.h5"
    _as_fraction_file(new, old)
    for path in (new, old):
        plot_sweep(path, "test_accuracy", x="coupling", out=tmp_path / "a.png")
    stored = read_sweep(new)["test_accuracy"].isel(dt=0).values  # dt = 1 ps: the done points
    for fig in figures:  # percent in both, not scaled twice for the new file
        ax = fig.axes[0]
        assert ax.get_ylabel() == "test accuracy after the last epoch (%)"
        np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), stored.mean(axis=1), rtol=1e-12)


def _poll_finished(path: Path, timeout: float = 120.0) -> int:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            with h5py.File(path, "r") as f:
                n = int(np.ravel(f.attrs["n_done"])[0]) + int(np.ravel(f.attrs["n_failed"])[0])
            if n >= 1:
                return n
        except (OSError, KeyError):
            pass
        time.sleep(0.02)
    raise AssertionError(f"no point of {path} finished within {timeout} s")


def test_kill_and_resume_equals_an_uninterrupted_run(tiny_run, tmp_path, capsys):
    spec, reference, _, _ = tiny_run
    out = tmp_path / "killed.h5"
    args = ["sweep", str(spec), "--out", str(out), "--workers", "1", "--flush-seconds", "0"]
    # the writer runs in its own process, with this module's point checks off there too (TINY's 5 ps points)
    cmd = [
        sys.executable,
        "-c",
        "import sys, stosim.sweep.spec as s; s._run_checks = lambda kind, cfg: None; "
        f"from stosim.cli import main; sys.exit(main({args!r}))",
    ]
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
    try:
        _poll_finished(out)
        os.kill(proc.pid, signal.SIGKILL)  # the writer dies mid-run
        proc.wait(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):  # and the dask processes it started (same session)
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    partial = read_sweep(out)
    status = partial["status"].values.astype(str)
    assert (status == "pending").any(), "the sweep finished before it was killed; nothing left to resume"
    assert (status != "pending").any()
    kept = {name: partial[name].values.copy() for name in COMPARED}
    capsys.readouterr()
    rc = main(["sweep", str(spec), "--out", str(out), "--resume", "--workers", "1", "--json"])
    captured = capsys.readouterr()
    assert rc == 1, captured.err  # 1: some points failed (by design of the spec)
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["n_resumed"] == int((status == "done").sum()) and summary["n_pending"] == 0
    to_run = int((status != "done").sum())  # without a terminal: plain progress lines instead of a bar
    assert f"tiny: {to_run} / {to_run} points run" in captured.err, captured.err
    resumed, full = read_sweep(out), read_sweep(reference)
    for name in COMPARED:
        np.testing.assert_array_equal(resumed[name].values, full[name].values, err_msg=name)
    done = status == "done"
    for name in COMPARED:  # points finished before the kill were kept, not rerun
        np.testing.assert_array_equal(resumed[name].values[done], kept[name][done], err_msg=name)
    runs = json.loads(resumed.attrs["sweep_runs"])
    assert len(runs) == 2 and runs[0]["finished_utc"] is None and runs[1]["finished_utc"]


def test_fail_fast_stops_after_saving(client, tmp_path):
    spec = _write(
        tmp_path,
        TINY.replace('dt = ["1 ps", "5 ps"]', 'dt = ["5 ps", "1 ps"]').replace(
            'coupling = ["100 Oe", "1000 Oe"]', 'coupling = ["100 Oe", "300 Oe", "1000 Oe"]'
        ),
    )
    out = tmp_path / "ff.h5"
    with pytest.raises(
        SweepFailedError, match=r"coupling = 100.0, dt = 5e-12, seed = [01] failed .*whole multiple"
    ) as err:
        run_sweep(load_spec(spec), out, client=client, fail_fast=True)
    assert err.value.summary.n_failed >= 1 and err.value.summary.n_pending >= 6  # stopped at once: 12 points
    ds = read_sweep(out)
    assert ds.attrs["n_pending"] == err.value.summary.n_pending and ds.attrs["sweep_finished_utc"] == "none"
    assert (ds["status"].values.astype(str)[0, 0] == "failed").any()


def test_existing_output_resume_checks(client, tiny_run, tmp_path, capsys):
    spec, reference, _, _ = tiny_run
    out = tmp_path / "copy.h5"
    out.write_bytes(reference.read_bytes())
    sweep = load_spec(spec)
    # the library names its parameters; the command line shows the flags (stosim.cli.cli_message)
    with pytest.raises(FileExistsError, match=r"pass resume=True to continue it or overwrite=True to replace it"):
        run_sweep(sweep, out, workers=1)
    with pytest.raises(ValueError, match="exclude each other"):
        run_sweep(sweep, out, resume=True, overwrite=True)
    with pytest.raises(FileNotFoundError, match="run without resume=True"):
        run_sweep(sweep, tmp_path / "missing.h5", resume=True)
    other = load_spec(_write(tmp_path, TINY.replace('"1000 Oe"', '"2000 Oe"'), "other.toml"))
    with pytest.raises(ResumeError, match=r"different spec \(differs in grid.coupling\)"):
        run_sweep(other, out, resume=True)
    assert main(["sweep", str(spec), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "pass --resume to continue it or --overwrite to replace it" in err and "=True" not in err
    # a resumed sweep reruns the failed points only (here they fail again; no done point is rerun)
    summary = run_sweep(sweep, out, resume=True, client=client)
    assert (summary.n_resumed, summary.n_run, summary.n_done, summary.n_failed) == (4, 4, 4, 4)
    a, b = read_sweep(out), read_sweep(reference)
    for name in COMPARED + ["wall_time_s"]:
        np.testing.assert_array_equal(
            a[name].values[a["status"].values.astype(str) == "done"],
            b[name].values[b["status"].values.astype(str) == "done"],
            err_msg=name,
        )


def test_a_sweep_file_from_before_a_config_key_existed_resumes(client, tiny_run, tmp_path):
    # train points gained weight_decay and input_offset; a file written before lacks them in its spec
    import h5py

    spec, reference, _, _ = tiny_run
    out = tmp_path / "old.h5"
    out.write_bytes(reference.read_bytes())
    with h5py.File(out, "r+") as f:
        saved = json.loads(f.attrs["sweep_spec_json"])
        assert saved["base"]["weight_decay"] == 0.0 and saved["base"]["input_offset"] == 0.0
        for key in ("weight_decay", "input_offset"):
            del saved["base"][key]
        f.attrs["sweep_spec_json"] = json.dumps(saved, sort_keys=True)
    summary = run_sweep(load_spec(spec), out, resume=True, client=client)
    assert summary.n_resumed == 4  # the done points are kept
    # a spec that sets a new key away from its default is a different spec
    changed = load_spec(_write(tmp_path, TINY.replace("[base]", "[base]\nweight_decay = 0.1"), "wd.toml"))
    with pytest.raises(ResumeError, match="base.weight_decay"):
        run_sweep(changed, out, resume=True, client=client)


def test_resume_takes_a_spec_whose_numbers_differ_in_the_last_bit_only(tmp_path):
    # a file written before quantities were rounded once stores "200 ns" as 2.0000000000000002e-07 s:
    # the same spec (numbers equal within a relative 1e-12); a real change is still refused
    sweep = resolve_spec(
        parse_spec(
            {
                "name": "r",
                "kind": "simulate",
                "seed": 1,
                "base": {"n": 2, "dt": "1 ps"},
                "grid": {"duration": ["100 ns", "200 ns"]},
            }
        )
    )
    assert sweep.dims[0].values.tolist() == [1e-7, 2e-7] and not sweep.extra_dims
    state = SweepState(sweep)
    state.record(
        sweep.points[0], {"status": "done", "values": {o.name: 0.5 for o in sweep.kind.outputs}, "wall_time_s": 1.0}
    )
    out = state.save(tmp_path / "r.h5")

    def rewrite(durations: list[float]) -> None:
        with h5py.File(out, "r+") as f:
            saved = json.loads(f.attrs["sweep_spec_json"])
            saved["grid"]["duration"] = durations
            f.attrs["sweep_spec_json"] = json.dumps(saved, sort_keys=True)

    rewrite([1e-7, 2.0000000000000002e-07])
    resumed = SweepState(sweep)
    assert resumed.load_completed(out) == 1
    assert resumed.values["mx_mean"][0] == 0.5 and np.isnan(resumed.values["mx_mean"][1])
    rewrite([1e-7, 2.000001e-07])
    with pytest.raises(ResumeError, match=r"different spec \(differs in grid\.duration\)"):
        SweepState(sweep).load_completed(out)


def test_resume_refuses_a_device_file_edited_between_the_runs(tmp_path):
    """The resolved spec records the parameters of the device files the points load: editing the file
    and resuming would mix two devices in one result file, so it is refused naming the parameter; a
    file written before the parameters were recorded resumes (taken to use today's files)."""
    device = tmp_path / "dev.toml"
    device.write_text((DEVICES_DIR / "seed-pmtj.toml").read_text(encoding="utf-8"), encoding="utf-8")
    raw = {
        "name": "d",
        "kind": "simulate",
        "seed": 1,
        "base": {"n": 2, "dt": "1 ps", "device": str(device)},
        "grid": {"duration": ["10 ps", "20 ps"]},
    }
    sweep = resolve_spec(parse_spec(raw))
    assert sweep.resolved["devices"][str(device)]["damping"] == load_device(device).damping
    state = SweepState(sweep)
    state.record(
        sweep.points[0], {"status": "done", "values": {o.name: 0.5 for o in sweep.kind.outputs}, "wall_time_s": 1.0}
    )
    out = state.save(tmp_path / "d.h5")
    assert SweepState(resolve_spec(parse_spec(raw))).load_completed(out) == 1
    text = device.read_text(encoding="utf-8")
    damping = re.search(r"^damping = .*$", text, flags=re.M).group(0)
    device.write_text(text.replace(damping, "damping = 0.02"), encoding="utf-8")
    with pytest.raises(ResumeError, match=rf"differs in devices\.{re.escape(str(device))}\.damping"):
        SweepState(resolve_spec(parse_spec(raw))).load_completed(out)
    with h5py.File(out, "r+") as f:  # as written before the device parameters were recorded
        saved = json.loads(f.attrs["sweep_spec_json"])
        del saved["devices"]
        f.attrs["sweep_spec_json"] = json.dumps(saved, sort_keys=True)
    assert SweepState(resolve_spec(parse_spec(raw))).load_completed(out) == 1


def test_resume_from_a_file_without_status_is_a_resume_error(tmp_path):
    sweep = resolve_spec(
        parse_spec(
            {
                "name": "s",
                "kind": "simulate",
                "seed": 1,
                "base": {"n": 2, "dt": "1 ps"},
                "grid": {"duration": ["10 ps", "20 ps"]},
            }
        )
    )
    out = SweepState(sweep).save(tmp_path / "s.h5")
    with h5py.File(out, "r+") as f:
        del f["wall_time_s"]
    with pytest.raises(ResumeError, match=r"lacks the variable wall_time_s"):
        SweepState(sweep).load_completed(out)


def test_simulate_sweep_over_a_device_parameter(client, tmp_path):
    spec = _write(
        tmp_path,
        """
        name = "sim"
        kind = "simulate"
        seed = 3
        [base]
        n = 3
        duration = "40 ps"
        dt = "1 ps"
        save_every = 4
        [grid]
        applied_field = ["100 Oe", "0.05 T"]
        current = ["1 mA", "3 mA"]
        """,
    )
    out = tmp_path / "sim.h5"
    summary = run_sweep(load_spec(spec), out, client=client)
    assert summary.n_done == 4
    ds = read_sweep(out)
    assert ds["applied_field"].attrs["units"] == "Oe" and list(ds["applied_field"].values) == [100.0, 500.0]
    assert ds["current"].attrs["units"] == "A" and np.allclose(ds["current"].values, [1e-3, 3e-3])
    assert ds["tmr_voltage_mean"].attrs["units"] == "V"
    # same seeds, same numbers: a point rerun in this process agrees with the worker's result
    point = load_spec(spec).points[3]
    again = execute_point("simulate", point.config)["values"]
    assert again["mx_std"] == ds["mx_std"].values[1, 1]


# ---------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------
def test_plots_1d_and_2d(tiny_run, tmp_path, capsys):
    _, out, _, _ = tiny_run
    line = plot_sweep(out, "test_accuracy", x="coupling", out=tmp_path / "line.png")
    heat = plot_sweep(out, "test_accuracy", x="coupling", y="dt", out=tmp_path / "heat.png")
    std = plot_sweep(read_sweep(out), "best_test_accuracy", x="dt", out=tmp_path / "std.png", band="std")
    for png in (line, heat, std):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (
        main(
            [
                "plot",
                str(out),
                "--x",
                "coupling",
                "--y",
                "seed",
                "--var",
                "test_accuracy",
                "--out",
                str(tmp_path / "cli.png"),
            ]
        )
        == 0
    )
    assert (tmp_path / "cli.png").exists()
    with pytest.raises(PlotError, match=r"x='mu' is not a dimension of test_accuracy; dimensions: coupling, dt"):
        plot_sweep(out, "test_accuracy", x="mu")
    with pytest.raises(PlotError, match=r"var='accuracy': no such variable; variables: test_accuracy"):
        plot_sweep(out, "accuracy", x="coupling")
    capsys.readouterr()
    assert main(["plot", str(out), "--x", "coupling", "--y", "nope", "--var", "test_accuracy"]) == 2
    assert "--y 'nope' is not a dimension" in capsys.readouterr().err


def test_experiment_specs_are_valid():
    root = Path(__file__).resolve().parents[2] / "experiments"
    specs = sorted(p for p in root.rglob("*.toml") if "kind" in tomllib.loads(p.read_text(encoding="utf-8")))
    names = {p.name for p in specs}
    assert {
        "smoke-sweep.toml",
        "heatmap-sto-coupling-duration.toml",
        "heatmap-ffesn-rho-steps.toml",
        "heatmap-lorenz96-forcing-duration.toml",
        "mle-vs-coupling-sto.toml",
        "mle-vs-rho-ffesn.toml",
        "mle-vs-forcing-lorenz96.toml",
    } <= names
    for path in specs:
        assert len(load_spec(path)) >= 2, path


def test_plot_hue_draws_one_line_per_value(tmp_path):
    import numpy as np
    import xarray as xr

    from stosim.sweep import PlotError, plot_sweep

    rng = np.random.default_rng(0)
    ds = xr.Dataset(
        {
            "test_accuracy": (
                ("snr", "coupling", "seed"),
                rng.uniform(0.8, 1.0, (3, 2, 4)),
                {"units": "1", "long_name": "test accuracy"},
            )
        },
        coords={
            "snr": ("snr", [0.0, 10.0, 20.0], {"units": "dB", "long_name": "SNR"}),
            "coupling": ("coupling", [1.0, 500.0], {"units": "Oe", "long_name": "coupling strength mu"}),
            "seed": ("seed", np.arange(4), {"units": "1", "long_name": "seed"}),
        },
    )
    out = plot_sweep(ds, "test_accuracy", "snr", out=tmp_path / "hue.png", hue="coupling")
    assert out.stat().st_size > 5000
    with pytest.raises(PlotError, match="hue='coupling' draws one line per value"):
        plot_sweep(ds, "test_accuracy", "snr", y="coupling", out=tmp_path / "x.png", hue="coupling")
    with pytest.raises(PlotError, match="hue='nope'"):
        plot_sweep(ds, "test_accuracy", "snr", out=tmp_path / "x.png", hue="nope")


def test_line_plot_keeps_a_point_at_an_infinite_coordinate(tmp_path, monkeypatch):
    # observation_snr = "inf dB" (the noise-free reference) is a grid value: at x = inf matplotlib draws
    # nothing, so the axis becomes categorical (positions 0, 1, 2; the values as tick labels)
    import stosim.sweep.plot as sweep_plot

    drawn = {}

    def capture(fig, out, **kwargs):
        ax = fig.axes[0]
        drawn["x"] = np.asarray(ax.lines[0].get_xdata(), dtype=np.float64)
        drawn["ticks"] = [t.get_text() for t in ax.get_xticklabels()]
        drawn["scale"] = ax.get_xscale()
        return save_figure(fig, out, **kwargs)

    save_figure = sweep_plot.save_figure
    monkeypatch.setattr(sweep_plot, "save_figure", capture)
    ds = xr.Dataset(
        {
            "test_accuracy": (
                ("observation_snr", "seed"),
                np.array([[0.5, 0.6], [0.8, 0.9], [0.95, 0.97]]),
                {"units": "1", "long_name": "test accuracy"},
            )
        },
        coords={
            "observation_snr": ("observation_snr", [10.0, 20.0, np.inf], {"units": "dB", "long_name": "SNR"}),
            "seed": ("seed", np.arange(2), {"units": "1", "long_name": "seed"}),
        },
    )
    plot_sweep(ds, "test_accuracy", "observation_snr", out=tmp_path / "snr.png")
    np.testing.assert_array_equal(drawn["x"], [0.0, 1.0, 2.0])
    assert drawn["ticks"] == ["10", "20", "inf"] and drawn["scale"] == "linear"


def test_local_workers_start_with_one_malloc_arena_and_set_glibc_thresholds(client):
    """The sweep's own workers start with MALLOC_ARENA_MAX=1 and no profiler; a point sets glibc's thresholds
    that dask's nanny fixed with MALLOC_TRIM_THRESHOLD_ (stosim.integrate.allocator; bench_worker_heap.py)."""
    from stosim.integrate.allocator import _mallopt, heap_for_temporaries

    def worker_state():
        import dask

        return os.environ.get("MALLOC_ARENA_MAX"), dask.config.get("distributed.worker.profile.enabled")

    for arena, profiling in client.run(worker_state).values():
        assert arena == "1" and profiling is False
    if _mallopt() is not None:
        assert all(client.run(heap_for_temporaries).values())  # the nanny's variable is there: set
