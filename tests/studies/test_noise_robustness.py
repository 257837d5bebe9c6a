"""Evaluating a trained coupled-STO model at other noise levels: CoupledSTOArray.set_noise,
studies.noise_robustness.accuracy_under_noise and the ``noise`` sweep kind."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import xarray as xr

from stosim.studies.noise_robustness import accuracy_under_noise, sto_substrates
from stosim.studies.sweep_points import execute_point
from stosim.studies.training import TrainConfig, evaluate_accuracy, train
from stosim.substrates.sto_array import CoupledSTOArray
from stosim.sweep import SpecError, parse_spec, resolve_spec

SMALL = dict(n=6, duration="20 ps", dt="1 ps", seed=3)


def _state(batch: int = 5, n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.as_tensor(np.random.default_rng(seed).standard_normal((batch, 3 * n)))


@pytest.mark.parametrize(
    "settings",
    [
        {"temperature": "300 K"},
        {"dynamical_snr_db": 10.0},
        {"dynamical_snr_db": 10.0, "dynamical_noise_reference_s": 20e-12},
        {"observation_snr_db": 5.0},
    ],
)
def test_set_noise_equals_a_substrate_built_with_that_noise(settings):
    """A noiseless substrate given the noise by set_noise evolves and reads out exactly as one constructed
    with it (same W, thermal sigma, streams): the evaluation path is the constructor's physics."""
    built = CoupledSTOArray(**SMALL, **settings)
    changed = CoupledSTOArray(**SMALL)
    kw = {k: v for k, v in settings.items() if k != "temperature"}
    if "temperature" in settings:
        kw["temperature_k"] = 300.0
    changed.set_noise(**kw)
    assert torch.equal(built.thermal_sigma_oe, changed.thermal_sigma_oe)
    assert changed.noise == built.noise and changed.observation_snr_db == built.observation_snr_db
    x = _state()
    for sub in (built, changed):
        sub.reset(11)
    with torch.no_grad():
        a = built.readout(built.evolve(built.initial_state(x)))
        b = changed.readout(changed.evolve(changed.initial_state(x)))
    assert torch.equal(a, b)
    assert not torch.equal(a, CoupledSTOArray(**SMALL).evolve(CoupledSTOArray(**SMALL).initial_state(x)))


def test_set_noise_back_to_none_is_noiseless_and_thermal_sigma_scales_as_sqrt_t():
    sub = CoupledSTOArray(**SMALL, temperature="300 K")
    sigma_300 = sub.thermal_sigma_oe.clone()
    sub.set_noise(temperature_k=1200.0)
    # sigma = sqrt(2 alpha k_B T / (gamma M V dt)): 4x the temperature, 2x the field
    np.testing.assert_allclose(sub.thermal_sigma_oe.numpy(), 2.0 * sigma_300.numpy(), rtol=1e-12)
    sub.set_noise()
    assert not sub.noise_on and float(sub.thermal_sigma_oe.abs().max()) == 0.0
    x = _state()
    with torch.no_grad():
        ref = CoupledSTOArray(**SMALL)
        assert torch.equal(sub.evolve(sub.initial_state(x)), ref.evolve(ref.initial_state(x)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature_k": -1.0}, "temperature = -1.0 K must be finite and in [0, 1e4] K"),
        ({"dynamical_snr_db": math.nan}, "dynamical_snr = nan dB is out of range"),
        ({"observation_snr_db": "20"}, "observation_snr = '20' must be a real number of dB"),
    ],
)
def test_set_noise_refuses_bad_levels_naming_the_parameter(kwargs, message):
    sub = CoupledSTOArray(**SMALL)
    with pytest.raises(ValueError) as err:
        sub.set_noise(**kwargs)
    assert message in str(err.value)
    assert not sub.noise_on  # nothing was changed


@pytest.fixture(scope="module")
def trained():
    cfg = TrainConfig(
        substrate="sto", dataset="digits", n=8, duration="30 ps", dt="1 ps", epochs=2, lr=0.05, limit_train=300,
        limit_test=200, seed=1, observation_snr=20.0, train_with_noise=False,
    )  # fmt: skip
    result = train(cfg)
    from stosim.datasets import load_dataset
    from stosim.studies.training import model_inputs

    _, test = load_dataset("digits", None, False, seed=1, limit_test=200)
    x = model_inputs(cfg, test, torch.float64)
    y = torch.as_tensor(test.labels, dtype=torch.int64)
    return result.model, x, y


