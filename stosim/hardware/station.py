"""Station files: which instrument sits at which VISA address, with the station's limits.

A station file (``devices/stations/*.toml``) describes one lab setup::

    name = "sim-lab"

    [array]                               # the STO array on the chip, and how it is operated
    n = 2                                 # devices (one digitizer channel, 3 field channels each)
    device = "../seed-pmtj.toml"          # device file, relative to this file
    coupling = "500 Oe"                   # nominal mu of the chip (the simulator model's)
    coupling_seed = 0                     # seed of the model's W (or coupling_matrix = "W.npy")
    bias_current = "2.5 mA"               # operating point (default: the device file's)
    duration = "150 ps"                   # evolution time T (last sample at T)
    sample_interval = "25 ps"             # samples at T - 2 dt, T - dt, T
    preparation_field = "1 kOe"           # field-pulse amplitude for a unit magnetization component
    max_batch = 256                       # segments per acquisition

    [current_source]
    driver = "keithley2400"
    model = "KEITHLEY INSTRUMENTS INC.,MODEL 2400"  # expected *IDN? maker,model (default: the driver's)
    address = "GPIB0::24::INSTR"
    max_current = "5 mA"                  # station limit (never above the instrument's)
    compliance = "5 V"
    ramp_step = "0.5 mA"
    ramp_dwell = "10 ms"
    timeout = "2 s"
    retries = 2

    [field_source]
    driver = "field-pulse-awg"
    address = "TCPIP0::192.168.1.20::inst0::INSTR"
    max_field = "2 kOe"

    [digitizer]
    driver = "segmented-digitizer"
    address = "TCPIP0::192.168.1.21::inst0::INSTR"
    voltage_range = "5 V"

:func:`load_station` validates it with pydantic (unknown keys rejected, quantities parsed
once from unit strings), then cross-checks the values against each other and against the
named instrument classes' hardware limits. Every problem raises :class:`StationFileError`
whose message names the file, the key (``current_source.max_current``), the value and the
valid range.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from stosim.checks import MAX_SEED, read_toml
from stosim.config import DEVICES_DIR, DeviceParameters, format_validation_error, load_device, unit_field_validator
from stosim.hardware.instruments import INSTRUMENTS, Instrument, InstrumentError, instrument_class

__all__ = [
    "Station",
    "InstrumentSpec",
    "StationFileError",
    "load_station",
    "station_from_dict",
    "STATIONS_DIR",
    "INSTRUMENTS_DIR",
    "check_driver_name",
    "SAMPLES_PER_DEVICE",
]

STATIONS_DIR = DEVICES_DIR / "stations"
INSTRUMENTS_DIR = DEVICES_DIR / "instruments"  # pyvisa-sim definitions of the instrument classes
SAMPLES_PER_DEVICE = 3  # TMR samples per device and input: t = T - 2 dt, T - dt, T


class StationFileError(ValueError):
    """A station file is missing, unreadable or invalid; the message names the key."""


class _Section(BaseModel):
    # strict: a boolean is not a number (n = true is refused, not read as 1), a string not a number
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# a user driver: "package.module:ClassName" (dotted Python identifiers)
_USER_DRIVER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")


def check_driver_name(driver: str, role: str, allow_drivers: Any = ()) -> bool:
    """Check a station's ``driver`` for ``role`` by name alone, importing nothing: a name of
    :data:`~stosim.hardware.instruments.INSTRUMENTS` with that role, or a user driver
    ``"package.module:ClassName"`` listed in ``allow_drivers`` (given explicitly by whoever runs the station:
    a file names code, it never brings it in). Returns True for a user driver; raises ValueError."""
    known = sorted(k for k, c in INSTRUMENTS.items() if c.role == role)
    if driver in INSTRUMENTS and INSTRUMENTS[driver].role == role:
        return False
    if ":" not in driver:
        raise ValueError(
            f"unknown {role} driver {driver!r}; known: {known} (or a user driver "
            "'package.module:ClassName' allowed explicitly)"
        )
    if not _USER_DRIVER.fullmatch(driver):
        raise ValueError(f"{role} driver {driver!r} is not a name 'package.module:ClassName'; known: {known}")
    if driver not in tuple(allow_drivers or ()):
        raise ValueError(
            f"user {role} driver {driver!r} is not allowed: a station file may name code but never "
            f"imports it; known: {known}; to run your own class, allow it explicitly: "
            f"allow_drivers=[{driver!r}]"
        )
    return True


class _InstrumentSection(_Section):
    driver: str
    address: Annotated[str, Field(min_length=1)]
    timeout: Annotated[float, Field(gt=0, le=600, description="s")] = 2.0
    retries: Annotated[int, Field(ge=0, le=10)] = 2
    retry_delay: Annotated[float, Field(ge=0, le=60, description="s")] = 0.0
    model: Annotated[str | None, Field(min_length=3, description="expected *IDN? 'MAKER,MODEL'")] = None

    _t = field_validator("timeout", "retry_delay", mode="before")(unit_field_validator("time"))

    role: ClassVar[str] = ""  # set by the subclasses; not a file key

    @field_validator("driver")
    @classmethod
    def _known_driver(cls, value: str, info: ValidationInfo) -> str:
        check_driver_name(value, cls.role, (info.context or {}).get("allow_drivers", ()))
        return value


class CurrentSourceSection(_InstrumentSection):
    role: ClassVar[str] = "current_source"
    driver: str = "keithley2400"
    max_current: Annotated[float, Field(gt=0, description="A")]
    compliance: Annotated[float, Field(gt=0, description="V")]
    ramp_step: Annotated[float, Field(gt=0, description="A")] = 0.5e-3
    ramp_dwell: Annotated[float, Field(ge=0, le=60, description="s")] = 0.01

    _i = field_validator("max_current", "ramp_step", mode="before")(unit_field_validator("current"))
    _v = field_validator("compliance", mode="before")(unit_field_validator("voltage"))
    _d = field_validator("ramp_dwell", mode="before")(unit_field_validator("time"))


class FieldSourceSection(_InstrumentSection):
    role: ClassVar[str] = "field_source"
    driver: str = "field-pulse-awg"
    max_field: Annotated[float, Field(gt=0, description="Oe")]

    _h = field_validator("max_field", mode="before")(unit_field_validator("field"))


class DigitizerSection(_InstrumentSection):
    role: ClassVar[str] = "digitizer"
    driver: str = "segmented-digitizer"
    voltage_range: Annotated[float, Field(gt=0, description="V")]

    _v = field_validator("voltage_range", mode="before")(unit_field_validator("voltage"))


class ArraySection(_Section):
    n: Annotated[int, Field(ge=1, le=1024)]
    device: str
    coupling: Annotated[float, Field(ge=-1e6, le=1e6, description="Oe")]
    coupling_seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 0
    coupling_matrix: str | None = None
    bias_current: Annotated[float | None, Field(description="A")] = None
    duration: Annotated[float, Field(gt=0, le=1e-6, description="s")]
    sample_interval: Annotated[float, Field(gt=0, description="s")]
    preparation_field: Annotated[float, Field(gt=0, description="Oe")]
    max_batch: Annotated[int, Field(ge=1)] = 256

    _h = field_validator("coupling", "preparation_field", mode="before")(unit_field_validator("field"))
    _i = field_validator("bias_current", mode="before")(unit_field_validator("current"))
    _t = field_validator("duration", "sample_interval", mode="before")(unit_field_validator("time"))


class StationFile(_Section):
    """Schema of a ``devices/stations/*.toml`` file (unknown keys rejected)."""

    name: Annotated[str, Field(min_length=1)]
    description: str = ""
    array: ArraySection
    current_source: CurrentSourceSection
    field_source: FieldSourceSection
    digitizer: DigitizerSection


@dataclasses.dataclass(frozen=True)
class InstrumentSpec:
    """One instrument of a station: driver class, address, timeout, retries and station limits."""

    role: str
    driver: str
    address: str
    timeout_s: float
    retries: int
    retry_delay_s: float
    limits: Mapping[str, tuple[float | None, float | None]]
    model: str | None = None  # expected *IDN? "MAKER,MODEL" (None: the driver class's)

    @property
    def cls(self) -> type[Instrument]:
        return instrument_class(self.driver, self.role)

    def connect(self, resource_manager: Any, name: str | None = None) -> Instrument:
        """Open the address with ``resource_manager`` and wrap it in the driver class (limits applied)."""
        try:
            transport = resource_manager.open_resource(self.address, read_termination="\n", write_termination="\n")
        except Exception as exc:  # VisaIOError (no such resource), OSError, ...: name the instrument
            raise InstrumentError(
                f"{name or self.role} ({self.driver}): cannot open address {self.address!r}: {exc}; "
                f"check [{self.role}] address in the station file and that the instrument is "
                "connected"
            ) from exc
        try:
            return self.cls(
                transport,
                name=name or self.role,
                address=self.address,
                retries=self.retries,
                timeout_s=self.timeout_s,
                retry_delay_s=self.retry_delay_s,
                limits=self.limits,
            )
        except BaseException:
            transport.close()
            raise


@dataclasses.dataclass(frozen=True)
class Station:
    """A validated station file; quantities in A, V, s, Oe (units in the names)."""

    name: str
    description: str
    path: Path | None
    n: int
    device: DeviceParameters
    device_path: Path
    coupling_oe: float
    coupling_seed: int
    coupling_matrix: np.ndarray | None
    bias_current_a: float
    duration_s: float
    sample_interval_s: float
    preparation_field_oe: float
    max_batch: int
    max_current_a: float
    compliance_v: float
    ramp_step_a: float
    ramp_dwell_s: float
    max_field_oe: float
    voltage_range_v: float
    current_source: InstrumentSpec
    field_source: InstrumentSpec
    digitizer: InstrumentSpec

    @property
    def sample_times_s(self) -> tuple[float, ...]:
        """Times after the preparation at which each device's TMR voltage is sampled (the last is T)."""
        k = SAMPLES_PER_DEVICE
        return tuple(self.duration_s - (k - 1 - j) * self.sample_interval_s for j in range(k))

    @property
    def instruments(self) -> tuple[InstrumentSpec, ...]:
        return (self.current_source, self.field_source, self.digitizer)

    def configuration(self) -> dict[str, float | int | str]:
        """Flat description (dataset attributes)."""
        cfg: dict[str, float | int | str] = {
            "station": self.name,
            "n": self.n,
            "device": self.device.name,
            "coupling_oe": self.coupling_oe,
            "coupling_seed": self.coupling_seed,
            "bias_current_a": self.bias_current_a,
            "duration_s": self.duration_s,
            "sample_interval_s": self.sample_interval_s,
            "preparation_field_oe": self.preparation_field_oe,
            "max_batch": self.max_batch,
            "max_current_a": self.max_current_a,
            "compliance_v": self.compliance_v,
            "ramp_step_a": self.ramp_step_a,
            "max_field_oe": self.max_field_oe,
            "voltage_range_v": self.voltage_range_v,
        }
        for spec in self.instruments:
            cfg[f"{spec.role}_driver"] = spec.driver
            cfg[f"{spec.role}_address"] = spec.address
        return cfg


def _deep_merge(base: dict, overrides: Mapping) -> dict:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _check(problems: list[str], ok: bool, key: str, message: str) -> None:
    if not ok:
        problems.append(f"{key}: {message}")


def _hardware_range(cls: type[Instrument], command: str) -> tuple[float | None, float | None]:
    cmd = cls.commands[command]
    return cmd.minimum, cmd.maximum


class _UncheckedRange:
    minimum = -float("inf")
    maximum = float("inf")


class _AnyCommand(dict):
    def __missing__(self, key: str) -> _UncheckedRange:
        return _UncheckedRange()


class _Unchecked:
    """Stands for a user driver that validation does not import: no hardware range to check against."""

    commands = _AnyCommand()


def _within(value: float, bounds: tuple[float | None, float | None]) -> bool:
    lo, hi = bounds
    return (lo is None or value >= lo) and (hi is None or value <= hi)


def station_from_dict(
    raw: Mapping[str, Any],
    base_dir: str | Path | None = None,
    *,
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    allow_drivers: Any = (),
    import_drivers: bool = True,
) -> Station:
    """Validate a station given as a dict (the parsed TOML); relative paths are resolved against ``base_dir``.

    ``allow_drivers``: user driver classes ("package.module:ClassName") the station may name; any other such
    name is refused. ``import_drivers``: import the allowed user drivers to check the station's limits
    against their hardware ranges (False: validation only, which imports nothing and skips those checks).
    """
    where = str(path) if path is not None else "station"
    base = Path(base_dir) if base_dir is not None else (Path(path).parent if path is not None else STATIONS_DIR)
    data = _deep_merge(dict(raw), overrides or {})
    try:
        f = StationFile.model_validate(data, context={"allow_drivers": tuple(allow_drivers or ())})
    except ValidationError as exc:
        raise StationFileError(format_validation_error(where, exc)) from None
    classes: dict[str, type[Instrument] | None] = {}
    for s in (f.current_source, f.field_source, f.digitizer):
        if s.driver in INSTRUMENTS:
            classes[s.role] = INSTRUMENTS[s.driver]
        elif not import_drivers:
            classes[s.role] = None  # a user driver, not imported: its hardware ranges are checked when run
        else:
            try:
                classes[s.role] = instrument_class(s.driver, s.role)
            except ValueError as exc:
                raise StationFileError(f"{where}: {s.role}.driver: {exc}") from None

    a, cs, fs, dg = f.array, f.current_source, f.field_source, f.digitizer
    problems: list[str] = []
    device_path = Path(a.device) if Path(a.device).is_absolute() else base / a.device
    device = None
    try:
        device = load_device(device_path)
    except ValueError as exc:
        problems.append(f"array.device: {a.device!r}: {exc}")
    w = None
    if a.coupling_matrix is not None:
        from stosim.physics.coupling import load_coupling_matrix

        w_path = Path(a.coupling_matrix) if Path(a.coupling_matrix).is_absolute() else base / a.coupling_matrix
        try:
            w = load_coupling_matrix(w_path, a.n)
        except (ValueError, OSError) as exc:
            problems.append(f"array.coupling_matrix: {a.coupling_matrix!r}: {exc}")

    csc, fsc, dgc = (_Unchecked() if classes[s.role] is None else classes[s.role] for s in (cs, fs, dg))
    bias = a.bias_current if a.bias_current is not None else (device.current_a if device else 0.0)
    hw_i = _hardware_range(csc, "current")
    _check(
        problems,
        _within(cs.max_current, hw_i),
        "current_source.max_current",
        f"{cs.max_current:g} A is beyond the {cs.driver} range [{hw_i[0]:g} A, {hw_i[1]:g} A]",
    )
    _check(
        problems,
        abs(bias) <= cs.max_current,
        "array.bias_current",
        f"{bias:g} A exceeds current_source.max_current = {cs.max_current:g} A",
    )
    _check(
        problems,
        cs.ramp_step <= cs.max_current,
        "current_source.ramp_step",
        f"{cs.ramp_step:g} A exceeds current_source.max_current = {cs.max_current:g} A",
    )
    hw_v = _hardware_range(csc, "compliance_voltage")
    _check(
        problems,
        _within(cs.compliance, hw_v),
        "current_source.compliance",
        f"{cs.compliance:g} V is outside the {cs.driver} range [{hw_v[0]:g} V, {hw_v[1]:g} V]",
    )
    hw_h = (fsc.commands["waveform"].minimum, fsc.commands["waveform"].maximum)
    _check(
        problems,
        _within(fs.max_field, hw_h),
        "field_source.max_field",
        f"{fs.max_field:g} Oe is beyond the {fs.driver} range [{hw_h[0]:g} Oe, {hw_h[1]:g} Oe]",
    )
    _check(
        problems,
        a.preparation_field <= fs.max_field,
        "array.preparation_field",
        f"{a.preparation_field:g} Oe exceeds field_source.max_field = {fs.max_field:g} Oe",
    )
    hw_r = _hardware_range(dgc, "voltage_range")
    _check(
        problems,
        _within(dg.voltage_range, hw_r),
        "digitizer.voltage_range",
        f"{dg.voltage_range:g} V is outside the {dg.driver} range [{hw_r[0]:g} V, {hw_r[1]:g} V]",
    )
    _check(
        problems,
        _within(3 * a.n, _hardware_range(fsc, "points")),
        "array.n",
        f"{a.n} devices need {3 * a.n} field channels; {fs.driver} has at most {fsc.commands['points'].maximum:g}",
    )
    _check(
        problems,
        _within(a.n, _hardware_range(dgc, "channels")),
        "array.n",
        f"{a.n} devices need {a.n} digitizer channels; {dg.driver} has at most {dgc.commands['channels'].maximum:g}",
    )
    seg_max = min(fsc.commands["segments"].maximum, dgc.commands["segments"].maximum)
    _check(
        problems,
        a.max_batch <= seg_max,
        "array.max_batch",
        f"{a.max_batch} exceeds the instruments' segment memory ({seg_max:g} segments)",
    )
    hw_dt = _hardware_range(dgc, "sample_interval")
    _check(
        problems,
        _within(a.sample_interval, hw_dt),
        "array.sample_interval",
        f"{a.sample_interval:g} s is outside the {dg.driver} range [{hw_dt[0]:g} s, {hw_dt[1]:g} s]",
    )
    first = a.duration - (SAMPLES_PER_DEVICE - 1) * a.sample_interval
    _check(
        problems,
        first > 0,
        "array.duration",
        f"{a.duration:g} s must exceed {SAMPLES_PER_DEVICE - 1} x array.sample_interval = "
        f"{(SAMPLES_PER_DEVICE - 1) * a.sample_interval:g} s (the first sample comes before the last)",
    )
    if device is not None:
        v_max = abs(bias) * device.parallel_resistance_ohm * (1 + device.tmr_ratio)
        _check(
            problems,
            v_max < dg.voltage_range,
            "digitizer.voltage_range",
            f"{dg.voltage_range:g} V is below the devices' largest TMR voltage I R_AP = {v_max:.4g} V at the "
            f"bias current {bias:g} A",
        )
        _check(
            problems,
            a.n * v_max <= cs.compliance,
            "current_source.compliance",
            f"{cs.compliance:g} V is below the largest voltage across the {a.n} devices in series, "
            f"N I R_AP = {a.n * v_max:.4g} V (the source would limit the current below {bias:g} A)",
        )
    if problems:
        raise StationFileError("\n".join(f"{where}: {p}" for p in problems))
    assert device is not None

    def spec(s: _InstrumentSection, limits: dict) -> InstrumentSpec:
        return InstrumentSpec(
            role=s.role,
            driver=s.driver,
            address=s.address,
            timeout_s=s.timeout,
            retries=s.retries,
            retry_delay_s=s.retry_delay,
            limits=limits,
            model=s.model,
        )

    return Station(
        name=f.name,
        description=f.description,
        path=Path(path) if path is not None else None,
        n=a.n,
        device=device,
        device_path=device_path,
        coupling_oe=a.coupling,
        coupling_seed=a.coupling_seed,
        coupling_matrix=w,
        bias_current_a=float(bias),
        duration_s=a.duration,
        sample_interval_s=a.sample_interval,
        preparation_field_oe=a.preparation_field,
        max_batch=a.max_batch,
        max_current_a=cs.max_current,
        compliance_v=cs.compliance,
        ramp_step_a=cs.ramp_step,
        ramp_dwell_s=cs.ramp_dwell,
        max_field_oe=fs.max_field,
        voltage_range_v=dg.voltage_range,
        current_source=spec(cs, {"current": (-cs.max_current, cs.max_current)}),
        field_source=spec(fs, {"waveform": (-fs.max_field, fs.max_field)}),
        digitizer=spec(dg, {}),
    )


def load_station(
    path: str | Path,
    *,
    overrides: Mapping[str, Any] | None = None,
    allow_drivers: Any = (),
    import_drivers: bool = True,
) -> Station:
    """Load and validate a station file; ``overrides`` (nested dict, file keys) are merged in first.

    A bare name (``"sim-lab"``) is looked up in ``devices/stations/``. ``allow_drivers`` and
    ``import_drivers`` as for :func:`station_from_dict` (a user driver is imported only when allowed). Raises
    :class:`StationFileError` naming the file, the key, the value and the valid range.
    """
    path = Path(path)
    if not path.suffix and not path.exists():
        path = STATIONS_DIR / f"{path}.toml"
    raw = read_toml(path, StationFileError, "station file")
    return station_from_dict(
        raw, path.parent, path=path, overrides=overrides, allow_drivers=allow_drivers, import_drivers=import_drivers
    )
