"""One conformance suite for every substrate behind :class:`stosim.substrates.base.Substrate`.

To add a substrate, append ``(id, zero-argument factory)`` to ``FACTORIES``. Factories should
build small float64 instances so the whole suite stays fast.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from stosim.substrates.base import Capabilities, Substrate, SubstrateDescription
from stosim.substrates.ffesn import FFESN
from stosim.substrates.lorenz96 import Lorenz96
from stosim.substrates.sto_array import CoupledSTOArray

FACTORIES: list[tuple[str, Callable[[], Substrate]]] = [
    ("ffesn", lambda: FFESN(n=20, spectral_radius=1.2, steps=3, seed=1)),
    ("lorenz96", lambda: Lorenz96(n=10, forcing=8.0, duration=0.1, dt=0.01)),
    ("sto", lambda: CoupledSTOArray(n=6, coupling_oe=500.0, duration_s=20e-12, dt_s=1e-12, seed=1)),
    ("sto-noisy", lambda: CoupledSTOArray(n=6, coupling_oe=500.0, duration_s=20e-12, dt_s=1e-12, seed=1,
                                          temperature_k=300.0, dynamical_snr_db=20.0, observation_snr_db=20.0)),
    # SNR = inf dB means no noise: deterministic, so it must not claim to be stochastic
    ("sto-inf-snr", lambda: CoupledSTOArray(n=6, coupling_oe=500.0, duration_s=20e-12, dt_s=1e-12, seed=1,
                                            dynamical_snr_db=float("inf"), observation_snr_db=float("inf"))),
]

BATCH = 3


@pytest.fixture(params=[factory for _, factory in FACTORIES], ids=[name for name, _ in FACTORIES])
def substrate(request: pytest.FixtureRequest) -> Substrate:
    sub = request.param()
    assert isinstance(sub, Substrate)
    return sub


def _readin(sub: Substrate, seed: int = 0, batch: int = BATCH) -> torch.Tensor:
    size = sub.describe().readin_size
    return torch.randn(batch, size, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_describe_sizes_match_what_the_substrate_returns(substrate: Substrate) -> None:
    d = substrate.describe()
    assert isinstance(d, SubstrateDescription)
    for size in (d.state_size, d.readin_size, d.readout_size):
        assert isinstance(size, int) and not isinstance(size, bool) and size > 0
    for text in (d.name, d.state_units, d.readout_units, d.time_unit, d.summary):
        assert isinstance(text, str) and text
    u = _readin(substrate)
    x0 = substrate.initial_state(u)
    assert x0.shape == (BATCH, d.state_size)
    xt = substrate.evolve(x0)
    assert xt.shape == (BATCH, d.state_size)
    y = substrate.readout(xt)
    assert y.shape == (BATCH, d.readout_size)
    assert substrate(u).shape == (BATCH, d.readout_size)
    assert isinstance(d.as_dict(), dict)


def test_read_configuration_is_flat(substrate: Substrate) -> None:
    cfg = substrate.read_configuration()
    assert isinstance(cfg, dict) and cfg
    for key, value in cfg.items():
        assert isinstance(key, str)
        assert isinstance(value, (int, float, str, bool)), (key, type(value))


def test_capabilities_type(substrate: Substrate) -> None:
    caps = substrate.capabilities
    assert isinstance(caps, Capabilities)
    for flag in (caps.differentiable, caps.stochastic, caps.reproducible, caps.hardware):
        assert isinstance(flag, bool)


def test_reset_makes_runs_repeatable(substrate: Substrate) -> None:
    if not substrate.capabilities.reproducible:
        pytest.skip("substrate is not reproducible")
    u = _readin(substrate)
    with torch.no_grad():
        substrate.reset(1234)
        first = substrate(u)
        substrate.reset(1234)
        second = substrate(u)
    assert torch.equal(first, second)


def test_stochastic_substrates_depend_on_the_seed(substrate: Substrate) -> None:
    if not (substrate.capabilities.stochastic and substrate.capabilities.reproducible):
        pytest.skip("substrate has no reproducible noise")
    u = _readin(substrate)
    with torch.no_grad():
        substrate.reset(1)
        a = substrate(u)
        substrate.reset(2)
        b = substrate(u)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("shape", ["extra_column", "missing_column", "one_dimensional", "three_dimensional"])
def test_wrong_readin_shape_raises(substrate: Substrate, shape: str) -> None:
    size = substrate.describe().readin_size
    bad = {
        "extra_column": (BATCH, size + 1),
        "missing_column": (BATCH, size - 1),
        "one_dimensional": (size,),
        "three_dimensional": (1, BATCH, size),
    }[shape]
    with pytest.raises(ValueError):
        substrate(torch.zeros(bad, dtype=torch.float64))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_readin_raises(substrate: Substrate, value: float) -> None:
    u = _readin(substrate)
    u[1, 0] = value
    with pytest.raises(ValueError):
        substrate(u)


@pytest.mark.parametrize("graph", [False, True], ids=["no_graph", "graph"])
def test_non_finite_state_raises(substrate: Substrate, graph: bool) -> None:
    # evolve refuses a non-finite state before it runs (never a NaN result, never a crash inside a kernel),
    # also when a graph is recorded (the differentiable paths differ from the plain ones)
    state = substrate.initial_state(_readin(substrate)).detach().clone()
    state[1, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        substrate.evolve(state.requires_grad_(graph))


def test_integer_readin_raises(substrate: Substrate) -> None:
    # a ValueError naming the dtype, not a RuntimeError from inside torch
    size = substrate.describe().readin_size
    with pytest.raises(ValueError, match="dtype"):
        substrate(torch.ones(BATCH, size, dtype=torch.int64))


def test_gradients_reach_the_readin(substrate: Substrate) -> None:
    if not substrate.capabilities.differentiable:
        pytest.skip("substrate is not differentiable")
    substrate.reset(0)
    u = _readin(substrate).requires_grad_(True)
    substrate(u).sum().backward()
    assert u.grad is not None
    assert torch.isfinite(u.grad).all()
    assert (u.grad != 0).any()


def test_outputs_finite_and_float64(substrate: Substrate) -> None:
    substrate.reset(0)
    u = _readin(substrate)
    x0 = substrate.initial_state(u)
    xt = substrate.evolve(x0)
    y = substrate.readout(xt)
    for t in (x0, xt, y):
        assert t.dtype == torch.float64
        assert torch.isfinite(t).all()
