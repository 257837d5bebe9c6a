"""The simulator model of a station, and the conversions its driver shares with it.

:class:`StationModel` is a differentiable :class:`~stosim.substrates.base.Substrate` that
simulates what a station measures, with the *nominal* parameters of its station file (the
device file, mu, the model's W, the bias current): the prepared unit vectors evolve under
the coupled LLG-Slonczewski equations (the same Numba kernels and exact RK4 gradients as
:class:`~stosim.substrates.sto_array.CoupledSTOArray`), and each device's m.p is taken at the
station's sample times T - 2 dt, T - dt, T: the state the driver recovers from the TMR voltages
V = I R_P (1 + TMR (1 - m.p)/2) it measures (with nominal parameters the round trip is exact).

It has the same sizes, state semantics and readout as the hardware driver
(:class:`~stosim.hardware.lab_array.LabSTOArray`): train in simulation with it, and use it as
the differentiable model of the hardware in physics-aware training.

Shared conversions (one place, so the driver and the model agree exactly):

- :func:`prepare_unit_vectors`: read-in (B, 3N) -> unit vectors (B, 3N), per device;
- :func:`tmr_voltage` and :func:`projection_from_voltage`: the affine TMR relation and its
  inverse (V -> m.p, with the nominal R_P, TMR ratio and bias current), both from
  :mod:`stosim.physics.tmr`, the one definition of the TMR readout.
"""

from __future__ import annotations

import numpy as np
import torch

from stosim.hardware.station import SAMPLES_PER_DEVICE, Station
from stosim.integrate.flow import sto_flow
from stosim.physics.array import STOArray, check_time_step
from stosim.physics.tmr import projection_from_voltage, voltage_at_bias_current_v
from stosim.simulation import evolve, steps_for_duration
from stosim.substrates.base import Capabilities, Substrate, SubstrateDescription
from stosim.substrates.protocols import Differentiable

__all__ = [
    "StationModel",
    "prepare_unit_vectors",
    "tmr_voltage",
    "projection_from_voltage",
    "state_units",
    "READOUT_UNITS",
]

READOUT_UNITS = (
    "1 (m.p of each device estimated from its TMR voltage with the nominal affine relation, "
    "at t = T - 2 dt, T - dt, T; m.p = m_x for p = e_x)"
)


def state_units(n: int) -> str:
    return (
        f"before evolve: 1 (prepared unit magnetization m_x, m_y, m_z of each of the {n} devices); after "
        f"evolve: 1 (m.p of each device at t = T - 2 dt, T - dt, T, from its TMR voltage)"
    )


def prepare_unit_vectors(readin: torch.Tensor, what: str = "read-in") -> torch.Tensor:
    """Normalize each device's 3-vector onto the unit sphere: (B, 3N) -> (B, 3N); the zero vector raises."""
    v = readin.reshape(readin.shape[0], -1, 3)
    norm = v.norm(dim=-1, keepdim=True)
    if bool((norm == 0).any()):
        b, i = (int(x) for x in torch.nonzero(norm[..., 0] == 0)[0])
        raise ValueError(f"{what} of sample {b} gives the zero vector for device {i}; it has no direction")
    return (v / norm).reshape(readin.shape)


def tmr_voltage(m_dot_p, current_a: float, parallel_resistance_ohm: float, tmr_ratio: float):
    """V = I R_P (1 + TMR (1 - m.p)/2) in V (numpy or torch): :func:`stosim.physics.tmr.voltage_at_bias_current_v`
    with the bias current first."""
    return voltage_at_bias_current_v(m_dot_p, parallel_resistance_ohm, tmr_ratio, current_a)


