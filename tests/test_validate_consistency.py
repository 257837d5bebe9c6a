"""`stosim validate FILE` applies exactly the checks of the run: a file validates if and only if its run starts.

Each case was a defect: the file passed `stosim validate` and failed (or crashed in NumPy / Numba) when run,
or `validate` judged it by the wrong schema, or imported code named in it.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from stosim.checks import MAX_FILE_BYTES, MAX_NESTING, MAX_SEED, read_toml
from stosim.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]
SIM_STATION = REPO_ROOT / "devices" / "stations" / "sim-lab.toml"

SMALL_STO = 'substrate = "sto"\nn = 4\nepochs = 1\nlimit_train = 20\nlimit_test = 20\n'

# (line appended to SMALL_STO, words of the refusal); each passed `stosim validate` before
BAD_EXPERIMENTS = [
    ('coupling = "1e30 Oe"', "coupling"),
    ('dt = "1 ns"', "dt"),  # 300 ps is no whole multiple of 1 ns
    ('duration = "30 ns"\ndt = "300 ps"', "dt = 3e-10 s is too large"),  # the STO time-step bound
    ('dt = "1e-300 ps"', "integration steps is out of range"),
    (f"seed = {2**64}", "seed"),
    (f"seed = {MAX_SEED + 1}", "seed"),
    ("lr = true", "lr"),
    ("n = true", "n"),
    ("epochs = 2.0", "epochs"),
    ('epochs = "2"', "epochs"),
    ('current = "2 A"', "current"),
]


def _experiment(tmp_path: Path, extra: str) -> Path:
    keys = {line.split("=")[0].strip() for line in extra.splitlines()}
    base = "".join(line + "\n" for line in SMALL_STO.splitlines() if line.split("=")[0].strip() not in keys)
    path = tmp_path / "exp.toml"
    path.write_text(base + extra + "\n")
    return path


@pytest.mark.parametrize(("extra", "words"), BAD_EXPERIMENTS)
def test_an_experiment_the_run_refuses_does_not_validate(tmp_path, capsys, extra, words) -> None:
    path = _experiment(tmp_path, extra)
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert str(path) in err and words in err and "Traceback" not in err
    # the run refuses it with the same check, before loading data or building the model twice
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_the_run_level_check_runs_in_train_itself() -> None:
    """The API entry point applies the same check as the loader (a TrainConfig built in Python)."""
    from stosim.studies.training import ConfigError, TrainConfig, train

    cfg = TrainConfig(substrate="sto", n=4, duration="30 ns", dt="300 ps")
    with pytest.raises(ConfigError, match="too large"):
        train(cfg)


def test_readout_only_needs_a_reservoir(tmp_path, capsys) -> None:
    path = tmp_path / "lin.toml"
    path.write_text('substrate = "linear"\nreadout_only = true\n')
    assert main(["validate", str(path)]) == 1
    assert "readout_only" in capsys.readouterr().err


def test_lorenz96_sizes_and_steps_are_checked_as_the_run_does(tmp_path, capsys) -> None:
    for text, words in (
        ('substrate = "lorenz96"\nn = 2\n', "n must be an integer >= 4"),
        ('substrate = "lorenz96"\nduration = 1e300\ndt = 1e-300\n', "duration"),
        ('substrate = "lorenz96"\nduration = 1.0\ndt = 0.3\n', "whole multiple"),
    ):
        path = tmp_path / "l96.toml"
        path.write_text(text)
        assert main(["validate", str(path)]) == 1, text
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, err


def test_an_experiment_file_without_substrate_is_judged_an_experiment(tmp_path, capsys) -> None:
    path = tmp_path / "e.toml"
    path.write_text("epochs = 3\nlr = 0.1\n")
    assert main(["validate", str(path)]) == 0
    assert "experiment: sto on digits" in capsys.readouterr().out
    path.write_text("epochz = 3\n")  # a misspelt key is an experiment file's unknown key, not a device's
    assert main(["validate", str(path)]) == 1
    assert "epochz" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text",
    [
        "a = " + "[" * 1000 + "]" * 1000 + "\n",
        "a = " + "{b = " * 1000 + "1" + "}" * 1000 + "\n",
        "a = " + "[" * (MAX_NESTING + 2) + "]" * (MAX_NESTING + 2) + "\n",
        "a" + ".a" * 100 + " = 1\n",
        "".join(f"[{'.'.join(['t'] * k)}]\n" for k in range(1, 60)),
    ],
)
def test_deep_nesting_is_refused_with_the_file_named(tmp_path, capsys, text) -> None:
    path = tmp_path / "deep.toml"
    path.write_text(text)
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert str(path) in err and "nested" in err and "Traceback" not in err


def test_files_over_a_mebibyte_non_utf8_and_non_regular_files_are_refused(tmp_path) -> None:
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * MAX_FILE_BYTES + "\n")
    with pytest.raises(ValueError, match="too large"):
        read_toml(big)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b'name = "\xff\xfe"\n')
    with pytest.raises(ValueError, match="not UTF-8"):
        read_toml(binary)
    with pytest.raises(ValueError, match="not a regular file"):
        read_toml(tmp_path)
    if hasattr(os, "mkfifo"):  # opening a FIFO would wait for a writer forever
        fifo = tmp_path / "fifo.toml"
        os.mkfifo(fifo)
        with pytest.raises(ValueError, match="not a regular file"):
            read_toml(fifo)


SWEEP = 'name = "x"\nkind = "{kind}"\nseeds = [0]\n[base]\nn = 4\n{base}[grid]\ncoupling = ["500 Oe", "1e5 Oe"]\n'


@pytest.mark.parametrize(
    ("kind", "base"),
    [("train", 'substrate = "sto"\nepochs = 1\n'), ("simulate", ""), ("ftmle", "samples = 1\n"), ("mle", "")],
)
def test_a_sweep_with_one_point_the_run_refuses_does_not_validate_nor_start(tmp_path, capsys, kind, base) -> None:
    """1e5 Oe of coupling needs dt < 1 ps: the second point would fail when run; validate names it, and
    `stosim sweep` refuses the spec before it starts any worker (no output file)."""
    spec = tmp_path / "s.toml"
    spec.write_text(SWEEP.format(kind=kind, base=base))
    assert main(["validate", str(spec)]) == 1
    err = capsys.readouterr().err
    assert "grid.coupling[1]" in err and "too large" in err, err
    out = tmp_path / "s.h5"
    assert main(["sweep", str(spec), "--out", str(out), "--workers", "1"]) == 2
    assert "grid.coupling[1]" in capsys.readouterr().err
    assert not out.exists()


def test_sweep_seeds_and_values_are_strictly_typed(tmp_path, capsys) -> None:
    spec = tmp_path / "s.toml"
    for text, words in (
        ('name = "x"\nkind = "train"\nseeds = [true]\n', "seeds[0]"),
        (f'name = "x"\nkind = "train"\nseed = {2**64}\n', "seed"),
        ('name = "x"\nkind = "train"\n[grid]\nlr = [true, 0.1]\n', "lr"),
        ('name = "x"\nkind = "simulate"\n[base]\nn = true\n', "n"),
    ):
        spec.write_text(text)
        assert main(["validate", str(spec)]) == 1, text
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, err


def _station_with_driver(tmp_path: Path, driver: str) -> Path:
    text = SIM_STATION.read_text().replace('driver = "keithley2400"', f'driver = "{driver}"')
    text = text.replace('"../seed-pmtj.toml"', f'"{(REPO_ROOT / "devices" / "seed-pmtj.toml").as_posix()}"')
    path = tmp_path / "station.toml"
    path.write_text(text)
    return path


def test_station_validation_never_imports_the_driver_it_names(tmp_path, monkeypatch, capsys) -> None:
    """A module named by a station file (here one in the current folder, as `python -m stosim` would
    find it) is not imported by `stosim validate`, with or without --allow-driver."""
    marker = tmp_path / "imported"
    (tmp_path / "h18_user_driver.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = _station_with_driver(tmp_path, "h18_user_driver:Source")
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert "current_source.driver" in err and "not allowed" in err and "--allow-driver" in err
    assert main(["validate", "--allow-driver", "h18_user_driver:Source", str(path)]) == 0
    assert not marker.exists() and "h18_user_driver" not in sys.modules


def test_a_user_driver_is_imported_only_when_running_and_allowed(tmp_path) -> None:
    from stosim.hardware.instruments import CurrentSource2400
    from stosim.hardware.station import StationFileError, load_station

    driver = "stosim.hardware.instruments:CurrentSource2400"
    path = _station_with_driver(tmp_path, driver)
    with pytest.raises(StationFileError, match="not allowed"):
        load_station(path)
    assert load_station(path, allow_drivers=[driver]).current_source.cls is CurrentSource2400
    for bad in ("os:system; x", "../evil:Thing", ":Thing", "a:"):
        with pytest.raises(StationFileError, match="current_source.driver"):
            load_station(path, overrides={"current_source": {"driver": bad}}, allow_drivers=[bad])


def test_station_numbers_are_strictly_typed(tmp_path, capsys) -> None:
    from stosim.hardware.station import StationFileError, load_station

    for section, key, value in (
        ("array", "n", True),
        ("array", "coupling_seed", 2**40),
        ("current_source", "retries", 1.5),
    ):
        with pytest.raises(StationFileError, match=f"{section}.{key}"):
            load_station(SIM_STATION, overrides={section: {key: value}})


def test_seed_flags_have_the_configs_range(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["train", "--seed", str(2**64)])
    assert stop.value.code == 2
    assert "--seed" in capsys.readouterr().err


# defects the fuzzer (tests/test_fuzz_files.py) found, each as it first showed


def test_a_file_that_is_not_utf8_is_refused_naming_it(tmp_path) -> None:
    from stosim.cli import _validate_one

    path = tmp_path / "dev.toml"
    path.write_bytes(b'name = "seed-pmtj"\ndescription = "\x04CoFeB \xbe"\n')
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*not UTF-8"):
        _validate_one(path)


def test_a_table_where_a_value_belongs_is_refused_naming_the_key(tmp_path, capsys) -> None:
    path = tmp_path / "e.toml"  # was TypeError: unhashable type: 'dict' (substrate looked up in a frozenset)
    path.write_text("n = 8\nepochs = 1\n[substrate]\n")
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert "substrate" in err and "Traceback" not in err


def test_huge_sweep_seeds_are_refused_naming_the_key(tmp_path, capsys) -> None:
    spec = tmp_path / "s.toml"  # was OverflowError: Python int too large to convert to C long
    spec.write_text(f'name = "x"\nkind = "simulate"\nseeds = [{2**100}, 1]\n[base]\nn = 4\n')
    assert main(["validate", str(spec)]) == 1
    assert "seeds[0]" in capsys.readouterr().err


def test_a_damaged_sweep_file_is_refused_naming_it(tmp_path, capsys) -> None:
    """h5py raised RuntimeError / KeyError (past `stosim plot` and `--resume`) on damaged metadata."""
    from stosim.sweep.store import read_sweep

    path = tmp_path / "bad.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 8)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        read_sweep(path)
    assert main(["plot", str(path), "--x", "coupling", "--var", "mx_mean"]) == 2
    assert str(path) in capsys.readouterr().err
