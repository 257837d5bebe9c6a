"""Substrate names of sweep points, checked against the substrate registry (stosim.substrates.registry)."""

from __future__ import annotations

from stosim.substrates import registry

__all__ = [
    "DEFAULT_SUBSTRATE",
    "check_lyapunov_substrate",
    "check_ftmle_substrate",
    "ftmle_substrates",
    "point_time_unit",
]

DEFAULT_SUBSTRATE = registry.names()[0]  # the first built-in substrate: the coupled STOs

# a substrate's time unit (registry) as the unit attribute of a sweep's duration / dt / transient
_POINT_UNITS = {"s": "s", "model time": "model time unit", "tau": "tau", "steps": "step"}


def _valid(v: str, valid: tuple[str, ...]) -> str:
    if v not in valid:
        raise ValueError(f"Input should be {', '.join(repr(k) for k in valid[:-1])} or {valid[-1]!r}")
    return v


def check_lyapunov_substrate(v: str) -> str:
    """``v`` if it names a substrate with a tangent system (an ``mle`` point)."""
    return _valid(v, registry.lyapunov_names())


def ftmle_substrates() -> tuple[str, ...]:
    """The substrates ``stosim ftmle`` (and an ``ftmle`` point) supports."""
    return tuple(name for name, spec in registry.specs().items() if spec.ftmle)


def check_ftmle_substrate(v: str) -> str:
    """``v`` if it names a substrate with a finite-time MLE (an ``ftmle`` point)."""
    return _valid(v, ftmle_substrates())


def point_time_unit(substrate: str, kind: str) -> str | None:
    """The internal unit of duration / dt / transient for ``substrate`` in a ``kind`` point; None where the
    substrate is not registered (a baseline model kind). A map's steps are a unit only for mle / ftmle."""
    spec = registry.specs().get(substrate)
    if spec is None:
        return None
    if spec.time_unit == "steps" and kind not in ("mle", "ftmle"):
        return "1"
    return _POINT_UNITS[spec.time_unit]
