"""Device parameter files: TOML with unit strings, validated once on load.

A device file describes one magnetic tunnel junction (docs/physics.md sections 1-2)::

    name = "seed-pmtj"
    [free_layer]
    saturation_magnetization = "1448.3 emu/cm^3"
    anisotropy_field = "18.616 kOe"
    damping = 0.005
    radius = "60 nm"
    thickness = "2 nm"
    gyromagnetic_ratio = "1.764e7 rad/(Oe s)"
    ...

:func:`load_device` parses and range-checks it with pydantic (unknown keys are
rejected) and returns a :class:`DeviceParameters` whose fields are plain floats in
CGS units (Oe, emu/cm^3, cm, cm^3, A, Ohm, V, rad/(Oe s)).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from stosim import parameters as _parameters
from stosim.checks import read_toml
from stosim.constants import ELEMENTARY_CHARGE_C, HBAR_ERG_S
from stosim.units import UnitError, format_quantity, parse_quantity

__all__ = [
    "DeviceParameters",
    "DeviceFileError",
    "load_device",
    "default_device_path",
    "DEVICES_DIR",
]


def _devices_dir() -> Path:
    """The shipped device, station and instrument files: package data ``stosim/devices``.

    In the repository they live in the top-level ``devices/`` (``stosim/devices`` is a link to it, which
    the wheel build copies into the package); the resolved path is that folder in a checkout or an
    editable install, and ``site-packages/stosim/devices`` in an installed wheel.
    """
    return Path(str(importlib.resources.files("stosim") / "devices")).resolve()


DEVICES_DIR = _devices_dir()
DEFAULT_DEVICE_NAME = "seed-pmtj.toml"

# the device parameters' ranges and limits are declared once, in stosim.parameters
MAX_MAGNETIZATION_EMU_CM3 = _parameters.MAX_MAGNETIZATION_EMU_CM3
MAX_ANISOTROPY_FIELD_OE = _parameters.MAX_ANISOTROPY_FIELD_OE
MIN_GYROMAGNETIC_RAD_PER_OE_S = _parameters.MIN_GYROMAGNETIC_RAD_PER_OE_S
MAX_GYROMAGNETIC_RAD_PER_OE_S = _parameters.MAX_GYROMAGNETIC_RAD_PER_OE_S
DEFAULT_BREAKDOWN_VOLTAGE_V = _parameters.DEFAULT_BREAKDOWN_VOLTAGE_V
MAX_BREAKDOWN_VOLTAGE_V = _parameters.MAX_BREAKDOWN_VOLTAGE_V

# -- device limits (docs/hardware.md "Device limits"): the resistance-area product RA = R_P pi r^2 of MgO
# tunnel barriers, in Ohm um^2 (stosim.parameters explains the bounds)
MIN_RA_OHM_UM2 = _parameters.MIN_RA_OHM_UM2
MAX_RA_OHM_UM2 = _parameters.MAX_RA_OHM_UM2
# the breakdown voltage's default and limit: stosim.parameters (DEFAULT_BREAKDOWN_VOLTAGE_V, 1.5 V, typical of
# MgO barriers of ~1 nm; MAX_BREAKDOWN_VOLTAGE_V, 10 V)

# DeviceParameters field -> the parameter (stosim.parameters) it holds, in the internal unit
DEVICE_FIELDS = MappingProxyType(
    {
        "saturation_magnetization_emu_cm3": "saturation_magnetization",
        "anisotropy_field_oe": "anisotropy_field",
        "applied_field_oe": "applied_field",
        "damping": "damping",
        "gyromagnetic_ratio_rad_per_oe_s": "gyromagnetic_ratio",
        "radius_cm": "radius",
        "thickness_cm": "thickness",
        "polarization": "polarization",
        "torque_asymmetry": "torque_asymmetry",
        "current_a": "current",
        "parallel_resistance_ohm": "parallel_resistance",
        "tmr_ratio": "tmr_ratio",
        "max_current_a": "max_current",
        "breakdown_voltage_v": "breakdown_voltage",
    }
)


_OPTIONAL_FIELDS = ("max_current_a", "breakdown_voltage_v")  # None: derived (DeviceParameters.current_limit_a)


class DeviceFileError(ValueError):
    """A device file is missing, unreadable or invalid; the message names the key."""


def default_device_path() -> Path:
    """Path of the seed study's pMTJ device file (``devices/seed-pmtj.toml``)."""
    return DEVICES_DIR / DEFAULT_DEVICE_NAME


