"""Quantities with units: one registry, parsed once at the boundary.

Every configuration value that carries a unit is written as a string such as
``"200 Oe"``, ``"1448.3 emu/cm^3"``, ``"2.5 mA"``, ``"60 nm"`` or ``"300 ps"``.
:func:`parse_quantity` converts it to the internal unit of its dimension:

=================  ==================  ==========================================
dimension          internal unit        accepted units
=================  ==================  ==========================================
field              Oe                   Oe, kOe, mT, T  (1 T <-> 1e4 Oe)
magnetization      emu/cm^3             emu/cm^3, kA/m, A/m
length             cm                   cm, m, mm, um, nm, A (angstrom)
volume             cm^3                 cm^3, m^3, nm^3
current            A                    A, mA, uA
time               s                    s, ms, us, ns, ps, fs
temperature        K                    K
resistance         Ohm                  Ohm, kOhm
voltage            V                    V, mV
gyromagnetic       rad/(Oe s)           rad/(Oe s), 1/(Oe s)
dimensionless      1                    (no unit)
=================  ==================  ==========================================
"""

from __future__ import annotations

import decimal
import math
import re
from types import MappingProxyType
from typing import Any, Mapping

__all__ = [
    "UNITS",
    "INTERNAL_UNIT",
    "parse_quantity",
    "format_quantity",
    "format_time",
    "UnitError",
    "values_agree",
    "VALUE_RTOL",
]


class UnitError(ValueError):
    """A quantity string could not be parsed or has the wrong dimension."""


def _table(**kwargs: float) -> Mapping[str, float]:
    return MappingProxyType(dict(kwargs))


