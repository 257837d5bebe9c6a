"""stosim: spin-torque-oscillator reservoirs, simulated.

Public API (the rest lives in private-by-convention modules):

- :func:`load_device`, :class:`DeviceParameters`: device files (``devices/*.toml``).
- :class:`STOArray`: N coupled MTJ oscillators (Ampere-law coupling mu W).
- :func:`simulate`, :func:`evolve`, :class:`Trajectory`: run an array in time (Numba kernels).
- :func:`parse_quantity`: unit strings such as "200 Oe" or "2.5 mA".
"""

from stosim.config import DeviceParameters, load_device
from stosim.physics.array import STOArray
from stosim.simulation import NoiseSettings, SimulationDivergedError, Trajectory, evolve, simulate
from stosim.units import parse_quantity

__all__ = [
    "DeviceParameters",
    "load_device",
    "STOArray",
    "simulate",
    "evolve",
    "Trajectory",
    "NoiseSettings",
    "SimulationDivergedError",
    "parse_quantity",
]

__version__ = "0.1.0"
