"""Noise amplitudes (docs/physics.md section 4).

- SNR in dB: SNR = 10 log10(var(signal) / var(noise)), so a noise standard deviation
  sigma = sqrt(var(signal)) 10^(-SNR/20).
- Dynamical (state) noise, two definitions of the per-step amplitude (docs/physics.md section 4):
  per step (the seed study's, the default): sigma_step = std(state) 10^(-SNR/20) after every step,
  so the same SNR is a different physical noise for each dt (the rms deviation it causes after a
  time T grows like sqrt(T / dt)); per reference time t_ref: a Wiener increment
  sigma_step = std(state) 10^(-SNR/20) sqrt(dt / t_ref), whose accumulated variance after a time T,
  (T / dt) sigma_step^2 = var(state) 10^(-SNR/10) T / t_ref, does not depend on dt. The SNR is then
  that of the noise accumulated over t_ref. After the step each oscillator's state becomes
  m <- (m + s_b xi) / |m + s_b xi| with xi standard normal, s_b = std(m[b]) f (population std
  over the sample's 3N components, f the factor above): :func:`make_state_noise_point`, the one
  definition that the Numba loops and the torch steps both evaluate.
- Thermal field (stochastic LLG): per-component standard deviation
  sigma_th = sqrt(2 alpha k_B T / (gamma M V dt)) in Oe, with k_B in erg/K, M in emu/cm^3,
  V in cm^3, dt in s, gamma in rad/(Oe s).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from stosim.constants import BOLTZMANN_ERG_K

__all__ = [
    "noise_stream",
    "STREAM_INITIAL",
    "STREAM_THERMAL",
    "STREAM_DYNAMICAL",
    "STREAM_OBSERVATION",
    "snr_noise_factor",
    "measured_snr_db",
    "thermal_field_sigma_oe",
    "add_observation_noise",
    "check_snr_db",
    "MIN_SNR_DB",
    "dynamical_step_factor",
    "check_noise_reference_s",
    "MIN_NOISE_REFERENCE_S",
    "MAX_NOISE_REFERENCE_S",
    "observation_noise_scale",
    "make_state_noise_point",
]

# The random streams of one run's seed (NumPy SeedSequence spawn keys). Every engine (Numba loops, torch
# steps, the substrate) draws a noise kind from its stream, so one seed is one realisation whatever the engine.
STREAM_INITIAL = 1
STREAM_THERMAL = 2
STREAM_DYNAMICAL = 3
STREAM_OBSERVATION = 4


def noise_stream(seed: int, stream: int) -> np.random.Generator:
    """The generator of ``stream`` (one of the ``STREAM_*`` keys) under ``seed``:
    ``default_rng(SeedSequence(seed, spawn_key=(stream,)))``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream,)))


MIN_SNR_DB = -100.0  # noise amplitude 1e5 times the signal's: below it the signal is gone (and 10^(-SNR/20) overflows)


def check_snr_db(snr_db: float, name: str) -> float:
    """Validate an SNR in dB: a real number in [MIN_SNR_DB, inf), or +inf for no noise. Returns it as a float.

    Strings, booleans and None are refused (a ValueError naming ``name``), not converted.
    """
    if isinstance(snr_db, bool) or not isinstance(snr_db, numbers.Real):
        raise ValueError(
            f"{name} = {snr_db!r} must be a real number of dB in [{MIN_SNR_DB:g} dB, inf dB] "
            "(a finite number, or inf for no noise)"
        )
    value = float(snr_db)
    if math.isnan(value) or value < MIN_SNR_DB:
        raise ValueError(
            f"{name} = {snr_db!r} dB is out of range; valid: [{MIN_SNR_DB:g} dB, inf dB] "
            "(a finite number, or inf for no noise)"
        )
    return value


def snr_noise_factor(snr_db: float) -> float:
    """sigma_noise / sigma_signal = 10^(-SNR/20)."""
    return 10.0 ** (-snr_db / 20.0)


MIN_NOISE_REFERENCE_S = 1e-18  # 1 as: shorter than any integration step of the LLG
MAX_NOISE_REFERENCE_S = 1.0


def check_noise_reference_s(reference_s: float | None, name: str = "dynamical_noise_reference") -> float | None:
    """Validate the reference time t_ref (s) of the dynamical noise: None (the per-step definition) or a
    finite number in [MIN_NOISE_REFERENCE_S, MAX_NOISE_REFERENCE_S] s. Returns it as a float (or None)."""
    if reference_s is None:
        return None
    if isinstance(reference_s, bool) or not isinstance(reference_s, numbers.Real):
        raise ValueError(
            f"{name} = {reference_s!r} must be a time in s in [{MIN_NOISE_REFERENCE_S:g} s, "
            f"{MAX_NOISE_REFERENCE_S:g} s] (e.g. 1e-12 for 1 ps), or None for the per-step definition"
        )
    value = float(reference_s)
    if not (math.isfinite(value) and MIN_NOISE_REFERENCE_S <= value <= MAX_NOISE_REFERENCE_S):
        raise ValueError(
            f"{name} = {reference_s!r} s is out of range; valid: [{MIN_NOISE_REFERENCE_S:g} s, "
            f"{MAX_NOISE_REFERENCE_S:g} s], or None for the per-step definition"
        )
    return value


