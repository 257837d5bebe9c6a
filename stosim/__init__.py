"""stosim: spin-torque-oscillator reservoirs, simulated.

The public API, one screen (every name is imported on first use, so ``import stosim`` stays fast):

- devices: :func:`load_device`, :class:`DeviceParameters` (``devices/*.toml``); :class:`STOArray`, N coupled
  MTJ oscillators (Ampere-law coupling mu W).
- time evolution: :func:`simulate`, :func:`evolve`, :class:`Trajectory`, :class:`NoiseSettings`,
  :class:`SimulationDivergedError` (Numba kernels).
- substrates (one interface, states (B, state_size)): :class:`Substrate`, :class:`CoupledSTOArray`,
  :class:`FFESN`, :class:`Lorenz96`, :class:`RateNetwork`; :func:`build_substrate` (by registered name),
  :func:`substrate_names`.
- models (read-in -> substrate -> readout, and baselines): :class:`ReservoirClassifier`,
  :class:`DeepReservoirClassifier`, :class:`ConvReservoirClassifier`, :class:`LinearClassifier`,
  :class:`MLPClassifier`, :class:`CNNClassifier`.
- training: :func:`train`, :class:`TrainConfig`, :func:`load_train_config` (what ``stosim train`` runs);
  :class:`ReservoirEstimator` (scikit-learn style fit / predict / score), :func:`dataset_arrays`.
- chaos: :func:`lyapunov_spectrum` (QR method on a tangent system), :func:`substrate_lyapunov` (a
  substrate's autonomous dynamics, by name); :func:`substrate_ftmle`, :func:`model_ftmle` (finite-time
  maximal Lyapunov exponents per sample).
- sweeps: :func:`load_sweep_spec` (a TOML spec, validated and resolved), :func:`run_sweep`, :func:`read_sweep`.
- quantities: :func:`parse_quantity`, :func:`quantity` (unit strings such as "200 Oe" or "2.5 mA").

Quantities: every public constructor and function takes a quantity either as a string with a unit
("500 Oe", "300 ps", "2.5 mA", "300 K"; the parser of the files, :mod:`stosim.units`) or as a plain
number in the unit its keyword names (``coupling_oe``: Oe, ``duration_s``: s, ``current_a``: A).

State layouts: a substrate's state is a flat (B, state_size) tensor; for coupled STOs state_size = 3N
and the state of oscillator i is ``state[:, 3 i : 3 i + 3]`` = (m_x, m_y, m_z), i.e.
``state.reshape(B, N, 3)``. The NumPy integrator :func:`evolve` works on (B, N, 3) arrays (the same
memory order: ``final.reshape(B, 3 * N)`` is the substrate's state).
"""

from __future__ import annotations

import importlib
from importlib import metadata as _metadata
from typing import Any

# public name -> "module" (the same name there) or "module:name"
_LAZY = {
    # devices and time evolution
    "load_device": "stosim.config",
    "DeviceParameters": "stosim.config",
    "STOArray": "stosim.physics.array",
    "simulate": "stosim.simulation",
    "evolve": "stosim.simulation",
    "Trajectory": "stosim.simulation",
    "NoiseSettings": "stosim.simulation",
    "SimulationDivergedError": "stosim.simulation",
    # substrates
    "Substrate": "stosim.substrates.base",
    "CoupledSTOArray": "stosim.substrates.sto_array",
    "FFESN": "stosim.substrates.ffesn",
    "Lorenz96": "stosim.substrates.lorenz96",
    "RateNetwork": "stosim.substrates.rate_network",
    "build_substrate": "stosim.estimator",
    "substrate_names": "stosim.estimator",
    # models
    "ReservoirClassifier": "stosim.models",
    "DeepReservoirClassifier": "stosim.models",
    "ConvReservoirClassifier": "stosim.models",
    "LinearClassifier": "stosim.models",
    "MLPClassifier": "stosim.models",
    "CNNClassifier": "stosim.models",
    # training
    "train": "stosim.studies.training",
    "TrainConfig": "stosim.studies.training",
    "load_train_config": "stosim.studies.training",
    "ReservoirEstimator": "stosim.estimator",
    "dataset_arrays": "stosim.estimator",
    # chaos
    "lyapunov_spectrum": "stosim.analysis.lyapunov",
    "substrate_lyapunov": "stosim.studies.run_lyapunov",
    "substrate_ftmle": "stosim.analysis.ftmle",
    "model_ftmle": "stosim.analysis.ftmle",
    # sweeps
    "load_sweep_spec": "stosim.sweep.spec:load_spec",
    "run_sweep": "stosim.sweep.runner",
    "read_sweep": "stosim.sweep.store",
    # quantities
    "parse_quantity": "stosim.units",
    "quantity": "stosim.quantities",
}

__all__ = ["__version__", *_LAZY]


def _version() -> str:
    """The installed distribution's version (pyproject.toml is its one source); "unknown" when stosim
    runs from a source tree that was never installed."""
    try:
        return _metadata.version("stosim")
    except _metadata.PackageNotFoundError:  # pragma: no cover (a source tree that was never installed)
        return "0+unknown"


__version__ = _version()


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'stosim' has no attribute {name!r}")
    module, _, attribute = target.partition(":")
    value = getattr(importlib.import_module(module), attribute or name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
