"""The parameters of stosim, declared once: name, dimension, unit, valid range, long name, command-line flag.

Every setting a file, a sweep or the command line takes is a :class:`Parameter` here (or, for a substrate's own
parameters, declared by that substrate's module with :func:`declare`). The rest is derived from it:

- device files (:mod:`stosim.config`): the pydantic fields of each section and the range checks of
  :class:`~stosim.config.DeviceParameters` (:meth:`Parameter.field`, :meth:`Parameter.contains`);
- experiment files and sweep points (:class:`~stosim.studies.training.TrainConfig`, the point models of
  :mod:`stosim.studies.sweep_points`): their fields and ranges, the keys that need a unit
  (:data:`UNIT_DIMENSIONS`), the ``units`` / ``long_name`` of swept coordinates;
- the ``units`` / ``long_name`` attributes of the HDF5 files (:func:`attrs`);
- the command line: the unit and help of a quantity flag, and the flag that a parameter named in a library
  error stands for (:func:`flag`);
- the table ``docs/parameters.md`` (:mod:`stosim.parameter_docs`).

A range is ``[minimum, maximum]``, each end open or closed (``open_min`` / ``open_max``) or absent (None).
Values in the internal unit of the dimension (:data:`stosim.units.INTERNAL_UNIT`: Oe, emu/cm^3, cm, A, s, K, Ohm,
V, rad/(Oe s)). ``ideal``: values outside the range that the resolved device parameters built in code still
accept as idealized limits for analytic checks (an undamped precession: alpha = 0), never a file.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from stosim.checks import MAX_SEED
from stosim.constants import BOHR_MAGNETON_ERG_G, HBAR_ERG_S
from stosim.units import INTERNAL_UNIT, UNITS

__all__ = [
    "Parameter",
    "declare",
    "get",
    "parameters",
    "attrs",
    "flag",
    "UNIT_DIMENSIONS",
    "SUBSTRATE_TIME_KEYS",
    "TEXT_UNITS",
    "SNR_UNIT",
    "MAX_MAGNETIZATION_EMU_CM3",
    "MAX_ANISOTROPY_FIELD_OE",
    "MIN_GYROMAGNETIC_RAD_PER_OE_S",
    "MAX_GYROMAGNETIC_RAD_PER_OE_S",
    "MAX_BREAKDOWN_VOLTAGE_V",
    "DEFAULT_BREAKDOWN_VOLTAGE_V",
    "MAX_APPLIED_FIELD_OE",
    "MIN_RA_OHM_UM2",
    "MAX_RA_OHM_UM2",
]

TEXT_UNITS = "n/a"  # the `units` of text settings (and of text variables and categorical coordinates)
SNR_UNIT = "dB"
# dimensions beyond stosim.units.UNITS: a signal-to-noise ratio in dB, an integer count, text (a name, a path,
# a choice), a yes/no switch
EXTRA_DIMENSIONS = ("snr", "count", "text", "switch")

# -- physical limits of the device parameters (docs/physics.md; docs/hardware.md "Device limits") -----------
# M: 4 pi M <= 126 kOe, five times that of FeCo (~1950 emu/cm^3), the largest known; an M in A/m written as
# emu/cm^3 (1000 times too large) fails
MAX_MAGNETIZATION_EMU_CM3 = 1e4
MAX_ANISOTROPY_FIELD_OE = 1e6  # 100 T
# 10 T (1e5 Oe): the field of a laboratory magnet; a field in A/m written as Oe (80 times too large) fails
MAX_APPLIED_FIELD_OE = 1e5
# gamma = g mu_B / hbar with a g-factor in [1, 3] (ferromagnets: 1.9-2.2): a gamma / 2 pi in Hz/Oe (2.8e6)
# written as rad/(Oe s) fails, as does a gamma in SI units (1.76e11 rad/(T s))
GYROMAGNETIC_PER_G_FACTOR_RAD_PER_OE_S = BOHR_MAGNETON_ERG_G / HBAR_ERG_S
MIN_GYROMAGNETIC_RAD_PER_OE_S = 1.0 * GYROMAGNETIC_PER_G_FACTOR_RAD_PER_OE_S
MAX_GYROMAGNETIC_RAD_PER_OE_S = 3.0 * GYROMAGNETIC_PER_G_FACTOR_RAD_PER_OE_S
# Dielectric breakdown of the barrier. MgO barriers of ~1 nm (RA of a few Ohm um^2) break down at about
# 1-2 V under DC or slowly ramped stress (breakdown fields of order 1 V/nm; see e.g. Schaefers et al., "Electric
# breakdown in ultrathin MgO tunnel barrier junctions for spin-transfer torque switching", arXiv:0907.3579
# (2009): breakdown not much above the switching voltages of such junctions). We take the middle of that
# range, 1.5 V, as the default of a device file that gives no breakdown_voltage: a literature-typical value,
# not a measurement of the seed device; give the measured one in the file's [limits] when it is known.
DEFAULT_BREAKDOWN_VOLTAGE_V = 1.5
MAX_BREAKDOWN_VOLTAGE_V = 10.0  # no tunnel barrier of a few nm holds 10 V (~10 V/nm even at 1 nm)
# Resistance-area product RA = R_P pi r^2 of the junction. MgO tunnel barriers span about 0.3 Ohm um^2
# (~0.8 nm, STT-MRAM and STOs) to 1e4 Ohm um^2 and more (2-3 nm, sensors); RA grows exponentially with the
# barrier thickness. The bounds below are more than a decade wider on each side; an R_P outside them (1e300 Ohm, or
# 440 mOhm written for 440 Ohm) is not a tunnel junction of this radius. Seed device: 440 Ohm x pi (60 nm)^2
# = 4.98 Ohm um^2, the RA ~ 5 Ohm um^2 its file states.
MIN_RA_OHM_UM2 = 0.01
MAX_RA_OHM_UM2 = 1e6
MIN_SNR_DB = -100.0  # stosim.physics.noise.MIN_SNR_DB (a noise 1e5 times the signal)


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One parameter, declared once.

    name: the key in experiment files, sweep specs and Python keywords; dimension: a dimension of
    :data:`stosim.units.UNITS` or one of ``snr`` (dB), ``count``, ``text``, ``switch``; long_name: what it is
    (the HDF5 ``long_name``); minimum / maximum with open_min / open_max: the valid range in the internal unit
    (None: unbounded on that side); note: appended to the range in messages; fmt: format of the range's ends;
    ideal: idealized values outside the range accepted by resolved device parameters built in code;
    none_means: what None (the key left out) means, when it may be None; device_key: ``section.key`` in device
    files; files: a key of experiment files or sweep specs (with ``dimension`` a unit it must carry one);
    substrate_time: a time in the substrate's time unit (s with a unit for the STOs, a plain number of model
    time, steps or tau otherwise); cli: the command-line flag (None: ``--`` and the name with dashes when a
    command has it); module: the declaring module (set by :func:`declare`)."""

    name: str
    dimension: str
    long_name: str
    minimum: float | None = None
    maximum: float | None = None
    open_min: bool = False
    open_max: bool = False
    note: str = ""
    fmt: str = "g"
    ideal: tuple[float, ...] = ()
    none_means: str = ""
    device_key: str | None = None
    files: bool = True
    substrate_time: bool = False
    cli: str | None = None
    module: str = __name__

    def __post_init__(self) -> None:
        if self.dimension not in UNITS and self.dimension not in EXTRA_DIMENSIONS:
            raise ValueError(f"{self.name}: dimension = {self.dimension!r}; valid: {(*UNITS, *EXTRA_DIMENSIONS)}")
        if self.minimum is not None and self.maximum is not None and not self.minimum <= self.maximum:
            raise ValueError(f"{self.name}: minimum {self.minimum!r} > maximum {self.maximum!r}")

    # -- units ---------------------------------------------------------------------------------------------
    @property
    def unit(self) -> str:
        """The internal unit of its values ("1": a plain number; "n/a": text; a substrate time's unit is the
        substrate's: :func:`stosim.studies.sweep_points.parameter_metadata`)."""
        if self.dimension == "snr":
            return SNR_UNIT
        if self.dimension == "text":
            return TEXT_UNITS
        if self.dimension in UNITS and self.dimension != "dimensionless":
            return INTERNAL_UNIT[self.dimension]
        return "1"

    @property
    def has_unit(self) -> bool:
        """Whether files write it as a quantity with a unit ("500 Oe"; substrate times: for the STOs only)."""
        return self.dimension in UNITS and self.dimension != "dimensionless"

    def attrs(self, units: str | None = None) -> dict[str, str]:
        """The HDF5 attributes of a variable or coordinate holding this parameter (``units``: for a substrate
        time, the substrate's unit)."""
        return {"units": units if units is not None else self.unit, "long_name": self.long_name}

    # -- the range -----------------------------------------------------------------------------------------
    @property
    def bounded(self) -> bool:
        return self.minimum is not None or self.maximum is not None

    def _number(self, value: float) -> str:
        return format(value, self.fmt)

    def valid(self) -> str:
        """The valid range as text, e.g. ``in (0, 1)``, ``in [-1, 1] A``, ``>= 0 K``, with the note."""
        unit = "" if self.unit in ("1", TEXT_UNITS) or self.substrate_time else f" {self.unit}"
        lo, hi = self.minimum, self.maximum
        if lo is not None and hi is not None:
            left, right = "(" if self.open_min else "[", ")" if self.open_max else "]"
            text = f"in {left}{self._number(lo)}, {self._number(hi)}{right}"
        elif lo is not None:
            text = f"{'>' if self.open_min else '>='} {self._number(lo)}"
        elif hi is not None:
            text = f"{'<' if self.open_max else '<='} {self._number(hi)}"
        else:
            text = "any value"
        text += unit
        if self.dimension == "count":
            text = "an integer " + text
        return f"{text} {self.note}" if self.note else text

    def contains(self, value: Any, *, allow_ideal: bool = False) -> bool:
        """Whether ``value`` (a number in the internal unit) is in the range (NaN never is; infinities only
        where the range reaches them); ``allow_ideal``: also the idealized values ``ideal``."""
        try:
            x = float(value)
        except (TypeError, ValueError, OverflowError):
            return False
        if math.isnan(x):
            return False
        if allow_ideal and x in self.ideal:
            return True
        if math.isinf(x) and self.dimension != "snr":
            return False
        if self.minimum is not None and not (x > self.minimum if self.open_min else x >= self.minimum):
            return False
        if self.maximum is not None and not (x < self.maximum if self.open_max else x <= self.maximum):
            return False
        return True

    def bounds(self) -> dict[str, float]:
        """The range as pydantic / annotated-types keywords (gt / ge / lt / le)."""
        out: dict[str, float] = {}
        if self.minimum is not None:
            out["gt" if self.open_min else "ge"] = self.minimum
        if self.maximum is not None:
            out["lt" if self.open_max else "le"] = self.maximum
        return out

    @property
    def description(self) -> str:
        """One line: long name, unit and range (the pydantic field's description, the help of its flag)."""
        unit = "" if self.unit in ("1", TEXT_UNITS) or self.substrate_time else f", {self.unit}"
        valid = f", {self.valid()}" if self.bounded else ""
        return f"{self.long_name}{unit}{valid}"

    def field(self, default: Any = ..., **kwargs: Any) -> Any:
        """A pydantic ``Field`` with this parameter's range and description (``kwargs``: further Field
        options such as ``allow_inf_nan=False`` or ``default_factory``)."""
        from pydantic import Field

        kwargs.setdefault("description", self.description)
        return Field(default, **self.bounds(), **kwargs)

    @property
    def flag(self) -> str:
        """The command-line flag of this parameter."""
        return self.cli or "--" + self.name.replace("_", "-")