class StationModel(Substrate, Differentiable):
    """Differentiable simulator of a station with its nominal parameters (see the module docstring).

    ``dt_s``: integration step (the station's times must be whole multiples of it).
    """

    def __init__(self, station: Station, *, dt_s: float = 1e-12, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        if dtype not in (torch.float64, torch.float32):
            raise ValueError(f"dtype = {dtype!r} must be torch.float64 or torch.float32")
        self.station = station
        dev = station.device
        if station.coupling_matrix is not None:
            self.array = STOArray.with_matrix(
                dev, station.coupling_matrix, station.coupling_oe, current_a=station.bias_current_a
            )
        else:
            self.array = STOArray.generate(
                dev, station.n, station.coupling_oe, seed=station.coupling_seed, current_a=station.bias_current_a
            )
        self.dt_s = float(dt_s)
        check_time_step(self.array, self.dt_s)
        first = station.duration_s - (SAMPLES_PER_DEVICE - 1) * station.sample_interval_s
        try:
            self.steps_first = steps_for_duration(first, self.dt_s)
            self.steps_between = steps_for_duration(station.sample_interval_s, self.dt_s)
        except ValueError as exc:
            raise ValueError(
                f"station {station.name}: the sample times {station.sample_times_s} s must be whole "
                f"multiples of the model's dt = {self.dt_s:g} s ({exc})"
            ) from None
        self._dtype = dtype
        self.register_buffer("p", torch.as_tensor(dev.reference_direction, dtype=dtype))
        projection_from_voltage(1.0, station.bias_current_a, dev.parallel_resistance_ohm, dev.tmr_ratio)  # checks
        self._seed = 0

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(differentiable=True, stochastic=False, reproducible=True, hardware=False)

    def describe(self) -> SubstrateDescription:
        n = self.station.n
        return SubstrateDescription(
            name="lab-sto-model",
            state_size=3 * n,
            readin_size=3 * n,
            readout_size=SAMPLES_PER_DEVICE * n,
            state_units=state_units(n),
            readout_units=READOUT_UNITS,
            time_unit="s",
            summary=(
                f"simulator model of station {self.station.name}: {n} coupled STOs ({self.station.device.name}, "
                f"mu = {self.station.coupling_oe:g} Oe, I = {self.station.bias_current_a:g} A), TMR voltages at "
                f"t = {', '.join(f'{t:g}' for t in self.station.sample_times_s)} s; RK4 dt = {self.dt_s:g} s"
            ),
        )

    def read_configuration(self) -> dict[str, float | int | str]:
        return {
            "substrate": "lab-sto-model",
            **self.station.configuration(),
            "dt_s": self.dt_s,
            "dtype": str(self._dtype).removeprefix("torch."),
        }

    def reset(self, seed: int) -> None:
        """No noise in the model; the seed is only checked."""
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed = {seed!r} must be an integer >= 0")
        self._seed = int(seed)

    def initial_state(self, readin: torch.Tensor) -> torch.Tensor:
        self._check_readin(readin)
        return prepare_unit_vectors(readin.to(self._dtype))

    def _advance(self, m: torch.Tensor, n_steps: int) -> torch.Tensor:
        if torch.is_grad_enabled() and m.requires_grad:
            return sto_flow(m, self.array, n_steps, self.dt_s)
        final, _, _ = evolve(
            self.array,
            m.detach().cpu().numpy().astype(np.float64),
            n_steps,
            self.dt_s,
            dtype=np.float64 if self._dtype == torch.float64 else np.float32,
        )
        return torch.from_numpy(final).to(dtype=self._dtype, device=m.device)

    def evolve(self, state: torch.Tensor) -> torch.Tensor:
        """Unit vectors (B, 3N) -> the driver's states (B, 3N): m.p of each device at the 3 sample times
        (device-major), as recovered from its TMR voltage with the nominal affine relation."""
        n = self.station.n
        if state.ndim != 2 or state.shape[1] != 3 * n:
            raise ValueError(f"state has shape {tuple(state.shape)}; expected (batch, {3 * n})")
        if state.dtype != self._dtype:
            raise ValueError(f"state dtype {state.dtype} differs from the model's {self._dtype}")
        m = state.reshape(state.shape[0], n, 3)
        samples = []
        m = self._advance(m, self.steps_first)
        samples.append(m @ self.p)
        for _ in range(SAMPLES_PER_DEVICE - 1):
            m = self._advance(m, self.steps_between)
            samples.append(m @ self.p)
        mp = torch.stack(samples, dim=-1)  # (B, N, 3)
        # V = tmr_voltage(m.p) and the driver's m.p = projection_from_voltage(V): with nominal parameters the
        # round trip is the identity, so the model's state is m.p itself
        return mp.reshape(state.shape[0], -1)

    def readout(self, state: torch.Tensor) -> torch.Tensor:
        """The states (m.p estimates) are the features, as for the driver."""
        return state
