"""The substrate conformance suite: checks every substrate (simulator or lab driver) must pass.

Run it on your own driver (open it first; it is run forward a few dozen times on small batches)::

    from stosim.testing import check_substrate

    with MyDriver(...) as hw:
        report = check_substrate(hw)      # raises ConformanceError listing every failed check
    print(report)                         # passed / skipped (with the reason) per check

or from pytest, with one test per check (see :class:`stosim.testing.SubstrateConformance`).

The checks (:data:`CHECKS`, in order; a check that does not apply is *skipped* with its reason):

- ``describe``: :meth:`describe` gives positive integer sizes and non-empty units and names;
- ``read_configuration``: a non-empty flat dict, string keys, plain values (int, float, str, bool; no NaN);
- ``capabilities``: a :class:`Capabilities` of booleans equal to :meth:`Capabilities.from_protocols`
  of the declared mixins (:mod:`stosim.substrates.protocols`), and a floating ``dtype``;
- ``shapes_and_dtypes``: initial_state (B, state_size), evolve (B, state_size), readout and forward
  (B, readout_size), all of the substrate's dtype, finite;
- ``reset_reproducible``: (reproducible substrates) the same ``reset(seed)`` gives the same outputs;
- ``seeds_differ``: (stochastic, reproducible substrates) different seeds give different outputs;
- ``readin_shape_refused``, ``readin_dtype_refused``, ``readin_non_finite_refused``: a read-in of the
  wrong shape, an integer read-in and a NaN/inf read-in raise ``ValueError`` naming the substrate
  (``describe().name``; the dtype for an integer read-in);
- ``state_non_finite_refused``: ``evolve`` of a NaN state raises ``ValueError`` ("finite"), also
  with a graph recorded for differentiable substrates;
- ``gradients``: (Differentiable) finite, non-zero gradients reach the read-in; for float64
  substrates without noise (or with their noise suspended) ``torch.autograd.gradcheck`` of
  ``forward`` on one sample against central differences;
- ``stochastic_protocol``: (Stochastic) ``noise_on`` is a bool and inside ``noise_suspended()``
  the outputs no longer depend on the seed;
- ``timed_protocol``: (Timed) ``duration`` is a finite number > 0;
- ``tangent_system_protocol``: (HasTangentSystem) ``flow_operators()`` gives
  :class:`~stosim.analysis.ftmle.FlowOperators` (T = ``duration`` and the substrate's time unit
  when Timed) whose J v and J^T u are adjoint, <u, J v> = <J^T u, v>, and ``project_tangent`` is a
  projection (P P v = P v);
- ``hardware_protocol``: (Hardware) ``measure`` gives a finite float tensor (B, ...) without a
  graph, ``state_from_measurement`` turns it into states (B, state_size).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator

import torch

from stosim.substrates.base import Capabilities, Substrate, SubstrateDescription
from stosim.substrates.flow_operators import FlowOperators
from stosim.substrates.protocols import (
    Differentiable,
    Hardware,
    HasTangentSystem,
    Stochastic,
    Timed,
)

__all__ = [
    "CHECKS",
    "CHECK_NAMES",
    "Check",
    "ConformanceError",
    "ConformanceReport",
    "ConformanceSettings",
    "SkipCheck",
    "check_substrate",
    "run_check",
]


class SkipCheck(Exception):
    """A check that does not apply to this substrate (the message says why)."""


class ConformanceError(AssertionError):
    """Some checks failed; the message lists each with its error."""


@dataclasses.dataclass(frozen=True)
class ConformanceSettings:
    """``batch``: samples per call (1 for a station whose simulated digitizer answers one fixed record);
    ``seed``: of the random read-ins; ``gradcheck``: run ``torch.autograd.gradcheck`` where it applies."""

    batch: int = 3
    seed: int = 0
    gradcheck: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise ValueError(f"batch = {self.batch!r} must be an integer >= 1")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed = {self.seed!r} must be an integer >= 0")


@dataclasses.dataclass(frozen=True)
class Check:
    """One named check: ``run(substrate, settings)`` returns, raises :class:`SkipCheck`, or fails."""

    name: str
    run: Callable[[Substrate, ConformanceSettings], None]

    @property
    def doc(self) -> str:
        return (self.run.__doc__ or "").strip()


@dataclasses.dataclass
class ConformanceReport:
    """What :func:`check_substrate` ran on one substrate: passed, skipped (reason) and failed (error) checks."""

    substrate: str
    passed: list[str] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    failed: dict[str, str] = dataclasses.field(default_factory=dict)
    ran: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def __str__(self) -> str:
        lines = [
            (
                f"conformance of {self.substrate}: {len(self.passed)} passed, {len(self.skipped)} skipped, "
                f"{len(self.failed)} failed"
            )
        ]
        lines += [f"  FAILED  {name}: {err}" for name, err in self.failed.items()]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _readin(sub: Substrate, s: ConformanceSettings, seed_offset: int = 0) -> torch.Tensor:
    size = sub.describe().readin_size
    gen = torch.Generator().manual_seed(s.seed + seed_offset)
    return torch.randn(s.batch, size, dtype=torch.float64, generator=gen).to(sub.dtype)


def _run(sub: Substrate, u: torch.Tensor, seed: int) -> torch.Tensor:
    with torch.no_grad():
        sub.reset(seed)
        return sub(u)


def _refused(call: Callable[[], object], what: str, *words: str) -> None:
    """``call()`` must raise ValueError whose message contains every one of ``words``."""
    try:
        call()
    except ValueError as err:
        missing = [w for w in words if w.lower() not in str(err).lower()]
        assert not missing, f"{what}: the ValueError does not name {missing}: {err}"
    else:
        raise AssertionError(f"{what} was accepted; expected ValueError")


@contextlib.contextmanager
def _quiet(sub: Substrate) -> Iterator[None]:
    if isinstance(sub, Stochastic):
        with sub.noise_suspended():
            yield
    else:
        yield


# ----------------------------------------------------------------------------------------------
# the checks
# ----------------------------------------------------------------------------------------------
def check_describe(sub: Substrate, s: ConformanceSettings) -> None:
    """describe() gives positive integer sizes and non-empty names and units."""
    d = sub.describe()
    assert isinstance(d, SubstrateDescription), f"describe() returned {type(d).__name__}"
    for key in ("state_size", "readin_size", "readout_size"):
        size = getattr(d, key)
        assert isinstance(size, int) and not isinstance(size, bool) and size > 0, f"{key} = {size!r}"
    for key in ("name", "state_units", "readout_units", "time_unit", "summary"):
        text = getattr(d, key)
        assert isinstance(text, str) and text.strip(), f"{key} = {text!r} must be a non-empty string"
    assert set(d.as_dict()) >= {"name", "state_size", "readin_size", "readout_size"}


def check_read_configuration(sub: Substrate, s: ConformanceSettings) -> None:
    """read_configuration() is a non-empty flat dict of plain values (dataset attributes)."""
    cfg = sub.read_configuration()
    assert isinstance(cfg, dict) and cfg, f"read_configuration() returned {cfg!r}"
    for key, value in cfg.items():
        assert isinstance(key, str) and key, f"key {key!r} is not a non-empty string"
        assert isinstance(value, (int, float, str, bool)), f"{key} = {value!r} ({type(value).__name__}) is not plain"
        assert not (isinstance(value, float) and math.isnan(value)), f"{key} is NaN"


def check_capabilities(sub: Substrate, s: ConformanceSettings) -> None:
    """capabilities agree with the declared protocols; dtype is a floating dtype."""
    assert isinstance(sub, Substrate) and isinstance(sub, torch.nn.Module)
    caps = sub.capabilities
    assert isinstance(caps, Capabilities), f"capabilities is {type(caps).__name__}"
    for field in dataclasses.fields(Capabilities):
        assert isinstance(getattr(caps, field.name), bool), f"capabilities.{field.name} is not a bool"
    derived = Capabilities.from_protocols(sub)
    assert caps == derived, (
        f"capabilities {caps} disagree with the declared protocols {derived} "
        "(declare the mixins of stosim.substrates.protocols, or drop the override)"
    )
    assert sub.dtype in (torch.float64, torch.float32), f"dtype = {sub.dtype!r}"


def check_shapes_and_dtypes(sub: Substrate, s: ConformanceSettings) -> None:
    """initial_state/evolve/readout/forward give (B, state/state/readout/readout) of the substrate's dtype, finite."""
    d = sub.describe()
    u = _readin(sub, s)
    sub.reset(s.seed)
    with torch.no_grad():
        x0 = sub.initial_state(u)
        xt = sub.evolve(x0)
        y = sub.readout(xt)
        f = sub(u)
    b = s.batch
    for what, t, shape in (
        ("initial_state", x0, (b, d.state_size)),
        ("evolve", xt, (b, d.state_size)),
        ("readout", y, (b, d.readout_size)),
        ("forward", f, (b, d.readout_size)),
    ):
        assert isinstance(t, torch.Tensor), f"{what} returned {type(t).__name__}"
        assert tuple(t.shape) == shape, f"{what} returned shape {tuple(t.shape)}; expected {shape}"
        assert t.dtype == sub.dtype, f"{what} returned dtype {t.dtype}; the substrate's is {sub.dtype}"
        assert bool(torch.isfinite(t).all()), f"{what} returned non-finite values"


