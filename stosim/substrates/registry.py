"""The substrate registry: each substrate declares itself once, in its own module, with a :class:`SubstrateSpec`.

Training, sweeps, the Lyapunov / FTMLE runners, the command line and the docs look substrates up here by name
instead of listing them; adding a substrate is one module of this package that calls :func:`register` (found by
:func:`builtin_modules`, nothing else to edit) plus its tests.

A spec says which :class:`~stosim.studies.training.TrainConfig` keys the substrate reads (``keys``), its defaults
(size ``default_n``; ``duration`` and ``dt`` in its ``time_unit``), and how to build it
(``build(cfg, seed, dtype) -> Substrate``, ``cfg`` any object with those keys as attributes). ``tangent``
optionally gives the tangent system of its autonomous dynamics for Lyapunov spectra
(:mod:`stosim.studies.run_lyapunov`).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = [
    "SubstrateSpec",
    "TangentSpec",
    "register",
    "unregister",
    "get",
    "names",
    "specs",
    "lyapunov_names",
    "BUILTIN_MODULES",
    "builtin_modules",
    "TIME_UNITS",
]

# the order of the first built-in substrates (the first is the default substrate); every other module of this
# package that registers a substrate is found by builtin_modules() and follows in alphabetical order
BUILTIN_MODULES = (
    "stosim.substrates.sto_array",
    "stosim.substrates.ffesn",
    "stosim.substrates.lorenz96",
    "stosim.substrates.rate_network",
)
# a substrate's time unit: "s" (times carry a unit: "300 ps"), or one of plain-number units
TIME_UNITS = ("s", "model time", "steps", "tau")


@dataclasses.dataclass(frozen=True)
class TangentSpec:
    """The tangent system of a substrate's autonomous dynamics (Lyapunov spectra by the QR method).

    ``build(n, dt, seed, rng, **params) -> (TangentSystem, x0)``: ``n`` and ``dt`` resolved (``dt`` may be
    None only if ``defaults`` has none), ``rng`` a seeded numpy Generator for the initial state, ``params``
    the keywords in ``parameters``. ``defaults``: duration, transient, dt (time unit of the system), n,
    reorthonormalize_every; ``defaults_for(params)`` may replace them for some parameters (e.g. a discrete
    time map). ``flags``: command-line flag (dest) -> keyword of ``build``; ``single_thread_blas``: run with
    one BLAS thread (many small products)."""

    build: Callable[..., tuple[Any, Any]]
    defaults: Mapping[str, float]
    flags: Mapping[str, str] = dataclasses.field(default_factory=dict)
    defaults_for: Callable[[Mapping[str, Any]], Mapping[str, float]] | None = None
    single_thread_blas: bool = False

    def __post_init__(self) -> None:  # read-only copies: no mutable constants
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))
        object.__setattr__(self, "flags", MappingProxyType(dict(self.flags)))

    def resolved_defaults(self, params: Mapping[str, Any]) -> Mapping[str, float]:
        return self.defaults if self.defaults_for is None else self.defaults_for(params)


@dataclasses.dataclass(frozen=True)
class SubstrateSpec:
    """One substrate, declared once.

    name: as in ``substrate = "..."``; summary: one line for the docs and help; keys: the TrainConfig keys it
    reads; default_n: size when ``n`` is unset; duration / dt: defaults in ``time_unit`` (None: no such key);
    time_unit: one of :data:`TIME_UNITS` ("s": times carry a unit in files and on the command line);
    coupled_sto: built on coupled STOs (device file, unit rules of the STOs); seeded_matrix: ``seed`` draws
    its coupling matrix; readout_bias: the reservoir model's read-in and readout carry a bias;
    cls: the Substrate class (its capability protocols go into the docs); build: ``(cfg, seed, dtype) -> Substrate``;
    tangent: optional, for ``stosim lyapunov``; ftmle: ``stosim ftmle`` supports it; check: optional
    ``(cfg, n, dtype) -> None``, the run's checks beyond the config fields (raises ValueError), cheap."""

    name: str
    summary: str
    keys: tuple[str, ...]
    default_n: int
    time_unit: str
    build: Callable[[Any, int, Any], Any]
    duration: float | None = None
    dt: float | None = None
    coupled_sto: bool = False
    seeded_matrix: bool = False
    readout_bias: bool = True
    cls: type | None = None
    tangent: TangentSpec | None = None
    ftmle: bool = True
    check: Callable[[Any, int, Any], None] | None = None

    @property
    def capabilities(self) -> tuple[str, ...]:
        """The capability protocols (stosim.substrates.protocols) its class declares."""
        if self.cls is None:
            return ()
        return tuple(b.__name__ for b in self.cls.__mro__[1:] if b.__module__ == "stosim.substrates.protocols")

    def __post_init__(self) -> None:
        if self.time_unit not in TIME_UNITS:
            raise ValueError(f"time_unit = {self.time_unit!r}; valid: {', '.join(TIME_UNITS)}")
        if not self.name or self.name != self.name.strip():
            raise ValueError(f"name = {self.name!r}: a non-empty name without surrounding spaces")


_REGISTRY: dict[str, SubstrateSpec] = {}
_loaded = False


def register(spec: SubstrateSpec) -> SubstrateSpec:
    """Add ``spec`` (a name registered twice is refused unless it is the same spec: a re-import)."""
    old = _REGISTRY.get(spec.name)
    if old is not None and old.build.__module__ != spec.build.__module__:
        raise ValueError(f"substrate {spec.name!r} is registered already")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a substrate (tests that register one of their own)."""
    _REGISTRY.pop(name, None)


# modules of this package that hold the interface, not a substrate
_INTERFACE_MODULES = frozenset({"base", "protocols", "registry", "flow_operators"})


def builtin_modules() -> tuple[str, ...]:
    """The modules of ``stosim.substrates`` that declare substrates: :data:`BUILTIN_MODULES` in their order, then
    every other module of the package (except the interface modules and names starting with ``_``) by name."""
    package = __name__.rpartition(".")[0]
    found = sorted(
        f"{package}.{info.name}"
        for info in pkgutil.iter_modules([str(Path(__file__).resolve().parent)])
        if not info.ispkg and info.name not in _INTERFACE_MODULES and not info.name.startswith("_")
    )
    return BUILTIN_MODULES + tuple(module for module in found if module not in BUILTIN_MODULES)


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in builtin_modules():
            importlib.import_module(module)


def specs() -> Mapping[str, SubstrateSpec]:
    """Every registered substrate by name (read-only view, in registration order)."""
    _load()
    order = {module: i for i, module in enumerate(builtin_modules())}  # built-ins first, in their order
    ranked = sorted(_REGISTRY.values(), key=lambda spec: order.get(spec.build.__module__, len(order)))
    return MappingProxyType({spec.name: spec for spec in ranked})


def names() -> tuple[str, ...]:
    """The registered substrates' names."""
    return tuple(specs())


def get(name: str) -> SubstrateSpec:
    """The substrate ``name``; ``ValueError`` naming the valid ones otherwise."""
    spec = specs().get(name)
    if spec is None:
        raise ValueError(f"substrate = {name!r}; valid: {', '.join(names())}")
    return spec


def lyapunov_names() -> tuple[str, ...]:
    """The substrates with a tangent system (``stosim lyapunov``)."""
    return tuple(name for name, spec in specs().items() if spec.tangent is not None)
