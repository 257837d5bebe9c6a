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
- ``measure`` (the declared measurement step of :class:`~stosim.substrates.protocols.Hardware`):
  unit vectors -> prepare, evolve for T, fetch: the raw TMR voltages (B, 3N) in V (device-major,
  the 3 sample times last), refused as an instrument fault outside the physical window;
- ``state_from_measurement``: voltages -> the measured state (B, 3N), m.p of each device at
  t = T - 2 dt, T - dt, T, by inverting the affine TMR relation V = I R_P (1 + TMR (1 - m.p)/2)
  with the *nominal* R_P and TMR ratio of the device file and the bias-current setpoint
  (m.p = m_x for the default p = e_x). A lab's calibration errors therefore show up as
  per-device affine errors of the states;
- ``evolve`` = ``state_from_measurement(measure(state))``: states in, states out (dimensionless),
  like every substrate; the projection m.p at three times is the part of the magnetization the
  measurement determines (m itself is not observed);
- ``readout``: the measured state is the feature vector (the identity, after a shape/finite check).

Safety (the *safe state*: current ramped to 0 A in steps, current output off, field source off,
digitizer aborted, sessions closed). :meth:`open` ramps the current up in steps; the safe state is
reached

- on :meth:`close` (also ``__exit__``);
- on any exception (a timeout after the bounded retries, an instrument error or fault,
  ``KeyboardInterrupt``) during :meth:`open` or a measurement, before the exception propagates;
- when the driver is garbage-collected while open, and at interpreter exit while open (a
  ``weakref.finalize`` registered by :meth:`open`: an exception in *your* code, outside a ``with``
  block and without :meth:`close`, still leaves the setup safe when the program ends).

Refused before anything is sent: a station whose bias current is beyond the device file's limits
(maximum current, breakdown voltage: :func:`stosim.simulation.check_device_limits`), an instrument
whose ``*IDN?`` is not the model the station file names. Refused as instrument faults
(:class:`~stosim.hardware.instruments.InstrumentFaultError`, the setup made safe): a reading beyond
the digitizer's configured range, or outside the window the devices can physically produce,
[|I| R_P / (1 + tol), |I| R_AP (1 + tol)] (sign of I), tol = ``reading_tolerance``.

Use it as a context manager::

    with LabSTOArray("devices/stations/my-lab.toml") as hw:
        features = hw(readin)
