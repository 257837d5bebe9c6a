"""Checks of arguments shared across modules (each raises ValueError naming the parameter and its range)."""

from __future__ import annotations

import numbers

__all__ = ["check_count"]


def check_count(value: object, name: str, minimum: int = 1) -> int:
    """``value`` as an int; ValueError naming ``name`` unless it is an integer (not a bool, not a float
    such as 2.0) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} = {value!r} is out of range; valid: an integer >= {minimum}")
    return int(value)
