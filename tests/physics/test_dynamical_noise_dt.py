"""Dynamical noise with a reference time t_ref is a Wiener increment: its effect after a time T does not
depend on the integration step dt; the seed study's per-step definition does (docs/physics.md section 4).

Statistic: the rms deviation of the final state m(T) from the noise-free trajectory at the same dt, over
B independent noisy samples of one initial state (float64). With small noise the deviation is linear in
the noise, so its mean square is a sum of B independent terms: relative standard error of the rms about
sqrt(1 / (2 B_eff)) with B_eff >= B = 400 samples, below 3.6 %; the tolerance of 12 % on the ratio of two
rms values is more than 2 standard errors of the ratio (sqrt(2) x 3.6 % = 5 %). Per step, the rms grows
like sqrt(T / dt): a factor 2 between dt and dt / 4, far outside the tolerance.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stosim.physics.array import STOArray
from stosim.physics.noise import dynamical_step_factor
from stosim.simulation import NoiseSettings, evolve, simulate
from stosim.substrates.sto_array import CoupledSTOArray

N, COUPLING_OE, BATCH = 4, 100.0, 400
DURATION_S, DT_S, REFERENCE_S = 24e-12, 1e-12, 1e-12
SNR_DB = 40.0
TORCH_DURATION_S = 8e-12  # shorter on the torch path (one autograd graph node per operation and step)
TOLERANCE = 0.12  # relative, on the ratio of rms deviations (see the module docstring)


def _initial(batch: int) -> np.ndarray:
    v = np.random.default_rng(3).standard_normal((N, 3))
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    return np.repeat(v[None], batch, axis=0)


def _rms_numba(array: STOArray, dt_s: float, reference_s: float | None, seed: int = 5) -> float:
    n_steps = round(DURATION_S / dt_s)
    m0 = _initial(BATCH)
    clean, _, _ = evolve(array, m0[:1], n_steps, dt_s)
    noisy, _, _ = evolve(
        array,
        m0,
        n_steps,
        dt_s,
        seed=seed,
        noise=NoiseSettings(dynamical_snr_db=SNR_DB, dynamical_noise_reference_s=reference_s),
    )
    return float(np.sqrt(np.mean((noisy - clean) ** 2)))


def _rms_torch(dt_s: float, reference_s: float | None, duration_s: float = TORCH_DURATION_S) -> float:
    kw = {"n": N, "coupling_oe": COUPLING_OE, "duration_s": duration_s, "dt_s": dt_s, "seed": 1}
    noisy_sub = CoupledSTOArray(**kw, dynamical_snr_db=SNR_DB, dynamical_noise_reference_s=reference_s)
    clean_sub = CoupledSTOArray(**kw)
    x0 = torch.as_tensor(_initial(BATCH).reshape(BATCH, -1))
    with torch.no_grad():
        clean = clean_sub.evolve(x0[:1])
    noisy = noisy_sub.evolve(x0.clone().requires_grad_(True)).detach()  # the differentiable torch path
    return float(torch.sqrt(torch.mean((noisy - clean) ** 2)))


@pytest.fixture(scope="module")
def array(device) -> STOArray:
    return STOArray.generate(device, N, COUPLING_OE, seed=1)


def _expected_rms(duration_s: float = DURATION_S) -> float:
    """Pure diffusion estimate: accumulated variance var(m) 10^(-SNR/10) T / t_ref per component, 2/3 of it
    tangent to the sphere (the radial part is removed by the projection); var(m) of a unit 3-vector
    array is about 1/3. Dynamics (precession, damping, coupling) change it by a factor of order one."""
    return math.sqrt(2 / 3 * (1 / 3) * 10 ** (-SNR_DB / 10) * duration_s / REFERENCE_S)


def test_reference_time_noise_is_independent_of_dt_numba(array):
    rms = [_rms_numba(array, DT_S / k, REFERENCE_S) for k in (1, 2, 4)]
    assert 0.3 * _expected_rms() < rms[0] < 3 * _expected_rms()  # the noise is on, at the expected order
    for value in rms[1:]:
        assert abs(value / rms[0] - 1) < TOLERANCE, rms


def test_per_step_noise_depends_on_dt_numba(array):
    """The seed study's definition (the default): rms ~ sqrt(T / dt), ratio 2 between dt and dt / 4."""
    coarse, fine = _rms_numba(array, DT_S, None), _rms_numba(array, DT_S / 4, None)
    assert abs(fine / coarse - 2.0) < 2 * TOLERANCE, (coarse, fine)
    assert fine / coarse > 1 + 3 * TOLERANCE  # the dt-independence check above would fail on it