def check_reset_reproducible(sub: Substrate, s: ConformanceSettings) -> None:
    """(reproducible) the same reset(seed) gives the same outputs."""
    if not sub.capabilities.reproducible:
        raise SkipCheck("not reproducible")
    u = _readin(sub, s)
    assert torch.equal(_run(sub, u, 1234), _run(sub, u, 1234)), "reset(1234) twice gave different outputs"


def check_seeds_differ(sub: Substrate, s: ConformanceSettings) -> None:
    """(stochastic, reproducible) different seeds give different outputs."""
    caps = sub.capabilities
    if not (caps.stochastic and caps.reproducible):
        raise SkipCheck("no reproducible noise")
    u = _readin(sub, s)
    assert not torch.equal(_run(sub, u, 1), _run(sub, u, 2)), "reset(1) and reset(2) gave the same outputs"


def check_readin_shape_refused(sub: Substrate, s: ConformanceSettings) -> None:
    """a read-in of the wrong shape raises ValueError naming the substrate."""
    d = sub.describe()
    size = d.readin_size
    for what, shape in (
        ("an extra column", (s.batch, size + 1)),
        ("a missing column", (s.batch, size - 1)),
        ("a 1-d read-in", (size,)),
        ("a 3-d read-in", (1, s.batch, size)),
    ):
        bad = torch.zeros(shape, dtype=sub.dtype)
        _refused(lambda bad=bad: sub(bad), f"read-in with {what} {shape}", d.name)


