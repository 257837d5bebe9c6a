"""Instrument drivers with declared commands: units, limits, bounded retries.

Every settable parameter of an instrument is a :class:`Command` with its SCPI template,
unit and hardware limits (in the spirit of QCoDeS parameters and PyMeasure's
``Instrument.control``). :meth:`Instrument.set` checks the value against the limits (the
instrument's own, narrowed by the station file: never widened) and raises ``ValueError``
naming the instrument, parameter, value, unit and limits *before anything is sent*.
Nothing is clamped.

Every write and query goes through :meth:`Instrument.write` / :meth:`Instrument.query`,
which retry a transport timeout (pyvisa ``VisaIOError`` with the timeout status, or
``TimeoutError``) at most ``retries`` times, then raise :class:`InstrumentTimeoutError`
naming the instrument, address and message.

Three instrument classes make an STO-array station (see :mod:`stosim.hardware.lab_array`):

- :class:`CurrentSource2400`: a Keithley-2400-style SCPI current source (bias current);
- :class:`FieldPulseSource`: a multi-channel arbitrary-waveform field-pulse source writing
  the prepared state (3 field pulses per device, one segment per sample of a batch);
- :class:`SegmentedDigitizer`: a multi-channel digitizer with segmented memory reading
  each device's TMR voltage at a few instants after a trigger delay.

:data:`INSTRUMENTS` maps the driver names used in station files to these classes.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import time
from types import MappingProxyType
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from stosim.hardware.transport import is_timeout

__all__ = [
    "Command",
    "ListCommand",
    "Instrument",
    "InstrumentError",
    "InstrumentTimeoutError",
    "InstrumentFaultError",
    "InstrumentIdentityError",
    "CurrentSource2400",
    "FieldPulseSource",
    "SegmentedDigitizer",
    "INSTRUMENTS",
    "instrument_class",
    "idn_model",
]


class InstrumentError(RuntimeError):
    """An instrument reported an error (SCPI error queue) or answered something unusable."""


class InstrumentTimeoutError(InstrumentError, TimeoutError):
    """An instrument did not answer within its timeout, every one of the bounded attempts."""


class InstrumentFaultError(InstrumentError):
    """A reading that cannot be data: beyond the instrument's configured range, or outside what the
    device can physically produce. The message names the reading, the range and the instrument."""


class InstrumentIdentityError(InstrumentError):
    """The instrument at an address is not the model the station file expects (``*IDN?``)."""


def idn_model(idn: str) -> str:
    """The manufacturer and model fields of an ``*IDN?`` answer (``"MAKER,MODEL,SERIAL,FIRMWARE"``), normalized
    for comparison: the first two comma-separated fields, stripped, upper case, inner blanks collapsed."""
    fields = [" ".join(f.split()).upper() for f in str(idn).split(",")[:2]]
    return ",".join(fields)


# messages that act each time they arrive: after a timeout they are not sent again (the first may have
# arrived: a second :SYST:ERR? would drop the error it read from the queue, a second :INIT fire twice)
NOT_RETRIED = frozenset({":SYST:ERR?", ":INIT"})


def _format_limit(value: float | None, unit: str) -> str:
    return "unbounded" if value is None else f"{value:g} {unit}".rstrip()


@dataclasses.dataclass(frozen=True)
class Command:
    """One settable (and optionally queryable) instrument parameter.

    ``scpi`` is a format template with ``{value}`` (e.g. ``":SOUR:CURR {value:.6E}"``);
    ``query`` the matching query (``":SOUR:CURR?"``) or None. ``kind`` is ``"float"``,
    ``"int"`` or ``"choice"`` (one of ``choices``). ``minimum``/``maximum`` are the
    instrument's hardware limits in ``unit`` (inclusive).
    """

    name: str
    scpi: str
    unit: str = ""
    minimum: float | None = None
    maximum: float | None = None
    query: str | None = None
    kind: str = "float"
    choices: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("float", "int", "choice"):
            raise ValueError(f"command {self.name}: kind {self.kind!r} must be 'float', 'int' or 'choice'")
        if self.kind == "choice" and not self.choices:
            raise ValueError(f"command {self.name}: a 'choice' command needs choices")

    def check(self, value: Any, who: str, minimum: float | None = None, maximum: float | None = None) -> Any:
        """The value, validated (finite, of the right kind, within [minimum, maximum]); else ``ValueError``."""
        lo = self.minimum if minimum is None else minimum
        hi = self.maximum if maximum is None else maximum
        if self.kind == "choice":
            text = str(value).upper()
            if text not in self.choices:
                raise ValueError(f"{who}: {self.name} = {value!r} is not one of {list(self.choices)}")
            return text
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"{who}: {self.name} = {value!r} must be a number ({self.unit or 'dimensionless'})")
        if not math.isfinite(value):
            raise ValueError(
                f"{who}: {self.name} = {value!r} is not finite; valid: "
                f"[{_format_limit(lo, self.unit)}, {_format_limit(hi, self.unit)}]"
            )
        if self.kind == "int":
            if int(value) != value:
                raise ValueError(f"{who}: {self.name} = {value!r} must be an integer")
            value = int(value)
        else:
            value = float(value)
        if not math.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ValueError(
                f"{who}: {self.name} = {value:g} {self.unit} is out of range; valid: "
                f"[{_format_limit(lo, self.unit)}, {_format_limit(hi, self.unit)}]"
            )
        return value

    def message(self, value: Any) -> str:
        return self.scpi.format(value=value)


@dataclasses.dataclass(frozen=True)
class ListCommand:
    """A list-valued write (e.g. waveform data): ``scpi`` is the header, values are comma-separated
    in ``fmt``; every value must lie within [minimum, maximum] ``unit``."""

    name: str
    scpi: str
    unit: str
    minimum: float
    maximum: float
    fmt: str = "{:.6E}"
    query: str | None = None
    description: str = ""

    def check(self, values: Any, who: str, minimum: float | None = None, maximum: float | None = None) -> np.ndarray:
        lo = self.minimum if minimum is None else minimum
        hi = self.maximum if maximum is None else maximum
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.size == 0:
            raise ValueError(f"{who}: {self.name} is empty")
        bad = ~np.isfinite(v) | (v < lo) | (v > hi)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{who}: {self.name}[{k}] = {v[k]:g} {self.unit} is out of range "
                f"({int(bad.sum())} of {v.size} values); valid: [{lo:g} {self.unit}, {hi:g} {self.unit}]"
            )
        return v

    def message(self, values: np.ndarray) -> str:
        return f"{self.scpi} " + ",".join(self.fmt.format(x) for x in values)


class Instrument:
    """Base class: a named instrument at an address, talking through a transport.

    Subclasses declare ``role`` (``"current_source"``, ``"field_source"``, ``"digitizer"``)
    and ``commands`` (name -> :class:`Command` / :class:`ListCommand`). ``limits`` narrows
    hardware limits per command: ``{"current": (-5e-3, 5e-3)}``; a limit outside the
    hardware range raises ``ValueError``.
    """

    role: ClassVar[str] = ""
    model: ClassVar[str] = ""
    #: the manufacturer and model of ``*IDN?`` that this driver is written for (``"MAKER,MODEL"``); a station
    #: file's ``model`` key replaces it. Empty: the station file must name one.
    idn: ClassVar[str] = ""
    commands: ClassVar[Mapping[str, Command | ListCommand]] = MappingProxyType({})
    error_query: ClassVar[str | None] = ":SYST:ERR?"

    def __init__(
        self,
        transport: Any,
        *,
        name: str | None = None,
        address: str = "",
        retries: int = 2,
        timeout_s: float | None = None,
        retry_delay_s: float = 0.0,
        limits: Mapping[str, tuple[float | None, float | None]] | None = None,
    ) -> None:
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 100:
            raise ValueError(f"retries = {retries!r} must be an integer in [0, 100]")
        self.transport = transport
        self.name = name or self.role or type(self).__name__
        self.address = address
        self.retries = retries
        self.retry_delay_s = float(retry_delay_s)
        self.values: dict[str, Any] = {}  # last value set per command
        self.attempts_failed = 0  # timeouts seen (retried or not)
        self._limits: dict[str, tuple[float | None, float | None]] = {}
        for key, (lo, hi) in (limits or {}).items():
            self.narrow_limits(key, lo, hi)
        if timeout_s is not None:
            if not (math.isfinite(timeout_s) and timeout_s > 0):
                raise ValueError(f"{self.label}: timeout = {timeout_s!r} s must be > 0 s")
            transport.timeout = timeout_s * 1e3  # pyvisa: ms
        self.timeout_s = timeout_s

    @property
    def label(self) -> str:
        return f"{self.name} ({type(self).__name__} at {self.address})" if self.address else self.name

    # -- limits ----------------------------------------------------------------------
    def narrow_limits(self, command: str, minimum: float | None, maximum: float | None) -> None:
        """Narrow the limits of ``command`` (station limits); never beyond the hardware's."""
        cmd = self.commands[command]
        for bound, what in ((minimum, "minimum"), (maximum, "maximum")):
            if bound is None:
                continue
            if (cmd.minimum is not None and bound < cmd.minimum) or (cmd.maximum is not None and bound > cmd.maximum):
                hw = f"[{_format_limit(cmd.minimum, cmd.unit)}, {_format_limit(cmd.maximum, cmd.unit)}]"
                raise ValueError(
                    f"{self.label}: {command} limit {what} = {bound:g} {cmd.unit} is outside the hardware range {hw}"
                )
        self._limits[command] = (minimum, maximum)

    def limits(self, command: str) -> tuple[float | None, float | None]:
        """Effective (minimum, maximum) of ``command``."""
        cmd = self.commands[command]
        lo, hi = self._limits.get(command, (None, None))
        return (cmd.minimum if lo is None else lo), (cmd.maximum if hi is None else hi)

    def check(self, command: str, value: Any) -> Any:
        """Validate a value for ``command`` against the effective limits (raises ``ValueError``); sends nothing."""
        lo, hi = self.limits(command)
        return self.commands[command].check(value, self.label, lo, hi)

    # -- I/O with bounded retries ----------------------------------------------------
    def _retrying(self, op: str, message: str) -> Any:
        """Send ``message``; a timeout is retried up to ``retries`` times, except for the messages
        that act each time they arrive (:data:`NOT_RETRIED`). Before a query is sent again, the
        transport's output buffer is cleared (when it can be), so that a late answer to the first
        attempt is not read as the answer to a later query."""
        last: BaseException | None = None
        attempts = 1 if message.split(" ", 1)[0].upper() in NOT_RETRIED else self.retries + 1
        for attempt in range(attempts):
            try:
                if attempt > 0 and op == "query":
                    self._clear_output()
                if op == "write":
                    return self.transport.write(message)
                return self.transport.query(message)
            except Exception as exc:  # only timeouts are retried, the rest re-raised at once
                if not is_timeout(exc):
                    raise
                self.attempts_failed += 1
                last = exc
                if attempt < attempts - 1 and self.retry_delay_s > 0:
                    time.sleep(self.retry_delay_s)
        short = message if len(message) <= 60 else message[:57] + "..."
        timeout = f" (timeout {self.timeout_s:g} s each)" if self.timeout_s else ""
        tries = f"after {attempts} attempts" if attempts > 1 else "(not re-sent: it acts each time it arrives)"
        raise InstrumentTimeoutError(
            f"{self.label}: no answer to {op} {short!r} {tries}{timeout}; "
            "check the connection and that the instrument is on"
        ) from last

    def _clear_output(self) -> None:
        """Device clear (pyvisa's ``clear()``: discards unread answers), where the transport has one."""
        clear = getattr(self.transport, "clear", None)
        if callable(clear):
            try:
                clear()
            except NotImplementedError:  # e.g. pyvisa-sim sessions: nothing to discard there
                pass

    def write(self, message: str) -> None:
        """Send one command (timeouts retried ``retries`` times)."""
        self._retrying("write", message)

    def query(self, message: str) -> str:
        """Send one query and return the stripped answer (timeouts retried ``retries`` times)."""
        answer = self._retrying("query", message)
        return str(answer).strip()

    # -- declared commands -----------------------------------------------------------
    def set(self, command: str, value: Any) -> Any:
        """Check ``value`` against the limits of ``command`` (``ValueError`` before sending), then send it."""
        cmd = self.commands[command]
        checked = self.check(command, value)
        self.write(cmd.message(checked))
        self.values[command] = checked
        return checked

    def get(self, command: str) -> Any:
        """Query the present value of ``command``."""
        cmd = self.commands[command]
        if cmd.query is None:
            raise ValueError(f"{self.label}: {command} cannot be queried")
        text = self.query(cmd.query)
        try:
            if isinstance(cmd, ListCommand):
                return np.array([float(x) for x in text.split(",")])
            if cmd.kind == "choice":
                return text.upper()
            return int(float(text)) if cmd.kind == "int" else float(text)
        except ValueError:
            kind = getattr(cmd, "kind", "list")
            raise InstrumentError(f"{self.label}: answer {text!r} to {cmd.query!r} is not a {kind}") from None

    def identify(self) -> str:
        """``*IDN?``."""
        return self.query("*IDN?")

    def check_identity(self, expected: str | None = None) -> str:
        """``*IDN?``, checked: its manufacturer and model fields must be those of ``expected`` (``"MAKER,MODEL"``,
        default: the class's :attr:`idn`), compared by :func:`idn_model`. Returns the whole answer; raises
        :class:`InstrumentIdentityError` naming the instrument, the expected and the answered model, before any
        setting is sent (a wrong instrument at the address must not be driven as this one)."""
        want = expected if expected is not None else self.idn
        if not idn_model(want).strip(","):
            raise InstrumentIdentityError(
                f"{self.label}: no expected model to check *IDN? against; give the "
                f'station file\'s [{self.role}] model = "MAKER,MODEL"'
            )
        answer = self.identify()
        if idn_model(answer) != idn_model(want):
            raise InstrumentIdentityError(
                f"{self.label}: *IDN? answered {answer!r}, manufacturer and model {idn_model(answer)!r}; the station "
                f"expects {idn_model(want)!r} ([{self.role}] model). Check the address, or the station file's model "
                "if this instrument is meant to be used"
            )
        return answer

    def check_errors(self) -> None:
        """Read the SCPI error queue until it is empty; raise :class:`InstrumentError` listing what it held."""
        if self.error_query is None:
            return
        errors = []
        for _ in range(32):
            text = self.query(self.error_query)
            code = text.split(",", 1)[0].strip()
            try:
                if int(float(code)) == 0:
                    break
            except ValueError:
                raise InstrumentError(f"{self.label}: unreadable answer {text!r} to {self.error_query!r}") from None
            errors.append(text)
        if errors:
            raise InstrumentError(f"{self.label} reports: " + "; ".join(errors))

    def close(self) -> None:
        """Close the transport (the safe-state sequence is the station driver's job)."""
        self.transport.close()