@dataclasses.dataclass(frozen=True)
class DeviceParameters:
    """Resolved parameters of one MTJ spin-torque oscillator, CGS units.

    Field names carry their units. ``damping`` may be 0 here (the ideal, undamped
    precession used by analytic checks); device files require ``0 < alpha < 1``.
    """

    name: str
    saturation_magnetization_emu_cm3: float  # M
    anisotropy_field_oe: float  # H_K (interfacial)
    applied_field_oe: float  # H_appl along +z
    damping: float  # alpha (dimensionless)
    gyromagnetic_ratio_rad_per_oe_s: float  # gamma
    radius_cm: float
    thickness_cm: float
    polarization: float  # eta
    torque_asymmetry: float  # lambda
    current_a: float  # I (positive: the torque that drives auto-oscillation)
    reference_direction: tuple[float, float, float]  # p, unit vector
    parallel_resistance_ohm: float  # R_P
    tmr_ratio: float  # (R_AP - R_P) / R_P
    # device limits; None: derived (see current_limit_a, breakdown_limit_v)
    max_current_a: float | None = None
    breakdown_voltage_v: float | None = None

    def __post_init__(self) -> None:
        # the ranges of stosim.parameters; damping and polarization may also take their idealized value 0
        for field, name in DEVICE_FIELDS.items():
            value = getattr(self, field)
            param = _parameters.get(name)
            optional = field in _OPTIONAL_FIELDS
            if value is None and optional:
                continue
            if not param.contains(value, allow_ideal=True):
                valid = param.valid()
                if param.ideal:
                    valid += " (or " + ", ".join(f"{v:g}" for v in param.ideal) + ": the idealized limit)"
                if optional:
                    valid += f", or None ({param.none_means})"
                raise ValueError(f"device parameter {name} = {value!r} is out of range; valid: {valid}")
        p = self.reference_direction
        if len(p) != 3 or not all(math.isfinite(c) for c in p) or abs(math.sqrt(sum(c * c for c in p)) - 1) > 1e-9:
            raise ValueError(f"device parameter reference_direction = {p!r} must be a unit 3-vector (|p| = 1)")
        ra = self.resistance_area_ohm_um2
        if not MIN_RA_OHM_UM2 <= ra <= MAX_RA_OHM_UM2:
            area_um2 = math.pi * (self.radius_cm * 1e4) ** 2
            raise ValueError(
                f"device parameter parallel_resistance = {self.parallel_resistance_ohm!r} Ohm is out of range: it "
                f"gives RA = R_P pi r^2 = {ra:.4g} Ohm um^2 over the junction area {area_um2:.4g} um^2; valid: RA in "
                f"[{MIN_RA_OHM_UM2:g}, {MAX_RA_OHM_UM2:g}] Ohm um^2 (MgO tunnel barriers), i.e. R_P in "
                f"[{MIN_RA_OHM_UM2 / area_um2:.4g}, {MAX_RA_OHM_UM2 / area_um2:.4g}] Ohm for this radius"
            )

    # device limits ------------------------------------------------------------------
    @property
    def resistance_area_ohm_um2(self) -> float:
        """RA = R_P pi r^2 in Ohm um^2 (the junction's area is the free layer's, pi r^2)."""
        return self.parallel_resistance_ohm * math.pi * (self.radius_cm * 1e4) ** 2

    @property
    def breakdown_limit_v(self) -> float:
        """Largest voltage across the barrier, V_bd in V: the file's ``limits.breakdown_voltage``, else
        :data:`DEFAULT_BREAKDOWN_VOLTAGE_V` = 1.5 V, typical of MgO barriers of ~1 nm (RA of a few Ohm um^2;
        the literature's hard-breakdown voltages lie at 1-2 V, fields of order 1 V/nm)."""
        return DEFAULT_BREAKDOWN_VOLTAGE_V if self.breakdown_voltage_v is None else self.breakdown_voltage_v

    @property
    def current_limit_a(self) -> float:
        """Largest bias current |I| in A: the file's ``limits.max_current``, else I_max = V_bd / R_P, the
        current at which the parallel (lowest-resistance) state reaches the breakdown voltage
        (seed device: 1.5 V / 440 Ohm = 3.41 mA; its operating point, 2.5 mA, is 73 % of it).

        The voltage limit is applied to I R_P rather than to the model's I R_AP: the model's TMR ratio does
        not depend on the bias, while that of MgO junctions halves at V_half ~ 0.4-0.6 V, so at volt-scale
        bias R_AP(V) approaches R_P and the barrier sees about I R_P (the AP side of the model's V = I R(m)
        overstates it)."""
        if self.max_current_a is not None:
            return self.max_current_a
        return self.breakdown_limit_v / self.parallel_resistance_ohm

    # derived quantities -------------------------------------------------------------
    @property
    def volume_cm3(self) -> float:
        """Free-layer volume V = pi r^2 d in cm^3."""
        return math.pi * self.radius_cm**2 * self.thickness_cm

    @property
    def effective_anisotropy_field_oe(self) -> float:
        """H_K' = H_K - 4 pi M in Oe (perpendicular anisotropy minus demagnetization)."""
        return self.anisotropy_field_oe - 4 * math.pi * self.saturation_magnetization_emu_cm3

    @property
    def spin_torque_field_oe(self) -> float:
        """H_s0 = hbar eta I / (2 e M V) in Oe (the torque field before the 1/(1 + lambda m.p) factor)."""
        return spin_torque_field_oe(self, self.current_a)

    @property
    def critical_current_a(self) -> float:
        """I_c = 4 alpha e M V (H_appl + H_K') / (hbar eta lambda) in A (docs/physics.md section 7); inf when
        eta lambda = 0 (the torque has no angular asymmetry: no current destabilizes the z axis)."""
        if self.polarization * self.torque_asymmetry == 0:
            return math.inf
        m_v = self.saturation_magnetization_emu_cm3 * self.volume_cm3
        return (
            4
            * self.damping
            * ELEMENTARY_CHARGE_C
            * m_v
            * (self.applied_field_oe + self.effective_anisotropy_field_oe)
            / (HBAR_ERG_S * self.polarization * self.torque_asymmetry)
        )

    def replace(self, **changes: Any) -> "DeviceParameters":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> list[tuple[str, str]]:
        """Resolved parameters as (name, value with unit) rows, derived quantities included."""
        rows = [
            ("name", self.name),
            ("saturation_magnetization M", format_quantity(self.saturation_magnetization_emu_cm3, "magnetization")),
            ("anisotropy_field H_K", format_quantity(self.anisotropy_field_oe, "field")),
            ("effective_anisotropy H_K - 4 pi M", format_quantity(self.effective_anisotropy_field_oe, "field")),
            ("applied_field H_appl (+z)", format_quantity(self.applied_field_oe, "field")),
            ("damping alpha", f"{self.damping:g}"),
            ("gyromagnetic_ratio gamma", format_quantity(self.gyromagnetic_ratio_rad_per_oe_s, "gyromagnetic")),
            ("radius", f"{self.radius_cm * 1e7:.6g} nm"),
            ("thickness", f"{self.thickness_cm * 1e7:.6g} nm"),
            ("volume V", format_quantity(self.volume_cm3, "volume")),
            ("polarization eta", f"{self.polarization:g}"),
            ("torque_asymmetry lambda", f"{self.torque_asymmetry:g}"),
            ("current I", f"{self.current_a * 1e3:.6g} mA"),
            ("spin_torque_field H_s0", format_quantity(self.spin_torque_field_oe, "field")),
            ("critical_current I_c", f"{self.critical_current_a * 1e3:.6g} mA"),
            ("reference_direction p", "(" + ", ".join(f"{c:g}" for c in self.reference_direction) + ")"),
            ("parallel_resistance R_P", format_quantity(self.parallel_resistance_ohm, "resistance")),
            ("tmr_ratio (R_AP - R_P)/R_P", f"{self.tmr_ratio:g}"),
            ("resistance_area RA", f"{self.resistance_area_ohm_um2:.4g} Ohm um^2"),
            (
                "breakdown_voltage V_bd",
                f"{self.breakdown_limit_v:g} V" + (" (default)" if self.breakdown_voltage_v is None else ""),
            ),
            (
                "max_current I_max",
                f"{self.current_limit_a * 1e3:.6g} mA" + (" (V_bd / R_P)" if self.max_current_a is None else ""),
            ),
        ]
        return rows

    def as_attrs(self) -> dict[str, float | str]:
        """Flat dict of the resolved parameters (for dataset attributes)."""
        out: dict[str, float | str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f"device_{f.name}"] = list(value) if isinstance(value, tuple) else value
        out["device_current_limit_a"] = self.current_limit_a
        out["device_breakdown_limit_v"] = self.breakdown_limit_v
        return out


