"""Lyapunov exponents of a substrate's autonomous dynamics, by name (used by ``stosim lyapunov``)."""

from __future__ import annotations

import contextlib
import math
from types import MappingProxyType
from typing import Callable, Mapping

import numpy as np

from stosim.analysis.lyapunov import LyapunovResult, TangentSystem, lyapunov_spectrum
from stosim.integrate.threads import single_threaded_blas

__all__ = ["LYAPUNOV_DEFAULTS", "substrate_tangent_system", "substrate_lyapunov"]

# per substrate: duration, transient and step in its time unit (STO: seconds), default size
LYAPUNOV_DEFAULTS: Mapping[str, Mapping[str, float]] = MappingProxyType({
    name: MappingProxyType(values) for name, values in {
        "sto": {"duration": 200e-9, "transient": 50e-9, "dt": 1e-12, "n": 200, "reorthonormalize_every": 10},
        "lorenz96": {"duration": 1000.0, "transient": 50.0, "dt": 0.01, "n": 40, "reorthonormalize_every": 10},
        "ffesn": {"duration": 2000.0, "transient": 500.0, "dt": 1.0, "n": 500, "reorthonormalize_every": 1},
        # continuous time (tau units, RK4); discrete time uses RATE_DISCRETE_DEFAULTS
        "rate-network": {"duration": 500.0, "transient": 100.0, "dt": 0.1, "n": 200, "reorthonormalize_every": 10},
    }.items()})  # read-only
RATE_DISCRETE_DEFAULTS: Mapping[str, float] = MappingProxyType(
    {"duration": 2000.0, "transient": 200.0, "dt": 1.0, "reorthonormalize_every": 1})


def substrate_tangent_system(substrate: str, *, n: int | None = None, dt: float | None = None, seed: int = 0,
                             coupling_oe: float = 500.0, current_a: float | None = None, device=None,
                             spectral_radius: float = 1.5, density: float = 0.5, forcing: float = 8.0,
                             g: float = 2.0, time: str = "continuous", input_std: float = 0.0,
                             input_tau: float = 0.0, zero_diagonal: bool = False,
                             ) -> tuple[TangentSystem, np.ndarray]:
    """(tangent system, initial state) of ``substrate`` in {"sto", "ffesn", "lorenz96", "rate-network"} with
    seeded initial state (rate network: g, time, input_std, input_tau, zero_diagonal; exponents in 1/tau)."""
    defaults = LYAPUNOV_DEFAULTS.get(substrate)
    if defaults is None:
        raise ValueError(f"substrate = {substrate!r}; valid: {', '.join(LYAPUNOV_DEFAULTS)}")
    n = defaults["n"] if n is None else n
    dt = defaults["dt"] if dt is None else dt
    if substrate == "rate-network" and time == "discrete":
        if dt != defaults["dt"]:
            raise ValueError(f"dt = {dt!r}: the discrete-time rate network is a map; leave dt unset")
        dt = 1.0
    if substrate == "ffesn" and dt != defaults["dt"]:
        raise ValueError(f"dt = {dt!r}: the FFESN is a map (one step per layer); leave dt unset")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(7,)))
    if substrate == "sto":
        from stosim.analysis.tangent_sto import STOArrayTangent
        from stosim.config import DeviceParameters, load_device
        from stosim.physics.array import STOArray

        dev = device if isinstance(device, DeviceParameters) else load_device(device)
        system = STOArrayTangent(STOArray.generate(dev, n, coupling_oe, seed=seed, current_a=current_a), dt)
        m = rng.standard_normal((n, 3))
        x0 = (m / np.linalg.norm(m, axis=-1, keepdims=True)).reshape(-1)
    elif substrate == "rate-network":
        from stosim.analysis.tangent_rate import RateNetworkTangent

        system = RateNetworkTangent(n=n, g=g, time=time, dt=dt, input_std=input_std, input_tau=input_tau,
                                    zero_diagonal=zero_diagonal, seed=seed)
        x0 = system.initial_state(rng.standard_normal(n))
    elif substrate == "lorenz96":
        from stosim.analysis.tangent_models import Lorenz96Tangent

        system = Lorenz96Tangent(n, forcing, dt=dt)
        x0 = forcing + rng.standard_normal(n)
    else:
        from stosim.analysis.tangent_models import FFESNTangent
        from stosim.substrates.ffesn import FFESN

        system = FFESNTangent.from_substrate(FFESN(n=n, spectral_radius=spectral_radius, density=density, seed=seed))
        x0 = rng.uniform(-1, 1, n)
    return system, x0


def substrate_lyapunov(substrate: str, *, n_exponents: int = 1, duration: float | None = None,
                       transient: float | None = None, seed: int = 0,
                       progress: Callable[[int, int], None] | None = None, **params) -> LyapunovResult:
    """Leading ``n_exponents`` exponents of a substrate's autonomous dynamics (defaults: LYAPUNOV_DEFAULTS)."""
    defaults = LYAPUNOV_DEFAULTS.get(substrate)
    if defaults is None:
        raise ValueError(f"substrate = {substrate!r}; valid: {', '.join(LYAPUNOV_DEFAULTS)}")
    system, x0 = substrate_tangent_system(substrate, seed=seed, **params)
    if substrate == "rate-network" and params.get("time") == "discrete":
        defaults = RATE_DISCRETE_DEFAULTS
    duration = defaults["duration"] if duration is None else duration
    transient = defaults["transient"] if transient is None else transient
    for name, value in (("duration", duration), ("transient", transient)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} = {value!r} must be finite and >= 0")
    n_steps = _averaging_steps(duration, system)
    n_transient = round(transient / system.step_time)
    # rate network: many small products and QRs, one BLAS thread is much faster on a loaded machine
    with single_threaded_blas() if substrate == "rate-network" else contextlib.nullcontext():
        return lyapunov_spectrum(system, x0, n_exponents, n_steps, transient_steps=n_transient,
                                 reorthonormalize_every=defaults["reorthonormalize_every"], seed=seed,
                                 progress=progress)


def _averaging_steps(duration: float, system: TangentSystem) -> int:
    """round(duration / step_time) steps, at least one: a duration shorter than half a step raises
    ``ValueError`` (it would silently become one step)."""
    n_steps = round(duration / system.step_time)
    if n_steps < 1:
        raise ValueError(f"duration = {duration!r} {system.time_unit} must be at least one step "
                         f"({system.step_time!r} {system.time_unit}); it sets the averaging time")
    return int(n_steps)