def check_readin_dtype_refused(sub: Substrate, s: ConformanceSettings) -> None:
    """an integer read-in raises ValueError naming the dtype and the substrate."""
    d = sub.describe()
    bad = torch.ones(s.batch, d.readin_size, dtype=torch.int64)
    _refused(lambda: sub(bad), "an int64 read-in", "dtype", d.name)


def check_readin_non_finite_refused(sub: Substrate, s: ConformanceSettings) -> None:
    """a NaN or infinite read-in raises ValueError naming the substrate."""
    d = sub.describe()
    for value in (float("nan"), float("inf"), float("-inf")):
        u = _readin(sub, s)
        u[-1, 0] = value
        _refused(lambda u=u: sub(u), f"a read-in containing {value}", d.name)


def check_state_non_finite_refused(sub: Substrate, s: ConformanceSettings) -> None:
    """evolve of a NaN state raises ValueError (also with a graph recorded, for differentiable substrates)."""
    with torch.no_grad():
        state = sub.initial_state(_readin(sub, s)).detach().clone()
    state[-1, 0] = float("nan")
    for graph in (False, True) if isinstance(sub, Differentiable) else (False,):
        _refused(
            lambda graph=graph: sub.evolve(state.clone().requires_grad_(graph)),
            f"a NaN state ({'with' if graph else 'without'} a graph)",
            "finite",
        )