_REGISTRY: dict[str, Parameter] = {}


def declare(*params: Parameter, module: str | None = None) -> tuple[Parameter, ...]:
    """Add parameters to the registry (``module``: the declaring module, e.g. a substrate's ``__name__``).
    A name declared twice is refused unless the declaration is the same (a re-import)."""
    out = []
    for p in params:
        if module is not None:
            p = dataclasses.replace(p, module=module)
        old = _REGISTRY.get(p.name)
        if old is not None and old != p:
            raise ValueError(f"parameter {p.name!r} is declared already (by {old.module})")
        _REGISTRY[p.name] = p
        out.append(p)
    return tuple(out)


def get(name: str) -> Parameter:
    """The parameter ``name``; ``KeyError`` naming it otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no parameter {name!r} is declared (stosim.parameters)") from None


def parameters() -> Mapping[str, Parameter]:
    """Every declared parameter by name (read-only, in declaration order; the substrates' own parameters
    appear once their modules are imported, e.g. by :func:`stosim.substrates.registry.specs`)."""
    return MappingProxyType(dict(_REGISTRY))


def attrs(name: str, units: str | None = None) -> dict[str, str]:
    """``{"units": ..., "long_name": ...}`` of the parameter ``name`` (HDF5 attributes)."""
    return get(name).attrs(units)


def flag(name: str) -> str:
    """The command-line flag of the parameter ``name``."""
    return get(name).flag


def _p(name: str, dimension: str, long_name: str, **kwargs: Any) -> Parameter:
    return Parameter(name, dimension, long_name, **kwargs)


_D = dict(files=False)  # device-file parameters that experiment files and sweeps do not take

declare(
    # -- the device (device files; resolved DeviceParameters) -------------------------------------------------
    _p(
        "saturation_magnetization",
        "magnetization",
        "saturation magnetization M",
        minimum=0.0,
        open_min=True,
        maximum=MAX_MAGNETIZATION_EMU_CM3,
        device_key="free_layer.saturation_magnetization",
        **_D,
    ),
    _p(
        "anisotropy_field",
        "field",
        "interfacial anisotropy field H_K",
        minimum=0.0,
        maximum=MAX_ANISOTROPY_FIELD_OE,
        device_key="free_layer.anisotropy_field",
    ),
    _p(
        "damping",
        "dimensionless",
        "Gilbert damping alpha",
        minimum=0.0,
        open_min=True,
        maximum=1.0,
        open_max=True,
        ideal=(0.0,),
        device_key="free_layer.damping",
    ),
    _p(
        "gyromagnetic_ratio",
        "gyromagnetic",
        "gyromagnetic ratio gamma",
        minimum=MIN_GYROMAGNETIC_RAD_PER_OE_S,
        maximum=MAX_GYROMAGNETIC_RAD_PER_OE_S,
        fmt=".4g",
        note="(g-factor 1 to 3)",
        device_key="free_layer.gyromagnetic_ratio",
        **_D,
    ),
    _p(
        "radius",
        "length",
        "free-layer radius r",
        minimum=0.0,
        open_min=True,
        maximum=1e-3,
        note="(<= 10 um)",
        device_key="free_layer.radius",
        **_D,
    ),
    _p(
        "thickness",
        "length",
        "free-layer thickness d",
        minimum=0.0,
        open_min=True,
        maximum=1e-4,
        note="(<= 1 um)",
        device_key="free_layer.thickness",
        **_D,
    ),
    _p(
        "polarization",
        "dimensionless",
        "spin polarization eta",
        minimum=0.0,
        open_min=True,
        maximum=1.0,
        ideal=(0.0,),
        device_key="spin_torque.polarization",
    ),
    _p(
        "torque_asymmetry",
        "dimensionless",
        "spin-torque asymmetry lambda",
        minimum=-1.0,
        open_min=True,
        maximum=1.0,
        open_max=True,
        device_key="spin_torque.asymmetry",
    ),
    _p(
        "current",
        "current",
        "bias current I",
        minimum=-1.0,
        maximum=1.0,
        none_means="the device file's",
        device_key="spin_torque.current",
    ),
    _p(
        "reference_direction",
        "dimensionless",
        "reference-layer direction p (a unit 3-vector)",
        device_key="reference_layer.direction",
        **_D,
    ),
    _p(
        "applied_field",
        "field",
        "applied field H_appl along +z",
        minimum=-MAX_APPLIED_FIELD_OE,
        maximum=MAX_APPLIED_FIELD_OE,
        device_key="applied_field.z",
    ),
    _p(
        "parallel_resistance",
        "resistance",
        "parallel-state resistance R_P",
        minimum=0.0,
        open_min=True,
        note=f"(and RA = R_P pi r^2 in [{MIN_RA_OHM_UM2:g}, {MAX_RA_OHM_UM2:g}] Ohm um^2)",
        device_key="tmr.parallel_resistance",
        **_D,
    ),
    _p(
        "tmr_ratio",
        "dimensionless",
        "TMR ratio (R_AP - R_P)/R_P",
        minimum=0.0,
        open_min=True,
        maximum=10.0,
        note="(a TMR ratio of 0 means R_AP = R_P: the TMR voltage carries no signal of m)",
        device_key="tmr.tmr_ratio",
    ),
    _p(
        "max_current",
        "current",
        "largest bias current (magnitude)",
        minimum=0.0,
        open_min=True,
        maximum=1.0,
        none_means="derived: breakdown voltage / R_P",
        device_key="limits.max_current",
        **_D,
    ),
    _p(
        "breakdown_voltage",
        "voltage",
        "breakdown voltage of the tunnel barrier V_bd",
        minimum=0.0,
        open_min=True,
        maximum=MAX_BREAKDOWN_VOLTAGE_V,
        none_means=f"default {DEFAULT_BREAKDOWN_VOLTAGE_V:g} V",
        device_key="limits.breakdown_voltage",
        **_D,
    ),
    # -- coupled STOs: coupling, times, noise --------------------------------------------------------------
    _p("coupling", "field", "coupling strength mu", minimum=-1e6, maximum=1e6),
    _p("duration", "time", "evolution time T", minimum=0.0, open_min=True, substrate_time=True),
    _p("dt", "time", "time step dt", minimum=0.0, open_min=True, substrate_time=True),
    _p("transient", "time", "discarded transient", minimum=0.0, substrate_time=True),
    _p("temperature", "temperature", "temperature", minimum=0.0, maximum=1e4),
    _p(
        "dynamical_snr",
        "snr",
        "dynamical noise SNR",
        minimum=MIN_SNR_DB,
        maximum=math.inf,
        note="(inf: no noise)",
        none_means="no noise",
    ),
    _p(
        "dynamical_noise_reference",
        "time",
        "reference time t_ref of the dynamical noise SNR",
        minimum=1e-18,
        maximum=1.0,
        none_means="per integration step",
    ),
    _p(
        "observation_snr",
        "snr",
        "observation noise SNR",
        minimum=MIN_SNR_DB,
        maximum=math.inf,
        note="(inf: no noise)",
        none_means="no noise",
    ),
    _p(
        "variability", "dimensionless", "relative spread of H_K, alpha and I between the STOs", minimum=0.0, maximum=0.5
    ),
    _p("device", "text", "device file", none_means="devices/seed-pmtj.toml"),
    # -- sizes and models ----------------------------------------------------------------------------------
    _p("n", "count", "reservoir size N (oscillators / nodes / sites)", minimum=1, maximum=100_000),
    _p("hidden", "count", "hidden units", minimum=1, maximum=100_000),
    _p("depth", "count", "hidden layers of the mlp", minimum=1, maximum=100),
    _p("activation", "text", "hidden activation of the mlp"),
    _p(
        "init_spectral_radius",
        "dimensionless",
        "spectral radius of the mlp's square hidden weights at initialization",
        minimum=0.0,
        open_min=True,
        maximum=10.0,
    ),
    _p("conv_channels", "count", "convolution channels", minimum=1, maximum=256),
    _p("substrate", "text", "substrate"),
    # -- training ------------------------------------------------------------------------------------------
    _p("dataset", "text", "dataset"),
    _p("data_dir", "text", "folder of the dataset's IDX files"),
    _p("download", "switch", "fetch missing dataset files"),
    _p("limit_train", "count", "training samples", minimum=1),
    _p("limit_test", "count", "test samples", minimum=1),
    _p("epochs", "count", "training epochs", minimum=1, maximum=10_000),
    _p("batch_size", "count", "batch size", minimum=1, maximum=65_536),
    _p("lr", "dimensionless", "learning rate", minimum=0.0, open_min=True, maximum=10.0),
    _p("optimizer", "text", "optimizer"),
    _p("lr_schedule", "text", "learning-rate schedule"),
    _p("momentum", "dimensionless", "SGD momentum", minimum=0.0, maximum=1.0, open_max=True),
    _p("weight_decay", "dimensionless", "weight decay", minimum=0.0, maximum=10.0),
    _p("input_offset", "dimensionless", "offset subtracted from every input value", minimum=-1.0, maximum=1.0),
    _p("seed", "count", "seed", minimum=0, maximum=MAX_SEED, fmt="d"),
    _p("dtype", "text", "floating-point type"),
    _p("readout_only", "switch", "readout-only ridge training"),
    _p("ridge_alpha", "dimensionless", "ridge regularization alpha", minimum=0.0, open_min=True),
    _p("train_with_noise", "switch", "train with the noise (else noiselessly, evaluated with it)"),
    # -- sweep points: Lyapunov exponents, FTMLE, free runs --------------------------------------------------
    _p("n_exponents", "count", "number of Lyapunov exponents", minimum=1, maximum=10_000, cli="--exponents"),
    _p("save_every", "count", "steps between recorded states", minimum=1),
    _p("samples", "count", "input samples", minimum=1, maximum=100_000),
    _p("readin_scale", "dimensionless", "read-in standard deviation", minimum=0.0, open_min=True),
    _p("tol", "dimensionless", "relative tolerance", minimum=0.0, open_min=True, maximum=1.0, open_max=True),
    _p("max_iter", "count", "iteration limit", minimum=1),
    _p("method", "text", "method"),
    _p("ftmle_samples", "count", "test samples of the FTMLE (0: none)", minimum=0, maximum=10_000),
    # -- noise points: the levels a trained model is evaluated at (lists) ------------------------------------
    _p(
        "eval_observation_snr",
        "snr",
        "observation noise SNR of the evaluation",
        minimum=MIN_SNR_DB,
        maximum=math.inf,
        note="(a list; inf: no noise)",
    ),
    _p(
        "eval_dynamical_snr",
        "snr",
        "dynamical noise SNR of the evaluation",
        minimum=MIN_SNR_DB,
        maximum=math.inf,
        note="(a list; inf: no noise)",
    ),
    _p("eval_temperature", "temperature", "temperature of the evaluation", minimum=0.0, maximum=1e4),
)

# -- derived tables --------------------------------------------------------------------------------------------


def _unit_dimensions(params: Iterable[Parameter]) -> Mapping[str, str]:
    return MappingProxyType({p.name: p.dimension for p in params if p.files and p.has_unit})


# dimension of each key of experiment files and sweep specs that must carry a unit; the substrate times
# (SUBSTRATE_TIME_KEYS) only where the substrate's time unit is s (the STOs; elsewhere plain numbers). Taken at
# import from the parameters declared above: a substrate's own parameters are plain numbers (a test checks it)
UNIT_DIMENSIONS: Mapping[str, str] = _unit_dimensions(_REGISTRY.values())
SUBSTRATE_TIME_KEYS = frozenset(name for name in UNIT_DIMENSIONS if _REGISTRY[name].substrate_time)