# ---------------------------------------------------------------------------------------
# Concrete instruments
# ---------------------------------------------------------------------------------------


def _on_off(text: str, who: str) -> bool:
    t = text.strip().upper()
    if t in ("1", "ON"):
        return True
    if t in ("0", "OFF"):
        return False
    raise InstrumentError(f"{who}: output state {text!r} is neither ON/1 nor OFF/0")


class CurrentSource2400(Instrument):
    """Keithley-2400-style SCPI current source supplying the array's bias current.

    ``current`` (A, hardware range +-1.05 A), ``compliance_voltage`` (V, 0.2 ... 210 V),
    ``output`` (ON/OFF), ``function`` (CURR/VOLT). :meth:`ramp_to` changes the current in
    steps of at most ``step_a`` with ``dwell_s`` between them.
    """

    role = "current_source"
    model = "Keithley 2400 (SCPI)"
    idn = "KEITHLEY INSTRUMENTS INC.,MODEL 2400"
    commands = MappingProxyType(
        {
            "function": Command(
                "function", ":SOUR:FUNC {value}", kind="choice", choices=("CURR", "VOLT"), description="source function"
            ),
            "current": Command(
                "current",
                ":SOUR:CURR {value:.6E}",
                "A",
                -1.05,
                1.05,
                query=":SOUR:CURR?",
                description="source current setpoint",
            ),
            "compliance_voltage": Command(
                "compliance_voltage",
                ":SENS:VOLT:PROT {value:.6E}",
                "V",
                0.2,
                210.0,
                query=":SENS:VOLT:PROT?",
                description="voltage compliance",
            ),
            "output": Command(
                "output",
                ":OUTP {value}",
                kind="choice",
                choices=("ON", "OFF"),
                query=":OUTP?",
                description="output relay",
            ),
        }
    )

    # typed setters (each checks the limits before sending)
    def set_current(self, current_a: float) -> None:
        self.set("current", current_a)

    def set_compliance(self, voltage_v: float) -> None:
        self.set("compliance_voltage", voltage_v)

    def set_output(self, on: bool) -> None:
        self.set("output", "ON" if on else "OFF")

    def output_is_on(self) -> bool:
        return _on_off(self.query(":OUTP?"), self.label)

    def ramp_to(self, target_a: float, step_a: float, dwell_s: float = 0.0, start_a: float | None = None) -> None:
        """Step the current from ``start_a`` (default: the last value set, else the instrument's) to
        ``target_a`` in steps of at most ``step_a``; the target is checked before anything is sent."""
        target = self.check("current", target_a)
        if not (math.isfinite(step_a) and step_a > 0):
            raise ValueError(f"{self.label}: ramp step = {step_a!r} A must be > 0 A")
        if start_a is None:
            start_a = self.values.get("current")
        if start_a is None:
            start_a = self.get("current")
        n = max(1, math.ceil(abs(target - start_a) / step_a - 1e-9))
        for k in range(1, n + 1):
            value = target if k == n else start_a + (target - start_a) * k / n
            lo, hi = self.limits("current")
            if lo <= value <= hi:
                self.set("current", value)
            else:
                # beyond the station limit only because the ramp starts beyond it (left so by someone
                # else): each step goes towards the target, so it is allowed within the hardware range
                cmd = self.commands["current"]
                checked = cmd.check(value, self.label)
                self.write(cmd.message(checked))
                self.values["current"] = checked
            if dwell_s > 0:
                time.sleep(dwell_s)


