"""`stosim simulate` end to end: HDF5 readable with h5py and xarray, units, provenance, plot, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import xarray as xr

from stosim.cli import main

from conftest import REPO_ROOT


def test_simulate_writes_trajectory_and_plot(tmp_path, capsys):
    out, png = tmp_path / "traj.h5", tmp_path / "traj.png"
    args = ["simulate", "--n", "6", "--coupling", "500 Oe", "--current", "2.5 mA", "--duration", "0.2 ns",
            "--dt", "1 ps", "--seed", "3", "--save-every", "5", "--out", str(out), "--plot", str(png), "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 200 and summary["recorded"] == 41
    ds = xr.open_dataset(out, engine="h5netcdf")
    assert ds["m"].dims == ("time", "oscillator", "component")
    assert list(ds["component"].values) == ["x", "y", "z"]
    assert ds.sizes == {"time": 41, "oscillator": 6, "component": 3}
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
    assert main(["simulate", "--n", "4", "--coupling-matrix", str(tmp_path / "w.npy"), "--coupling", "0.1 kOe",
                 "--initial-angles", "30,45", "--duration", "1 ns", "--dt", "1 ps", "--temperature", "300 K",
                 "--observation-snr", "20", "--dynamical-snr", "30", "--save-every", "1", "--out", str(out),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["measured_observation_snr_db"]["m"] == pytest.approx(20, abs=0.2)
    assert summary["measured_dynamical_snr_db"] == pytest.approx(30, abs=0.2)
    ds = xr.open_dataset(out, engine="h5netcdf")
    np.testing.assert_allclose(ds["m"].values[0], np.tile([0.5 * np.sqrt(0.5), 0.5 * np.sqrt(0.5), np.sqrt(3) / 2],
                                                          (4, 1)), atol=0.2)  # first sample, observed with noise
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
        assert main(["train", "--n", "4", "--limit-train", "20", "--limit-test", "10", *extra,
                     "--out", str(tmp_path / "t")]) == 2
        assert f"{extra[0]} {extra[1]}: give a time with its unit for substrate sto" in capsys.readouterr().err
        assert main(["ftmle", "--n", "4", "--limit", "2", *extra, "--out", str(tmp_path / "f.h5")]) == 2
        assert "give a time with its unit" in capsys.readouterr().err
    assert not (tmp_path / "t").exists() and not (tmp_path / "f.h5").exists()
    # --config beside --checkpoint would be ignored: refused
    assert main(["ftmle", "--config", str(REPO_ROOT / "experiments" / "digits-sto.toml"), "--checkpoint", str(tmp_path),
                 "--out", str(tmp_path / "g.h5")]) == 2
    assert "drop --config" in capsys.readouterr().err


def test_python_m_stosim_runs():
    res = subprocess.run([sys.executable, "-m", "stosim", "describe"], capture_output=True, text=True, check=False)
    assert res.returncode == 0 and "seed-pmtj" in res.stdout