def test_accuracy_under_noise_levels_restore_and_repeat(trained):
    model, x, y = trained
    sub = sto_substrates(model)[0]
    before = (sub.noise, sub.observation_snr_db, sub.thermal_sigma_oe.clone(), sub.noise_enabled)
    with sub.noise_suspended():
        clean = evaluate_accuracy(model, x, y, 256)
    acc = accuracy_under_noise(model, x, y, "observation", [math.inf, -40.0, 10.0], seed=5)
    assert acc[0] == clean  # inf dB: no noise
    assert acc[1] < 0.3 < clean  # noise 100x the signal's amplitude: near chance (10 classes)
    assert np.array_equal(acc, accuracy_under_noise(model, x, y, "observation", [math.inf, -40.0, 10.0], seed=5))
    dyn = accuracy_under_noise(model, x, y, "dynamical", [math.inf, -30.0], dynamical_noise_reference_s=30e-12)
    assert dyn[0] == clean and dyn[1] < 0.3
    hot = accuracy_under_noise(model, x, y, "thermal", [0.0, 300.0])
    assert hot[0] == clean and abs(hot[1] - clean) <= 0.1
    after = (sub.noise, sub.observation_snr_db, sub.thermal_sigma_oe, sub.noise_enabled)
    assert after[:2] == before[:2] and torch.equal(after[2], before[2]) and after[3] == before[3]


def test_accuracy_under_noise_at_a_level_is_the_model_built_with_that_level(trained):
    """The level is applied as the substrate's own noise: one evaluation equals a model whose substrate was
    given that noise and the same stream seed by hand."""
    model, x, y = trained
    sub = sto_substrates(model)[0]
    acc = accuracy_under_noise(model, x, y, "dynamical", [0.0], dynamical_noise_reference_s=30e-12, seed=7)
    sub.set_noise(dynamical_snr_db=0.0, dynamical_noise_reference_s=30e-12)
    sub.reset(int(np.random.SeedSequence(7, spawn_key=(1, 0, 0)).generate_state(1)[0]))
    try:
        assert evaluate_accuracy(model, x, y, 256) == acc[0]
    finally:
        sub.set_noise(observation_snr_db=20.0)


def test_accuracy_under_noise_refuses_bad_input(trained):
    model, x, y = trained
    with pytest.raises(ValueError, match="kind = 'shot'; valid: observation, dynamical, thermal"):
        accuracy_under_noise(model, x, y, "shot", [1.0])
    with pytest.raises(ValueError, match="temperature = 20000.0 K must be finite and in"):
        accuracy_under_noise(model, x, y, "thermal", [20000.0])
    with pytest.raises(ValueError, match="needs a model with a coupled-STO substrate"):
        accuracy_under_noise(torch.nn.Linear(3, 2), x, y, "thermal", [1.0])


# -- the sweep kind ----------------------------------------------------------------------------------------
NOISE_SPEC = {
    "name": "noise-test",
    "kind": "noise",
    "seeds": [0],
    "base": {
        "dataset": "digits", "n": 4, "duration": "10 ps", "dt": "1 ps", "epochs": 1, "limit_train": 60,
        "limit_test": 40, "train_with_noise": False, "eval_observation_snr": [-40, "10 dB", "inf dB"],
        "eval_temperature": ["0 K", "300 K"],
    },
    "grid": {"coupling": ["1 Oe", "500 Oe"]},
}  # fmt: skip


def test_noise_spec_resolves_with_level_dimensions_in_internal_units():
    sweep = resolve_spec(parse_spec(NOISE_SPEC, "spec.toml"), source="spec.toml")
    dims = {d.name: d for d in sweep.extra_dims}
    assert dims["eval_observation_snr"].values.tolist() == [-40.0, 10.0, math.inf]
    assert dims["eval_temperature"].values.tolist() == [0.0, 300.0]
    assert dims["eval_temperature"].attrs["units"] == "K" and "eval_dynamical_snr" not in dims
    names = {o.name for o in sweep.outputs}
    assert {"accuracy_vs_observation_snr", "accuracy_vs_temperature", "test_accuracy_noiseless"} <= names
    assert "accuracy_vs_dynamical_snr" not in names


@pytest.mark.parametrize(
    "change, message",
    [
        ({"grid": {"eval_temperature": [["0 K"], ["1 K"]]}}, "grid.eval_temperature"),
        ({"base": {**NOISE_SPEC["base"], "eval_temperature": [0, 1]}}, "base.eval_temperature: 0"),
        ({"base": {**NOISE_SPEC["base"], "eval_observation_snr": [10, 10]}}, "levels must be distinct"),
        ({"base": {**NOISE_SPEC["base"], "eval_observation_snr": [-200]}}, "eval_observation_snr = -200"),
        ({"base": {**NOISE_SPEC["base"], "eval_temperature": ["2e4 K"]}}, "less than or equal to 10000"),
        (
            {"base": {"dataset": "digits", "substrate": "ffesn", "eval_temperature": ["0 K"]}, "grid": {}},
            "noise points evaluate coupled-STO",
        ),
    ],
)
def test_bad_noise_specs_name_the_key(change, message):
    with pytest.raises(SpecError) as err:
        resolve_spec(parse_spec({**NOISE_SPEC, **change}, "spec.toml"), source="spec.toml")
    assert message in str(err.value)