class FieldPulseSource(Instrument):
    """Multi-channel field-pulse source (an AWG driving on-chip field lines).

    The waveform holds ``points`` values per segment (3 per device: the x, y, z field-pulse
    amplitudes in Oe) and ``segments`` segments (one per sample of a batch). ``:INIT`` plays
    the sequence: each segment's pulses set the devices' magnetizations along the pulse
    fields, then the source triggers the digitizer; ``*OPC?`` waits until the sequence is done.
    """

    role = "field_source"
    model = "multi-channel field-pulse AWG (SCPI)"
    idn = "STOSIM,FIELD-PULSE-AWG"
    commands = MappingProxyType(
        {
            "points": Command(
                "points",
                ":WAV:POIN {value:d}",
                "",
                1,
                3072,
                query=":WAV:POIN?",
                kind="int",
                description="values per segment (3 per device)",
            ),
            "segments": Command(
                "segments",
                ":WAV:SEGM {value:d}",
                "",
                1,
                4096,
                query=":WAV:SEGM?",
                kind="int",
                description="segments in the sequence (samples per batch)",
            ),
            "waveform": ListCommand(
                "waveform",
                ":WAV:DATA",
                "Oe",
                -5000.0,
                5000.0,
                query=":WAV:DATA?",
                description="field-pulse amplitudes, segment-major, then device, then x/y/z",
            ),
            "output": Command(
                "output",
                ":OUTP {value}",
                kind="choice",
                choices=("ON", "OFF"),
                query=":OUTP?",
                description="output amplifiers",
            ),
        }
    )

    def set_points(self, points: int) -> None:
        self.set("points", points)

    def set_segments(self, segments: int) -> None:
        self.set("segments", segments)

    def set_output(self, on: bool) -> None:
        self.set("output", "ON" if on else "OFF")

    def load_waveform(self, values: np.ndarray) -> None:
        """Check (count = points x segments, every value within the field limits) then send the waveform."""
        cmd = self.commands["waveform"]
        v = self.check("waveform", values)
        expected = self.values.get("points", 0) * self.values.get("segments", 0)
        if v.size != expected:
            raise ValueError(f"{self.label}: waveform has {v.size} values; expected points x segments = {expected}")
        self.write(cmd.message(v))

    def fire(self) -> None:
        """Play the sequence (prepares the states, triggers the digitizer) and wait until done."""
        self.write(":INIT")
        answer = self.query("*OPC?")
        if answer.strip() != "1":
            raise InstrumentError(f"{self.label}: *OPC? answered {answer!r}, expected '1'")


