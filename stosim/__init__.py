"""stosim: spin-torque-oscillator reservoirs, simulated.

Public API (the rest lives in private-by-convention modules; everything is imported on first use,
so ``import stosim`` stays fast):

- :func:`load_device`, :class:`DeviceParameters`: device files (``devices/*.toml``).
- :class:`STOArray`: N coupled MTJ oscillators (Ampere-law coupling mu W).
- :func:`simulate`, :func:`evolve`, :class:`Trajectory`: run an array in time (Numba kernels).
- :class:`CoupledSTOArray`, :class:`FFESN`, :class:`Lorenz96`: substrates (one interface, states (B, state_size)).
- :class:`ReservoirEstimator`: a scikit-learn style classifier (fit / predict / score) over any substrate.
- :func:`parse_quantity`, :func:`quantity`: unit strings such as "200 Oe" or "2.5 mA".

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

__all__ = [
    "FFESN",
    "CoupledSTOArray",
    "DeviceParameters",
    "Lorenz96",
    "NoiseSettings",
    "ReservoirEstimator",
    "STOArray",
    "SimulationDivergedError",
    "Trajectory",
    "__version__",
    "evolve",
    "load_device",
    "parse_quantity",
    "quantity",
    "simulate",
]

_LAZY = {
    "DeviceParameters": "stosim.config",
    "load_device": "stosim.config",
    "STOArray": "stosim.physics.array",
    "simulate": "stosim.simulation",
    "evolve": "stosim.simulation",
    "Trajectory": "stosim.simulation",
    "NoiseSettings": "stosim.simulation",
    "SimulationDivergedError": "stosim.simulation",
    "parse_quantity": "stosim.units",
    "quantity": "stosim.quantities",
    "CoupledSTOArray": "stosim.substrates",
    "FFESN": "stosim.substrates",
    "Lorenz96": "stosim.substrates",
    "ReservoirEstimator": "stosim.estimator",
}


def _version() -> str:
    """The installed distribution's version (pyproject.toml is its one source); "unknown" when stosim
    runs from a source tree that was never installed."""
    try:
        return _metadata.version("stosim")
    except _metadata.PackageNotFoundError:  # pragma: no cover (a source tree that was never installed)
        return "0+unknown"


__version__ = _version()


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'stosim' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
