"""A lab STO array behind the substrate interface: the PyVISA station driver.

:class:`LabSTOArray` drives the three instruments of a station file
(:mod:`stosim.hardware.station`) through any resource manager (``pyvisa.ResourceManager()``
for the lab, ``pyvisa.ResourceManager("file.yaml@sim")`` for pyvisa-sim, or a digital twin's
:class:`~stosim.hardware.twin.TwinResourceManager`); it never knows which.

Protocol of one acquisition of B' <= ``max_batch`` inputs (all values checked against the
declared limits before anything is sent):

1. field source: ``:WAV:SEGM B'``, ``:WAV:DATA h,...`` with h = H_prep m (Oe, 3 values per
   device and input: the field pulses that set each device's magnetization along m);
2. digitizer: ``:ACQ:SEGM B'``, ``:INIT`` (arm);
3. field source: ``:INIT`` (play: prepare, then trigger the digitizer), ``*OPC?``;
4. digitizer: ``:FETC?`` -> B' x N x 3 volts (each device's TMR voltage at T - 2 dt, T - dt, T);
5. both: ``:SYST:ERR?`` until empty.

States and features:

- ``initial_state``: read-in (B, 3N) -> unit vectors (B, 3N) (normalized per device, on the host);
- ``evolve``: unit vectors -> the measured TMR voltages (B, 3N) in V (device-major, 3 samples);
- ``readout``: voltages -> m.p estimates (B, 3N) by inverting the affine TMR relation
  V = I R_P (1 + TMR (1 - m.p)/2) with the *nominal* R_P and TMR ratio of the device file and
  the bias-current setpoint (m.p = m_x for the default p = e_x). A lab's calibration errors
  therefore show up as per-device affine errors of the features.

Safety: :meth:`open` ramps the current up in steps; any exception (a timeout after the bounded
retries, an instrument error, ``KeyboardInterrupt``) during :meth:`open` or a measurement ramps
the current back to 0 A in steps, turns every output off and marks the driver closed before the
exception propagates; :meth:`close` (also ``__exit__``) does the same. Use it as a context
manager::

    with LabSTOArray("devices/stations/my-lab.toml") as hw:
        features = hw(readin)
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from stosim.extras import require
from stosim.hardware.instruments import CurrentSource2400, FieldPulseSource, Instrument, SegmentedDigitizer
from stosim.hardware.model import READOUT_UNITS, prepare_unit_vectors, projection_from_voltage, state_units
from stosim.hardware.station import SAMPLES_PER_DEVICE, Station, load_station
from stosim.substrates.base import Capabilities, Substrate, SubstrateDescription

__all__ = ["LabSTOArray", "HardwareSafetyError", "DriverClosedError"]

UNIT_NORM_TOLERANCE = 1e-6


class HardwareSafetyError(RuntimeError):
    """The safe state (0 A, outputs off) could not be confirmed on close: check the setup by hand."""


class DriverClosedError(RuntimeError):
    """The driver is not open (never opened, closed, or shut down after an error)."""


class LabSTOArray(Substrate):
    """An STO array in the lab, driven over PyVISA, as a (non-differentiable) substrate.

    ``station``: a :class:`Station` or a station file path / name. ``resource_manager``:
    anything with ``open_resource(address, **kwargs)``; None opens ``pyvisa.ResourceManager()``
    (the system's VISA library) on :meth:`open` and closes it again on :meth:`close` (a manager
    passed in is left open: it belongs to the caller).
    """

    def __init__(self, station: Station | str | Path, resource_manager: Any | None = None) -> None:
        super().__init__()
        self.station = station if isinstance(station, Station) else load_station(station)
        dev = self.station.device
        projection_from_voltage(1.0, self.station.bias_current_a, dev.parallel_resistance_ohm, dev.tmr_ratio)  # checks
        self._resource_manager = resource_manager
        self._owns_resource_manager = False  # True while a manager opened by open() itself is held
        self.current_source: CurrentSource2400 | None = None
        self.field_source: FieldPulseSource | None = None
        self.digitizer: SegmentedDigitizer | None = None
        self.identities: dict[str, str] = {}
        self.acquisitions = 0
        self._open = False
        self._seed = 0

    # -- lifecycle -------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._open

    def open(self) -> "LabSTOArray":
        """Connect, identify and configure the instruments, ramp the bias current up; idempotent.

        On any error the setup is made safe (see :meth:`close`) before the error propagates.
        """
        if self._open:
            return self
        st = self.station
        with self._guard():
            rm = self._resource_manager
            if rm is None:
                require("pyvisa", "hardware", "a lab station")
                import pyvisa

                rm = self._resource_manager = pyvisa.ResourceManager()
                self._owns_resource_manager = True
            self.current_source = st.current_source.connect(rm, "current_source")
            self.field_source = st.field_source.connect(rm, "field_source")
            self.digitizer = st.digitizer.connect(rm, "digitizer")
            for inst in self._instruments():
                self.identities[inst.name] = inst.identify()
                inst.check_errors()
            self._configure()
            self._open = True
        return self

    def _instruments(self) -> list[Instrument]:
        return [i for i in (self.current_source, self.field_source, self.digitizer) if i is not None]

    def _configure(self) -> None:
        st = self.station
        cs, fs, dg = self.current_source, self.field_source, self.digitizer
        assert cs is not None and fs is not None and dg is not None
        # check every setting first: a bad station value raises before anything is sent
        cs.check("compliance_voltage", st.compliance_v)
        cs.check("current", st.bias_current_a)
        fs.check("points", 3 * st.n)
        dg.configure(channels=st.n, points=SAMPLES_PER_DEVICE, sample_interval_s=st.sample_interval_s,
                     trigger_delay_s=st.sample_times_s[0], voltage_range_v=st.voltage_range_v)
        dg.check_errors()
        fs.set_points(3 * st.n)
        fs.set_segments(1)
        fs.set_output(True)
        fs.check_errors()
        cs.set("function", "CURR")
        cs.set_compliance(st.compliance_v)
        if cs.output_is_on():
            start = cs.get("current")
        else:
            start = 0.0
            cs.set_current(0.0)
            cs.set_output(True)
        cs.ramp_to(st.bias_current_a, st.ramp_step_a, st.ramp_dwell_s, start_a=start)
        cs.check_errors()

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """On any exception (KeyboardInterrupt included): make the setup safe, then re-raise."""
        try:
            yield
        except BaseException as exc:
            problems = self._shutdown()
            if problems:
                exc.add_note("while making the setup safe after this error: " + "; ".join(problems)
                             + " -- check the setup by hand")
            raise

    def _shutdown(self) -> list[str]:
        """Ramp to 0 A in steps, current output off; field source off; digitizer aborted; sessions closed.

        Every step is attempted even if an earlier one failed or was interrupted; returns the
        problems met. A ``KeyboardInterrupt`` (or ``SystemExit``) during a step is re-raised
        after all steps ran.
        """
        st = self.station
        self._open = False
        cs, fs, dg = self.current_source, self.field_source, self.digitizer

        def ramp_down() -> None:
            start = self._present_current(cs)
            if start is None:
                cs.set_current(0.0)  # unknown present value: step straight down, never up
            else:
                cs.ramp_to(0.0, st.ramp_step_a, st.ramp_dwell_s, start_a=start)

        steps = []
        if cs is not None:
            steps += [("current source: ramp to 0 A", ramp_down), ("current source: output off",
                                                                    lambda: cs.set_output(False))]
        if fs is not None:
            steps.append(("field source: output off", lambda: fs.set_output(False)))
        if dg is not None:
            steps.append(("digitizer: abort", dg.abort))
        for inst in (cs, fs, dg):
            if inst is not None:
                steps.append((f"{inst.name}: close", inst.close))
        if self._owns_resource_manager:  # the VISA session opened by open(); a caller's manager stays open
            steps.append(("VISA resource manager: close", self._close_own_resource_manager))
        problems: list[str] = []
        pending: BaseException | None = None
        for label, step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - collect, keep going
                problems.append(f"{label}: {exc}")
            except BaseException as exc:  # KeyboardInterrupt: finish making the setup safe first
                problems.append(f"{label}: interrupted ({type(exc).__name__})")
                pending = pending or exc
        self.current_source = self.field_source = self.digitizer = None
        if pending is not None:
            if problems:
                pending.add_note("while making the setup safe: " + "; ".join(problems))
            raise pending
        return problems

    def _close_own_resource_manager(self) -> None:
        rm, self._resource_manager, self._owns_resource_manager = self._resource_manager, None, False
        rm.close()

    @staticmethod
    def _present_current(cs: CurrentSource2400) -> float | None:
        try:
            value = cs.get("current")
        except Exception:  # noqa: BLE001 - fall back to the last value set
            value = cs.values.get("current")
        return None if value is None or not math.isfinite(value) else float(value)

    def close(self) -> None:
        """Make the setup safe (ramp to 0 A, outputs off) and close the instruments; idempotent.

        Raises :class:`HardwareSafetyError` if a step of the safe-state sequence failed.
        """
        if not self._instruments():
            self._open = False
            return
        problems = self._shutdown()
        if problems:
            raise HardwareSafetyError(f"station {self.station.name}: the safe state could not be confirmed: "
                                      + "; ".join(problems) + " -- check the setup by hand")

    def __enter__(self) -> "LabSTOArray":
        return self.open()

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.close()
        except HardwareSafetyError as err:
            if exc is None:
                raise
            exc.add_note(str(err))

    # -- substrate interface ---------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return torch.float64

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(differentiable=False, stochastic=True, reproducible=False, hardware=True)

    def describe(self) -> SubstrateDescription:
        st = self.station
        return SubstrateDescription(
            name="lab-sto", state_size=3 * st.n, readin_size=3 * st.n, readout_size=SAMPLES_PER_DEVICE * st.n,
            state_units=state_units(st.n), readout_units=READOUT_UNITS, time_unit="s",
            summary=(f"{st.n} STOs ({st.device.name}) of station {st.name}, biased at {st.bias_current_a:g} A, "
                     f"prepared by {st.preparation_field_oe:g} Oe field pulses, TMR voltages sampled at "
                     f"t = {', '.join(f'{t:g}' for t in st.sample_times_s)} s"),
        )

    def read_configuration(self) -> dict[str, float | int | str]:
        cfg: dict[str, float | int | str] = {"substrate": "lab-sto", **self.station.configuration(),
                                             "acquisitions": self.acquisitions}
        for role, idn in self.identities.items():
            cfg[f"{role}_idn"] = idn
        return cfg

    def reset(self, seed: int) -> None:
        """Hardware noise cannot be re-seeded: the seed is checked and recorded, nothing is sent."""
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed = {seed!r} must be an integer >= 0")
        self._seed = int(seed)

    def initial_state(self, readin: torch.Tensor) -> torch.Tensor:
        """Read-in (B, 3N) -> the unit vectors (B, 3N) the field pulses will prepare."""
        self._check_readin(readin)
        return prepare_unit_vectors(readin.detach().to(torch.float64))

    def evolve(self, state: torch.Tensor) -> torch.Tensor:
        """Prepare the unit vectors, let the array evolve, measure: TMR voltages (B, 3N) in V."""
        n = self.station.n
        if state.ndim != 2 or state.shape[1] != 3 * n:
            raise ValueError(f"state has shape {tuple(state.shape)}; expected (batch, {3 * n})")
        m = state.detach().cpu().to(torch.float64).numpy().reshape(state.shape[0], n, 3)
        if not np.all(np.isfinite(m)):
            raise ValueError("state contains non-finite values")
        norm_error = np.abs(np.linalg.norm(m, axis=-1) - 1.0)
        if norm_error.max(initial=0.0) > UNIT_NORM_TOLERANCE:
            b, i = np.unravel_index(int(np.argmax(norm_error)), norm_error.shape)
            raise ValueError(f"state of sample {b}, device {i} has |m| = {np.linalg.norm(m[b, i]):.6g}; evolve "
                             "expects the unit vectors of initial_state")
        if not self._open:
            raise DriverClosedError(f"station {self.station.name}: the driver is not open; use `with LabSTOArray(...)"
                                    " as hw:` or call open() (a driver shut down after an error must be reopened)")
        # exactly unit length, so that the pulses H_prep m stay within the field limit H_prep <= max_field
        # (checked before anything is sent: a refused state leaves the driver open)
        m = m / np.linalg.norm(m, axis=-1, keepdims=True)
        assert self.field_source is not None
        self.field_source.check("waveform", self.station.preparation_field_oe * m.reshape(-1))
        out = np.empty_like(m)
        with self._guard():
            for start in range(0, m.shape[0], self.station.max_batch):
                chunk = m[start:start + self.station.max_batch]
                out[start:start + chunk.shape[0]] = self._acquire(chunk)
        return torch.from_numpy(out.reshape(state.shape[0], -1)).to(device=state.device)

    def _acquire(self, m: np.ndarray) -> np.ndarray:
        """One acquisition: prepare ``m`` (B', N, 3), fire, fetch (B', N, 3) volts."""
        st = self.station
        fs, dg = self.field_source, self.digitizer
        assert fs is not None and dg is not None
        segments = m.shape[0]
        waveform = fs.check("waveform", st.preparation_field_oe * m.reshape(-1))  # before sending anything
        if fs.values.get("segments") != segments:
            fs.set_segments(segments)
        if dg.values.get("segments") != segments:
            dg.set_segments(segments)
        fs.load_waveform(waveform)
        # a setting the instruments refused (segment memory, waveform) is reported now, not as a fetch timeout
        fs.check_errors()
        dg.check_errors()
        dg.arm()
        fs.fire()
        volts = dg.fetch((segments, st.n, SAMPLES_PER_DEVICE))
        fs.check_errors()
        dg.check_errors()
        self.acquisitions += 1
        return volts

    def readout(self, state: torch.Tensor) -> torch.Tensor:
        """Measured TMR voltages (B, 3N) -> m.p estimates (nominal affine TMR relation)."""
        dev = self.station.device
        return projection_from_voltage(state, self.station.bias_current_a, dev.parallel_resistance_ohm,
                                       dev.tmr_ratio)
