"""The conformance suite (stosim.testing) on every simulated substrate, and the suite itself.

To add a substrate, append ``(id, zero-argument factory, declared protocols)`` to ``FACTORIES``:
every check of :data:`stosim.testing.conformance.CHECKS` then runs on it. Factories should build
small instances so the whole suite stays fast. The hardware substrates (the station driver on
pyvisa-sim and on the digital twin, the station model, the physics-aware wrapper) run the same
suite in tests/hardware/test_hardware.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
import torch

from stosim.substrates.base import Capabilities, Substrate
from stosim.substrates.ffesn import FFESN
from stosim.substrates.lorenz96 import Lorenz96
from stosim.substrates.protocols import (
    PROTOCOLS,
    Differentiable,
    Hardware,
    HasTangentSystem,
    Stochastic,
    Timed,
)
from stosim.substrates.rate_network import RateNetwork
from stosim.substrates.sto_array import CoupledSTOArray
from stosim.testing import (
    CHECK_NAMES,
    CHECKS,
    ConformanceError,
    SubstrateConformance,
    check_substrate,
    run_check,
)

STO_PROTOCOLS = {Differentiable, Stochastic, Timed, HasTangentSystem}
FACTORIES: list[tuple[str, Callable[[], Substrate], set[type]]] = [
    ("ffesn", lambda: FFESN(n=20, spectral_radius=1.2, steps=3, seed=1), {Differentiable, Timed}),
    ("ffesn-float32", lambda: FFESN(n=8, steps=2, seed=1, dtype=torch.float32), {Differentiable, Timed}),
    ("lorenz96", lambda: Lorenz96(n=10, forcing=8.0, duration=0.1, dt=0.01), {Differentiable, Timed}),
    ("sto", lambda: CoupledSTOArray(n=6, coupling_oe=500.0, duration_s=20e-12, dt_s=1e-12, seed=1), STO_PROTOCOLS),
    (
        "sto-noisy",
        lambda: CoupledSTOArray(
            n=6,
            coupling_oe=500.0,
            duration_s=20e-12,
            dt_s=1e-12,
            seed=1,
            temperature_k=300.0,
            dynamical_snr_db=20.0,
            observation_snr_db=20.0,
        ),
        STO_PROTOCOLS,
    ),
    # SNR = inf dB means no noise: deterministic, so it must not claim to be stochastic
    (
        "sto-inf-snr",
        lambda: CoupledSTOArray(
            n=6,
            coupling_oe=500.0,
            duration_s=20e-12,
            dt_s=1e-12,
            seed=1,
            dynamical_snr_db=float("inf"),
            observation_snr_db=float("inf"),
        ),
        STO_PROTOCOLS,
    ),
    (
        "rate-network",
        lambda: RateNetwork(n=12, g=2.0, duration=1.0, dt=0.1, seed=1),
        {Differentiable, Stochastic, Timed},
    ),
    (
        "rate-network-discrete",
        lambda: RateNetwork(n=12, g=2.0, time="discrete", duration=3, seed=1),
        {Differentiable, Stochastic, Timed},
    ),
    (
        "rate-network-input",
        lambda: RateNetwork(n=12, g=2.0, duration=1.0, dt=0.1, input_std=0.5, input_tau=0.5, seed=1),
        {Differentiable, Stochastic, Timed},
    ),
]
IDS = [name for name, _, _ in FACTORIES]


@pytest.fixture(params=FACTORIES, ids=IDS)
def substrate(request: pytest.FixtureRequest) -> Substrate:
    return request.param[1]()


class TestConformance(SubstrateConformance):
    """Every check of the suite on every substrate of FACTORIES (one test per check and substrate)."""


@pytest.mark.parametrize(("name", "factory", "protocols"), FACTORIES, ids=IDS)
def test_each_substrate_runs_every_check_and_declares_its_protocols(
    name: str, factory: Callable[[], Substrate], protocols: set[type]
) -> None:
    sub = factory()
    assert {p for p in PROTOCOLS if isinstance(sub, p)} == protocols
    report = check_substrate(sub)
    assert report.ok and report.ran == list(CHECK_NAMES)
    assert report.passed + list(report.skipped) == sorted(report.ran, key=report.passed.__contains__, reverse=True)
    # the checks that apply ran (not skipped)
    caps = sub.capabilities
    assert ("gradients" in report.passed) == isinstance(sub, Differentiable)
    assert ("seeds_differ" in report.passed) == (caps.stochastic and caps.reproducible)
    assert ("tangent_system_protocol" in report.passed) == isinstance(sub, HasTangentSystem)


def test_the_pytest_class_runs_the_suites_list_of_checks() -> None:
    (mark,) = [m for m in SubstrateConformance.test_conformance.pytestmark if m.name == "parametrize"]
    assert tuple(mark.args[1]) == CHECKS and tuple(mark.kwargs["ids"]) == CHECK_NAMES
    assert len(set(CHECK_NAMES)) == len(CHECK_NAMES) == 15
    with pytest.raises(ValueError, match="no conformance check named 'nope'"):
        run_check("nope", FFESN(n=4, steps=1))


def test_capabilities_follow_the_declared_protocols() -> None:
    quiet = CoupledSTOArray(n=2, duration_s=2e-12)
    noisy = CoupledSTOArray(n=2, duration_s=2e-12, temperature_k=300.0)
    assert quiet.capabilities == Capabilities(differentiable=True, stochastic=False, reproducible=True)
    assert noisy.capabilities == Capabilities(differentiable=True, stochastic=True, reproducible=True)
    assert not quiet.noise_on and noisy.noise_on
    assert FFESN(n=4, steps=2).duration == 2.0 and Lorenz96(n=4, duration=0.5, dt=0.1).duration == 0.5
    assert quiet.duration == 2e-12
    assert not isinstance(FFESN(n=4), (Stochastic, HasTangentSystem, Hardware))


# -- the suite fails on substrates that break the contract ----------------------------------------
class ClaimsNoise(FFESN):
    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(differentiable=True, stochastic=True, reproducible=True)


class WrongReadoutSize(FFESN):
    def readout(self, state: torch.Tensor) -> torch.Tensor:
        return state[:, :-1]


class NoGradient(FFESN):
    def evolve(self, state: torch.Tensor) -> torch.Tensor:
        return super().evolve(state).detach()


class WrongGradient(FFESN):
    class _Twice(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x: torch.Tensor) -> torch.Tensor:
            return x.clone()

        @staticmethod
        def backward(ctx, g: torch.Tensor) -> torch.Tensor:
            return 2 * g

    def evolve(self, state: torch.Tensor) -> torch.Tensor:
        return self._Twice.apply(super().evolve(state))


class AcceptsAnything(FFESN):
    def _check_readin(self, readin: torch.Tensor) -> None:
        pass

    def _check_state(self, state: torch.Tensor, what: str) -> None:
        pass


class UnnamedErrors(FFESN):
    def _check_readin(self, readin: torch.Tensor) -> None:
        try:
            super()._check_readin(readin)
        except ValueError:
            raise ValueError("bad read-in") from None


class NoisySuspendFails(CoupledSTOArray):
    @contextlib.contextmanager
    def noise_suspended(self):
        yield


class NonAdjoint(CoupledSTOArray):
    def flow_operators(self):
        import dataclasses

        ops = super().flow_operators()
        return dataclasses.replace(ops, vjp=lambda x0, u: 2 * ops.vjp(x0, u))


@pytest.mark.parametrize(
    ("broken", "failed"),
    [
        (lambda: ClaimsNoise(n=6, steps=1), {"capabilities", "seeds_differ"}),
        (lambda: WrongReadoutSize(n=6, steps=1), {"shapes_and_dtypes"}),
        (lambda: NoGradient(n=6, steps=1), {"gradients"}),
        (lambda: WrongGradient(n=6, steps=1), {"gradients"}),
        (
            lambda: AcceptsAnything(n=6, steps=1),
            {"readin_shape_refused", "readin_dtype_refused", "readin_non_finite_refused", "state_non_finite_refused"},
        ),
        (
            lambda: UnnamedErrors(n=6, steps=1),
            {"readin_shape_refused", "readin_dtype_refused", "readin_non_finite_refused"},
        ),
        (
            lambda: NoisySuspendFails(n=2, duration_s=5e-12, observation_snr_db=10.0),
            {"stochastic_protocol", "gradients"},
        ),  # gradcheck relies on noise_suspended too
        (lambda: NonAdjoint(n=2, duration_s=5e-12), {"tangent_system_protocol"}),
    ],
    ids=[
        "claims-noise",
        "wrong-readout-size",
        "no-gradient",
        "wrong-gradient",
        "accepts-anything",
        "unnamed-errors",
        "noise-not-suspended",
        "non-adjoint",
    ],
)
def test_the_suite_fails_a_substrate_that_breaks_the_contract(
    broken: Callable[[], Substrate], failed: set[str]
) -> None:
    sub = broken()
    report = check_substrate(sub, raise_on_failure=False)
    assert set(report.failed) == failed, str(report)
    with pytest.raises(ConformanceError, match=min(failed)):
        check_substrate(sub)