def spin_torque_field_oe(device: DeviceParameters, current_a: float) -> float:
    """H_s0 = hbar eta I / (2 e M V) in Oe for a current I in A (hbar in erg s, e in C)."""
    m_v = device.saturation_magnetization_emu_cm3 * device.volume_cm3
    return HBAR_ERG_S * device.polarization * current_a / (2 * ELEMENTARY_CHARGE_C * m_v)


# ---------------------------------------------------------------------------------
# The file schema
# ---------------------------------------------------------------------------------


class _Section(BaseModel):
    # strict: a boolean is not a number (damping = true is refused, not read as 1.0), a string not a number
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def unit_field_validator(dimension: str):
    """Validator factory for pydantic fields: parse a unit string of ``dimension`` into a float in
    the internal unit (None passes through for optional fields); errors name the field."""

    def validate(cls, value: Any, info) -> float | None:
        if value is None:
            return None
        try:
            return parse_quantity(value, dimension, name=info.field_name)
        except UnitError as exc:
            raise ValueError(str(exc)) from None

    return validate


def _field(name: str, default: Any = ...) -> Any:
    """The pydantic field of the device parameter ``name``: its range and description from stosim.parameters."""
    return _parameters.get(name).field(default)


def _units(*keys: str):
    """The before-validator that parses the unit strings of the section keys ``keys`` (each the last part of
    a parameter's ``device_key``) into the internal unit of the parameter's dimension."""
    dimensions = {
        p.device_key.rsplit(".", 1)[1]: p.dimension for p in _parameters.parameters().values() if p.device_key
    }

    def validate(cls, value: Any, info) -> float | None:
        return unit_field_validator(dimensions[info.field_name])(cls, value, info)

    return field_validator(*keys, mode="before")(validate)


