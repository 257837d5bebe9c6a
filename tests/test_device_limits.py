"""Device limits: maximum current and breakdown voltage, refused unless the caller insists; absurd device files.

The seed device (R_P = 440 Ohm over pi (60 nm)^2, RA = 4.98 Ohm um^2) gets the default breakdown voltage
1.5 V and I_max = V_bd / R_P = 3.409 mA; its operating point, 2.5 mA, is within both.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import REPO_ROOT

from stosim.cli import main
from stosim.config import DEFAULT_BREAKDOWN_VOLTAGE_V, DeviceFileError, load_device
from stosim.physics.array import STOArray, Variability
from stosim.simulation import (
    DeviceLimitError,
    DeviceLimitWarning,
    check_current_limits,
    check_device_limits,
    simulate,
)
from stosim.studies.training import TrainConfig, train

SEED = (REPO_ROOT / "devices" / "seed-pmtj.toml").read_text()
M0 = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def device_file(tmp_path: Path, append: str = "", replace: tuple[str, str] | None = None) -> Path:
    text = SEED
    if replace is not None:
        assert replace[0] in text
        text = text.replace(*replace)
    path = tmp_path / "dev.toml"
    path.write_text(text + append)
    return path


def test_default_limits_of_the_seed_device() -> None:
    dev = load_device()
    assert dev.max_current_a is None and dev.breakdown_voltage_v is None
    assert dev.breakdown_limit_v == DEFAULT_BREAKDOWN_VOLTAGE_V == 1.5
    assert dev.current_limit_a == pytest.approx(1.5 / 440.0, rel=1e-15)  # 3.409 mA
    assert dev.resistance_area_ohm_um2 == pytest.approx(440.0 * math.pi * 0.06**2, rel=1e-14)  # 4.976 Ohm um^2
    assert check_current_limits(dev, dev.current_a) == ()  # the operating point, 2.5 mA, is within
    rows = dict(dev.describe())
    assert rows["max_current I_max"] == "3.40909 mA (V_bd / R_P)"
    assert rows["breakdown_voltage V_bd"] == "1.5 V (default)"


def test_device_files_may_give_their_limits(tmp_path: Path) -> None:
    dev = load_device(device_file(tmp_path, '\n[limits]\nmax_current = "3 mA"\nbreakdown_voltage = "1.2 V"\n'))
    assert (dev.max_current_a, dev.breakdown_voltage_v) == (pytest.approx(3e-3), 1.2)
    assert (dev.current_limit_a, dev.breakdown_limit_v) == (pytest.approx(3e-3), 1.2)
    assert dev.as_attrs()["device_current_limit_a"] == pytest.approx(3e-3)


@pytest.mark.parametrize(
    ("append", "replace", "match"),
    [
        ('\n[limits]\nmax_current = "-1 mA"\n', None, r"limits\.max_current: .*greater than 0"),
        ('\n[limits]\nmax_current = "2 A"\n', None, r"limits\.max_current: .*less than or equal to 1"),
        ('\n[limits]\nbreakdown_voltage = "50 V"\n', None, r"limits\.breakdown_voltage: .*less than or equal to 10"),
        ('\n[limits]\nbreakdown_voltage = "1 A"\n', None, r"limits\.breakdown_voltage: .*not a voltage unit"),
        ('\n[limits]\nmax_currrent = "1 mA"\n', None, r"limits\.max_currrent: Extra inputs are not permitted"),
        (
            "",
            ('parallel_resistance = "440 Ohm"', 'parallel_resistance = "1e300 Ohm"'),
            (
                r"parallel_resistance = 1e\+300 Ohm is out of range: it gives RA = R_P pi r\^2 = "
                r"1\.131e\+298 Ohm um\^2 over the junction area 0\.01131 um\^2; "
                r"valid: RA in \[0\.01, 1e\+06\] Ohm um\^2 \(MgO tunnel barriers\), "
                r"i\.e\. R_P in \[0\.8842, 8\.842e\+07\] Ohm for this radius"
            ),
        ),
        ("", ('parallel_resistance = "440 Ohm"', 'parallel_resistance = "0.44 Ohm"'), r"RA = R_P pi r\^2 = 0\.004976"),
        ("", ("tmr_ratio = 1.0", "tmr_ratio = 0"), r"tmr\.tmr_ratio: Input should be greater than 0"),
    ],
)
def test_absurd_device_files_are_refused_naming_the_key(tmp_path: Path, append: str, replace, match: str) -> None:
    with pytest.raises(DeviceFileError, match=match):
        load_device(device_file(tmp_path, append, replace))


def test_device_parameters_built_in_code_refuse_a_tmr_ratio_of_zero() -> None:
    with pytest.raises(
        ValueError,
        match=r"tmr_ratio = 0.0 is out of range; valid: in \(0, 10\] \(a TMR ratio of 0 "
        r"means R_AP = R_P: the TMR voltage carries no signal of m\)",
    ):
        load_device().replace(tmr_ratio=0.0)


def test_a_simulation_beyond_the_limits_is_refused_naming_them() -> None:
    array = STOArray.generate(load_device(), 2, 500.0, seed=0, current_a=0.1)  # 100 mA: 88 V across R_AP
    with pytest.raises(
        DeviceLimitError,
        match=(
            r"simulation refused: bias current \|I\| = 100 mA exceeds the maximum current of device seed-pmtj, "
            r"I_max = 3\.409 mA \(V_bd / R_P\); junction voltage \|I\| R_P = 44 V exceeds the breakdown voltage of "
            r"device seed-pmtj, V_bd = 1\.5 V \(default for MgO barriers\); the model would report up to \|I\| R_AP "
            r"= 88 V; pass allow_beyond_limits=True to run it anyway"
        ),
    ):
        simulate(array, M0, 5e-12, 1e-12)
    # a negative current of the same size is as far beyond
    with pytest.raises(DeviceLimitError, match=r"\|I\| = 100 mA"):
        simulate(STOArray.generate(load_device(), 2, 500.0, seed=0, current_a=-0.1), M0, 5e-12, 1e-12)


def test_the_breakdown_limit_is_checked_on_its_own(tmp_path: Path) -> None:
    # a generous current limit, a strict barrier: 2.5 mA x 440 Ohm = 1.1 V > 1 V
    dev = load_device(device_file(tmp_path, '\n[limits]\nmax_current = "10 mA"\nbreakdown_voltage = "1 V"\n'))
    with pytest.raises(
        DeviceLimitError,
        match=r"refused: junction voltage \|I\| R_P = 1\.1 V exceeds the breakdown "
        r"voltage of device seed-pmtj, V_bd = 1 V \(limits\.breakdown_voltage\)",
    ):
        check_device_limits(STOArray.generate(dev, 2, 500.0, seed=0))
    assert check_device_limits(STOArray.generate(dev, 2, 500.0, seed=0, current_a=2.2e-3)) == ()  # 0.968 V


def test_a_device_driven_beyond_the_limit_by_variability_is_named() -> None:
    # I = 3.3 mA, within I_max = 3.409 mA, with a 20 % current spread: device 4 of this draw carries 1.0744 I
    variability = Variability(current=0.2, seed=4)
    array = STOArray.generate(load_device(), 5, 300.0, seed=1, current_a=3.3e-3, variability=variability)
    with pytest.raises(
        DeviceLimitError,
        match=r"bias current \|I\| = 3\.546 mA \(device 4 of the array under "
        r"variability, I_i = I \(1 \+ s_I xi_i\) with I = 3\.3 mA\) exceeds",
    ):
        check_device_limits(array)
    # the same draw at 3 mA: the largest, 3.22 mA, is within
    assert (
        check_device_limits(STOArray.generate(load_device(), 5, 300.0, seed=1, current_a=3e-3, variability=variability))
        == ()
    )


def test_a_run_beyond_the_limits_made_on_request_is_marked(tmp_path: Path) -> None:
    array = STOArray.generate(load_device(), 2, 500.0, seed=0, current_a=0.1)
    with pytest.warns(DeviceLimitWarning, match="simulation beyond the device limits") as record:
        traj = simulate(array, M0, 5e-12, 1e-12, allow_beyond_limits=True)
    assert len(record) == 2 and len(traj.limit_warnings) == 2
    assert traj.limit_warnings[0].startswith("bias current |I| = 100 mA exceeds the maximum current")
    assert float(np.abs(traj.tmr_voltage_v).max()) > 40.0  # the absurd output is there, and marked
    ds = traj.to_dataset()
    assert ds.attrs["beyond_device_limits"] == 1 and ds.attrs["device_limit_warnings"] == "; ".join(traj.limit_warnings)
    within = simulate(STOArray.generate(load_device(), 2, 500.0, seed=0), M0, 5e-12, 1e-12).to_dataset()
    assert within.attrs["beyond_device_limits"] == 0 and within.attrs["device_limit_warnings"] == "none"
    with pytest.raises(TypeError, match="allow_beyond_limits = 'yes' must be True or False"):
        simulate(array, M0, 5e-12, 1e-12, allow_beyond_limits="yes")


def test_cli_simulate_refuses_and_runs_with_the_flag(tmp_path: Path, capsys) -> None:
    out = tmp_path / "t.h5"
    args = ["simulate", "--n", "2", "--current", "100 mA", "--duration", "5 ps", "--dt", "1 ps", "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "simulation refused: bias current |I| = 100 mA exceeds the maximum current" in err
    assert "--allow-beyond-limits" in err and not out.exists()
    with pytest.warns(DeviceLimitWarning):
        assert main([*args, "--allow-beyond-limits"]) == 0
    with xr.open_dataset(out, engine="h5netcdf") as ds:
        assert ds.attrs["beyond_device_limits"] == 1
        assert "junction voltage |I| R_P = 44 V exceeds the breakdown voltage" in ds.attrs["device_limit_warnings"]


TINY = {
    "dataset": "digits",
    "limit_train": 40,
    "limit_test": 20,
    "batch_size": 20,
    "n": 2,
    "duration": "5 ps",
    "dt": "1 ps",
    "epochs": 1,
}


def test_training_beyond_the_limits_is_refused_or_marked(tmp_path: Path) -> None:
    cfg = TrainConfig(**TINY, current="5 mA")
    with pytest.raises(DeviceLimitError, match=r"training refused: bias current \|I\| = 5 mA exceeds"):
        train(cfg, tmp_path / "refused")
    assert not (tmp_path / "refused" / "metrics.json").exists()
    with pytest.warns(DeviceLimitWarning, match="training beyond the device limits"):
        train(cfg, tmp_path / "run", allow_beyond_limits=True)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(metrics["device_limit_warnings"]) == 2
    assert metrics["device_limit_warnings"][1].startswith("junction voltage |I| R_P = 2.2 V exceeds")
    assert (
        main(
            [
                "train",
                "--dataset",
                "digits",
                "--limit-train",
                "40",
                "--limit-test",
                "20",
                "--n",
                "2",
                "--duration",
                "5 ps",
                "--dt",
                "1 ps",
                "--epochs",
                "1",
                "--current",
                "5 mA",
                "--out",
                str(tmp_path / "cli"),
            ]
        )
        == 2
    )