def test_reference_time_noise_is_independent_of_dt_torch():
    rms = [_rms_torch(DT_S / k, REFERENCE_S) for k in (1, 2, 4)]
    assert 0.3 * _expected_rms(TORCH_DURATION_S) < rms[0] < 3 * _expected_rms(TORCH_DURATION_S)
    for value in rms[1:]:
        assert abs(value / rms[0] - 1) < TOLERANCE, rms
    per_step = [_rms_torch(DT_S / k, None) for k in (1, 4)]
    assert per_step[1] / per_step[0] > 1 + 3 * TOLERANCE, per_step


def test_reference_equal_to_dt_is_the_per_step_definition(array):
    """t_ref = dt gives exactly the per-step noise (same random stream): the factor sqrt(dt / t_ref) = 1."""
    assert dynamical_step_factor(SNR_DB, DT_S, DT_S) == dynamical_step_factor(SNR_DB, DT_S, None)
    assert _rms_numba(array, DT_S, DT_S) == _rms_numba(array, DT_S, None)
    assert dynamical_step_factor(20.0, 0.25e-12, 1e-12) == pytest.approx(0.1 * 0.5, rel=1e-15)


def test_measured_snr_reports_the_reference_definition(array):
    """simulate reports the SNR of the noise accumulated over t_ref: the setting, for both definitions."""
    m0 = _initial(1)[0]
    for dt_s, reference_s in ((1e-12, None), (0.25e-12, 1e-12), (0.5e-12, 4e-12)):
        traj = simulate(
            array,
            m0,
            200e-12,
            dt_s,
            save_every=100,
            dynamical_snr_db=20.0,
            dynamical_noise_reference_s=reference_s,
            seed=2,
        )
        assert traj.measured_dynamical_snr_db == pytest.approx(20.0, abs=0.3)


@pytest.mark.parametrize("bad", [0.0, -1e-12, float("nan"), float("inf"), 2.0, "1 ps", True])
def test_bad_reference_is_refused(bad):
    with pytest.raises(ValueError, match="dynamical_noise_reference"):
        NoiseSettings(dynamical_snr_db=20.0, dynamical_noise_reference_s=bad)


def test_train_config_accepts_a_reference_with_unit():
    from stosim.studies.training import ConfigError, validate_train_config

    cfg = validate_train_config({"substrate": "sto", "dynamical_snr": 30.0, "dynamical_noise_reference": "1 ps"})
    assert cfg.dynamical_noise_reference == pytest.approx(1e-12)
    with pytest.raises(ConfigError, match="dynamical_noise_reference"):
        validate_train_config({"dynamical_noise_reference": "-1 ps"})


def test_reference_reaches_the_substrate_and_the_cli(tmp_path, capsys):
    import json

    from stosim.cli import main
    from stosim.studies.training import build_model, validate_train_config

    cfg = validate_train_config(
        {
            "substrate": "deep-sto",
            "n": 4,
            "dynamical_snr": 30.0,
            "dynamical_noise_reference": "2 ps",
            "duration": "10 ps",
        }
    )
    model = build_model(cfg, 64, 10, (8, 8))
    for sub in (model.first, model.second):
        assert sub.noise.dynamical_noise_reference_s == pytest.approx(2e-12)
        assert sub.read_configuration()["dynamical_noise_reference_s"] == pytest.approx(2e-12)
    out = tmp_path / "t.h5"
    assert (
        main(
            [
                "simulate",
                "--n",
                "4",
                "--duration",
                "100 ps",
                "--dt",
                "0.5 ps",
                "--dynamical-snr",
                "20",
                "--dynamical-noise-reference",
                "1 ps",
                "--out",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["measured_dynamical_snr_db"] == pytest.approx(20.0, abs=0.5)
    assert (
        main(
            [
                "simulate",
                "--n",
                "4",
                "--duration",
                "10 ps",
                "--dynamical-snr",
                "20",
                "--dynamical-noise-reference",
                "-1 ps",
                "--out",
                str(tmp_path / "u.h5"),
            ]
        )
        == 2
    )


def test_sweep_specs_take_the_reference_with_a_unit():
    from stosim.sweep import SpecError, parse_spec, resolve_spec

    raw = {
        "name": "ref",
        "kind": "simulate",
        "base": {"n": 4, "duration": "20 ps", "dynamical_snr": 30.0},
        "grid": {"dynamical_noise_reference": ["1 ps", "4 ps"]},
    }
    sweep = resolve_spec(parse_spec(raw))
    dim = next(d for d in sweep.dims if d.name == "dynamical_noise_reference")
    np.testing.assert_allclose(dim.values.astype(float), [1e-12, 4e-12])
    assert dim.attrs["units"] == "s"
    bad = {**raw, "grid": {"dynamical_noise_reference": [1e-12]}}
    with pytest.raises((SpecError, ValueError), match="dynamical_noise_reference"):
        resolve_spec(parse_spec(bad))