class FreeLayerSection(_Section):
    saturation_magnetization: float = _field("saturation_magnetization")
    anisotropy_field: float = _field("anisotropy_field")
    damping: float = _field("damping")
    radius: float = _field("radius")
    thickness: float = _field("thickness")
    gyromagnetic_ratio: float = _field("gyromagnetic_ratio", 1.764e7)

    _parse_units = _units("saturation_magnetization", "anisotropy_field", "radius", "thickness", "gyromagnetic_ratio")


class SpinTorqueSection(_Section):
    polarization: float = _field("polarization")
    asymmetry: float = _field("torque_asymmetry")
    current: float = _field("current")

    _parse_units = _units("current")


class ReferenceLayerSection(_Section):
    direction: tuple[float, float, float] = (1.0, 0.0, 0.0)

    @field_validator("direction", mode="before")
    @classmethod
    def _three_numbers(cls, value: Any) -> Any:
        # TOML gives a list; strict validation takes a tuple of numbers (booleans refused)
        if isinstance(value, list) and not any(isinstance(c, bool) for c in value):
            return tuple(value)
        return value

    @field_validator("direction")
    @classmethod
    def _unit(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        norm = math.sqrt(sum(c * c for c in value))
        if not abs(norm - 1.0) <= 1e-9:  # (NaN components fail too)
            raise ValueError(f"|p| must be 1 (a unit vector); got |{list(value)}| = {norm:.6g}")
        return value


class AppliedFieldSection(_Section):
    z: float = _field("applied_field")

    _parse_units = _units("z")


class TMRSection(_Section):
    parallel_resistance: float = _field("parallel_resistance")
    tmr_ratio: float = _field("tmr_ratio")

    _parse_units = _units("parallel_resistance")


class LimitsSection(_Section):
    """Optional ``[limits]``: the largest bias current and the barrier's breakdown voltage (defaults:
    :attr:`DeviceParameters.current_limit_a`, :attr:`DeviceParameters.breakdown_limit_v`)."""

    max_current: float | None = _field("max_current", None)
    breakdown_voltage: float | None = _field("breakdown_voltage", None)

    _parse_units = _units("max_current", "breakdown_voltage")


class DeviceFile(_Section):
    """Schema of a ``devices/*.toml`` file (all sections required, unknown keys rejected)."""

    name: str
    description: str = ""
    source: str = ""
    free_layer: FreeLayerSection
    spin_torque: SpinTorqueSection
    reference_layer: ReferenceLayerSection = ReferenceLayerSection()
    applied_field: AppliedFieldSection
    tmr: TMRSection
    limits: LimitsSection = LimitsSection()

    def resolve(self) -> DeviceParameters:
        fl, st = self.free_layer, self.spin_torque
        return DeviceParameters(
            name=self.name,
            saturation_magnetization_emu_cm3=fl.saturation_magnetization,
            anisotropy_field_oe=fl.anisotropy_field,
            applied_field_oe=self.applied_field.z,
            damping=fl.damping,
            gyromagnetic_ratio_rad_per_oe_s=fl.gyromagnetic_ratio,
            radius_cm=fl.radius,
            thickness_cm=fl.thickness,
            polarization=st.polarization,
            torque_asymmetry=st.asymmetry,
            current_a=st.current,
            reference_direction=tuple(float(c) for c in self.reference_layer.direction),
            parallel_resistance_ohm=self.tmr.parallel_resistance,
            tmr_ratio=self.tmr.tmr_ratio,
            max_current_a=self.limits.max_current,
            breakdown_voltage_v=self.limits.breakdown_voltage,
        )


def format_validation_error(path: Path | str, exc: ValidationError) -> str:
    """One line per problem: ``FILE: key.path: message (got VALUE)``."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(file)"
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        got_text = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{path}: {key}: {msg}{got_text}")
    return "\n".join(lines)


def load_device(path: str | Path | None = None) -> DeviceParameters:
    """Load and validate a device TOML file (default: the seed study's pMTJ).

    Raises :class:`DeviceFileError` naming the file, the key, the value and the valid range.
    """
    path = Path(path) if path is not None else default_device_path()
    raw = read_toml(path, DeviceFileError, "device file")
    try:
        return DeviceFile.model_validate(raw).resolve()
    except ValidationError as exc:
        raise DeviceFileError(format_validation_error(path, exc)) from None
    except ValueError as exc:
        raise DeviceFileError(f"{path}: {exc}") from None
