"""The rate-network studies (stosim rnn-study) at a tiny scale: specs validate, every study runs and draws."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stosim.studies.rnn_spectra import STUDIES, StudySpec, load_study, run_study

SPECS = sorted((Path(__file__).resolve().parents[2] / "experiments" / "rnn").glob("*.toml"))

TINY = {
    "discrete-mle-vs-g": {"n": 60, "g": [0.5, 3.0], "duration": 200, "transient": 20, "cross_check_g": [3.0]},
    "continuous-mle-vs-g": {"n": 40, "g": [0.8, 3.0], "duration": 20, "transient": 5},
    "size-scaling": {"n": [10, 20], "g": 3.0, "duration": 20, "transient": 5},
    "rmt": {"n": 12, "duration": 20, "transient": 5, "discrete_duration": 50},
    "input": {"n": 12, "g": 3.0, "input_std": [0.0, 1.0], "duration": 20, "transient": 5},
    "trained": {"n": 8, "iterations": 3, "horizon": 2.0, "duration": 10, "transient": 2},
}


def test_every_study_has_a_spec_that_validates_at_both_scales() -> None:
    assert {load_study(p).study for p in SPECS} == set(STUDIES)
    for p in SPECS:
        spec = load_study(p)
        spec.parameters("reduced")
        spec.parameters("full")


def test_bad_spec_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('study = "size-scaling"\n[reduced]\nn = [10]\ng = -1.0\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"\[reduced\] g"):
        load_study(bad)
    bad.write_text('study = "nope"\n[reduced]\n', encoding="utf-8")
    with pytest.raises(ValueError, match="study"):
        load_study(bad)


@pytest.mark.parametrize("study", STUDIES)
def test_tiny_study_runs(study: str) -> None:
    summary = run_study(StudySpec(study=study, reduced=TINY[study]), "reduced")
    assert summary["study"] == study
    json.dumps(summary, default=float)
    if study == "discrete-mle-vs-g":
        below = summary["rows"][0]
        assert abs(below["fixed_point_deviation"]) < 0.05
    if study == "size-scaling":
        for row in summary["rows"]:
            assert abs(row["sum_minus_divergence"]) < 3 * row["divergence_se"] + 1e-2


def test_cli_rnn_study(tmp_path: Path) -> None:
    from stosim.cli import main

    spec = tmp_path / "s.toml"
    spec.write_text(
        'study = "input"\n[reduced]\nn = 10\ninput_std = [0.0, 0.5]\nduration = 10\ntransient = 2\n', encoding="utf-8"
    )
    assert main(["rnn-study", str(spec), "--out", str(tmp_path / "o"), "--figure", str(tmp_path / "f.png")]) == 0
    assert (tmp_path / "o" / "summary.json").exists() and (tmp_path / "f.png").stat().st_size > 1000
    assert main(["rnn-study", str(spec), "--out", str(tmp_path / "o"), "--scale", "full"]) == 2


@pytest.mark.slow
def test_cli_rnn_study_on_a_dask_cluster_gives_the_serial_result(tmp_path: Path) -> None:
    from stosim.cli import main

    spec = tmp_path / "s.toml"
    spec.write_text(
        'study = "input"\n[reduced]\nn = 10\ninput_std = [0.0, 0.5]\nduration = 10\ntransient = 2\n', encoding="utf-8"
    )
    assert main(["rnn-study", str(spec), "--out", str(tmp_path / "serial")]) == 0
    assert main(["rnn-study", str(spec), "--out", str(tmp_path / "dask"), "--workers", "1"]) == 0
    serial = json.loads((tmp_path / "serial" / "summary.json").read_text())
    dask = json.loads((tmp_path / "dask" / "summary.json").read_text())
    assert serial["rows"] == dask["rows"]


def test_size_scaling_seed_spread_is_the_sample_sd_over_networks() -> None:
    from stosim.analysis.lyapunov import kaplan_yorke_dimension, ks_entropy

    params = {"n": [10, 20], "g": 3.0, "duration": 20, "transient": 5, "time": "discrete"}
    two = run_study(StudySpec(study="size-scaling", reduced={**params, "seeds": [0, 1]}), "reduced")
    for row in two["rows"]:
        n = row["n"]
        spectra = [np.asarray(two["spectra"][f"{n}:{s}"]) for s in (0, 1)]
        dky = [kaplan_yorke_dimension(lam) / n for lam in spectra]
        hks = [ks_entropy(lam) / n for lam in spectra]
        assert row["dky_over_n_seed_sd"] == pytest.approx(abs(dky[0] - dky[1]) / np.sqrt(2), rel=1e-9, abs=1e-12)
        assert row["hks_over_n_seed_sd"] == pytest.approx(abs(hks[0] - hks[1]) / np.sqrt(2), rel=1e-9, abs=1e-12)
    one = run_study(StudySpec(study="size-scaling", reduced=params), "reduced")
    assert all(np.isnan(r["dky_over_n_seed_sd"]) for r in one["rows"])
