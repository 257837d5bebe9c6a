"""Lyapunov exponents of a substrate's autonomous dynamics, by name (used by ``stosim lyapunov``)."""

from __future__ import annotations

import contextlib
import inspect
import math
from types import MappingProxyType
from typing import Callable, Mapping

import numpy as np

from stosim.analysis.lyapunov import LyapunovResult, TangentSystem, lyapunov_spectrum
from stosim.integrate.threads import single_threaded_blas
from stosim.substrates import registry
from stosim.substrates.rate_network import RATE_DISCRETE_DEFAULTS  # noqa: F401  (re-exported)

__all__ = ["LYAPUNOV_DEFAULTS", "substrate_tangent_system", "substrate_lyapunov"]


class _LyapunovDefaults(Mapping):
    """substrate -> its Lyapunov defaults (duration, transient and step in its time unit, STO: seconds; size;
    reorthonormalize_every), looked up in the substrate registry (the substrates with a tangent system)."""

    def __getitem__(self, name: str) -> Mapping[str, float]:
        spec = registry.specs().get(name)
        if spec is None or spec.tangent is None:
            raise KeyError(name)
        return MappingProxyType(dict(spec.tangent.defaults))

    def __iter__(self):
        return iter(registry.lyapunov_names())

    def __len__(self) -> int:
        return len(registry.lyapunov_names())


LYAPUNOV_DEFAULTS: Mapping[str, Mapping[str, float]] = _LyapunovDefaults()  # read-only


def substrate_tangent_system(
    substrate: str, *, n: int | None = None, dt: float | None = None, seed: int = 0, **params
) -> tuple[TangentSystem, np.ndarray]:
    """(tangent system, initial state) of a registered substrate with a tangent system
    (:func:`stosim.substrates.registry.lyapunov_names`) and seeded initial state; ``params``: the keywords of
    its tangent factory (e.g. STO: coupling_oe, current_a, device; rate network: g, time, input_std,
    input_tau, zero_diagonal, exponents in 1/tau)."""
    defaults = LYAPUNOV_DEFAULTS.get(substrate)
    if defaults is None:
        raise ValueError(f"substrate = {substrate!r}; valid: {', '.join(LYAPUNOV_DEFAULTS)}")
    n = defaults["n"] if n is None else n
    dt = defaults["dt"] if dt is None else dt
    tangent = registry.get(substrate).tangent
    # keywords of another substrate's tangent system are ignored (a sweep passes every one); others are typos
    known = {name: _keywords(spec.tangent.build) for name, spec in registry.specs().items() if spec.tangent}
    unknown = sorted(set(params).difference(*known.values()))
    if unknown:
        raise TypeError(f"substrate_tangent_system() got unexpected keywords {unknown}")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(7,)))
    return tangent.build(n, dt, seed, rng, **{k: v for k, v in params.items() if k in known[substrate]})


def _keywords(build: Callable) -> set[str]:
    """The keyword-only parameters of a tangent factory (its substrate parameters)."""
    return {name for name, p in inspect.signature(build).parameters.items() if p.kind is p.KEYWORD_ONLY}


def substrate_lyapunov(
    substrate: str,
    *,
    n_exponents: int = 1,
    duration: float | None = None,
    transient: float | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    **params,
) -> LyapunovResult:
    """Leading ``n_exponents`` exponents of a substrate's autonomous dynamics (defaults: LYAPUNOV_DEFAULTS)."""
    defaults = LYAPUNOV_DEFAULTS.get(substrate)
    if defaults is None:
        raise ValueError(f"substrate = {substrate!r}; valid: {', '.join(LYAPUNOV_DEFAULTS)}")
    system, x0 = substrate_tangent_system(substrate, seed=seed, **params)
    defaults = registry.get(substrate).tangent.resolved_defaults(params)
    duration = defaults["duration"] if duration is None else duration
    transient = defaults["transient"] if transient is None else transient
    for name, value in (("duration", duration), ("transient", transient)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} = {value!r} must be finite and >= 0")
    n_steps = _averaging_steps(duration, system)
    n_transient = round(transient / system.step_time)
    # rate network: many small products and QRs, one BLAS thread is much faster on a loaded machine
    with single_threaded_blas() if registry.get(substrate).tangent.single_thread_blas else contextlib.nullcontext():
        return lyapunov_spectrum(
            system,
            x0,
            n_exponents,
            n_steps,
            transient_steps=n_transient,
            reorthonormalize_every=defaults["reorthonormalize_every"],
            seed=seed,
            progress=progress,
        )


def _averaging_steps(duration: float, system: TangentSystem) -> int:
    """round(duration / step_time) steps, at least one: a duration shorter than half a step raises
    ``ValueError`` (it would silently become one step)."""
    n_steps = round(duration / system.step_time)
    if n_steps < 1:
        raise ValueError(
            f"duration = {duration!r} {system.time_unit} must be at least one step "
            f"({system.step_time!r} {system.time_unit}); it sets the averaging time"
        )
    return int(n_steps)
