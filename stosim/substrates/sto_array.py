"""The coupled STO array as a substrate (docs/physics.md section 5).

Read-in: 3N numbers; each device's 3-vector is normalized onto the unit sphere to give
m_i(0). The array evolves for the duration T (RK4, step dt; stochastic Heun with a thermal
field). Readout: the 3N components of m(T) (dimensionless), with observation noise at the
requested SNR when set.

Deterministic runs evolve with the Numba kernels; gradients are the exact gradients of the
discrete RK4 map from the Numba adjoint (:mod:`stosim.integrate.flow`). With dynamical or
thermal noise, gradients flow through a torch implementation of the same equations
(:mod:`stosim.integrate.torch_steps`).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from types import MappingProxyType
from typing import Iterator

import numpy as np
import torch

from stosim.config import DeviceParameters, load_device
from stosim.integrate.flow import sto_flow
from stosim.integrate.torch_steps import evolve_torch
from stosim.physics.array import STOArray, Variability, check_time_step
from stosim.physics.llg import OSC_DAMPING
from stosim.physics.noise import (
    STREAM_DYNAMICAL,
    STREAM_THERMAL,
    add_observation_noise,
    check_snr_db,
    noise_stream,
    thermal_field_sigma_oe,
)
from stosim.quantities import either, optional_quantity, quantity
from stosim.simulation import NoiseSettings, evolve, steps_for_duration
from stosim.substrates.base import Substrate, SubstrateDescription
from stosim.substrates.flow_operators import FlowOperators, unit_sphere_tangent_projection
from stosim.substrates.protocols import (
    Differentiable,
    HasTangentSystem,
    Stochastic,
    Timed,
)
from stosim.substrates.registry import SubstrateSpec, TangentSpec, register

__all__ = ["CoupledSTOArray"]

_DTYPES = {torch.float64: np.float64, torch.float32: np.float32}
_DTYPE_NAMES = {"float64": torch.float64, "float32": torch.float32}


class CoupledSTOArray(Substrate, Differentiable, Stochastic, Timed, HasTangentSystem):
    """N coupled MTJ spin-torque oscillators as a reservoir.

    Declares :class:`~stosim.substrates.protocols.Differentiable`, ``Stochastic`` (thermal,
    dynamical and observation noise; ``noise_on`` when one is set), ``Timed`` (``duration`` = T in
    s) and ``HasTangentSystem`` (exact Numba tangent/adjoint operators, unit-sphere projection).

    Parameters (units in the names): ``n`` oscillators, ``coupling_oe`` (mu), ``duration_s``
    (T), ``dt_s``, ``current_a`` (None: the device file's), ``device`` (a path or
    :class:`DeviceParameters`; None: the seed study's pMTJ), ``seed`` (of W; noise streams
    are seeded by :meth:`reset`), ``coupling_matrix`` (explicit N x N W instead of a random
    one), ``temperature_k``, ``dynamical_snr_db``, ``dynamical_noise_reference_s`` (None: the dynamical
    SNR is per step, dt-dependent; t_ref in s: the SNR of the noise accumulated over t_ref, a Wiener
    increment independent of dt; :class:`stosim.simulation.NoiseSettings`), ``observation_snr_db``, ``variability``
    (relative spread of each device's H_K, alpha and I, drawn from ``seed``), ``dtype``.

    Every quantity may be a unit string, parsed as in the files, or a plain number in the unit its
    keyword names; ``coupling``, ``duration``, ``dt``, ``current`` and ``temperature`` are the same
    settings without the unit suffix (give one of the two)::

        CoupledSTOArray(n=100, coupling="500 Oe", duration="300 ps", dt="1 ps", current="2.5 mA")
        CoupledSTOArray(n=100, coupling_oe=500.0, duration_s=300e-12, dt_s=1e-12)   # the same array
    """

    def __init__(
        self,
        n: int = 50,
        coupling_oe: float | str = 500.0,
        duration_s: float | str = 300e-12,
        dt_s: float | str = 1e-12,
        *,
        current_a: float | str | None = None,
        device: DeviceParameters | str | Path | None = None,
        seed: int = 0,
        coupling_matrix: np.ndarray | str | Path | None = None,
        temperature_k: float | str = 0.0,
        dynamical_snr_db: float | None = None,
        observation_snr_db: float | None = None,
        variability: float = 0.0,
        dtype: torch.dtype | str = torch.float64,
        coupling: float | str | None = None,
        duration: float | str | None = None,
        dt: float | str | None = None,
        current: float | str | None = None,
        temperature: float | str | None = None,
        dynamical_noise_reference_s: float | None = None,
    ) -> None:
        super().__init__()
        coupling_oe = quantity(either(coupling, "coupling", coupling_oe, "coupling_oe", 500.0), "field", "coupling")
        duration_s = quantity(either(duration, "duration", duration_s, "duration_s", 300e-12), "time", "duration")
        dt_s = quantity(either(dt, "dt", dt_s, "dt_s", 1e-12), "time", "dt")
        current_a = optional_quantity(either(current, "current", current_a, "current_a", None), "current", "current")
        temperature_k = quantity(
            either(temperature, "temperature", temperature_k, "temperature_k", 0.0), "temperature", "temperature"
        )
        dtype = _DTYPE_NAMES.get(dtype, dtype) if isinstance(dtype, str) else dtype
        if dtype not in _DTYPES:
            raise ValueError(f"dtype = {dtype!r} must be torch.float64 or torch.float32")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed = {seed!r} must be an integer >= 0")
        dev = device if isinstance(device, DeviceParameters) else load_device(device)
        spread = Variability.uniform(variability, seed=seed) if variability else None
        if coupling_matrix is not None:
            array = STOArray.with_matrix(dev, coupling_matrix, coupling_oe, current_a=current_a, variability=spread)
            if array.n_oscillators != n:
                raise ValueError(
                    f"n = {n} does not match the {array.n_oscillators} x {array.n_oscillators} coupling_matrix"
                )
        else:
            array = STOArray.generate(dev, n, coupling_oe, seed=seed, current_a=current_a, variability=spread)
        self.array = array
        self.n_steps = steps_for_duration(duration_s, dt_s)
        check_time_step(array, dt_s)  # every integration path (Numba, adjoint, torch with noise) runs at dt_s
        self.duration_s = float(duration_s)
        self.dt_s = float(dt_s)
        self.seed = int(seed)
        self._dtype = dtype
        self.register_buffer("coupling_t", torch.as_tensor(array.coupling_transposed_oe(), dtype=dtype))
        self.register_buffer("osc", torch.as_tensor(array.oscillator_parameters(), dtype=dtype))
        self.register_buffer("p", torch.as_tensor(dev.reference_direction, dtype=dtype))
        self.register_buffer("thermal_sigma_oe", torch.zeros(n, dtype=dtype))
        self.set_noise(
            temperature_k=float(temperature_k),
            dynamical_snr_db=dynamical_snr_db,
            dynamical_noise_reference_s=dynamical_noise_reference_s,
            observation_snr_db=observation_snr_db,
        )
        self.noise_enabled = True
        self.reset(0)

    # -- interface -----------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.coupling_t.dtype

    @property
    def duration(self) -> float:
        """T in s (the substrate's time unit): ``duration_s``."""
        return self.duration_s

    def set_noise(
        self,
        *,
        temperature_k: float = 0.0,
        dynamical_snr_db: float | None = None,
        dynamical_noise_reference_s: float | None = None,
        observation_snr_db: float | None = None,
    ) -> None:
        """Replace every noise setting (the defaults: none), e.g. to evaluate a trained model at other
        noise levels; W, the devices and the trained read-in/readout are untouched.

        ``temperature_k`` (K, [0, 1e4]): thermal field of per-component standard deviation
        sigma = sqrt(2 alpha k_B T / (gamma M V dt)) Oe (stochastic Heun); ``dynamical_snr_db`` (dB; None or
        inf: none) with ``dynamical_noise_reference_s`` (None: per step; t_ref in s: the SNR of the noise
        accumulated over t_ref); ``observation_snr_db`` (dB; None or inf: none). docs/physics.md section 4.
        """
        noise = NoiseSettings(
            temperature_k=temperature_k,
            dynamical_snr_db=dynamical_snr_db,
            dynamical_noise_reference_s=dynamical_noise_reference_s,
        )
        observation = None if observation_snr_db is None else check_snr_db(observation_snr_db, "observation_snr")
        dev = self.array.device
        sigma = thermal_field_sigma_oe(
            self.array.oscillator_parameters()[OSC_DAMPING],
            noise.temperature_k,
            dev.gyromagnetic_ratio_rad_per_oe_s,
            dev.saturation_magnetization_emu_cm3,
            dev.volume_cm3,
            self.dt_s,
        )
        self.noise = noise
        self.observation_snr_db = observation
        self.thermal_sigma_oe = torch.as_tensor(sigma, dtype=self.dtype)

    @property
    def noise_on(self) -> bool:
        """True when some noise is on: T > 0 K, or a finite dynamical or observation SNR (inf dB: no noise)."""
        return (
            self.noise.temperature_k > 0
            or _finite_snr(self.noise.dynamical_snr_db)
            or _finite_snr(self.observation_snr_db)
        )

    @contextlib.contextmanager
    def noise_suspended(self) -> Iterator[None]:
        """Run without observation, dynamical and thermal noise inside the block (noiseless training)."""
        previous, self.noise_enabled = self.noise_enabled, False
        try:
            yield
        finally:
            self.noise_enabled = previous

    def describe(self) -> SubstrateDescription:
        n = self.array.n_oscillators
        return SubstrateDescription(
            name="sto",
            state_size=3 * n,
            readin_size=3 * n,
            readout_size=3 * n,
            state_units="1 (unit magnetization)",
            readout_units="1 (m_x, m_y, m_z of each oscillator)",
            time_unit="s",
            summary=(
                f"{n} coupled MTJ STOs (LLG-Slonczewski, RK4 dt = {self.dt_s:g} s) evolved for "
                f"T = {self.duration_s:g} s; H_coupling,i = mu sum_j W_ij m_x,j e_x, "
                f"mu = {self.array.coupling_oe:g} Oe"
            ),
        )

    def read_configuration(self) -> dict[str, float | int | str]:
        cfg: dict[str, float | int | str] = {
            "substrate": "sto",
            "n": self.array.n_oscillators,
            "coupling_oe": self.array.coupling_oe,
            "duration_s": self.duration_s,
            "dt_s": self.dt_s,
            "current_a": self.array.current_a,
            "seed": self.seed,
            "temperature_k": self.noise.temperature_k,
            "dynamical_snr_db": "none" if self.noise.dynamical_snr_db is None else self.noise.dynamical_snr_db,
            "dynamical_noise_reference_s": (
                "none" if self.noise.dynamical_noise_reference_s is None else self.noise.dynamical_noise_reference_s
            ),
            "observation_snr_db": "none" if self.observation_snr_db is None else self.observation_snr_db,
            "device": self.array.device.name,
            "variability": 0.0 if self.array.variability is None else self.array.variability.damping,
            "dtype": str(self.dtype).removeprefix("torch."),
        }
        return cfg

    def reset(self, seed: int) -> None:
        """Re-seed the noise streams; the k-th evolve/readout call after reset(seed) uses stream (seed, k)."""
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed = {seed!r} must be an integer >= 0")
        self._noise_seed = int(seed)
        self._calls = 0

    def _next_seed(self) -> int:
        self._calls += 1
        return int(np.random.SeedSequence(self._noise_seed, spawn_key=(self._calls,)).generate_state(1)[0])

    def initial_state(self, readin: torch.Tensor) -> torch.Tensor:
        """Normalize each device's 3-vector of the read-in onto the unit sphere: (B, 3N) -> (B, 3N)."""
        self._check_readin(readin)
        return _directions(readin.reshape(readin.shape[0], -1, 3), "read-in").reshape(readin.shape)

    def evolve(self, state: torch.Tensor) -> torch.Tensor:
        """Evolve (B, 3N) states for the duration; differentiable when a graph is recorded.

        Each oscillator's 3-vector is used through its direction m / |m| on every path (Numba,
        Numba adjoint, torch with noise); non-finite or zero 3-vectors raise ``ValueError``.
        """
        n = self.array.n_oscillators
        if state.ndim != 2 or state.shape[1] != 3 * n:
            raise ValueError(f"state has shape {tuple(state.shape)}; expected (batch, {3 * n})")
        if state.dtype != self.dtype:
            raise ValueError(f"state dtype {state.dtype} differs from the substrate's {self.dtype}")
        m = _directions(state.reshape(state.shape[0], n, 3), "state")
        seed = self._next_seed()
        noise = self.noise if self.noise_enabled else NoiseSettings()
        dyn = noise.dynamical_snr_db
        dyn_on = _finite_snr(dyn)
        dynamics_noisy = noise.temperature_k > 0 or dyn_on
        if torch.is_grad_enabled() and state.requires_grad and not dynamics_noisy:
            # exact gradient of the discrete RK4 map through the Numba adjoint
            out = sto_flow(m, self.array, self.n_steps, self.dt_s)
        elif torch.is_grad_enabled() and state.requires_grad:
            # the noise streams of the Numba path below (same seed, same draws): one realisation per seed
            streams = {kind: noise_stream(seed, kind) for kind in (STREAM_THERMAL, STREAM_DYNAMICAL)}
            out = evolve_torch(
                m,
                self.n_steps,
                self.dt_s,
                self.coupling_t if self.array.coupling_oe != 0 else None,
                self.osc,
                self.array.device.torque_asymmetry,
                self.p,
                thermal_sigma_oe=self.thermal_sigma_oe if noise.temperature_k > 0 else None,
                dynamical_factor=noise.dynamical_factor(self.dt_s) if dyn_on else None,
                thermal_rng=streams[STREAM_THERMAL],
                dynamical_rng=streams[STREAM_DYNAMICAL],
            )
        else:
            final, _, _ = evolve(
                self.array,
                m.detach().cpu().numpy().astype(np.float64),
                self.n_steps,
                self.dt_s,
                noise=noise,
                seed=seed,
                dtype=_DTYPES[self.dtype],
            )
            out = torch.from_numpy(final).to(device=state.device, dtype=self.dtype)
        return out.reshape(state.shape)

    def project_tangent(self, x0: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Project v (B, 3N) onto the tangent planes of the unit spheres at the directions of x0 (B, 3N)."""
        return unit_sphere_tangent_projection(x0, v)

    def flow_operators(self):
        """Exact J v (Numba tangent kernel) and J^T u (Numba adjoint) of the deterministic flow map
        m(0) -> m(T) on flat (B, 3N) states, restricted to the tangent planes of the unit spheres;
        time in seconds. Used by :func:`stosim.analysis.ftmle.substrate_ftmle`."""
        from stosim.integrate.flow import sto_jvp

        n = self.array.n_oscillators

        def jvp(x0: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            _, jv = sto_jvp(
                x0.detach().cpu().numpy().reshape(-1, n, 3),
                v.detach().cpu().numpy().reshape(-1, n, 3),
                self.array,
                self.n_steps,
                self.dt_s,
                dtype=_DTYPES[x0.dtype],
            )
            return torch.from_numpy(jv.reshape(x0.shape[0], -1)).to(x0)

        def vjp(x0: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
            with torch.enable_grad():
                x = x0.detach().reshape(-1, n, 3).clone().requires_grad_(True)
                out = sto_flow(x / x.norm(dim=-1, keepdim=True), self.array, self.n_steps, self.dt_s)
                (grad,) = torch.autograd.grad(out, x, u.reshape(out.shape))
            return grad.reshape(x0.shape[0], -1)

        return FlowOperators(
            jvp=jvp, vjp=vjp, project_tangent=unit_sphere_tangent_projection, time=self.duration_s, time_unit="s"
        )

    def readout(self, state: torch.Tensor) -> torch.Tensor:
        """The 3N components of m, with observation noise when an SNR is set.

        y_b = x_b + s_b xi_b, xi_b standard normal, s_b = std(x_b) 10^(-SNR/20) with std(x_b) over
        the 3N components of sample b: var(x_b)/var(noise_b) = 10^(SNR/10) for every sample, as for
        the dynamical noise, so a sample's noise level does not depend on the rest of its batch.
        """
        snr = self.observation_snr_db
        if not _finite_snr(snr) or not self.noise_enabled:
            return state
        gen = torch.Generator(device=state.device).manual_seed(self._next_seed())
        return add_observation_noise(state, snr, gen, sample_axes=-1)


def _finite_snr(snr_db: float | None) -> bool:
    """Whether an SNR setting adds noise (None and +inf dB add none)."""
    return snr_db is not None and math.isfinite(snr_db)


def _directions(m: torch.Tensor, what: str) -> torch.Tensor:
    """m / |m| for 3-vectors (B, N, 3) of ``what`` (the read-in, a state); ValueError naming the sample and
    oscillator of a non-finite or zero 3-vector (never a NaN result)."""
    if not bool(torch.isfinite(m).all()):
        b, i = (int(x) for x in torch.nonzero(~torch.isfinite(m).all(dim=-1))[0])
        raise ValueError(f"{what} is not finite at sample {b}, oscillator {i} (NaN or inf); it must be finite")
    norm = m.norm(dim=-1, keepdim=True)
    if bool((norm == 0).any()):
        b, i = (int(x) for x in torch.nonzero(norm[..., 0] == 0)[0])
        raise ValueError(f"{what} of sample {b}, oscillator {i} is the zero vector; it has no direction")
    return m / norm


def _build_from_config(cfg, seed: int, dtype: torch.dtype) -> CoupledSTOArray:
    """The array of a training configuration (TrainConfig keys of the spec below) with matrix seed ``seed``."""
    return CoupledSTOArray(
        n=cfg.n or SPEC.default_n,
        coupling_oe=cfg.coupling,
        duration_s=cfg.duration or SPEC.duration,
        dt_s=cfg.dt or SPEC.dt,
        current_a=cfg.current,
        device=cfg.device,
        seed=seed,
        temperature_k=cfg.temperature,
        dynamical_snr_db=cfg.dynamical_snr,
        observation_snr_db=cfg.observation_snr,
        variability=cfg.variability,
        dtype=dtype,
        dynamical_noise_reference_s=cfg.dynamical_noise_reference,
    )


def _tangent(
    n: int,
    dt: float,
    seed: int,
    rng: np.random.Generator,
    *,
    coupling_oe: float = 500.0,
    current_a: float | None = None,
    device=None,
):
    """The LLG tangent system of the array (exponents in 1/s) and a random unit magnetization per oscillator."""
    from stosim.analysis.tangent_sto import STOArrayTangent

    dev = device if isinstance(device, DeviceParameters) else load_device(device)
    system = STOArrayTangent(STOArray.generate(dev, n, coupling_oe, seed=seed, current_a=current_a), dt)
    m = rng.standard_normal((n, 3))
    return system, (m / np.linalg.norm(m, axis=-1, keepdims=True)).reshape(-1)


SPEC = register(
    SubstrateSpec(
        name="sto",
        summary="coupled spin-torque oscillators (LLG + STT, TMR readout, Ampere-law coupling)",
        keys=(
            "n",
            "coupling",
            "current",
            "duration",
            "dt",
            "device",
            "temperature",
            "dynamical_snr",
            "observation_snr",
            "variability",
            "train_with_noise",
            "dynamical_noise_reference",
        ),
        default_n=100,
        time_unit="s",
        duration=300e-12,
        dt=1e-12,
        coupled_sto=True,
        seeded_matrix=True,
        cls=CoupledSTOArray,
        build=_build_from_config,
        tangent=TangentSpec(
            build=_tangent,
            defaults=MappingProxyType(
                {"duration": 200e-9, "transient": 50e-9, "dt": 1e-12, "n": 200, "reorthonormalize_every": 10}
            ),
            flags=MappingProxyType({"coupling": "coupling_oe", "current": "current_a", "device": "device"}),
        ),
    )
)