"""

from __future__ import annotations

import atexit
import contextlib
import math
import sys
import weakref
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from stosim.extras import require
from stosim.hardware.instruments import (
    CurrentSource2400,
    FieldPulseSource,
    Instrument,
    InstrumentFaultError,
    SegmentedDigitizer,
)
from stosim.hardware.model import READOUT_UNITS, prepare_unit_vectors, projection_from_voltage, state_units
from stosim.hardware.station import SAMPLES_PER_DEVICE, Station, load_station
from stosim.substrates.base import Substrate, SubstrateDescription
from stosim.substrates.protocols import Hardware

__all__ = ["LabSTOArray", "HardwareSafetyError", "DriverClosedError", "physical_voltage_window"]

UNIT_NORM_TOLERANCE = 1e-6
# readings may lie a factor (1 + tol) beyond the nominal window [I R_P, I R_AP]: junctions of one wafer differ in
# R_P by tens of % (spreads of RA and diameter), in the TMR ratio by ~10 %, the delivered current by a few %, and
# the readings carry noise. tol = 2 (a factor 3) holds the digital twin's Mismatch.lab(2.0) (30 % R_P spread);
# -0.5 V or 1e6 V from a 2.5 mA bias on 440 Ohm (window [0.37 V, 6.6 V]) stay refused.
DEFAULT_READING_TOLERANCE = 2.0


def physical_voltage_window(
    current_a: float, parallel_resistance_ohm: float, tmr_ratio: float, tolerance: float = DEFAULT_READING_TOLERANCE
) -> tuple[float, float]:
    """(lowest, highest) voltage in V a junction can show at the bias ``current_a``: V = I R(m) lies between
    I R_P and I R_AP = I R_P (1 + TMR), widened by the factor (1 + ``tolerance``) on each side (for calibration
    spreads and noise); for I < 0 the window is mirrored."""
    if not (math.isfinite(tolerance) and 0 <= tolerance <= 100):
        raise ValueError(f"reading tolerance = {tolerance!r} must be in [0, 100] (a relative widening)")
    lo = abs(current_a) * parallel_resistance_ohm / (1.0 + tolerance)
    hi = abs(current_a) * parallel_resistance_ohm * (1.0 + tmr_ratio) * (1.0 + tolerance)
    return (lo, hi) if current_a >= 0 else (-hi, -lo)


class HardwareSafetyError(RuntimeError):
    """The safe state (0 A, outputs off) could not be confirmed on close: check the setup by hand."""


class DriverClosedError(RuntimeError):
    """The driver is not open (never opened, closed, or shut down after an error)."""


class _Connection:
    """The open instruments of a driver and how to make them safe: what the driver's finalizer holds (it must
    not hold the driver itself, or the driver would never be collected)."""

    def __init__(self, station: Station, resource_manager: Any | None) -> None:
        self.station = station
        self.resource_manager = resource_manager
        self.owns_resource_manager = False  # True while a manager opened by open() itself is held
        self.current_source: CurrentSource2400 | None = None
        self.field_source: FieldPulseSource | None = None
        self.digitizer: SegmentedDigitizer | None = None
        self.open = False

    def instruments(self) -> list[Instrument]:
        return [i for i in (self.current_source, self.field_source, self.digitizer) if i is not None]

    def shutdown(self) -> list[str]:
        """Ramp to 0 A in steps, current output off; field source off; digitizer aborted; sessions closed.

        Every step is attempted even if an earlier one failed or was interrupted; returns the
        problems met. A ``KeyboardInterrupt`` (or ``SystemExit``) during a step is re-raised
        after all steps ran.
        """
        st = self.station
        self.open = False
        cs, fs, dg = self.current_source, self.field_source, self.digitizer

        def ramp_down() -> None:
            start = _present_current(cs)
            if start is None:
                cs.set_current(0.0)  # unknown present value: step straight down, never up
            else:
                cs.ramp_to(0.0, st.ramp_step_a, st.ramp_dwell_s, start_a=start)

        steps = []
        if cs is not None:
            steps += [
                ("current source: ramp to 0 A", ramp_down),
                ("current source: output off", lambda: cs.set_output(False)),
            ]
        if fs is not None:
            steps.append(("field source: output off", lambda: fs.set_output(False)))
        if dg is not None:
            steps.append(("digitizer: abort", dg.abort))
        for inst in (cs, fs, dg):
            if inst is not None:
                steps.append((f"{inst.name}: close", inst.close))
        if self.owns_resource_manager:  # the VISA session opened by open(); a caller's manager stays open
            steps.append(("VISA resource manager: close", self._close_own_resource_manager))
        problems: list[str] = []
        pending: BaseException | None = None
        for label, step in steps:
            try:
                step()
            except Exception as exc:  # collect, keep going
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
        rm, self.resource_manager, self.owns_resource_manager = self.resource_manager, None, False
        rm.close()

    def at_exit(self) -> None:
        """The safe-state sequence at interpreter exit (an ``atexit`` function, see :meth:`LabSTOArray.open`)."""
        self.finalize("interpreter exit")

    def at_collection(self) -> None:
        """The safe-state sequence when the driver is garbage-collected (its ``weakref.finalize``)."""
        self.finalize("garbage collection (or interpreter exit)")

    def finalize(self, when: str) -> None:
        """The safe-state sequence of a driver nobody closed: nothing may propagate from here, so problems
        are written to stderr."""
        if not self.instruments():
            return
        try:
            problems = self.shutdown()
        except BaseException as exc:  # a finalizer cannot raise; say so
            problems = [f"interrupted ({type(exc).__name__})"]
        if problems:
            sys.stderr.write(
                f"stosim: station {self.station.name}: LabSTOArray left open was closed at {when}; the "
                f"safe state could not be confirmed: {'; '.join(problems)} -- check the setup by hand\n"
            )


def _present_current(cs: CurrentSource2400) -> float | None:
    try:
        value = cs.get("current")
    except Exception:  # fall back to the last value set
        value = cs.values.get("current")
    return None if value is None or not math.isfinite(value) else float(value)


class LabSTOArray(Substrate, Hardware):
    """An STO array in the lab, driven over PyVISA, as a (non-differentiable) substrate.

    Declares :class:`~stosim.substrates.protocols.Hardware` (so its capabilities are: not
    differentiable, stochastic, not reproducible, hardware): :meth:`measure` gives the raw TMR
    voltages, :meth:`state_from_measurement` the states they determine, :meth:`evolve` both.

    ``station``: a :class:`Station` or a station file path / name. ``resource_manager``:
    anything with ``open_resource(address, **kwargs)``; None opens ``pyvisa.ResourceManager()``
    (the system's VISA library) on :meth:`open` and closes it again on :meth:`close` (a manager
    passed in is left open: it belongs to the caller). ``reading_tolerance``: how far (relative)
    readings may lie beyond the devices' physical window (see :func:`physical_voltage_window`).

    The station's bias current must be within the device's limits (``DeviceLimitError`` otherwise,
    no override: a real junction does not survive its breakdown).
    """

    def __init__(
        self,
        station: Station | str | Path,
        resource_manager: Any | None = None,
        *,
        reading_tolerance: float = DEFAULT_READING_TOLERANCE,
    ) -> None:
        super().__init__()
        from stosim.simulation import check_current_limits

        self.station = station if isinstance(station, Station) else load_station(station)
        st = self.station
        dev = st.device
        projection_from_voltage(1.0, st.bias_current_a, dev.parallel_resistance_ohm, dev.tmr_ratio)  # checks
        check_current_limits(dev, st.bias_current_a, what=f"station {st.name}")
        self.voltage_window_v = physical_voltage_window(
            st.bias_current_a, dev.parallel_resistance_ohm, dev.tmr_ratio, reading_tolerance
        )
        self.reading_tolerance = float(reading_tolerance)
        self._conn = _Connection(st, resource_manager)
        self._finalizer: weakref.finalize | None = None
        self.identities: dict[str, str] = {}
        self.acquisitions = 0
        self._seed = 0

    # -- lifecycle -------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._conn.open

    @property
    def current_source(self) -> CurrentSource2400 | None:
        return self._conn.current_source

    @property
    def field_source(self) -> FieldPulseSource | None:
        return self._conn.field_source

    @property
    def digitizer(self) -> SegmentedDigitizer | None:
        return self._conn.digitizer

    def open(self) -> "LabSTOArray":
        """Connect, identify (``*IDN?`` checked against the station's models) and configure the instruments,
        ramp the bias current up; idempotent.

        On any error the setup is made safe (see :meth:`close`) before the error propagates. From here
        until :meth:`close`, a finalizer makes the setup safe if the driver is garbage-collected or the
        interpreter exits.
        """
        if self._conn.open:
            return self
        st, conn = self.station, self._conn
        if self._finalizer is None or not self._finalizer.alive:
            self._finalizer = weakref.finalize(self, conn.at_collection)
        with self._guard():
            rm = conn.resource_manager
            if rm is None:
                require("pyvisa", "hardware", "a lab station")
                import pyvisa

                rm = conn.resource_manager = pyvisa.ResourceManager()
                conn.owns_resource_manager = True
            # atexit runs its functions last-registered first: registered now, after the resource manager was
            # made, the safe state is reached before pyvisa's own exit handler closes the VISA sessions (the
            # finalizer's exit hook may have been registered before that manager, and would come too late)
            atexit.unregister(conn.at_exit)
            atexit.register(conn.at_exit)
            conn.current_source = st.current_source.connect(rm, "current_source")
            conn.field_source = st.field_source.connect(rm, "field_source")
            conn.digitizer = st.digitizer.connect(rm, "digitizer")
            for inst, spec in zip(self._instruments(), st.instruments):
                self.identities[inst.name] = inst.check_identity(spec.model)
                inst.check_errors()
            self._configure()
            conn.open = True
        return self

    def _instruments(self) -> list[Instrument]:
        return self._conn.instruments()

    def _configure(self) -> None:
        st = self.station
        cs, fs, dg = self.current_source, self.field_source, self.digitizer
        assert cs is not None and fs is not None and dg is not None
        # check every setting first: a bad station value raises before anything is sent
        cs.check("compliance_voltage", st.compliance_v)
        cs.check("current", st.bias_current_a)
        fs.check("points", 3 * st.n)
        dg.configure(
            channels=st.n,
            points=SAMPLES_PER_DEVICE,
            sample_interval_s=st.sample_interval_s,
            trigger_delay_s=st.sample_times_s[0],
            voltage_range_v=st.voltage_range_v,
        )
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
                exc.add_note(
                    "while making the setup safe after this error: "
                    + "; ".join(problems)
                    + " -- check the setup by hand"
                )
            raise

    def _shutdown(self) -> list[str]:
        """The safe-state sequence (:meth:`_Connection.shutdown`); the finalizer is no longer needed after it."""
        try:
            return self._conn.shutdown()
        finally:
            atexit.unregister(self._conn.at_exit)
            if self._finalizer is not None:
                self._finalizer.detach()

    def close(self) -> None:
        """Make the setup safe (ramp to 0 A, outputs off) and close the instruments; idempotent.

        Raises :class:`HardwareSafetyError` if a step of the safe-state sequence failed.
        """
        if not self._instruments():
            self._conn.open = False
            return
        problems = self._shutdown()
        if problems:
            raise HardwareSafetyError(
                f"station {self.station.name}: the safe state could not be confirmed: "
                + "; ".join(problems)
                + " -- check the setup by hand"
            )

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

    def describe(self) -> SubstrateDescription:
        st = self.station
        return SubstrateDescription(
            name="lab-sto",
            state_size=3 * st.n,
            readin_size=3 * st.n,
            readout_size=SAMPLES_PER_DEVICE * st.n,
            state_units=state_units(st.n),
            readout_units=READOUT_UNITS,
            time_unit="s",
            summary=(
                f"{st.n} STOs ({st.device.name}) of station {st.name}, biased at {st.bias_current_a:g} A, "
                f"prepared by {st.preparation_field_oe:g} Oe field pulses, TMR voltages (measure(), V) sampled "
                f"at t = {', '.join(f'{t:g}' for t in st.sample_times_s)} s give the state m.p"
            ),
        )

    def read_configuration(self) -> dict[str, float | int | str]:
        cfg: dict[str, float | int | str] = {
            "substrate": "lab-sto",
            **self.station.configuration(),
            "acquisitions": self.acquisitions,
        }
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
        """Prepared unit vectors (B, 3N) -> the measured states (B, 3N): m.p of each device at T - 2 dt,
        T - dt, T (dimensionless, device-major), ``state_from_measurement(measure(state))``."""
        return self.state_from_measurement(self.measure(state))

    def measure(self, state: torch.Tensor) -> torch.Tensor:
        """Prepare the unit vectors, let the array evolve, measure: TMR voltages (B, 3N) in V.

        Readings outside the devices' physical window raise :class:`InstrumentFaultError` (setup made safe)."""
        n = self.station.n
        if state.ndim != 2 or state.shape[1] != 3 * n:
            raise ValueError(f"state has shape {tuple(state.shape)}; expected (batch, {3 * n})")
        m = state.detach().cpu().to(torch.float64).numpy().reshape(state.shape[0], n, 3)
        if not np.all(np.isfinite(m)):
            raise ValueError("state contains non-finite values")
        norm_error = np.abs(np.linalg.norm(m, axis=-1) - 1.0)
        if norm_error.max(initial=0.0) > UNIT_NORM_TOLERANCE:
            b, i = np.unravel_index(int(np.argmax(norm_error)), norm_error.shape)
            raise ValueError(
                f"state of sample {b}, device {i} has |m| = {np.linalg.norm(m[b, i]):.6g}; evolve "
                "expects the unit vectors of initial_state"
            )
        if not self._conn.open:
            raise DriverClosedError(
                f"station {self.station.name}: the driver is not open; use `with LabSTOArray(...)"
                " as hw:` or call open() (a driver shut down after an error must be reopened)"
            )
        # exactly unit length, so that the pulses H_prep m stay within the field limit H_prep <= max_field
        # (checked before anything is sent: a refused state leaves the driver open)
        m = m / np.linalg.norm(m, axis=-1, keepdims=True)
        assert self.field_source is not None
        self.field_source.check("waveform", self.station.preparation_field_oe * m.reshape(-1))
        out = np.empty_like(m)
        with self._guard():
            for start in range(0, m.shape[0], self.station.max_batch):
                chunk = m[start : start + self.station.max_batch]
                out[start : start + chunk.shape[0]] = self._acquire(chunk)
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
        self._check_physical(volts, dg.label)
        fs.check_errors()
        dg.check_errors()
        self.acquisitions += 1
        return volts

    def _check_physical(self, volts: np.ndarray, who: str) -> None:
        """Refuse readings outside the devices' physical window (:class:`InstrumentFaultError`)."""
        lo, hi = self.voltage_window_v
        v = np.asarray(volts, dtype=np.float64).reshape(-1, self.station.n, SAMPLES_PER_DEVICE)
        bad = ~np.isfinite(v) | (v < lo) | (v > hi)
        if bad.any():
            b, i, k = (int(x) for x in np.argwhere(bad)[0])
            st, dev = self.station, self.station.device
            raise InstrumentFaultError(
                f"{who}: reading {v[b, i, k]:g} V of device {i} (sample {b}, time {k}) is outside the voltage the "
                f"junctions can produce at I = {st.bias_current_a:g} A, [{lo:.4g} V, {hi:.4g} V] (I R_P = "
                f"{st.bias_current_a * dev.parallel_resistance_ohm:.4g} V to I R_AP = "
                f"{st.bias_current_a * dev.parallel_resistance_ohm * (1 + dev.tmr_ratio):.4g} V, widened by the factor "
                f"1 + {self.reading_tolerance:g}; {int(bad.sum())} of {bad.size} readings): an instrument or wiring "
                "fault (open or shorted junction, wrong channel), not data"
            )

    def state_from_measurement(self, measurement: torch.Tensor) -> torch.Tensor:
        """Measured TMR voltages (B, 3N) in V -> the states (B, 3N): m.p estimates with the nominal affine TMR
        relation m.p = 1 - (2/TMR) (V/(I R_P) - 1).

        Voltages outside the devices' physical window raise :class:`InstrumentFaultError`."""
        n = self.station.n
        if measurement.ndim != 2 or measurement.shape[1] != SAMPLES_PER_DEVICE * n:
            raise ValueError(
                f"measurement has shape {tuple(measurement.shape)}; expected (batch, "
                f"{SAMPLES_PER_DEVICE * n}) TMR voltages for {self.describe().name}"
            )
        self._check_physical(measurement.detach().cpu().to(torch.float64).numpy(), f"station {self.station.name}")
        dev = self.station.device
        return projection_from_voltage(
            measurement.detach().to(torch.float64),
            self.station.bias_current_a,
            dev.parallel_resistance_ohm,
            dev.tmr_ratio,
        )

    def readout(self, state: torch.Tensor) -> torch.Tensor:
        """The measured states (B, 3N) are the features (m.p estimates); shape and finiteness are checked."""
        size = SAMPLES_PER_DEVICE * self.station.n
        if state.ndim != 2 or state.shape[1] != size:
            raise ValueError(
                f"state has shape {tuple(state.shape)}; expected (batch, {size}) for {self.describe().name}"
            )
        if not bool(torch.isfinite(state).all()):
            raise ValueError(f"state for {self.describe().name} contains non-finite values")
        return state
