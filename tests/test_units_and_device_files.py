"""Unit strings and device files: parsing, validation, clear errors, CLI validate/describe."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from stosim.cli import main
from stosim.config import DeviceFileError, load_device
from stosim.units import UnitError, parse_quantity

DEVICE_FILES = sorted((REPO_ROOT / "devices").glob("*.toml"))


@pytest.mark.parametrize(
    ("text", "dimension", "expected"),
    [
        ("200 Oe", "field", 200.0),
        ("18.616 kOe", "field", 18616.0),
        ("10 mT", "field", 100.0),
        ("1448.3 emu/cm^3", "magnetization", 1448.3),
        ("1.2e3 kA/m", "magnetization", 1200.0),
        ("2.5 mA", "current", 2.5e-3),
        ("60 nm", "length", 6e-6),
        ("300 ps", "time", 3e-10),
        ("20 ns", "time", 2e-8),
        ("300 K", "temperature", 300.0),
        ("440 Ohm", "resistance", 440.0),
        ("1.764e7 rad/(Oe s)", "gyromagnetic", 1.764e7),
        (0.005, "dimensionless", 0.005),
    ],
)
def test_parse_quantity(text, dimension, expected):
    assert math.isclose(parse_quantity(text, dimension), expected, rel_tol=1e-15)


@pytest.mark.parametrize(
    ("text", "dimension", "match"),
    [
        (200, "field", "has no unit"),
        ("200", "field", "not a field unit"),
        ("2.5 mA", "field", "not a field unit"),
        ("abc Oe", "field", "cannot read a number"),
        ("1e400 Oe", "field", "not finite"),
        (10**400, "dimensionless", "not finite"),
    ],
)
def test_parse_quantity_errors_name_value_and_units(text, dimension, match):
    with pytest.raises(UnitError, match=match):
        parse_quantity(text, dimension, name="applied_field")


@pytest.mark.parametrize(
    ("spellings", "dimension", "expected"),
    [
        (("0.1 ns", "100 ps", "1e-10 s"), "time", 1e-10),
        (("200 ns", "0.2 us", "2e-7 s"), "time", 2e-7),
        (("7 ns", "7000 ps", "7e-9 s"), "time", 7e-9),
        (("0.3 us", "300 ns"), "time", 3e-7),
        (("0.07 T", "70 mT", "700 Oe", "0.7 kOe"), "field", 700.0),
        (("1.1 kA/m", "1100 A/m", "1.1 emu/cm^3"), "magnetization", 1.1),
    ],
)
def test_equal_quantities_in_any_unit_parse_to_the_same_double(spellings, dimension, expected):
    # rounded once (the double nearest the exact decimal product): bit-equal, so sweep coordinates
    # written in different units compare equal and equal the value written in the internal unit
    for text in spellings:
        assert parse_quantity(text, dimension) == expected, text


def test_seed_device_resolves_to_the_published_parameters(device):
    assert device.saturation_magnetization_emu_cm3 == 1448.3
    # docs/physics.md: H_K - 4 pi M = 416.1 Oe
    assert abs(device.effective_anisotropy_field_oe - 416.1) < 0.05
    assert math.isclose(device.volume_cm3, math.pi * (60e-7) ** 2 * 2e-7, rel_tol=1e-14)
    # docs/physics.md section 7: I_c about 0.40 mA for the default device
    assert abs(device.critical_current_a * 1e3 - 0.40) < 0.01
    assert device.reference_direction == (1.0, 0.0, 0.0)


@pytest.mark.parametrize(
    "key",
    [
        "saturation_magnetization_emu_cm3",
        "anisotropy_field_oe",
        "radius_cm",
        "thickness_cm",
        "gyromagnetic_ratio_rad_per_oe_s",
        "parallel_resistance_ohm",
        "tmr_ratio",
    ],
)
def test_device_parameters_built_in_code_refuse_infinite_values(device, key):
    # an infinite radius would give H_s0 = 0 (no torque) without a word
    name = key.removesuffix("_emu_cm3").removesuffix("_oe").removesuffix("_cm").removesuffix("_rad_per_oe_s")
    with pytest.raises(ValueError, match=rf"device parameter {name.removesuffix('_ohm')} = inf is out of range"):
        device.replace(**{key: math.inf})


@pytest.mark.parametrize(
    ("key", "value", "valid"),
    [
        ("saturation_magnetization_emu_cm3", 1.4483e6, r"in \(0, 10000\] emu/cm\^3"),
        ("anisotropy_field_oe", 1e9, r"in \[0, 1e\+06\] Oe"),
        ("gyromagnetic_ratio_rad_per_oe_s", 2.8e6, r"in \[8\.794e\+06, 2\.638e\+07\] rad/\(Oe s\) \(g-factor 1 to 3\)"),
    ],
)
def test_device_parameters_built_in_code_refuse_values_out_of_physical_range(device, key, value, valid):
    name = key.removesuffix("_emu_cm3").removesuffix("_oe").removesuffix("_rad_per_oe_s")
    with pytest.raises(ValueError, match=rf"device parameter {name} = {value!r} is out of range; valid: {valid}"):
        device.replace(**{key: value})


def test_critical_current_without_torque_asymmetry_is_infinite(device):
    # I_c = 4 alpha e M V (H_appl + H_K') / (hbar eta lambda): no threshold when eta lambda = 0
    assert device.replace(torque_asymmetry=0.0).critical_current_a == math.inf
    assert device.replace(polarization=0.0).critical_current_a == math.inf
    assert dict(device.replace(torque_asymmetry=0.0).describe())["critical_current I_c"] == "inf mA"


@pytest.mark.parametrize("path", DEVICE_FILES, ids=[p.name for p in DEVICE_FILES])
def test_every_device_file_is_valid(path):
    dev = load_device(path)
    assert 0 < dev.damping < 1 and dev.saturation_magnetization_emu_cm3 > 0


def _write_device(tmp_path: Path, replace: tuple[str, str] | None = None, append: str = "") -> Path:
    text = (REPO_ROOT / "devices" / "seed-pmtj.toml").read_text()
    if replace is not None:
        assert replace[0] in text
        text = text.replace(*replace)
    path = tmp_path / "dev.toml"
    path.write_text(text + append)
    return path


@pytest.mark.parametrize(
    ("replace", "append", "match"),
    [
        (("damping = 0.005", "damping = 1.5"), "", r"free_layer\.damping"),
        (("damping = 0.005", "damping = 0"), "", r"free_layer\.damping"),
        (
            ('saturation_magnetization = "1448.3 emu/cm^3"', 'saturation_magnetization = "-5 emu/cm^3"'),
            "",
            r"free_layer\.saturation_magnetization",
        ),
        (("direction = [1.0, 0.0, 0.0]", "direction = [1.0, 1.0, 0.0]"), "", r"\|p\| must be 1"),
        (('z = "200 Oe"', 'z = "200"'), "", r"applied_field\.z.*not a field unit"),
        (('current = "2.5 mA"', 'current = "2.5 mOe"'), "", r"spin_torque\.current"),
        (None, "\n[extra]\nfoo = 1\n", r"extra.*Extra inputs are not permitted"),
        (("damping = 0.005", "damping = 0.005\ndampingg = 0.1"), "", r"free_layer\.dampingg"),
        (("[tmr]", "[tmr_]"), "", r"tmr"),
        # out of physical range: M in A/m written as emu/cm^3 (1000 times too large), H_K of 1e5 T,
        # gamma 1e5 times the electron's; a NaN component of p
        (
            ('saturation_magnetization = "1448.3 emu/cm^3"', 'saturation_magnetization = "1.4483e6 emu/cm^3"'),
            "",
            r"free_layer\.saturation_magnetization: Input should be less than or equal to 10000",
        ),
        (
            ('anisotropy_field = "18.616 kOe"', 'anisotropy_field = "1e9 Oe"'),
            "",
            r"free_layer\.anisotropy_field: Input should be less than or equal to 1000000",
        ),
        (
            ('"1.764e7 rad/(Oe s)"', '"1.764e12 rad/(Oe s)"'),
            "",
            r"free_layer\.gyromagnetic_ratio: Input should be less than or equal to 26382300\.1",
        ),
        # gamma / 2 pi in Hz/Oe written as rad/(Oe s): g = 0.32
        (
            ('"1.764e7 rad/(Oe s)"', '"2.8e6 rad/(Oe s)"'),
            "",
            r"free_layer\.gyromagnetic_ratio: Input should be greater than or equal to 8794100\.0",
        ),
        (
            ("direction = [1.0, 0.0, 0.0]", "direction = [nan, 0.0, 0.0]"),
            "",
            r"reference_layer\.direction: \|p\| must be 1",
        ),
    ],
)
def test_invalid_device_files_name_the_key(tmp_path, replace, append, match):
    path = _write_device(tmp_path, replace, append)
    with pytest.raises(DeviceFileError, match=match):
        load_device(path)


def test_unreadable_and_malformed_device_files(tmp_path):
    with pytest.raises(DeviceFileError, match="cannot read"):
        load_device(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(DeviceFileError, match="not valid TOML"):
        load_device(bad)


def test_cli_validate_and_describe(tmp_path, capsys):
    good = REPO_ROOT / "devices" / "seed-pmtj.toml"
    bad = _write_device(tmp_path, ("damping = 0.005", "damping = 2"))
    assert main(["validate", str(good)]) == 0
    assert main(["validate", str(good), str(bad)]) == 1
    err = capsys.readouterr().err
    assert "free_layer.damping" in err and "less than 1" in err
    assert main(["describe", str(good)]) == 0
    out = capsys.readouterr().out
    assert "416.125 Oe" in out and "critical_current" in out and "emu/cm^3" in out


def test_cli_validate_recognizes_every_shipped_toml(capsys):
    """Device files, experiment configs, sweep specs, station files and reference values: each checked by its
    own schema (`stosim validate experiments/table1/*.toml` takes the glob `compare` takes)."""
    files = sorted(p for folder in ("devices", "experiments") for p in (REPO_ROOT / folder).rglob("*.toml"))
    assert len(files) > 20
    assert main(["validate", *map(str, files)]) == 0
    out = capsys.readouterr().out
    for kind in ("(device ", "(sweep spec ", "(experiment: ", "(station ", "(published reference values"):
        assert kind in out


def test_cli_validate_names_the_bad_key_of_a_sweep_spec(tmp_path, capsys):
    spec = tmp_path / "bad-sweep.toml"
    spec.write_text(
        'name = "x"\nkind = "train"\nseeds = [0]\n[base]\nsubstrate = "sto"\nepochz = 3\n[grid]\ncoupling = ["1 Oe"]\n'
    )
    assert main(["validate", str(spec)]) == 1
    err = capsys.readouterr().err
    assert "epochz" in err and "epochs" in err


def test_settings_that_differ_in_the_last_bit_are_the_same_run():
    """A training run saved with a duration parsed by an earlier version (one bit off) is the same
    run; a real change, an integer change or a different text is not."""
    from stosim.studies.training import TrainConfig, config_differences
    from stosim.units import values_agree

    cfg = TrainConfig(duration="200 ns", dt="1 ps", n=4)
    saved = json.loads(json.dumps(cfg.resolved(), default=str))
    assert config_differences({**saved, "duration": 2.0000000000000002e-07}, cfg) == []
    assert config_differences({**saved, "duration": 2.000001e-07}, cfg) == ["duration"]
    assert config_differences({**saved, "n": 5}, cfg) == ["n"]
    assert values_agree({"a": [1.0, "x"]}, {"a": [1.0 + 1e-15, "x"]})
    assert not values_agree({"a": [1.0, "x"]}, {"a": [1.0, "y"]})
    assert not values_agree(1, True) and not values_agree([1.0], [1.0, 2.0]) and not values_agree(0.0, 1e-300)
