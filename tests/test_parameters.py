"""The registry of parameters (stosim.parameters) is the one source of names, units and ranges: the device,
experiment and sweep files, the sweep's attributes, the command-line flags and docs/parameters.md derive from
it; library errors name parameters and the command line shows its flags instead."""

from __future__ import annotations

import ast
import math
import re
import tomllib
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from stosim import parameters as P
from stosim.checks import MAX_SEED
from stosim.config import DeviceFile, DeviceParameters, load_device
from stosim.units import UnitError, parse_quantity

ROOT = Path(__file__).resolve().parents[1]
_QUANTITY = re.compile(r"^\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*[A-Za-z]")


def _bounds(field) -> dict[str, float]:
    """The range of a field, or of the elements of a list-valued field (a noise point's levels)."""
    metadata = list(field.metadata)
    if typing.get_origin(field.annotation) is list:
        (element,) = typing.get_args(field.annotation)
        metadata = [m for info in getattr(element, "__metadata__", ()) for m in getattr(info, "metadata", [info])]
    out = {}
    for item in metadata:
        for key in ("gt", "ge", "lt", "le"):
            if getattr(item, key, None) is not None:
                out[key] = getattr(item, key)
    return out


SNR_FIELDS = ("dynamical_snr", "observation_snr", "eval_dynamical_snr", "eval_observation_snr")


def _device_models() -> dict[str, type[BaseModel]]:
    return {
        name: f.annotation
        for name, f in DeviceFile.model_fields.items()
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)
    }


def _config_models() -> list[type[BaseModel]]:
    from stosim.studies.sweep_points import point_kinds
    from stosim.studies.training import TrainConfig

    return [TrainConfig, *(kind.config for kind in point_kinds().values())]


def test_the_docs_table_is_up_to_date() -> None:
    from stosim.parameter_docs import DOCS_PATH, parameters_markdown

    assert DOCS_PATH.read_text(encoding="utf-8") == parameters_markdown(), (
        "docs/parameters.md is out of date: run python -m stosim.parameter_docs"
    )


def test_every_field_of_the_files_is_a_parameter_with_its_range() -> None:
    """The pydantic fields of experiment files, sweep points and device files have exactly the registry's
    range (gt / ge / lt / le) and description."""
    declared = P.parameters()
    checked = 0
    for model in _config_models():
        for name, field in model.model_fields.items():
            assert name in declared, f"{model.__name__}.{name} is not declared in stosim.parameters"
            if declared[name].bounded and name not in SNR_FIELDS:  # (dB: check_snr_db)
                assert _bounds(field) == declared[name].bounds(), f"{model.__name__}.{name}"
                checked += 1
    by_key = {p.device_key: p for p in declared.values() if p.device_key}
    for section, model in _device_models().items():
        for name, field in model.model_fields.items():
            param = by_key[f"{section}.{name}"]
            if not param.bounded:  # (reference_layer.direction: a unit vector, its own validator)
                continue
            assert _bounds(field) == param.bounds() and field.description == param.description, f"{section}.{name}"
            checked += 1
    assert checked > 100


def test_every_unit_carrying_key_of_the_shipped_files_is_declared_with_its_dimension() -> None:
    declared = P.parameters()
    device_keys = {p.device_key: p for p in declared.values() if p.device_key}
    found = 0

    def walk(table: dict, prefix: str, path: Path) -> None:
        nonlocal found
        for key, value in table.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.", path)
                continue
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, str) and _QUANTITY.match(item):
                    param = device_keys.get(f"{prefix}{key}") if path.parent.name == "devices" else declared.get(key)
                    assert param is not None and param.has_unit, f"{path}: {prefix}{key} = {item!r}"
                    parse_quantity(item, param.dimension, name=key)  # its unit has the declared dimension
                    found += 1

    files = [*ROOT.glob("devices/*.toml"), *ROOT.glob("experiments/**/*.toml")]
    for path in files:
        walk(tomllib.loads(path.read_text(encoding="utf-8")), "", path)
    assert found > 30


