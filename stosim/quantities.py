"""Quantities given to Python functions: a unit string or a plain number in the documented unit.

The files and the command line take quantities as strings with units ("500 Oe", "300 ps"); so do the
public Python constructors and functions. :func:`quantity` accepts either

- a string with a unit, parsed by :func:`stosim.units.parse_quantity` (the same parser as the files), or
- a plain number (int, float, NumPy scalar), taken to be in the internal unit of the dimension
  (Oe, s, A, K, ... as in :data:`stosim.units.INTERNAL_UNIT`; the keyword's suffix names it:
  ``coupling_oe``, ``duration_s``).

>>> quantity("500 Oe", "field", "coupling"), quantity(500, "field", "coupling")
(500.0, 500.0)
>>> quantity("300 ps", "time", "duration")
3e-10
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from stosim.units import INTERNAL_UNIT, UnitError, parse_quantity

__all__ = ["either", "optional_quantity", "quantity"]

_EXAMPLES = {"field": "500 Oe", "current": "2.5 mA", "time": "300 ps", "temperature": "300 K"}


def quantity(value: str | float, dimension: str, name: str) -> float:
    """``value`` in the internal unit of ``dimension``: a unit string ("500 Oe") is parsed, a plain
    number is taken as already in that unit. Raises :class:`~stosim.units.UnitError` (a ``ValueError``)
    naming ``name`` for anything else (None, a list, NaN, a string without a number)."""
    if isinstance(value, str):
        return parse_quantity(value, dimension, name=name)
    unit = INTERNAL_UNIT[dimension]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        example = _EXAMPLES.get(dimension, f"1 {unit}".strip())
        raise UnitError(
            f"{name} = {value!r}: expected a quantity such as {example!r} or a plain number in "
            f"{unit or 'plain units'}, not {type(value).__name__}"
        )
    number = float(value)
    if not math.isfinite(number):
        raise UnitError(f"{name} = {value!r} is not finite")
    return number


def optional_quantity(value: str | float | None, dimension: str, name: str) -> float | None:
    """:func:`quantity`, with None passed through (a setting left at its default)."""
    return None if value is None else quantity(value, dimension, name)


def either(new: Any, new_name: str, old: Any, old_name: str, old_default: Any) -> Any:
    """The value of a setting that has two keywords (``coupling`` and the older ``coupling_oe``):
    ``new`` when given (not None), else ``old``; giving both (``old`` not at its default) is an error."""
    if new is None:
        return old
    if old is not old_default and old != old_default:
        raise ValueError(f"give {new_name} or {old_name}, not both ({new_name} = {new!r}, {old_name} = {old!r})")
    return new