def check_gradients(sub: Substrate, s: ConformanceSettings) -> None:
    """(Differentiable) finite non-zero gradients reach the read-in; gradcheck in float64 where it applies."""
    if not isinstance(sub, Differentiable):
        raise SkipCheck("not Differentiable")
    sub.reset(s.seed)
    u = _readin(sub, s).requires_grad_(True)
    sub(u).sum().backward()
    assert u.grad is not None, "no gradient reached the read-in"
    assert bool(torch.isfinite(u.grad).all()), "non-finite gradient"
    assert bool((u.grad != 0).any()), "the gradient is zero everywhere"
    noisy_for_good = sub.capabilities.stochastic and not isinstance(sub, Stochastic)  # hardware noise
    if not s.gradcheck or sub.dtype != torch.float64 or noisy_for_good:
        return
    x = _readin(sub, s, seed_offset=1)[:1].clone().requires_grad_(True)
    with _quiet(sub):
        sub.reset(s.seed)
        ok = torch.autograd.gradcheck(sub, (x,), eps=1e-6, atol=1e-5, rtol=1e-3, raise_exception=False)
    assert ok, "torch.autograd.gradcheck: the gradient of forward differs from central differences"


def check_stochastic_protocol(sub: Substrate, s: ConformanceSettings) -> None:
    """(Stochastic) noise_on is a bool; inside noise_suspended() the outputs do not depend on the seed."""
    if not isinstance(sub, Stochastic):
        raise SkipCheck("not Stochastic")
    assert isinstance(sub.noise_on, bool), f"noise_on = {sub.noise_on!r} is not a bool"
    u = _readin(sub, s)
    with sub.noise_suspended():
        a, b = _run(sub, u, 1), _run(sub, u, 2)
    assert torch.equal(a, b), "with the noise suspended, reset(1) and reset(2) gave different outputs"


def check_timed_protocol(sub: Substrate, s: ConformanceSettings) -> None:
    """(Timed) duration is a finite number > 0 (in describe().time_unit)."""
    if not isinstance(sub, Timed):
        raise SkipCheck("not Timed")
    t = sub.duration
    assert isinstance(t, (int, float)) and not isinstance(t, bool), f"duration = {t!r} is not a number"
    assert math.isfinite(t) and t > 0, f"duration = {t!r} must be finite and > 0"


def check_tangent_system_protocol(sub: Substrate, s: ConformanceSettings) -> None:
    """(HasTangentSystem) flow_operators() are adjoint (<u, J v> = <J^T u, v>); project_tangent is a projection."""
    if not isinstance(sub, HasTangentSystem):
        raise SkipCheck("not HasTangentSystem")
    ops = sub.flow_operators()
    assert isinstance(ops, FlowOperators), f"flow_operators() returned {type(ops).__name__}"
    if isinstance(sub, Timed):
        assert ops.time == sub.duration, (
            f"flow_operators().time = {ops.time!r} differs from duration = {sub.duration!r}"
        )
        assert ops.time_unit == sub.describe().time_unit, "flow_operators().time_unit differs from describe()'s"
    gen = torch.Generator().manual_seed(s.seed + 2)
    with torch.no_grad():
        x0 = sub.initial_state(_readin(sub, s)).detach()
    v = sub.project_tangent(x0, torch.randn(x0.shape, generator=gen, dtype=torch.float64).to(x0.dtype))
    assert v.shape == x0.shape, f"project_tangent returned shape {tuple(v.shape)}; expected {tuple(x0.shape)}"
    tol = 1e-10 if x0.dtype == torch.float64 else 1e-4
    assert torch.allclose(sub.project_tangent(x0, v), v, rtol=0, atol=tol * float(v.abs().max())), (
        "project_tangent is not a projection (P P v != P v)"
    )
    w = torch.randn(x0.shape, generator=gen, dtype=torch.float64).to(x0.dtype)
    jv, jtw = ops.jvp(x0, v), ops.vjp(x0, w)
    assert jv.shape == x0.shape and jtw.shape == x0.shape, "jvp/vjp must map (B, state_size) to (B, state_size)"
    lhs, rhs = (w * jv).sum(dim=1), (jtw * v).sum(dim=1)
    scale = w.norm(dim=1) * jv.norm(dim=1) + jtw.norm(dim=1) * v.norm(dim=1)
    rtol = 1e-8 if x0.dtype == torch.float64 else 1e-3
    assert bool(((lhs - rhs).abs() <= rtol * scale).all()), (
        f"<w, J v> = {lhs.tolist()} differs from <J^T w, v> = {rhs.tolist()}: jvp and vjp are not adjoint"
    )