def test_derived_tables_keep_their_contents() -> None:
    from stosim.studies.sweep_points import parameter_metadata
    from stosim.studies.training import STO_TIME_KEYS, UNIT_DIMENSIONS

    assert dict(UNIT_DIMENSIONS) == {
        "coupling": "field",
        "current": "current",
        "temperature": "temperature",
        "applied_field": "field",
        "anisotropy_field": "field",
        "duration": "time",
        "dt": "time",
        "transient": "time",
        "dynamical_noise_reference": "time",
        "eval_temperature": "temperature",
    }
    assert STO_TIME_KEYS == {"duration", "dt", "transient"}
    # UNIT_DIMENSIONS is taken when stosim.parameters is imported: the substrates' own parameters carry no unit
    assert not [p.name for p in P.parameters().values() if p.module != P.__name__ and p.has_unit]
    assert parameter_metadata("coupling") == ("Oe", "coupling strength mu")
    assert parameter_metadata("duration", "lorenz96", "mle")[0] != "s" and parameter_metadata("duration")[0] == "s"
    assert parameter_metadata("input_tau", "rate-network", "mle") == ("tau", "rate network input correlation time")
    assert P.attrs("dynamical_snr") == {"units": "dB", "long_name": "dynamical noise SNR"}


def test_the_snr_range_is_that_of_the_physics() -> None:
    from stosim.physics.noise import MAX_NOISE_REFERENCE_S, MIN_NOISE_REFERENCE_S, MIN_SNR_DB

    assert P.get("dynamical_snr").minimum == P.get("observation_snr").minimum == MIN_SNR_DB
    assert P.get("eval_dynamical_snr").minimum == P.get("eval_observation_snr").minimum == MIN_SNR_DB
    ref = P.get("dynamical_noise_reference")
    assert (ref.minimum, ref.maximum) == (MIN_NOISE_REFERENCE_S, MAX_NOISE_REFERENCE_S)


# -- where the tables disagreed --------------------------------------------------------------------------


def test_tmr_ratio_zero_is_refused_everywhere() -> None:
    """TMR ratio: device files and DeviceParameters took (0, 10], the sweep's device overrides [0, 10]. A ratio of
    0 (R_AP = R_P) leaves the TMR voltage without any signal of m: (0, 10] everywhere, refused when the point is
    validated (before, only when the device was built)."""
    from stosim.studies.sweep_points import DeviceOverrides

    with pytest.raises(ValueError, match="tmr_ratio"):
        DeviceOverrides(tmr_ratio=0.0)
    assert DeviceOverrides(tmr_ratio=1e-3).tmr_ratio == 1e-3
    with pytest.raises(ValueError, match="tmr_ratio = 0.0 is out of range"):
        load_device().replace(tmr_ratio=0.0)


def test_applied_field_beyond_10_tesla_is_refused_in_code_as_in_files() -> None:
    """Applied field: files and sweeps took [-1e5, 1e5] Oe (10 T, a laboratory magnet), DeviceParameters any
    finite value; a field in A/m written as Oe (80 times too large) passed in code. [-1e5, 1e5] Oe everywhere."""
    device = load_device()
    assert device.replace(applied_field_oe=-1e5).applied_field_oe == -1e5
    with pytest.raises(
        ValueError, match=r"applied_field = 150000\.0 is out of range; valid: in \[-100000, 100000\] Oe"
    ):
        device.replace(applied_field_oe=1.5e5)


def test_seeds_of_every_point_kind_stop_at_max_seed() -> None:
    """Seed: train points took [0, 2**32 - 1], mle / simulate / ftmle points any integer >= 0 (and the sweep
    spec's seeds [0, 2**32 - 1]); the digits split takes 32-bit seeds only: [0, 2**32 - 1] everywhere."""
    from stosim.studies.sweep_points import point_kinds

    for kind in point_kinds().values():
        assert kind.config.model_fields["seed"].metadata and _bounds(kind.config.model_fields["seed"]) == {
            "ge": 0,
            "le": MAX_SEED,
        }, kind.name