class SegmentedDigitizer(Instrument):
    """Multi-channel digitizer with segmented memory (one channel per device).

    After ``:INIT`` (arm) each trigger records ``points`` samples per channel, the first
    ``trigger_delay`` after the trigger, then every ``sample_interval``; ``:FETC?`` returns
    all of them as comma-separated volts (segment-major, then channel, then sample). A value
    of 9.9E37 (SCPI overflow) marks a sample beyond the input range.
    """

    role = "digitizer"
    model = "multi-channel segmented digitizer (SCPI)"
    idn = "STOSIM,SEGMENTED-DIGITIZER"
    OVERFLOW = 9.9e37
    commands = MappingProxyType(
        {
            "channels": Command(
                "channels",
                ":CHAN:COUN {value:d}",
                "",
                1,
                1024,
                query=":CHAN:COUN?",
                kind="int",
                description="enabled channels (one per device)",
            ),
            "segments": Command(
                "segments",
                ":ACQ:SEGM {value:d}",
                "",
                1,
                4096,
                query=":ACQ:SEGM?",
                kind="int",
                description="segments (triggers) per acquisition",
            ),
            "points": Command(
                "points",
                ":ACQ:POIN {value:d}",
                "",
                1,
                1000,
                query=":ACQ:POIN?",
                kind="int",
                description="samples per channel and segment",
            ),
            "sample_interval": Command(
                "sample_interval",
                ":ACQ:SINT {value:.6E}",
                "s",
                1e-11,
                1e-3,
                query=":ACQ:SINT?",
                description="time between samples",
            ),
            "trigger_delay": Command(
                "trigger_delay",
                ":TRIG:DEL {value:.6E}",
                "s",
                0.0,
                1e-3,
                query=":TRIG:DEL?",
                description="time from the trigger to the first sample",
            ),
            "voltage_range": Command(
                "voltage_range",
                ":VOLT:RANG {value:.6E}",
                "V",
                0.05,
                10.0,
                query=":VOLT:RANG?",
                description="input range (full scale, +-)",
            ),
        }
    )

    def configure(
        self,
        *,
        channels: int,
        points: int,
        sample_interval_s: float,
        trigger_delay_s: float,
        voltage_range_v: float,
        segments: int = 1,
    ) -> None:
        """Check every setting first (nothing is sent if one is out of range), then send them."""
        settings = {
            "channels": channels,
            "points": points,
            "sample_interval": sample_interval_s,
            "trigger_delay": trigger_delay_s,
            "voltage_range": voltage_range_v,
            "segments": segments,
        }
        for name, value in settings.items():
            self.check(name, value)
        for name, value in settings.items():
            self.set(name, value)

    def set_segments(self, segments: int) -> None:
        self.set("segments", segments)

    def arm(self) -> None:
        self.write(":INIT")

    def abort(self) -> None:
        self.write(":ABOR")

    def fetch(self, shape: Sequence[int]) -> np.ndarray:
        """The recorded volts as an array of ``shape`` (segments, channels, points); checks count and range.

        A reading beyond the configured input range +-``voltage_range`` (or the overload marker 9.9E37,
        or a non-finite value) raises :class:`InstrumentFaultError`: it is a fault, never data."""
        text = self.query(":FETC?")
        expected = int(np.prod(shape))
        try:
            values = np.array([float(x) for x in text.split(",")]) if text else np.empty(0)
        except ValueError:
            raise InstrumentError(f"{self.label}: :FETC? answer is not a list of numbers: {text[:80]!r}") from None
        if values.size != expected:
            raise InstrumentError(
                f"{self.label}: :FETC? returned {values.size} values; expected {expected} "
                f"(segments x channels x points = {' x '.join(map(str, shape))})"
            )
        full_scale = self.values.get("voltage_range")
        if full_scale is None:  # never configured: the widest range the instrument has
            full_scale = self.commands["voltage_range"].maximum
        over = ~np.isfinite(values) | (np.abs(values) >= self.OVERFLOW / 10)
        if over.any():
            seg, ch, pt = np.unravel_index(int(np.flatnonzero(over)[0]), tuple(shape))
            raise InstrumentFaultError(
                f"{self.label}: overload on channel {ch} (segment {seg}, sample {pt}): the "
                f"voltage exceeds the input range +-{full_scale:g} V"
            )
        outside = np.abs(values) > full_scale
        if outside.any():
            k = int(np.flatnonzero(outside)[0])
            seg, ch, pt = np.unravel_index(k, tuple(shape))
            raise InstrumentFaultError(
                f"{self.label}: reading {values[k]:g} V on channel {ch} (segment {seg}, sample {pt}) is outside the "
                f"configured input range [-{full_scale:g} V, {full_scale:g} V] ({int(outside.sum())} of {values.size} "
                "readings): an instrument fault, not data"
            )
        return values.reshape(tuple(shape))


INSTRUMENTS: Mapping[str, type[Instrument]] = MappingProxyType(
    {
        "keithley2400": CurrentSource2400,
        "field-pulse-awg": FieldPulseSource,
        "segmented-digitizer": SegmentedDigitizer,
    }
)


def instrument_class(driver: str, role: str) -> type[Instrument]:
    """The instrument class for ``driver`` and ``role``: a name of :data:`INSTRUMENTS`, or your own class
    as ``"package.module:ClassName"`` (an :class:`Instrument` subclass with that ``role``).
    Raises ``ValueError`` listing the known names."""
    known = sorted(k for k, cls in INSTRUMENTS.items() if cls.role == role)
    if ":" in driver:
        module_name, _, attr = driver.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot import {role} driver {driver!r}: {exc}") from None
        if not (isinstance(cls, type) and issubclass(cls, Instrument) and cls.role == role):
            raise ValueError(f"{role} driver {driver!r} is not an Instrument subclass with role {role!r}")
        return cls
    cls = INSTRUMENTS.get(driver)
    if cls is None or cls.role != role:
        raise ValueError(f"unknown {role} driver {driver!r}; known: {known} (or 'package.module:ClassName')")
    return cls
