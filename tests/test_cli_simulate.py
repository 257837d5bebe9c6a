"""`stosim simulate` end to end: HDF5 readable with h5py and xarray, units, provenance, plot, errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import h5py
import numpy as np
import pytest
import xarray as xr
from conftest import REPO_ROOT

from stosim.cli import main


def test_simulate_writes_trajectory_and_plot(tmp_path, capsys):
    out, png = tmp_path / "traj.h5", tmp_path / "traj.png"
    args = [
        "simulate",
        "--n",
        "6",
        "--coupling",
        "500 Oe",
        "--current",
        "2.5 mA",
        "--duration",
        "0.2 ns",
        "--dt",
        "1 ps",
        "--seed",
        "3",
        "--save-every",
        "5",
        "--out",
        str(out),
        "--plot",
        str(png),
        "--json",
    ]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 200 and summary["recorded"] == 41
    ds = xr.open_dataset(out, engine="h5netcdf")
    assert ds["m"].dims == ("time", "oscillator", "component")
    assert list(ds["component"].values) == ["x", "y", "z"]
    assert ds.sizes == {"time": 41, "oscillator": 6, "component": 3, "oscillator_j": 6}  # oscillator_j: of W
    np.testing.assert_allclose(ds["time"].values, np.arange(41) * 5e-12, rtol=1e-12)
    for name in list(ds.data_vars) + list(ds.coords):
        assert "units" in ds[name].attrs and "long_name" in ds[name].attrs, name
    assert ds["time"].attrs["units"] == "s" and ds["tmr_voltage"].attrs["units"] == "V"
    assert ds.attrs["seed"] == 3 and ds.attrs["coupling_oe"] == 500.0
    assert ds.attrs["device_saturation_magnetization_emu_cm3"] == 1448.3
    assert "version_numba" in ds.attrs and "created_utc" in ds.attrs
    np.testing.assert_allclose(np.linalg.norm(ds["m"].values, axis=-1), 1.0, atol=1e-14)
    ds.close()
    with h5py.File(out, "r") as f:  # plain HDF5
        assert f["m"].shape == (41, 6, 3)
    assert png.stat().st_size > 10_000

    # the same seed gives the same file contents; an existing output needs --overwrite
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    out2 = tmp_path / "again.h5"
    assert main([*args[:-5], "--out", str(out2)]) == 0
    a, b = xr.open_dataset(out, engine="h5netcdf"), xr.open_dataset(out2, engine="h5netcdf")
    np.testing.assert_array_equal(a["m"].values, b["m"].values)
    a.close()
    b.close()


def test_simulate_with_noise_initial_angles_and_matrix(tmp_path, capsys):
    w = np.random.default_rng(0).uniform(-1, 1, (4, 4))
    np.save(tmp_path / "w.npy", w)
    out = tmp_path / "noisy.h5"
    assert (
        main(
            [
                "simulate",
                "--n",
                "4",
                "--coupling-matrix",
                str(tmp_path / "w.npy"),
                "--coupling",
                "0.1 kOe",
                "--initial-angles",
                "30,45",
                "--duration",
                "1 ns",
                "--dt",
                "1 ps",
                "--temperature",
                "300 K",
                "--observation-snr",
                "20",
                "--dynamical-snr",
                "30",
                "--save-every",
                "1",
                "--out",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["measured_observation_snr_db"]["m"] == pytest.approx(20, abs=0.2)
    assert summary["measured_dynamical_snr_db"] == pytest.approx(30, abs=0.2)
    ds = xr.open_dataset(out, engine="h5netcdf")
    np.testing.assert_allclose(
        ds["m"].values[0], np.tile([0.5 * np.sqrt(0.5), 0.5 * np.sqrt(0.5), np.sqrt(3) / 2], (4, 1)), atol=0.2
    )  # first sample, observed with noise
    assert ds.attrs["temperature_k"] == 300.0 and "Heun" in ds.attrs["integrator"]
    ds.close()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dt", "0 ps"], "dt = 0.0 s must be a finite number > 0"),
        (["--dt", "1 Oe"], "not a time unit"),
        (["--coupling", "500"], "--coupling"),
        (["--duration", "-1 ns"], "duration"),
        (["--initial-angles", "200,0"], "theta = 200.0 deg must be in [0, 180]"),
        (["--temperature", "-5 K"], "temperature = -5.0 K"),
        (["--seed", "-1"], "--seed '-1': a seed must be an integer >= 0"),
        (["--save-every", "0"], "--save-every 0: must be an integer in [1, 10]"),
        (["--save-every", "11"], "--save-every 11: must be an integer in [1, 10]"),
        # mu = 1e5 Oe turns m by radians per picosecond: a 50 ps step would be silently wrong
        (["--coupling", "1e5 Oe", "--dt", "5 ps", "--save-every", "1"], "dt = 5e-12 s is too large for this array"),
    ],
)
def test_simulate_bad_input_exits_2_with_message(tmp_path, capsys, extra, message):
    code = None
    try:
        code = main(["simulate", "--n", "3", "--duration", "10 ps", "--out", str(tmp_path / "x.h5"), *extra])
    except SystemExit as exc:  # argparse type errors
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


def test_simulate_n_must_match_the_coupling_matrix_and_os_errors_are_messages(tmp_path, capsys):
    np.save(tmp_path / "w.npy", np.random.default_rng(0).uniform(-1, 1, (20, 20)))
    base = ["simulate", "--coupling-matrix", str(tmp_path / "w.npy"), "--duration", "10 ps"]
    assert main([*base, "--n", "10", "--out", str(tmp_path / "a.h5")]) == 2  # 10 is no longer taken for "not given"
    assert "--n 10 does not match the 20 x 20 --coupling-matrix" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "b.h5"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n_oscillators"] == 20
    (tmp_path / "adir").mkdir()  # a folder where the output file belongs
    assert main([*base, "--out", str(tmp_path / "adir"), "--overwrite"]) == 2
    assert "stosim simulate: error:" in capsys.readouterr().err


def test_train_and_ftmle_need_units_for_sto_times(tmp_path, capsys):
    # a plain number is Lorenz 96 model time; for the STOs it would be seconds (300 s: 3e14 steps)
    for extra in (["--duration", "300"], ["--dt", "1"]):
        assert (
            main(
                ["train", "--n", "4", "--limit-train", "20", "--limit-test", "10", *extra, "--out", str(tmp_path / "t")]
            )
            == 2
        )
        assert f"{extra[0]} {extra[1]}: give a time with its unit for substrate sto" in capsys.readouterr().err
        assert main(["ftmle", "--n", "4", "--limit", "2", *extra, "--out", str(tmp_path / "f.h5")]) == 2
        assert "give a time with its unit" in capsys.readouterr().err
    assert not (tmp_path / "t").exists() and not (tmp_path / "f.h5").exists()
    # --config beside --checkpoint would be ignored: refused
    assert (
        main(
            [
                "ftmle",
                "--config",
                str(REPO_ROOT / "experiments" / "digits-sto.toml"),
                "--checkpoint",
                str(tmp_path),
                "--out",
                str(tmp_path / "g.h5"),
            ]
        )
        == 2
    )
    assert "drop --config" in capsys.readouterr().err


def test_python_m_stosim_runs():
    res = subprocess.run([sys.executable, "-m", "stosim", "describe"], capture_output=True, text=True, check=False)
    assert res.returncode == 0 and "seed-pmtj" in res.stdout


def test_lyapunov_refuses_a_flag_of_another_substrate_and_uses_its_own(capsys):
    small = {
        "sto": ["--n", "2", "--duration", "10 ps", "--transient", "0 ps"],
        "ffesn": ["--n", "4", "--duration", "5", "--transient", "0"],
        "lorenz96": ["--n", "4", "--duration", "1", "--transient", "0"],
    }
    # each would be silently ignored by the substrate it is given to
    for substrate, flag, value in (
        ("lorenz96", "--spectral-radius", "2"),
        ("sto", "--forcing", "4"),
        ("ffesn", "--coupling", "100 Oe"),
        ("lorenz96", "--current", "1 mA"),
        ("ffesn", "--device", "devices/seed-pmtj.toml"),
    ):
        assert main(["lyapunov", "--substrate", substrate, *small[substrate], flag, value]) == 2
        assert f"{flag} applies to --substrate" in capsys.readouterr().err
    # on its own substrate a flag is used: the FFESN at rho = 0.5 without input has MLE ln(0.5) per step
    assert (
        main(
            [
                "lyapunov",
                "--substrate",
                "ffesn",
                "--n",
                "5",
                "--spectral-radius",
                "0.5",
                "--duration",
                "50",
                "--transient",
                "50",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out.strip())["mle"] == pytest.approx(math.log(0.5), abs=0.01)


def test_simulate_default_save_every_fits_a_run_shorter_than_10_steps(tmp_path, capsys):
    # the default (10) is not refused for a 5-step run: it records the start and the end, 0 and 5 ps
    assert main(["simulate", "--n", "2", "--duration", "5 ps", "--out", str(tmp_path / "s.h5"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip())["recorded"] == 2
    ds = xr.open_dataset(tmp_path / "s.h5", engine="h5netcdf")
    np.testing.assert_allclose(ds["time"].values, [0.0, 5e-12], rtol=1e-12)
    ds.close()


def test_sweep_json_gives_its_line_also_when_fail_fast_stops_it(tmp_path, capsys, monkeypatch):
    import stosim.sweep
    from stosim.sweep import SweepFailedError
    from stosim.sweep.runner import SweepSummary

    spec = tmp_path / "s.toml"
    spec.write_text(
        'name = "s"\nkind = "simulate"\n[base]\nn = 2\nduration = "10 ps"\ndt = "1 ps"\n'
        '[grid]\ncoupling = ["100 Oe", "200 Oe"]\n'
    )
    summary = SweepSummary(
        path=tmp_path / "s.h5",
        n_points=2,
        n_done=1,
        n_failed=1,
        n_pending=0,
        n_run=2,
        n_resumed=0,
        workers=1,
        scheduler="local",
        startup_s=0.1,
        run_s=1.0,
        wall_time_s=1.2,
        failures=[({"coupling": 200.0}, "ValueError: boom")],
    )

    def stopped(*args, **kwargs):  # a --fail-fast sweep whose second point failed (no cluster needed)
        raise SweepFailedError("point coupling=200 failed (--fail-fast): boom", summary)

    monkeypatch.setattr(stosim.sweep, "run_sweep", stopped)
    assert main(["sweep", str(spec), "--out", str(tmp_path / "s.h5"), "--fail-fast", "--json"]) == 1
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["n_failed"] == 1 and json.loads(lines[0])["failures"] == 1
    assert "stopped: point coupling=200 failed" in captured.err


def test_simulate_and_lyapunov_report_progress_without_a_terminal(tmp_path, capsys, monkeypatch):
    """Under pytest stderr is no terminal, so the tqdm bar is off (as in a batch job): a long run must still
    say how far it got, in plain lines (here every call, instead of every PLAIN_PROGRESS_S seconds)."""
    import stosim.cli

    monkeypatch.setattr(stosim.cli, "PLAIN_PROGRESS_S", 0.0)
    assert main(["simulate", "--n", "2", "--duration", "20 ps", "--out", str(tmp_path / "p.h5")]) == 0
    assert "simulate: 20 / 20 steps (100 %)" in capsys.readouterr().err
    assert main(["lyapunov", "--substrate", "lorenz96", "--n", "4", "--duration", "1", "--transient", "0"]) == 0
    assert "lyapunov: 100 / 100 steps (100 %)" in capsys.readouterr().err


def test_simulate_initial_file_errors_name_the_option(tmp_path, capsys):
    np.savez(tmp_path / "two.npz", a=np.ones((3, 3)), b=np.ones((3, 3)))
    (tmp_path / "text.npy").write_text("not an array\n")
    np.save(tmp_path / "words.npy", np.array([["a", "b", "c"]] * 3))
    for name in ("two.npz", "text.npy", "words.npy", "missing.npy"):
        out = tmp_path / f"{name}.h5"
        assert (
            main(["simulate", "--n", "3", "--duration", "10 ps", "--initial", str(tmp_path / name), "--out", str(out)])
            == 2
        )
        assert f"--initial {tmp_path / name}: " in capsys.readouterr().err
        assert not out.exists()


def test_atomic_output_flushes_the_folder_and_keeps_the_mode_of_the_file_it_replaces(tmp_path, monkeypatch):
    import os
    import stat

    from stosim.storage import write_text_atomic

    target = tmp_path / "out.txt"
    target.write_text("old")
    target.chmod(0o640)
    synced_folders = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            synced_folders.append(target.read_text())  # what the folder held when it was flushed
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_text_atomic("new", target)
    assert synced_folders == ["new"]  # the rename itself was flushed
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # as open(target, "w") would have left it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_provenance_attrs_of_numpy_values_read_back_as_written(tmp_path):
    from stosim.storage import provenance_attrs, write_dataset_atomic

    attrs = provenance_attrs(
        flag=np.bool_(True),
        flags=[True, False],
        spins=np.array([0.5, -1.0]),
        dtype=np.dtype("float32"),
        big=2**70,
        mixed={"n": np.int64(3)},
        nothing=None,
    )
    ds = xr.Dataset({"x": ("t", np.arange(2.0), {"units": "1", "long_name": "x"})}, attrs=attrs)
    write_dataset_atomic(ds, tmp_path / "a.h5")
    with xr.open_dataset(tmp_path / "a.h5", engine="h5netcdf") as back:
        got = back.attrs
    assert got["flag"] == 1 and np.issubdtype(np.asarray(got["flag"]).dtype, np.integer)
    np.testing.assert_array_equal(got["flags"], [1, 0])
    assert np.asarray(got["flags"]).dtype == np.int64
    np.testing.assert_array_equal(got["spins"], [0.5, -1.0])
    assert got["dtype"] == "float32"
    assert got["big"] == str(2**70)
    assert json.loads(got["mixed"]) == {"n": 3}
    assert got["nothing"] == "none"


def _trajectory_like(m: np.ndarray, attrs: dict) -> xr.Dataset:
    n_t, n_osc = m.shape[:2]
    return xr.Dataset(
        {"m": (("time", "oscillator", "component"), m), "tmr_voltage": (("time", "oscillator"), np.ones((n_t, n_osc)))},
        coords={"time": np.arange(n_t) * 1e-9},
        attrs=attrs,
    )


def test_plots_of_non_finite_or_constant_values_work_and_close_their_figures(tmp_path):
    import matplotlib.pyplot as plt

    from stosim.plotting import plot_histogram, plot_learning_curve, plot_trajectory

    before = set(plt.get_fignums())
    plot_histogram({"diverged": np.array([np.nan, np.inf])}, tmp_path / "nan.png", xlabel="x")
    plot_histogram({"a": np.array([1.0, 2.0]), "b": np.array([np.nan])}, tmp_path / "one.png", xlabel="x")
    plot_histogram({"constant": np.full(5, 1e20)}, tmp_path / "const.png", xlabel="x")
    all_nan = _trajectory_like(np.full((5, 2, 3), np.nan), {"coupling_oe": "none", "current_a": 1e-3})
    plot_trajectory(all_nan, tmp_path / "traj.png")
    for name in ("nan.png", "one.png", "const.png", "traj.png"):
        assert (tmp_path / name).stat().st_size > 0
    history = [{"epoch": 1, "train_accuracy": 0.5, "test_accuracy": 0.4}]
    with pytest.raises(ValueError):  # a format matplotlib does not write
        plot_learning_curve(history, tmp_path / "curve.notaformat")
    with pytest.raises(ValueError):
        plot_histogram({"a": np.ones(3)}, tmp_path / "h.notaformat", xlabel="x")
    assert set(plt.get_fignums()) == before
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_simulate_with_w_in_float32(tmp_path):
    """--float32-coupling: W rounded to float32 (recorded in the file), a trajectory within round-off growth of
    the float64-W one (N = 300: the single-trajectory kernel, split over threads where that is faster)."""
    out32, out64 = tmp_path / "w32.h5", tmp_path / "w64.h5"
    base = ["simulate", "--n", "300", "--coupling", "100 Oe", "--duration", "50 ps", "--save-every", "50"]
    assert main([*base, "--float32-coupling", "--out", str(out32)]) == 0
    assert main([*base, "--out", str(out64)]) == 0
    with xr.open_dataset(out32, engine="h5netcdf") as a, xr.open_dataset(out64, engine="h5netcdf") as b:
        assert a.attrs["coupling_dtype"] == "float32" and b.attrs["coupling_dtype"] == "float64"
        assert json.loads(a.attrs["config"])["coupling_dtype"] == "float32"
        diff = float(np.max(np.abs(a["m"].values - b["m"].values)))
        moved = float(np.max(np.abs(b["m"].values[-1] - b["m"].values[0])))
    assert 0 < diff < 1e-6  # W changed by 6e-8 relative; 50 steps of 1 ps
    assert moved > 1e-2
