"""Testing helpers for substrates: the conformance suite every substrate (and a lab's driver) passes.

- :func:`check_substrate` (:mod:`stosim.testing.conformance`): run every check on one substrate,
  get a :class:`ConformanceReport`, or a :class:`ConformanceError` listing the failures;
- :class:`SubstrateConformance` (:mod:`stosim.testing.pytest_suite`, needs pytest): subclass it
  in a test module with a ``substrate`` fixture to get one pytest test per check.
"""

from __future__ import annotations

from typing import Any

from stosim.testing.conformance import (
    CHECK_NAMES,
    CHECKS,
    Check,
    ConformanceError,
    ConformanceReport,
    ConformanceSettings,
    SkipCheck,
    check_substrate,
    run_check,
)

__all__ = [
    "CHECKS",
    "CHECK_NAMES",
    "Check",
    "ConformanceError",
    "ConformanceReport",
    "ConformanceSettings",
    "SkipCheck",
    "SubstrateConformance",
    "check_substrate",
    "run_check",
]


def __getattr__(name: str) -> Any:
    if name == "SubstrateConformance":  # imports pytest: only when asked for
        from stosim.testing.pytest_suite import SubstrateConformance

        return SubstrateConformance
    raise AttributeError(f"module 'stosim.testing' has no attribute {name!r}")
