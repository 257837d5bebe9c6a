"""Noise and device-to-device variability in the coupled STO reservoir."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stosim.physics.array import STOArray, Variability
from stosim.studies.training import TrainConfig, train
from stosim.substrates.sto_array import CoupledSTOArray

SMALL = dict(dataset="digits", limit_train=150, limit_test=60, batch_size=50, n=8, duration="20 ps", epochs=2)


def _readin(n: int, batch: int = 4) -> torch.Tensor:
    return torch.randn(batch, 3 * n, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


def test_zero_noise_reproduces_the_noiseless_run_exactly():
    clean = CoupledSTOArray(n=10, duration_s=50e-12, seed=2)
    zero = CoupledSTOArray(
        n=10,
        duration_s=50e-12,
        seed=2,
        temperature_k=0.0,
        dynamical_snr_db=float("inf"),
        observation_snr_db=float("inf"),
        variability=0.0,
    )
    u = _readin(10)
    np.testing.assert_array_equal(clean(u).numpy(), zero(u).numpy())


def test_readout_observation_noise_has_the_requested_snr():
    sub = CoupledSTOArray(n=50, duration_s=20e-12, seed=1, observation_snr_db=15.0)
    u = _readin(50, batch=64)
    sub.reset(0)
    with torch.no_grad():
        noisy = sub(u)
        with sub.noise_suspended():
            clean = sub(u)
    measured = 10 * np.log10(clean.var(unbiased=False).item() / (noisy - clean).var(unbiased=False).item())
    assert measured == pytest.approx(15.0, abs=0.2)


def test_variability_zero_gives_identical_devices_and_spread_is_as_requested(device):
    none = STOArray.generate(device, 300, 100.0, seed=0).oscillator_parameters()
    zero = STOArray.generate(device, 300, 100.0, seed=0, variability=Variability.uniform(0.0)).oscillator_parameters()
    np.testing.assert_array_equal(none, zero)
    assert np.all(none == none[:, :1])  # every oscillator the same device
    varied = STOArray.generate(device, 300, 100.0, seed=0, variability=Variability.uniform(0.05, seed=4))
    table = varied.oscillator_parameters()
    alpha = table[3] / device.damping
    torque = table[2] / none[2]
    assert np.std(alpha) == pytest.approx(0.05, rel=0.15)  # 300 draws: std known to ~4 % (1 sigma)
    assert np.std(torque) == pytest.approx(0.05, rel=0.15)
    h_k = table[1] + 4 * np.pi * device.saturation_magnetization_emu_cm3
    assert np.std(h_k / device.anisotropy_field_oe) == pytest.approx(0.05, rel=0.15)
    again = STOArray.generate(device, 300, 100.0, seed=0, variability=Variability.uniform(0.05, seed=4))
    np.testing.assert_array_equal(table, again.oscillator_parameters())
    with pytest.raises(ValueError, match=r"variability of damping = 0.9"):
        Variability(damping=0.9)
    # a current spread of 0.5 draws factors 1 + 0.5 xi <= 0 among 200 devices: refused, not a reversed current
    with pytest.raises(ValueError, match="reversed current"):
        STOArray.generate(device, 200, 100.0, seed=0, variability=Variability(current=0.5))


@pytest.mark.parametrize("key", ["observation_snr_db", "dynamical_snr_db"])
def test_snr_out_of_range_names_the_key_and_range(key):
    name = key.removesuffix("_db")
    for bad in (float("nan"), -1e4, float("-inf")):
        with pytest.raises(ValueError, match=rf"{name} = .* dB is out of range; valid: \[-100 dB, inf dB\]"):
            CoupledSTOArray(n=4, duration_s=10e-12, **{key: bad})
    CoupledSTOArray(n=4, duration_s=10e-12, **{key: -100.0})  # the limit itself is valid
    with pytest.raises(ValueError, match=r"seed = -1 must be an integer >= 0"):
        CoupledSTOArray(n=4, duration_s=10e-12, seed=-1)


def test_noiseless_training_evaluated_under_noise():
    noisy_cfg = dict(SMALL, temperature=300.0, dynamical_snr=10.0, observation_snr=5.0)
    plain = train(TrainConfig(**SMALL))
    quiet = train(TrainConfig(**noisy_cfg, train_with_noise=False))
    trained = [k for k, _ in plain.model.named_parameters()]
    for k in trained:  # trained without noise: the same weights
        assert torch.equal(plain.model.state_dict()[k], quiet.model.state_dict()[k]), k
    # the final train accuracy is measured under noise too, so it differs from the noiseless run
    noisy = train(TrainConfig(**noisy_cfg))
    assert any(not torch.equal(plain.model.state_dict()[k], noisy.model.state_dict()[k]) for k in trained)


def test_a_too_large_step_is_refused_when_the_layer_is_built():
    # also for the noisy gradient path, which integrates in torch and never reaches the Numba entry checks
    with pytest.raises(ValueError, match=r"dt = 1e-10 s is too large for this array"):
        CoupledSTOArray(n=10, duration_s=1e-9, dt_s=1e-10, temperature_k=300.0)


def test_observation_noise_level_is_per_sample_not_per_batch():
    """y_b = x_b + s_b xi, s_b = std(x_b) 10^(-SNR/20): each sample's SNR is the requested one, whatever
    the other samples of its batch. Sample 0 is random (var over its 600 components ~ 1/3); the other 63
    all point along (1, 1, 1)/sqrt(3), so the variance over the whole batch is ~0.01, 15 dB below it."""
    n, snr = 200, 20.0
    sub = CoupledSTOArray(n=n, duration_s=10e-12, seed=0, observation_snr_db=snr)
    rng = torch.Generator().manual_seed(5)
    first = sub.initial_state(torch.randn(1, 3 * n, dtype=torch.float64, generator=rng))
    aligned = torch.full((63, 3 * n), 3.0**-0.5, dtype=torch.float64)
    for batch in (first, torch.cat([first, aligned])):
        sub.reset(0)
        noise = sub.readout(batch)[0] - batch[0]
        measured = 10 * np.log10(batch[0].var(unbiased=False).item() / noise.var(unbiased=False).item())
        # 600 draws: the noise variance is known to sqrt(2/600) = 5.8 % (0.25 dB) at 1 sigma; allow 4 sigma
        assert measured == pytest.approx(snr, abs=1.0)


def test_evolve_uses_the_directions_of_the_state_on_every_path():
    """evolve(c m) = evolve(m) for c > 0 on the Numba, Numba-adjoint and noisy torch paths (the map acts on
    directions, as sto_jvp does); rounding of one extra division: 1e-14 absolute on unit vectors."""
    u = _readin(4, batch=3)
    for kwargs in ({}, {"temperature_k": 300.0, "dynamical_snr_db": 30.0}):
        sub = CoupledSTOArray(n=4, duration_s=10e-12, seed=1, **kwargs)
        m = sub.initial_state(u)
        scale = torch.tensor([0.5, 2.0, 7.0], dtype=torch.float64)[:, None]
        for graph in (False, True):
            sub.reset(3)
            unit = sub.evolve(m.clone().requires_grad_(graph)).detach()
            sub.reset(3)
            scaled = sub.evolve((scale * m).requires_grad_(graph)).detach()
            np.testing.assert_allclose(scaled.numpy(), unit.numpy(), rtol=0, atol=1e-14)


def test_zero_state_on_the_noisy_gradient_path_raises():
    sub = CoupledSTOArray(n=4, duration_s=10e-12, seed=1, temperature_k=300.0)
    with pytest.raises(ValueError, match=r"sample 0, oscillator 0 is the zero vector"):
        sub.evolve(torch.zeros(2, 12, dtype=torch.float64, requires_grad=True))


def test_infinite_snr_is_not_stochastic():
    sub = CoupledSTOArray(n=4, duration_s=10e-12, dynamical_snr_db=float("inf"), observation_snr_db=float("inf"))
    assert not sub.capabilities.stochastic
    assert CoupledSTOArray(n=4, duration_s=10e-12, observation_snr_db=40.0).capabilities.stochastic
    assert CoupledSTOArray(n=4, duration_s=10e-12, dynamical_snr_db=40.0).capabilities.stochastic


@pytest.mark.parametrize("key", ["observation_snr_db", "dynamical_snr_db"])
@pytest.mark.parametrize("bad", ["20", True])
def test_snr_that_is_not_a_number_is_refused_at_construction(key, bad):
    # refused when the layer is built, not a TypeError (or 1 dB for True) at the first forward pass
    with pytest.raises(ValueError, match=rf"{key.removesuffix('_db')} = .* must be a real number of dB"):
        CoupledSTOArray(n=4, duration_s=10e-12, **{key: bad})


def test_add_observation_noise_has_the_snr_for_integer_signals_and_checks_the_snr():
    from stosim.physics.noise import add_observation_noise

    signal = np.arange(100_000) % 7  # int64, var = 4
    noisy = add_observation_noise(signal, 20.0, np.random.default_rng(0))
    assert noisy.dtype == np.float64
    measured = 10 * np.log10(np.var(signal) / np.var(noisy - signal))
    # 1e5 draws: the noise variance is known to 0.45 % (0.02 dB) at 1 sigma; allow 5 sigma
    assert measured == pytest.approx(20.0, abs=0.1)
    f32 = add_observation_noise(signal.astype(np.float32), 20.0, np.random.default_rng(0))
    assert f32.dtype == np.float32
    with pytest.raises(ValueError, match=r"snr_db = nan dB is out of range"):
        add_observation_noise(signal.astype(np.float64), float("nan"), np.random.default_rng(0))
