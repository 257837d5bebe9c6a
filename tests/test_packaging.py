"""The package as installed from a wheel: device/station/instrument files as package data, the optional
parts (extras) and the message that names a missing one."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

import stosim
from stosim.cli import main
from stosim.config import DEVICES_DIR, load_device
from stosim.extras import MissingExtraError, require

ROOT = Path(stosim.__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
in_checkout = pytest.mark.skipif(
    not PYPROJECT.is_file() or not (ROOT / "devices").is_dir(),
    reason="needs the source tree (pyproject.toml, devices/)",
)


def _package_data() -> dict[str, list[str]]:
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["setuptools"]["package-data"]


def _shipped(folder: Path) -> set[str]:
    """Files under ``folder`` (a devices/ tree) that the package-data globs of pyproject.toml take."""
    names = set()
    for package, patterns in _package_data().items():
        if not package.startswith("stosim.devices"):
            continue
        sub = folder.joinpath(*package.split(".")[2:])
        names |= {p.relative_to(folder).as_posix() for pattern in patterns for p in sub.glob(pattern) if p.is_file()}
    return names


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


@in_checkout
def test_device_files_have_one_copy_and_every_one_is_package_data():
    link = ROOT / "stosim" / "devices"
    assert link.is_symlink() and link.resolve() == (ROOT / "devices").resolve()  # a link, not a second copy
    assert DEVICES_DIR == (ROOT / "devices").resolve()  # messages name the folder users look in
    files = _files(ROOT / "devices")
    assert {"seed-pmtj.toml", "stations/sim-lab.toml", "stations/twin-lab.toml", "instruments/sim-lab.yaml"} <= files
    assert _shipped(ROOT / "devices") == files, "a file in devices/ that the wheel leaves out (package-data)"


def test_missing_extra_names_it():
    require("numpy", "cluster", "anything")  # installed: nothing happens
    with pytest.raises(
        MissingExtraError,
        match=r"a parallel sweep needs no_such_module_x, which is not installed: "
        r"pip install 'stosim\[cluster\]'",
    ):
        require("no_such_module_x", "cluster", "a parallel sweep")


def test_sweep_without_dask_says_which_extra(tmp_path, monkeypatch, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text(
        'name = "s"\nkind = "train"\n[base]\nsubstrate = "linear"\n[grid]\nlr = [0.01, 0.02]\n', encoding="utf-8"
    )
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed
    rc = main(["sweep", str(spec), "--out", str(tmp_path / "s.h5"), "--workers", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "pip install 'stosim[cluster]'" in err and "Traceback" not in err, err
    assert not (tmp_path / "s.h5").exists()


def test_lab_station_without_pyvisa_says_which_extra(monkeypatch):
    from stosim.hardware import LabSTOArray

    monkeypatch.setitem(sys.modules, "pyvisa", None)
    hw = LabSTOArray("sim-lab")
    with pytest.raises(MissingExtraError, match=r"pip install 'stosim\[hardware\]'"):
        hw.open()


@in_checkout
def test_the_optional_parts_are_extras():
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    core, extras = project["dependencies"], project["optional-dependencies"]
    names = {r.split(">")[0].split("=")[0].split("[")[0].strip() for r in core}
    assert not names & {"dask", "distributed", "pyvisa", "pyvisa-sim"}  # optional parts are extras
    assert {"torch", "numba", "xarray", "h5netcdf", "scikit-learn"} <= names  # the main job is core
    assert "stosim[cluster,hardware]" in extras["test"]


INSTALLED_CHECK = """
import sys
import stosim
from stosim.config import DEVICES_DIR, load_device
from stosim.hardware.station import load_station
from stosim.datasets import load_dataset
print(stosim.__file__)
print(DEVICES_DIR)
print(load_device().name, load_station("sim-lab").name, load_station("twin-lab").name)
train, test = load_dataset("digits")
print(len(train) + len(test))
"""


@pytest.mark.slow  # a wheel build and a fresh interpreter: 15-80 s on 2 cores (.ci/run installs the wheel too)
@in_checkout
def test_the_wheel_ships_the_device_files_and_works_installed(tmp_path):
    """Build the wheel from a copy of the source tree (the checkout stays clean), unpack it into a folder
    of its own and use it from there: device files, stations, the embedded digits."""
    try:
        setuptools_version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("setuptools is not installed (the test extra brings it)")
    if int(setuptools_version.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools_version} < 77 (the test extra brings a newer one)")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        (src / name).write_bytes((ROOT / name).read_bytes())
    for name in ("stosim", "devices"):  # stosim/devices stays a link
        shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            "-w",
            str(dist),
            str(src),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = dist.glob("stosim-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    expected = {f"stosim/devices/{name}" for name in _files(ROOT / "devices")}
    assert expected <= names, expected - names
    assert not any("__pycache__" in n or n.endswith((".nbi", ".nbc", ".pyc")) for n in names)
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    script = tmp_path / "check.py"
    script.write_text(textwrap.dedent(INSTALLED_CHECK), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    run = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=600
    )
    assert run.returncode == 0, run.stderr
    where, devices, names_line, count = run.stdout.strip().splitlines()
    assert Path(where).resolve().is_relative_to(site.resolve()), where  # the unpacked wheel, not the checkout
    assert Path(devices) == (site / "stosim" / "devices").resolve()
    assert names_line == f"{load_device().name} sim-lab twin-lab"
    assert count == "1797"