def test_idealized_limits_pass_in_code_only() -> None:
    """alpha = 0 (undamped) and eta = 0 (no spin torque) are idealized limits for analytic checks: accepted by
    DeviceParameters built in code, refused in device files (physical range: (0, 1) and (0, 1])."""
    device = load_device()
    assert device.replace(damping=0.0, polarization=0.0).damping == 0.0
    with pytest.raises(ValueError, match=r"damping = -0\.1 is out of range; valid: in \(0, 1\) \(or 0: the idealized"):
        device.replace(damping=-0.1)
    raw = tomllib.loads((ROOT / "devices" / "seed-pmtj.toml").read_text(encoding="utf-8"))
    raw["free_layer"]["damping"] = 0.0
    with pytest.raises(ValueError, match="damping"):
        DeviceFile.model_validate(raw)


@pytest.mark.parametrize("name", [p.name for p in P.parameters().values() if p.bounded])
def test_contains_agrees_with_the_pydantic_bounds(name: str) -> None:
    param = P.get(name)
    for value in (param.minimum, param.maximum):
        if value is None or math.isinf(value):
            continue
        for x in (value, math.nextafter(value, -math.inf), math.nextafter(value, math.inf)):
            bounds = param.bounds()
            expected = (
                ("gt" not in bounds or x > bounds["gt"])
                and ("ge" not in bounds or x >= bounds["ge"])
                and ("lt" not in bounds or x < bounds["lt"])
                and ("le" not in bounds or x <= bounds["le"])
            )
            assert param.contains(x) == expected, (name, x)
    assert not param.contains(math.nan)


def test_device_parameters_check_every_registered_device_parameter() -> None:
    from stosim.config import DEVICE_FIELDS

    fields = {f for f in DeviceParameters.__dataclass_fields__ if f not in ("name", "reference_direction")}
    assert set(DEVICE_FIELDS) == fields
    assert {p.name for p in P.parameters().values() if p.device_key} == {*DEVICE_FIELDS.values(), "reference_direction"}


def test_unit_strings_of_flags_use_the_registry_dimension(capsys) -> None:
    from stosim.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["simulate", "--coupling", "2 mA", "--out", "x.h5"])
    assert "--coupling: unit 'mA' in '2 mA' is not a field unit" in capsys.readouterr().err
    with pytest.raises(UnitError):
        parse_quantity("2 mA", P.get("coupling").dimension)


# -- errors: the library names parameters, the command line its flags --------------------------------------


def _raise_texts(path: Path) -> list[str]:
    """The string pieces of every ``raise`` statement and module-level string constant of a module."""
    texts = []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) or (isinstance(node, ast.Assign) and node.col_offset == 0):
            for sub in ast.walk(node):
                if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                    texts.append(sub.value)
    return texts


def test_library_errors_name_parameters_not_flags() -> None:
    flag = re.compile(r"(?<![\w-])--[a-z]")
    offenders = []
    for path in sorted((ROOT / "stosim").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel == "stosim/cli.py":
            continue
        offenders += [f"{rel}: {text!r}" for text in _raise_texts(path) if flag.search(text)]
    assert offenders == []


def test_the_cli_maps_parameters_to_its_flags() -> None:
    from stosim.cli import build_parser, cli_message

    parser = build_parser()
    text = "x.h5 exists; pass resume=True to continue it or overwrite=True to replace it"
    assert (
        cli_message(text, parser, "sweep") == "x.h5 exists; pass --resume to continue it or --overwrite to replace it"
    )
    assert cli_message("var='acc': no such variable", parser, "plot") == "--var 'acc': no such variable"
    assert cli_message("allow it: allow_drivers=['a.b:C']", parser, "validate") == "allow it: --allow-driver a.b:C"
    # keys of files stay as they are; a parameter the command has no flag for too
    kept = "W drawn for n=5, density=0.5, seed=3; pass allow_beyond_limits=True"
    assert cli_message(kept, parser, "lyapunov") == kept
    assert cli_message(kept, parser, "train").endswith("pass --allow-beyond-limits")


def test_a_library_error_names_the_parameter_and_the_cli_shows_the_flag(tmp_path: Path, capsys) -> None:
    from stosim.cli import main
    from stosim.datasets import DatasetError, load_dataset

    with pytest.raises(DatasetError, match=r"Get them with download=True") as info:
        load_dataset("mnist", tmp_path / "none")
    assert "--download" not in str(info.value)
    args = ["train", "--substrate", "linear", "--dataset", "mnist", "--data-dir", str(tmp_path / "none")]
    assert main([*args, "--epochs", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "Get them with --download (" in err and "download=True" not in err
