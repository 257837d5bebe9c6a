"""Test accuracy of a trained model at noise levels other than those it was trained with.

A model trained once (noiselessly, or with some noise) is evaluated on the test set with one kind of
noise at a time on every coupled-STO substrate of the model (the plain reservoir, the deep and CNN
variants), the other kinds off:

- observation noise at an SNR in dB (on the 3N readout components of each sample);
- dynamical noise at an SNR in dB, per integration step or, with ``dynamical_noise_reference_s`` = t_ref,
  the SNR of the noise accumulated over t_ref (independent of dt; docs/physics.md section 4);
- the thermal field at a temperature in K (stochastic Heun).

Each level is evaluated with its own seeded noise realisation (``seed``, the kind and the level's index),
so an evaluation is reproducible; the model's own noise settings are restored afterwards.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Sequence

import numpy as np
import torch

from stosim.substrates.sto_array import CoupledSTOArray

__all__ = ["NoiseKind", "NOISE_KINDS", "sto_substrates", "accuracy_under_noise"]

NoiseKind = Literal["observation", "dynamical", "thermal"]
NOISE_KINDS: tuple[NoiseKind, ...] = ("observation", "dynamical", "thermal")
_KIND_INDEX = {kind: k for k, kind in enumerate(NOISE_KINDS)}


def sto_substrates(model: torch.nn.Module) -> list[CoupledSTOArray]:
    """The coupled-STO substrates of ``model`` (one for the plain and CNN models, two for the deep one)."""
    return [m for m in model.modules() if isinstance(m, CoupledSTOArray)]


@dataclasses.dataclass(frozen=True)
class _Saved:
    settings: dict
    enabled: bool


def _settings(sub: CoupledSTOArray) -> dict:
    return {
        "temperature_k": sub.noise.temperature_k,
        "dynamical_snr_db": sub.noise.dynamical_snr_db,
        "dynamical_noise_reference_s": sub.noise.dynamical_noise_reference_s,
        "observation_snr_db": sub.observation_snr_db,
    }


def _level_settings(kind: NoiseKind, level: float, reference_s: float | None) -> dict:
    if kind == "observation":
        return {"observation_snr_db": float(level)}
    if kind == "dynamical":
        return {"dynamical_snr_db": float(level), "dynamical_noise_reference_s": reference_s}
    if kind == "thermal":
        return {"temperature_k": float(level)}
    raise ValueError(f"kind = {kind!r}; valid: {', '.join(NOISE_KINDS)}")


def accuracy_under_noise(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    kind: NoiseKind,
    levels: Sequence[float],
    *,
    dynamical_noise_reference_s: float | None = None,
    seed: int = 0,
    batch_size: int = 256,
) -> np.ndarray:
    """Fraction of ``x`` classified as ``y`` with ``kind`` noise at each of ``levels`` (dB for the SNRs, K
    for ``thermal``), every other noise off; returns an array of len(levels).

    ``model`` must contain at least one :class:`CoupledSTOArray`; its noise settings are restored on return.
    """
    from stosim.studies.training import evaluate_accuracy

    if kind not in NOISE_KINDS:
        raise ValueError(f"kind = {kind!r}; valid: {', '.join(NOISE_KINDS)}")
    subs = sto_substrates(model)
    if not subs:
        raise ValueError("accuracy_under_noise needs a model with a coupled-STO substrate (substrate = 'sto', ...)")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed = {seed!r} must be an integer >= 0")
    saved = [_Saved(_settings(s), s.noise_enabled) for s in subs]
    out = np.empty(len(levels), dtype=np.float64)
    try:
        for i, level in enumerate(levels):
            settings = _level_settings(kind, level, dynamical_noise_reference_s)
            for k, sub in enumerate(subs):
                sub.set_noise(**settings)  # validates the level (names the parameter and its range)
                sub.noise_enabled = True
                key = (_KIND_INDEX[kind], i, k)
                sub.reset(int(np.random.SeedSequence(int(seed), spawn_key=key).generate_state(1)[0]))
            out[i] = evaluate_accuracy(model, x, y, batch_size)
    finally:
        for sub, s in zip(subs, saved):
            sub.set_noise(**s.settings)
            sub.noise_enabled = s.enabled
    return out