def check_hardware_protocol(sub: Substrate, s: ConformanceSettings) -> None:
    """(Hardware) measure gives finite float readings (B, ...) without a graph; state_from_measurement states."""
    if not isinstance(sub, Hardware):
        raise SkipCheck("not Hardware")
    d = sub.describe()
    with torch.no_grad():
        x0 = sub.initial_state(_readin(sub, s))
    m = sub.measure(x0)
    assert isinstance(m, torch.Tensor) and m.is_floating_point(), f"measure returned {type(m).__name__}"
    assert m.ndim >= 2 and m.shape[0] == s.batch, (
        f"measure returned shape {tuple(m.shape)}; expected (B={s.batch}, ...)"
    )
    assert not m.requires_grad, "measure returned a tensor with a graph"
    assert bool(torch.isfinite(m).all()), "measure returned non-finite readings"
    state = sub.state_from_measurement(m)
    assert tuple(state.shape) == (s.batch, d.state_size), (
        f"state_from_measurement returned shape {tuple(state.shape)}; expected {(s.batch, d.state_size)}"
    )
    assert state.dtype == sub.dtype and bool(torch.isfinite(state).all())


CHECKS: tuple[Check, ...] = tuple(
    Check(f.__name__.removeprefix("check_"), f)
    for f in (
        check_describe,
        check_read_configuration,
        check_capabilities,
        check_shapes_and_dtypes,
        check_reset_reproducible,
        check_seeds_differ,
        check_readin_shape_refused,
        check_readin_dtype_refused,
        check_readin_non_finite_refused,
        check_state_non_finite_refused,
        check_gradients,
        check_stochastic_protocol,
        check_timed_protocol,
        check_tangent_system_protocol,
        check_hardware_protocol,
    )
)
"""Every check of the suite, in the order they run."""

CHECK_NAMES: tuple[str, ...] = tuple(c.name for c in CHECKS)


def run_check(check: Check | str, substrate: Substrate, settings: ConformanceSettings | None = None) -> None:
    """Run one check (a :class:`Check` or its name); raises :class:`SkipCheck` or ``AssertionError``."""
    if isinstance(check, str):
        by_name = {c.name: c for c in CHECKS}
        if check not in by_name:
            raise ValueError(f"no conformance check named {check!r}; the checks are {', '.join(CHECK_NAMES)}")
        check = by_name[check]
    check.run(substrate, settings or ConformanceSettings())


def check_substrate(
    substrate: Substrate, *, batch: int = 3, seed: int = 0, gradcheck: bool = True, raise_on_failure: bool = True
) -> ConformanceReport:
    """Run every check of :data:`CHECKS` on ``substrate`` (an open driver, for hardware).

    Returns the :class:`ConformanceReport` (``ran`` lists every check, in order); with
    ``raise_on_failure`` (default) a failed check raises :class:`ConformanceError` listing all
    failures after every check ran. ``batch``: samples per call (1 for a driver that can only
    acquire one sample at a time).
    """
    if not isinstance(substrate, Substrate):
        raise TypeError(f"substrate must be a stosim.substrates.base.Substrate; got {type(substrate).__name__}")
    settings = ConformanceSettings(batch=batch, seed=seed, gradcheck=gradcheck)
    report = ConformanceReport(substrate=substrate.describe().name)
    for check in CHECKS:
        report.ran.append(check.name)
        try:
            run_check(check, substrate, settings)
        except SkipCheck as skip:
            report.skipped[check.name] = str(skip)
        except Exception as err:  # every failure is reported, the suite goes on
            report.failed[check.name] = f"{type(err).__name__}: {err}"
        else:
            report.passed.append(check.name)
    if raise_on_failure and report.failed:
        raise ConformanceError(str(report))
    return report