# factor that converts a value in the given unit to the internal unit of the dimension
UNITS: Mapping[str, Mapping[str, float]] = MappingProxyType(
    {
        "field": _table(**{"Oe": 1.0, "kOe": 1e3, "mT": 10.0, "T": 1e4}),
        "magnetization": _table(**{"emu/cm^3": 1.0, "kA/m": 1.0, "A/m": 1e-3}),
        "length": _table(**{"cm": 1.0, "m": 1e2, "mm": 1e-1, "um": 1e-4, "nm": 1e-7, "A": 1e-8}),
        "volume": _table(**{"cm^3": 1.0, "m^3": 1e6, "nm^3": 1e-21}),
        "current": _table(**{"A": 1.0, "mA": 1e-3, "uA": 1e-6}),
        "time": _table(**{"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9, "ps": 1e-12, "fs": 1e-15}),
        "temperature": _table(**{"K": 1.0}),
        "resistance": _table(**{"Ohm": 1.0, "kOhm": 1e3}),
        "voltage": _table(**{"V": 1.0, "mV": 1e-3}),
        "gyromagnetic": _table(**{"rad/(Oe s)": 1.0, "1/(Oe s)": 1.0}),
        "dimensionless": _table(**{"": 1.0}),
    }
)

INTERNAL_UNIT: Mapping[str, str] = MappingProxyType(
    {
        "field": "Oe",
        "magnetization": "emu/cm^3",
        "length": "cm",
        "volume": "cm^3",
        "current": "A",
        "time": "s",
        "temperature": "K",
        "resistance": "Ohm",
        "voltage": "V",
        "gyromagnetic": "rad/(Oe s)",
        "dimensionless": "",
    }
)

_NUMBER = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(.*?)\s*$")
_ALIASES = {
    "µm": "um",
    "μm": "um",
    "μA": "uA",
    "µA": "uA",
    "Ω": "Ohm",
    "kΩ": "kOhm",
    "ohm": "Ohm",
    "µs": "us",
    "μs": "us",
    "emu/cc": "emu/cm^3",
    "emu/cm3": "emu/cm^3",
    "cm3": "cm^3",
}


def parse_quantity(value: str | float | int, dimension: str, *, name: str = "value") -> float:
    """Parse ``value`` (e.g. ``"2.5 mA"``) into the internal unit of ``dimension``.

    A bare number is accepted only for dimensionless quantities; anything else must
    carry a unit so that "200" can never be mistaken for 200 T instead of 200 Oe.
    Raises :class:`UnitError` naming ``name``, the value and the accepted units.
    """
    if dimension not in UNITS:
        raise UnitError(f"unknown dimension {dimension!r}; known: {sorted(UNITS)}")
    table = UNITS[dimension]
    accepted = ", ".join(repr(u) for u in table) if dimension != "dimensionless" else "a plain number"
    if isinstance(value, bool):
        raise UnitError(f"{name}: expected a quantity in {accepted}, got {value!r}")
    if isinstance(value, (int, float)):
        if dimension != "dimensionless":
            raise UnitError(
                f"{name}: {value!r} has no unit; write it with one of {accepted} "
                f"(e.g. '{value} {INTERNAL_UNIT[dimension]}')"
            )
        try:
            number, unit = float(value), ""
        except OverflowError:  # an integer beyond the double range
            raise UnitError(f"{name}: {value!r} is not finite") from None
    elif isinstance(value, str):
        match = _NUMBER.match(value)
        if match is None:
            raise UnitError(
                f"{name}: cannot read a number from {value!r}; expected e.g. '1.5 {INTERNAL_UNIT[dimension]}'"
            )
        number = match.group(1)
        unit = _ALIASES.get(match.group(2), match.group(2))
    else:
        raise UnitError(f"{name}: expected a string with a unit, got {type(value).__name__}")
    if unit not in table:
        raise UnitError(f"{name}: unit {unit!r} in {value!r} is not a {dimension} unit; accepted: {accepted}")
    result = _scaled(number, table[unit])
    if not math.isfinite(result):
        raise UnitError(f"{name}: {value!r} is not finite")
    return result


def _scaled(number: str | float, factor: float) -> float:
    """``number * factor`` rounded once: the double nearest the exact decimal product.

    The factors are powers of ten; multiplying two doubles would round twice, so that "0.1 ns" gave
    1.0000000000000002e-10 s but "100 ps" 1e-10 s, and "200 ns" 2.0000000000000002e-07 s. Rounded
    once, equal quantities in any accepted unit give the same double, the one ``float("1e-10")`` gives.
    Non-finite results (a number beyond the double range) come back as inf.
    """
    if isinstance(number, float):
        return number * factor
    with decimal.localcontext() as ctx:
        ctx.prec = len(number) + 40  # the product of the two decimals is exact
        ctx.Emax, ctx.Emin = decimal.MAX_EMAX, decimal.MIN_EMIN
        return float(decimal.Decimal(number) * decimal.Decimal(repr(factor)))


# values that agree within this relative tolerance are the same setting: a quantity converted by
# an earlier version (e.g. "200 ns" as 2.0000000000000002e-07 s) may differ in its last bit
VALUE_RTOL = 1e-12


def values_agree(a: Any, b: Any, rel_tol: float = VALUE_RTOL) -> bool:
    """Whether two settings (numbers, strings, lists, dicts, nested) are the same: floats within a
    relative ``rel_tol`` (|a - b| <= rel_tol max(|a|, |b|)), integers, booleans and text exactly."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(values_agree(a[k], b[k], rel_tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(values_agree(x, y, rel_tol) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    numbers = all(isinstance(v, (int, float)) for v in (a, b))
    if numbers and (isinstance(a, float) or isinstance(b, float)):
        return math.isclose(a, b, rel_tol=rel_tol, abs_tol=0.0)
    return a == b


def format_quantity(value: float, dimension: str) -> str:
    """Format an internal-unit value with its unit, e.g. ``format_quantity(200.0, "field") == "200 Oe"``."""
    unit = INTERNAL_UNIT[dimension]
    text = f"{value:.6g}"
    return f"{text} {unit}" if unit else text


def format_time(seconds: float) -> str:
    """A time in s as text in the unit that reads best: ``format_time(300e-12) == "300 ps"``, 2e-8 -> "20 ns"."""
    for unit, factor in (("fs", 1e-15), ("ps", 1e-12), ("ns", 1e-9), ("us", 1e-6), ("ms", 1e-3)):
        if abs(seconds) < 1000 * factor:
            return f"{seconds / factor:.6g} {unit}"
    return f"{seconds:.6g} s"
