"""The conformance suite as a pytest class: one test per check, for any substrate fixture.

Subclass it in a test module that defines a ``substrate`` fixture (an open driver, for
hardware)::

    import pytest
    from stosim.testing import SubstrateConformance

    @pytest.fixture
    def substrate():
        with MyDriver("devices/stations/my-lab.toml") as hw:
            yield hw

    class TestMyDriver(SubstrateConformance):
        batch = 3          # samples per call (1 if the driver acquires one at a time)

Every check of :data:`stosim.testing.conformance.CHECKS` becomes ``test_conformance[<check>]``;
checks that do not apply to the substrate are reported as skipped with the reason.
"""

from __future__ import annotations

import pytest

from stosim.substrates.base import Substrate
from stosim.testing.conformance import (
    CHECK_NAMES,
    CHECKS,
    Check,
    ConformanceSettings,
    SkipCheck,
    run_check,
)

__all__ = ["SubstrateConformance"]


class SubstrateConformance:
    """Base class of a pytest test class running the conformance suite on the ``substrate`` fixture."""

    batch: int = 3
    seed: int = 0
    gradcheck: bool = True

    @pytest.mark.parametrize("check", CHECKS, ids=CHECK_NAMES)
    def test_conformance(self, substrate: Substrate, check: Check) -> None:
        try:
            run_check(check, substrate, ConformanceSettings(batch=self.batch, seed=self.seed, gradcheck=self.gradcheck))
        except SkipCheck as skip:
            pytest.skip(f"{check.name}: {skip}")