def dynamical_step_factor(snr_db: float, dt_s: float, reference_s: float | None = None) -> float:
    """sigma_step / std(state) of the dynamical noise added after each step of ``dt_s`` seconds.

    ``reference_s`` None (per step, the seed study's definition, dt-dependent): 10^(-SNR/20).
    ``reference_s`` = t_ref (s): 10^(-SNR/20) sqrt(dt / t_ref), a Wiener increment of diffusion
    strength D = var(state) 10^(-SNR/10) / t_ref per unit time; the noise accumulated over a time T
    has variance D T for every dt.
    """
    factor = snr_noise_factor(snr_db)
    reference_s = check_noise_reference_s(reference_s)
    if reference_s is None:
        return factor
    if not (math.isfinite(dt_s) and dt_s > 0):
        raise ValueError(f"dt = {dt_s!r} s must be a finite number > 0 s")
    return factor * math.sqrt(dt_s / reference_s)


def make_state_noise_point(sqrt):
    """The dynamical-noise update of one oscillator, for an engine whose square root is ``sqrt``.

    Returns ``state_noise_point(mx, my, mz, s, xi_x, xi_y, xi_z, one) -> (mx', my', mz')`` with
    m' = (m + s xi) / |m + s xi|: plain arithmetic, so the Numba loops (``sqrt = np.sqrt``, compiled
    with ``njit(inline="always")``) and the torch steps (``sqrt = torch.sqrt``, elementwise on
    tensors) run this one body. ``s`` = std(m[b]) f is the sample's noise amplitude (dimensionless,
    f from :func:`dynamical_step_factor`); ``one`` is 1 in the working precision.
    """

    def state_noise_point(mx, my, mz, s, xi_x, xi_y, xi_z, one):
        x = mx + s * xi_x
        y = my + s * xi_y
        z = mz + s * xi_z
        inv = one / sqrt(x * x + y * y + z * z)
        return x * inv, y * inv, z * inv

    return state_noise_point


def measured_snr_db(signal: np.ndarray, noise: np.ndarray) -> float:
    """10 log10(var(signal) / var(noise)) over all samples."""
    return float(10.0 * np.log10(np.var(signal) / np.var(noise)))


def thermal_field_sigma_oe(
    damping: np.ndarray | float,
    temperature_k: float,
    gyromagnetic_ratio: float,
    magnetization_emu_cm3: np.ndarray | float,
    volume_cm3: np.ndarray | float,
    dt_s: float,
) -> np.ndarray:
    """Per-component standard deviation of the thermal field in Oe for one step of dt seconds."""
    if not (temperature_k >= 0 and math.isfinite(temperature_k)):
        raise ValueError(f"temperature = {temperature_k!r} K must be finite and >= 0 K")
    return np.sqrt(
        2.0
        * np.asarray(damping)
        * BOLTZMANN_ERG_K
        * temperature_k
        / (gyromagnetic_ratio * np.asarray(magnetization_emu_cm3) * np.asarray(volume_cm3) * dt_s)
    )


def observation_noise_scale(signal, snr_db: float, sample_axes: int | tuple[int, ...] | None = None):
    """Standard deviation of the observation noise: s = std(x) 10^(-SNR/20), the one definition in stosim.

    ``std(x)`` is the population standard deviation over ``sample_axes`` of ``signal`` (kept as
    size-1 axes so that s broadcasts against the signal): the values of one sample, so that
    var(x_b) / var(noise_b) = 10^(SNR/10) for every sample b and a sample's noise level does not
    depend on the rest of its batch. ``None``: over the whole array (one scale for everything).
    Works on numpy arrays and on torch tensors (no gradient flows through s).
    """
    factor = snr_noise_factor(check_snr_db(snr_db, "snr_db"))
    if hasattr(signal, "detach"):  # torch
        x = signal.detach()
        dims = tuple(range(x.ndim)) if sample_axes is None else sample_axes
        return x.std(dim=dims, unbiased=False, keepdim=True) * factor
    return np.std(signal, axis=sample_axes, keepdims=True) * factor


def add_observation_noise(signal, snr_db: float, rng, *, sample_axes: int | tuple[int, ...] | None = None):
    """y = x + s xi, xi standard normal, s = :func:`observation_noise_scale` over ``sample_axes``.

    numpy: ``rng`` a ``numpy.random.Generator``; the noise has the floating dtype of ``signal``
    (float64 for an integer signal, whose noise must not be truncated to integers).
    torch: ``rng`` a ``torch.Generator`` (or None: torch's global one); noise of the signal's dtype
    and device, drawn the same whether or not autograd records a graph.
    ``snr_db`` is checked with :func:`check_snr_db` (+inf: no noise, the signal is returned).
    """
    snr_db = check_snr_db(snr_db, "snr_db")
    if math.isinf(snr_db):
        return signal
    if hasattr(signal, "detach"):  # torch
        import torch

        xi = torch.randn(signal.shape, generator=rng, dtype=signal.dtype, device=signal.device)
        return signal + observation_noise_scale(signal, snr_db, sample_axes) * xi
    signal = np.asarray(signal)
    dtype = signal.dtype if np.issubdtype(signal.dtype, np.floating) else np.dtype(np.float64)
    sigma = observation_noise_scale(signal.astype(dtype, copy=False), snr_db, sample_axes)
    return signal + sigma * rng.standard_normal(signal.shape).astype(dtype, copy=False)