def test_noise_point_trains_once_and_evaluates_every_level():
    config = {
        "dataset": "digits", "n": 6, "duration": 20e-12, "dt": 1e-12, "epochs": 1, "limit_train": 200,
        "limit_test": 100, "lr": 0.05, "train_with_noise": False, "coupling": 500.0, "seed": 2,
        "eval_observation_snr": [-40.0, math.inf], "eval_dynamical_snr": [math.inf],
        "eval_temperature": [0.0], "dynamical_noise_reference": 20e-12,
    }  # fmt: skip
    out = execute_point("noise", config)
    assert out["status"] == "done", out.get("error")
    v = out["values"]
    clean = v["test_accuracy_noiseless"]
    assert v["test_accuracy"] == clean  # trained and tested without noise (none configured)
    assert v["accuracy_vs_observation_snr"][1] == clean and v["accuracy_vs_observation_snr"][0] < clean
    assert v["accuracy_vs_dynamical_snr"].tolist() == [clean] and v["accuracy_vs_temperature"].tolist() == [clean]
    plain = execute_point("train", {k: c for k, c in config.items() if not k.startswith("eval_")})
    assert plain["values"]["test_accuracy"] == clean  # the same training as a train point


def test_noise_sweep_file_holds_the_curves(tmp_path):
    from stosim.sweep import run_sweep

    spec = {**NOISE_SPEC, "base": {**NOISE_SPEC["base"], "eval_temperature": ["0 K"]}}
    spec["grid"] = {"coupling": ["500 Oe"]}
    out = tmp_path / "n.h5"
    summary = run_sweep(resolve_spec(parse_spec(spec, "spec.toml"), source="spec.toml"), out, workers=1)
    assert summary.n_done == 1
    with xr.open_dataset(out, engine="h5netcdf") as ds:
        curve = ds["accuracy_vs_observation_snr"]
        assert curve.dims == ("coupling", "seed", "eval_observation_snr") and curve.attrs["units"] == "%"
        clean = float(ds["test_accuracy_noiseless"].squeeze())
        assert float(curve.sel(eval_observation_snr=math.inf).squeeze()) == clean
        # the figure and the table of experiments/noise/RESULTS.md from it (one seed: std 0)
        from stosim.sweep.noise_figure import noise_table, plot_noise_kind

        png = plot_noise_kind(ds, None, "observation", tmp_path / "noise.png")
        assert png.stat().st_size > 10_000
        table = noise_table([ds], "observation")
        row = table.splitlines()[-1]
        assert row.startswith("| mu = 500 Oe, trained without noise |")
        assert row.endswith(f"| {clean:.1f} +/- 0.0 |")


def test_noise_points_get_the_checks_of_a_training_run():
    """A noise point trains as a train point does: the run's own checks (duration a whole multiple of dt)
    refuse it before any worker starts."""
    spec = {**NOISE_SPEC, "base": {**NOISE_SPEC["base"], "dt": "10 ps", "duration": "25 ps"}}
    with pytest.raises(SpecError, match="whole multiple"):
        resolve_spec(parse_spec(spec, "spec.toml"), source="spec.toml")


def test_noise_table_counts_finished_seeds_only():
    """A sweep still running: a seed not yet finished (NaN) is neither averaged nor counted; a coupling with no
    finished seed gets no row."""
    import json

    from stosim.sweep.noise_figure import noise_curves, noise_table

    acc = np.full((2, 2, 2), np.nan)  # coupling x seed x level
    acc[1, 0] = [80.0, 90.0]
    ds = xr.Dataset(
        {"accuracy_vs_observation_snr": (("coupling", "seed", "eval_observation_snr"), acc)},
        coords={"coupling": [1.0, 500.0], "seed": [0, 1], "eval_observation_snr": [0.0, 10.0]},
        attrs={"sweep_spec_json": json.dumps({"base": {"train_with_noise": False}})},
    )
    curves = noise_curves(ds, "observation")
    assert curves[1.0][3] == 0 and curves[500.0][3] == 1
    rows = noise_table([ds], "observation").splitlines()[4:]
    assert rows == ["| mu = 500 Oe, trained without noise (1 of 2 seeds) | 80.0 +/- 0.0 | 90.0 +/- 0.0 |"]
