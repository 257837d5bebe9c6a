"""A digital twin of a station: fake instruments that answer by running the simulator.

:class:`DigitalTwin` plays the lab behind a station file. Its
:meth:`~DigitalTwin.resource_manager` opens the station's three VISA addresses as fake
transports (``write``/``query``/``close``/``timeout``, like a pyvisa resource) that speak
the same SCPI dialect as the instruments: a Keithley-2400-style current source, a
field-pulse source and a segmented digitizer. The driver
(:class:`~stosim.hardware.lab_array.LabSTOArray`) cannot tell it from the lab.

When the field source plays its sequence (``:INIT``) while the digitizer is armed, the
twin prepares each device's magnetization along its field pulses, evolves the array with
:func:`stosim.simulation.evolve` (the Numba kernels; stochastic Heun with a thermal field
when ``temperature_k > 0``) and records each device's TMR voltage at the digitizer's sample
times, V = I R_P,i (1 + TMR_i (1 - m.p)/2) (:mod:`stosim.physics.tmr`) plus observation noise
(:func:`stosim.physics.noise.add_observation_noise`, scaled per segment).

The twin's "true" physics differs from the station's nominal model (:class:`Mismatch`),
as a lab's does: per-device spreads of the effective anisotropy, damping and spin-torque
current, an error of the delivered current, of mu and of the coupling matrix W, an offset
of the applied field, per-device spreads of R_P and of the TMR ratio (calibration errors
of the readout), a misalignment of the prepared states, thermal noise and observation noise.

Like an instrument, the twin queues an SCPI error (read with ``:SYST:ERR?``) for an unknown
command or a value out of its range and does not apply it, and an unknown query (or a fetch
with nothing recorded) times out.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np
from pyvisa import constants
from pyvisa.errors import VisaIOError

from stosim.hardware.station import Station
from stosim.physics.array import STOArray, Variability
from stosim.physics.coupling import random_coupling_matrix
from stosim.physics.noise import add_observation_noise
from stosim.physics.tmr import voltage_at_bias_current_v
from stosim.simulation import NoiseSettings, evolve, steps_for_duration

__all__ = ["Mismatch", "DigitalTwin", "TwinResourceManager", "TwinInstrument"]

OVERFLOW = 9.9e37


@dataclasses.dataclass(frozen=True)
class Mismatch:
    """How the twin's "true" lab differs from the station's nominal model (relative numbers).

    - ``anisotropy_spread``: per-device relative spread of the *effective* anisotropy
      H_K - 4 pi M (the dynamics' scale; converted to a spread of H_K);
    - ``damping_spread``, ``current_spread``: per-device relative spreads of alpha and of the
      spin-torque current;
    - ``current_error``: relative error of the current delivered to every device vs the setpoint;
    - ``coupling_error``: relative error of mu; ``coupling_matrix_noise``: Gaussian error of each
      off-diagonal W entry relative to the rms entry;
    - ``applied_field_error_oe``: offset of H_appl (Oe);
    - ``resistance_spread``, ``tmr_spread``: per-device spreads of R_P and of the TMR ratio;
    - ``preparation_angle_deg``: rms angle between the prepared and the requested magnetization;
    - ``temperature_k``: thermal field; ``observation_snr_db``: noise on each recorded voltage,
      SNR relative to the variance of each segment's record, its N devices x sample times, the
      per-sample scaling of :func:`stosim.physics.noise.observation_noise_scale` (None: none);
    - ``seed``: of every draw above and of the noise streams.
    """

    anisotropy_spread: float = 0.0
    damping_spread: float = 0.0
    current_spread: float = 0.0
    current_error: float = 0.0
    coupling_error: float = 0.0
    coupling_matrix_noise: float = 0.0
    applied_field_error_oe: float = 0.0
    resistance_spread: float = 0.0
    tmr_spread: float = 0.0
    preparation_angle_deg: float = 0.0
    temperature_k: float = 0.0
    observation_snr_db: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in (
            "anisotropy_spread",
            "damping_spread",
            "current_spread",
            "resistance_spread",
            "tmr_spread",
            "coupling_matrix_noise",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value <= 0.5):
                raise ValueError(f"mismatch {name} = {value!r} must be a relative spread in [0, 0.5]")
        for name in ("current_error", "coupling_error"):
            value = getattr(self, name)
            if not (math.isfinite(value) and -0.5 <= value <= 0.5):
                raise ValueError(f"mismatch {name} = {value!r} must be a relative error in [-0.5, 0.5]")
        if not (math.isfinite(self.applied_field_error_oe) and abs(self.applied_field_error_oe) <= 1e4):
            raise ValueError(
                f"mismatch applied_field_error_oe = {self.applied_field_error_oe!r} must be in [-1e4, 1e4] Oe"
            )
        if not (math.isfinite(self.preparation_angle_deg) and 0 <= self.preparation_angle_deg <= 90):
            raise ValueError(f"mismatch preparation_angle_deg = {self.preparation_angle_deg!r} must be in [0, 90] deg")
        if not (math.isfinite(self.temperature_k) and 0 <= self.temperature_k <= 1e4):
            raise ValueError(f"mismatch temperature_k = {self.temperature_k!r} must be in [0, 1e4] K")
        if self.observation_snr_db is not None and not math.isfinite(self.observation_snr_db):
            raise ValueError(f"mismatch observation_snr_db = {self.observation_snr_db!r} must be finite or None")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"mismatch seed = {self.seed!r} must be an integer >= 0")

    @classmethod
    def lab(cls, scale: float = 1.0, seed: int = 0) -> "Mismatch":
        """A plausible lab. Dynamics: 5 % per-device spreads of H_K - 4 pi M, alpha and the torque
        current, 5 % errors of the delivered current, of mu and of W, a 5 Oe field offset, 3 deg
        preparation error, 300 K. Readout calibration: 15 % spread of R_P (5 % in diameter), 10 % of
        the TMR ratio; 30 dB observation SNR. ``scale`` multiplies every spread, error and angle."""
        s = float(scale)
        return cls(
            anisotropy_spread=0.05 * s,
            damping_spread=0.05 * s,
            current_spread=0.05 * s,
            current_error=0.05 * s,
            coupling_error=0.05 * s,
            coupling_matrix_noise=0.05 * s,
            applied_field_error_oe=5.0 * s,
            resistance_spread=0.15 * s,
            tmr_spread=0.10 * s,
            preparation_angle_deg=3.0 * s,
            temperature_k=300.0,
            observation_snr_db=30.0,
            seed=seed,
        )

    def as_attrs(self) -> dict[str, float | int | str]:
        return {f"twin_{k}": ("none" if v is None else v) for k, v in dataclasses.asdict(self).items()}


def _timeout() -> VisaIOError:
    return VisaIOError(constants.StatusCode.error_timeout)


class TwinInstrument:
    """A fake message-based resource: parses ``HEADER [ARG]`` and dispatches to handlers."""

    def __init__(
        self,
        lab: "DigitalTwin",
        address: str,
        idn: str,
        setters: dict[str, tuple[str, float | None, float | None, Any]],
        actions: dict[str, Callable[[], str | None]],
    ) -> None:
        self.lab = lab
        self.address = address
        self.idn = idn
        self.timeout = 2000.0  # ms, like pyvisa
        self.read_termination = "\n"
        self.write_termination = "\n"
        self.values: dict[str, Any] = {h: default for h, (_, _, _, default) in setters.items()}
        self._setters = setters
        self._actions = actions
        self._errors: list[str] = []
        self._answers: list[str] = []
        self.closed = False
        self.log: list[str] = []

    # -- the transport interface ------------------------------------------------------
    def write(self, message: str) -> int:
        self._check_open()
        self.log.append(message)
        answer = self._handle(message.strip())
        if answer is not None:
            self._answers.append(answer)
        return len(message)

    def read(self) -> str:
        self._check_open()
        if not self._answers:
            raise _timeout()
        return self._answers.pop(0)

    def query(self, message: str) -> str:
        self.write(message)
        return self.read()

    def close(self) -> None:
        self.closed = True

    def clear(self) -> None:
        self._answers.clear()

    def _check_open(self) -> None:
        if self.closed:
            raise VisaIOError(constants.StatusCode.error_invalid_object)

    # -- SCPI -------------------------------------------------------------------------
    def _error(self, code: int, text: str) -> None:
        self._errors.append(f'{code},"{text}"')

    def _handle(self, message: str) -> str | None:
        header, _, arg = message.partition(" ")
        header, arg = header.upper(), arg.strip()
        if header == "*IDN?":
            return self.idn
        if header == ":SYST:ERR?":
            return self._errors.pop(0) if self._errors else '0,"No error"'
        if header in self._actions:
            return self._actions[header]()
        if header.endswith("?") and header[:-1] in self._setters:
            kind, _, _, _ = self._setters[header[:-1]]
            value = self.values[header[:-1]]
            return {
                "float": lambda v: f"{v:.6E}",
                "int": str,
                "choice": str,
                "list": lambda v: ",".join(f"{x:.6E}" for x in v),
            }[kind](value)
        if header in self._setters and arg:
            self._set(header, arg)
            return None
        if header.endswith("?"):
            return None  # an unknown query is never answered: the read times out
        self._error(-100, f"Command error; {header}")
        return None

    def _set(self, header: str, arg: str) -> None:
        kind, lo, hi, _ = self._setters[header]
        try:
            if kind == "choice":
                value: Any = arg.upper()
                if value not in lo:  # type: ignore[operator]
                    raise ValueError
            elif kind == "list":
                value = np.array([float(x) for x in arg.split(",")])
                if not np.all(np.isfinite(value)) or np.any(value < lo) or np.any(value > hi):
                    self._error(-222, f"Data out of range; {header}")
                    return
            else:
                value = int(arg) if kind == "int" else float(arg)
                if not math.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
                    self._error(-222, f"Data out of range; {header} {arg}")
                    return
        except ValueError:
            self._error(-104, f"Data type error; {header} {arg[:20]}")
            return
        self.values[header] = value


class TwinResourceManager:
    """Opens the twin's instruments by the station's VISA addresses (like ``pyvisa.ResourceManager``)."""

    def __init__(self, twin: "DigitalTwin") -> None:
        self.twin = twin

    def list_resources(self) -> tuple[str, ...]:
        return tuple(self.twin.instruments)

    def open_resource(self, resource_name: str, **kwargs: Any) -> TwinInstrument:
        inst = self.twin.instruments.get(resource_name)
        if inst is None:
            raise VisaIOError(constants.StatusCode.error_resource_not_found)
        inst.closed = False
        for key in ("timeout", "read_termination", "write_termination"):
            if key in kwargs:
                setattr(inst, key, kwargs[key])
        return inst


class DigitalTwin:
    """The lab behind ``station``, simulated with the :class:`Mismatch` ``mismatch``.

    ``dt_s`` is the twin's integration step (sample times must be whole multiples of it).
    """

    def __init__(self, station: Station, mismatch: Mismatch = Mismatch(), *, dt_s: float = 1e-12) -> None:
        self.station = station
        self.mismatch = mismatch
        self.dt_s = float(dt_s)
        dev = station.device
        mm = mismatch
        n = station.n
        ss = np.random.SeedSequence(mm.seed, spawn_key=(7,))
        rng = [np.random.default_rng(s) for s in ss.spawn(4)]
        # the model's W (as StationModel builds it), then the chip's
        w_model = (
            np.asarray(station.coupling_matrix, dtype=np.float64)
            if station.coupling_matrix is not None
            else random_coupling_matrix(n, np.random.SeedSequence(station.coupling_seed, spawn_key=(0,)))
        )
        off = ~np.eye(n, dtype=bool)
        rms = float(np.sqrt(np.mean(w_model[off] ** 2))) if n > 1 else 0.0
        w_true = w_model + mm.coupling_matrix_noise * rms * rng[0].standard_normal((n, n)) * off
        self.coupling_matrix = w_true
        self.coupling_oe = station.coupling_oe * (1.0 + mm.coupling_error)
        self.device = dev.replace(applied_field_oe=dev.applied_field_oe + mm.applied_field_error_oe)
        hk_spread = (
            mm.anisotropy_spread * abs(dev.effective_anisotropy_field_oe) / dev.anisotropy_field_oe
            if dev.anisotropy_field_oe > 0
            else 0.0
        )
        self.variability = Variability(
            anisotropy_field=hk_spread,
            damping=mm.damping_spread,
            current=mm.current_spread,
            seed=int(rng[1].integers(2**31)),
        )
        self.parallel_resistance_ohm = dev.parallel_resistance_ohm * (
            1.0 + mm.resistance_spread * rng[2].standard_normal(n)
        )
        self.tmr_ratio = dev.tmr_ratio * (1.0 + mm.tmr_spread * rng[3].standard_normal(n))
        if np.any(self.parallel_resistance_ohm <= 0) or np.any(self.tmr_ratio < 0):
            raise ValueError("mismatch drew a non-positive R_P or a negative TMR ratio; reduce the spreads")
        self._arrays: dict[float, STOArray] = {}
        self.acquisitions = 0
        self._noise = np.random.SeedSequence(mm.seed, spawn_key=(8,))
        self._armed = False
        self._record: np.ndarray | None = None
        self.m_current = np.tile(np.array([0.0, 0.0, 1.0]), (1, n, 1))
        self.instruments = {
            station.current_source.address: TwinInstrument(
                self,
                station.current_source.address,
                "KEITHLEY INSTRUMENTS INC.,MODEL 2400,TWIN0001,C32 (digital twin)",
                {
                    ":SOUR:FUNC": ("choice", ("CURR", "VOLT"), None, "VOLT"),
                    ":SOUR:CURR": ("float", -1.05, 1.05, 0.0),
                    ":SENS:VOLT:PROT": ("float", 0.2, 210.0, 21.0),
                    ":OUTP": ("choice", ("ON", "OFF", "1", "0"), None, "OFF"),
                },
                {"*RST": lambda: None, "*CLS": lambda: None},
            ),
            station.field_source.address: TwinInstrument(
                self,
                station.field_source.address,
                "STOSIM,FIELD-PULSE-AWG,TWIN0002,1.0 (digital twin)",
                {
                    ":WAV:POIN": ("int", 1, 3072, 3),
                    ":WAV:SEGM": ("int", 1, 4096, 1),
                    ":WAV:DATA": ("list", -5000.0, 5000.0, np.zeros(3)),
                    ":OUTP": ("choice", ("ON", "OFF", "1", "0"), None, "OFF"),
                },
                {
                    "*RST": lambda: None,
                    "*CLS": lambda: None,
                    ":INIT": self._play,
                    ":ABOR": lambda: None,
                    "*OPC?": lambda: "1",
                },
            ),
            station.digitizer.address: TwinInstrument(
                self,
                station.digitizer.address,
                "STOSIM,SEGMENTED-DIGITIZER,TWIN0003,1.0 (digital twin)",
                {
                    ":CHAN:COUN": ("int", 1, 1024, 1),
                    ":ACQ:SEGM": ("int", 1, 4096, 1),
                    ":ACQ:POIN": ("int", 1, 1000, 1),
                    ":ACQ:SINT": ("float", 1e-11, 1e-3, 1e-9),
                    ":TRIG:DEL": ("float", 0.0, 1e-3, 0.0),
                    ":VOLT:RANG": ("float", 0.05, 10.0, 1.0),
                },
                {
                    "*RST": lambda: None,
                    "*CLS": lambda: None,
                    ":INIT": self._arm,
                    ":ABOR": self._abort,
                    ":FETC?": self._fetch,
                    "*OPC?": lambda: "1",
                },
            ),
        }

    # -- wiring --------------------------------------------------------------------------
    def resource_manager(self) -> TwinResourceManager:
        return TwinResourceManager(self)

    @property
    def current_source(self) -> TwinInstrument:
        return self.instruments[self.station.current_source.address]

    @property
    def field_source(self) -> TwinInstrument:
        return self.instruments[self.station.field_source.address]

    @property
    def digitizer(self) -> TwinInstrument:
        return self.instruments[self.station.digitizer.address]

    # -- the physics ---------------------------------------------------------------------
    def delivered_current_a(self) -> float:
        """The current through each device: the setpoint times (1 + current_error) with the output on, else 0."""
        cs = self.current_source.values
        if cs[":OUTP"] not in ("ON", "1") or cs[":SOUR:FUNC"] != "CURR":
            return 0.0
        return float(cs[":SOUR:CURR"]) * (1.0 + self.mismatch.current_error)

    def true_array(self, current_a: float) -> STOArray:
        """The chip's array at the delivered current (cached per current)."""
        key = round(current_a, 15)
        if key not in self._arrays:
            self._arrays[key] = STOArray.with_matrix(
                self.device, self.coupling_matrix, self.coupling_oe, current_a=current_a, variability=self.variability
            )
        return self._arrays[key]

    def _arm(self) -> None:
        self._armed = True
        self._record = None

    def _abort(self) -> None:
        self._armed = False

    def _fetch(self) -> str | None:
        if self._record is None:
            return None  # nothing recorded: the query times out, as a digitizer waiting for its trigger does
        rec, self._record = self._record, None
        return ",".join(f"{v:.6E}" for v in rec.ravel())

    def _next_rng(self) -> np.random.Generator:
        self.acquisitions += 1
        return np.random.default_rng(self._noise.spawn(1)[0])

    def _play(self) -> None:
        fs, dg = self.field_source.values, self.digitizer.values
        n = self.station.n
        segments, points = int(fs[":WAV:SEGM"]), int(fs[":WAV:POIN"])
        data = np.asarray(fs[":WAV:DATA"])
        if points != 3 * n or data.size != segments * points:
            self.field_source._error(
                -221,
                f"Settings conflict; {data.size} values for {segments} x {points} points "
                f"and {n} devices x 3 field lines",
            )
            return
        rng = self._next_rng()
        if fs[":OUTP"] in ("ON", "1"):
            h = data.reshape(segments, n, 3)
            norm = np.linalg.norm(h, axis=-1, keepdims=True)
            m0 = np.where(norm > 0, h / np.where(norm > 0, norm, 1.0), np.array([0.0, 0.0, 1.0]))
            sigma = math.radians(self.mismatch.preparation_angle_deg) / math.sqrt(2.0)
            if sigma > 0:
                m0 = m0 + sigma * rng.standard_normal(m0.shape)
                m0 /= np.linalg.norm(m0, axis=-1, keepdims=True)
        else:  # no pulses: the devices stay near their rest state
            m0 = np.tile(np.array([0.0, 0.0, 1.0]), (segments, n, 1))
        if not self._armed:
            return  # the sequence ran, nobody recorded it
        channels, n_points = int(dg[":CHAN:COUN"]), int(dg[":ACQ:POIN"])
        if channels != n or int(dg[":ACQ:SEGM"]) != segments:
            self.digitizer._error(
                -221,
                f"Settings conflict; {channels} channels x {dg[':ACQ:SEGM']} segments for "
                f"{n} devices x {segments} triggers",
            )
            self._armed = False
            return
        current = self.delivered_current_a()
        array = self.true_array(current)
        noise = NoiseSettings(temperature_k=self.mismatch.temperature_k)
        times = [float(dg[":TRIG:DEL"]) + k * float(dg[":ACQ:SINT"]) for k in range(n_points)]
        m, t_now = m0, 0.0
        p = np.asarray(self.device.reference_direction)
        record = np.empty((segments, n, n_points))
        for k, t in enumerate(times):
            if t > t_now:
                steps = steps_for_duration(t - t_now, self.dt_s)
                m, _, _ = evolve(array, m, steps, self.dt_s, noise=noise, seed=int(rng.integers(2**31)))
                t_now += steps * self.dt_s
            record[:, :, k] = m @ p
        volts = voltage_at_bias_current_v(
            record, self.parallel_resistance_ohm[None, :, None], self.tmr_ratio[None, :, None], current
        )
        snr = self.mismatch.observation_snr_db
        if snr is not None:  # per segment (one read-in sample): its N devices x sample times, as the substrate does
            volts = add_observation_noise(volts, snr, rng, sample_axes=(1, 2))
        volts = np.where(np.abs(volts) > float(dg[":VOLT:RANG"]), OVERFLOW, volts)
        self.m_current = m
        self._record = volts
        self._armed = False
