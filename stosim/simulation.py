"""Simulation API: run a coupled STO array from given initial states and get trajectories.

>>> from stosim import load_device, STOArray, simulate
>>> array = STOArray.generate(load_device(), n_oscillators=10, coupling_oe=500.0, seed=1)
>>> traj = simulate(array, initial_state, duration_s=20e-9, dt_s=1e-12, save_every=10)
>>> ds = traj.to_dataset()          # xarray: m (time, oscillator, component), tmr_voltage, ...

Deterministic runs use RK4; with a temperature > 0 K the thermal field enters through the
stochastic Heun scheme (Stratonovich). Every random number comes from ``seed`` through
independent streams (``numpy.random.SeedSequence`` spawn keys), so a run is reproducible.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
import weakref
from typing import Callable

import numba
import numpy as np

from stosim.config import DeviceParameters
from stosim.integrate.aligned import aligned_copy as _aligned_copy
from stosim.integrate.batch1 import run_uncoupled as _run_uncoupled
from stosim.integrate.batch1_threads import OneTrajectoryInputs as _OneTrajectoryInputs
from stosim.integrate.batch1_threads import OneTrajectoryRunner as _OneTrajectoryRunner
from stosim.integrate.chunks import chunk_count as _chunk_count
from stosim.integrate.chunks import from_chunks as _from_chunks
from stosim.integrate.chunks import to_chunks as _to_chunks
from stosim.integrate.sto_kernels import METHOD_HEUN, METHOD_RK4, SMALL_N_MAX, run_chunk, run_chunks
from stosim.integrate.threads import single_threaded_blas as _single_threaded_blas
from stosim.physics.array import STOArray, check_step_count, check_time_step
from stosim.physics.llg import OSC_DAMPING
from stosim.physics.noise import (
    STREAM_DYNAMICAL,
    STREAM_INITIAL,
    STREAM_OBSERVATION,
    STREAM_THERMAL,
    add_observation_noise,
    check_noise_reference_s,
    check_snr_db,
    dynamical_step_factor,
    measured_snr_db,
    noise_stream,
    thermal_field_sigma_oe,
)
from stosim.physics.tmr import voltage_at_bias_current_v
from stosim.storage import provenance_attrs
from stosim.units import format_time

__all__ = [
    "simulate",
    "evolve",
    "Trajectory",
    "SimulationDivergedError",
    "NoiseSettings",
    "initial_state_from_angles",
    "random_initial_state",
    "check_initial_state",
    "steps_for_duration",
    "DeviceLimitError",
    "DeviceLimitWarning",
    "check_device_limits",
    "check_current_limits",
]


NOISE_CHUNK_VALUES = 1 << 22  # random numbers drawn per chunk and noise kind
MAX_TRAJECTORY_BYTES = 8 << 30


class SimulationDivergedError(FloatingPointError):
    """The state became non-finite during a run (names step, time, sample and oscillator)."""


class DeviceLimitError(ValueError):
    """A run would drive the device beyond its limits (maximum current, breakdown voltage)."""


class DeviceLimitWarning(UserWarning):
    """A run beyond the device's limits, made because the caller insisted (``allow_beyond_limits``)."""


OVERRIDE_HINT = "pass allow_beyond_limits=True to run it anyway"


def check_device_limits(array: STOArray, *, allow_beyond_limits: bool = False, what: str = "run") -> tuple[str, ...]:
    """Check the array's bias currents against its device's limits; returns the limits exceeded (messages).

    Every device i carries I_i = I (1 + s_I xi_i) (with variability); with I_max = ``current_limit_a`` and
    V_bd = ``breakdown_limit_v`` of the device (:class:`stosim.config.DeviceParameters`):

    - maximum current: max_i |I_i| <= I_max;
    - breakdown voltage: max_i |I_i| R_P <= V_bd (the parallel state's voltage; see
      :attr:`~stosim.config.DeviceParameters.current_limit_a` for why R_P, not the model's R_AP).

    Beyond a limit: :class:`DeviceLimitError` naming it, unless ``allow_beyond_limits``; then a
    :class:`DeviceLimitWarning` is issued and the messages are returned (to be stored with the output).
    """
    currents = np.abs(_bias_currents_a(array))
    k = int(np.argmax(currents))
    note = (
        ""
        if array.variability is None or currents[k] == abs(array.current_a)
        else (
            f" (device {k} of the array under variability, I_i = I (1 + s_I xi_i)"
            f" with I = {array.current_a * 1e3:.4g} mA)"
        )
    )
    return check_current_limits(
        array.device, float(currents[k]), allow_beyond_limits=allow_beyond_limits, what=what, note=note
    )


def check_current_limits(
    dev: DeviceParameters, current_a: float, *, allow_beyond_limits: bool = False, what: str = "run", note: str = ""
) -> tuple[str, ...]:
    """:func:`check_device_limits` for one device at the bias current ``current_a`` (A); ``note`` is added
    after the current in the messages."""
    if not isinstance(allow_beyond_limits, bool):
        raise TypeError(f"allow_beyond_limits = {allow_beyond_limits!r} must be True or False")
    current = abs(float(current_a))
    problems = []
    if current > dev.current_limit_a:
        source = "limits.max_current" if dev.max_current_a is not None else "V_bd / R_P"
        problems.append(
            f"bias current |I| = {current * 1e3:.4g} mA{note} exceeds the maximum current of device "
            f"{dev.name}, I_max = {dev.current_limit_a * 1e3:.4g} mA ({source})"
        )
    voltage = current * dev.parallel_resistance_ohm
    if voltage > dev.breakdown_limit_v:
        source = "limits.breakdown_voltage" if dev.breakdown_voltage_v is not None else "default for MgO barriers"
        problems.append(
            f"junction voltage |I| R_P = {voltage:.4g} V exceeds the breakdown voltage of device "
            f"{dev.name}, V_bd = {dev.breakdown_limit_v:.4g} V ({source}); the model would report up to "
            f"|I| R_AP = {voltage * (1 + dev.tmr_ratio):.4g} V"
        )
    if problems and not allow_beyond_limits:
        raise DeviceLimitError(f"{what} refused: " + "; ".join(problems) + f"; {OVERRIDE_HINT}")
    for message in problems:
        warnings.warn(f"{what} beyond the device limits: {message}", DeviceLimitWarning, stacklevel=3)
    return tuple(problems)


@dataclasses.dataclass(frozen=True)
class NoiseSettings:
    """Noise of a run (docs/physics.md section 4); None / 0 K means none of that kind.

    - ``temperature_k``: thermal field at this temperature (K), stochastic Heun.
    - ``dynamical_snr_db``: state noise added after every step, SNR relative to the
      sample's state variance; m is projected back onto the unit sphere.
    - ``dynamical_noise_reference_s``: None (default, the seed study's definition): the SNR is that of
      the noise added in one step, sigma_step = std(m) 10^(-SNR/20), so one SNR is a different physical
      noise for each dt. A time t_ref (s): the SNR is that of the noise accumulated over t_ref,
      sigma_step = std(m) 10^(-SNR/20) sqrt(dt / t_ref) (a Wiener increment; the state's spread after a
      time T does not depend on dt). :func:`stosim.physics.noise.dynamical_step_factor`.
    """

    temperature_k: float = 0.0
    dynamical_snr_db: float | None = None
    dynamical_noise_reference_s: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.temperature_k, str):  # "300 K"
            from stosim.quantities import quantity

            object.__setattr__(self, "temperature_k", quantity(self.temperature_k, "temperature", "temperature"))
        t = self.temperature_k
        if not (isinstance(t, (int, float)) and math.isfinite(t) and 0 <= t <= 1e4):
            raise ValueError(f"temperature = {t!r} K must be finite and in [0, 1e4] K")
        if self.dynamical_snr_db is not None:
            check_snr_db(self.dynamical_snr_db, "dynamical_snr")
        check_noise_reference_s(self.dynamical_noise_reference_s)

    def dynamical_factor(self, dt_s: float) -> float:
        """sigma_step / std(m) of the dynamical noise in a step of ``dt_s`` s (0 without dynamical noise)."""
        if self.dynamical_snr_db is None or not math.isfinite(self.dynamical_snr_db):
            return 0.0
        return dynamical_step_factor(self.dynamical_snr_db, dt_s, self.dynamical_noise_reference_s)


def steps_for_duration(duration_s: float, dt_s: float) -> int:
    """Number of steps of ``dt_s`` in ``duration_s`` (both > 0; duration a whole multiple of dt)."""
    for name, value in (("dt", dt_s), ("duration", duration_s)):
        if not (isinstance(value, (int, float, np.floating)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} = {value!r} s must be a finite number > 0 s")
    n_steps = round(duration_s / dt_s)
    if n_steps < 1 or abs(n_steps * dt_s - duration_s) > 1e-6 * dt_s:
        raise ValueError(f"duration = {duration_s!r} s must be a whole multiple (>= 1) of dt = {dt_s!r} s")
    return int(n_steps)


def initial_state_from_angles(n_oscillators: int, theta_deg: float, phi_deg: float) -> np.ndarray:
    """(N, 3) states all at polar angle theta from +z and azimuth phi from +x (degrees)."""
    for name, value in (("theta", theta_deg), ("phi", phi_deg)):
        if not math.isfinite(value):
            raise ValueError(f"initial angle {name} = {value!r} deg must be finite")
    if not 0 <= theta_deg <= 180:
        raise ValueError(f"initial angle theta = {theta_deg!r} deg must be in [0, 180] deg")
    th, ph = math.radians(theta_deg), math.radians(phi_deg)
    m = np.array([math.sin(th) * math.cos(ph), math.sin(th) * math.sin(ph), math.cos(th)])
    return np.tile(m, (n_oscillators, 1))


def random_initial_state(n_oscillators: int, seed: int, batch: int | None = None) -> np.ndarray:
    """States uniform on the unit sphere, (N, 3) or (batch, N, 3), from ``seed``."""
    rng = noise_stream(seed, STREAM_INITIAL)
    shape = (n_oscillators, 3) if batch is None else (batch, n_oscillators, 3)
    v = rng.standard_normal(shape)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def check_initial_state(initial_state: np.ndarray, n_oscillators: int) -> np.ndarray:
    """Validate and normalize initial states: (N, 3) or (B, N, 3), finite, non-zero. Returns (B, N, 3) float64."""
    m0 = np.asarray(initial_state, dtype=np.float64)
    if m0.ndim == 2:
        m0 = m0[None]
    if m0.ndim != 3 or m0.shape[1:] != (n_oscillators, 3) or m0.shape[0] < 1:
        raise ValueError(
            f"initial_state has shape {np.shape(initial_state)}; "
            f"expected (N, 3) or (batch, N, 3) with N = {n_oscillators}"
        )
    norm = np.sqrt(np.add.reduce(m0 * m0, axis=-1, keepdims=True))  # what np.linalg.norm computes
    if np.isfinite(norm).all() and norm.all():  # one pass for the usual case; the details only on failure
        return m0 / norm
    finite = np.isfinite(m0).all(axis=-1)
    if not finite.all():
        b, i = (int(x) for x in np.argwhere(~finite)[0])
        raise ValueError(f"initial_state is not finite at sample {b}, oscillator {i}: {m0[b, i].tolist()}")
    if (norm == 0).any():
        b, i = (int(x) for x in np.argwhere(norm[..., 0] == 0)[0])
        raise ValueError(f"initial_state is the zero vector at sample {b}, oscillator {i}; it must have a direction")
    return m0 / norm


def _check_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise ValueError(f"dtype = {dtype!r} must be float64 or float32")
    return dt


def _check_coupling_dtype(coupling_dtype, dtype: np.dtype) -> np.dtype:
    if coupling_dtype is None:
        return dtype
    try:
        cd = np.dtype(coupling_dtype)
    except TypeError:
        cd = None
    if cd is None or cd not in (dtype, np.dtype(np.float32)):
        raise ValueError(
            f"coupling_dtype = {coupling_dtype!r} must be None (the state's dtype, {dtype.name}) or float32 "
            "(W rounded to float32, products and sums in the state's dtype)"
        )
    return cd


CACHED_COUPLING_BYTES = 32 << 20  # (mu W)^T up to this size is kept with its array between calls


@dataclasses.dataclass(frozen=True)
class _KernelArrays:
    """An array's parameters as the kernels take them, in one working dtype (built once per array and dtypes)."""

    osc: np.ndarray  # (5, N) oscillator table (stosim.physics.llg rows)
    coupling_t: np.ndarray | None  # (mu W)^T (Oe) in the coupling dtype; None: built per call (large N)
    use_coupling: bool
    p: np.ndarray  # (3,) reference-layer direction
    lam: np.floating  # torque asymmetry lambda
    zeros_n: np.ndarray  # (N,) zeros: the thermal sigma of a run without thermal field


# per array (immutable; identity-keyed, dropped with the array) and (dtype, coupling dtype, batch-1 kernel)
_KERNEL_ARRAYS: "weakref.WeakKeyDictionary[STOArray, dict[tuple, _KernelArrays]]" = weakref.WeakKeyDictionary()


def _coupling_for_kernel(array: STOArray, dtype: np.dtype, coupling_dtype: np.dtype, one: bool) -> np.ndarray:
    """(mu W)^T for a kernel: in ``coupling_dtype`` for the batch-1 kernel (``one``), which mixes dtypes;
    otherwise in ``dtype`` with the entries rounded to ``coupling_dtype`` (the same W for every path)."""
    ct = array.coupling_transposed_oe()
    if one:
        return _aligned_copy(ct, coupling_dtype)
    return _aligned_copy(ct.astype(coupling_dtype, copy=False), dtype)


def _kernel_arrays(array: STOArray, dtype: np.dtype, coupling_dtype: np.dtype, one: bool) -> _KernelArrays:
    """The kernels' inputs of ``array`` (cached: validation and conversion are paid once per array)."""
    per_array = _KERNEL_ARRAYS.setdefault(array, {})
    key = (dtype, coupling_dtype, one)
    ka = per_array.get(key)
    if ka is None:
        n = array.n_oscillators
        cache_ct = n * n * max(dtype.itemsize, coupling_dtype.itemsize) <= CACHED_COUPLING_BYTES
        ka = _KernelArrays(
            osc=_aligned_copy(array.oscillator_parameters(), dtype),
            coupling_t=_coupling_for_kernel(array, dtype, coupling_dtype, one) if cache_ct else None,
            use_coupling=bool(array.coupling_oe != 0.0 and np.any(array.coupling_matrix)),
            p=np.asarray(array.device.reference_direction, dtype=dtype),
            lam=dtype.type(array.device.torque_asymmetry),
            zeros_n=np.zeros(n, dtype=dtype),
        )
        per_array[key] = ka
    return ka


def evolve(
    array: STOArray,
    initial_state: np.ndarray,
    n_steps: int,
    dt_s: float,
    *,
    noise: NoiseSettings = NoiseSettings(),
    seed: int = 0,
    save_every: int = 0,
    dtype=np.float64,
    progress: Callable[[int, int], None] | None = None,
    coupling_dtype=None,
) -> tuple[np.ndarray, np.ndarray | None, float | None]:
    """Advance states (B, N, 3) by ``n_steps`` steps of ``dt_s`` seconds.

    Returns (final state (B, N, 3), saved states (S, B, N, 3) after every ``save_every``
    steps or None when ``save_every`` is 0, measured dynamical SNR in dB or None; with a reference time
    t_ref it is the SNR of the noise accumulated over t_ref, the setting's definition).
    Layout: oscillator i of sample b is ``final[b, i]`` = (m_x, m_y, m_z); ``final.reshape(B, 3 * N)`` is
    the flat state of the substrates (:class:`stosim.CoupledSTOArray`), the same memory order.
    ``progress(done, total)`` is called after each chunk of steps.

    ``coupling_dtype``: None (default) stores (mu W)^T in ``dtype``; float32 rounds W to float32 (relative
    2^-24 per entry) with products and sums still in ``dtype``: a single noiseless trajectory of a large
    array then reads half the bytes per coupling product (:mod:`stosim.integrate.batch1`).
    Kernels: a noiseless RK4 run of one sample runs :func:`stosim.integrate.batch1.run_uncoupled` without
    coupling (mu W = 0), else :func:`stosim.integrate.batch1_threads.OneTrajectoryRunner` for N > 32 (split over
    ``numba.get_num_threads()`` threads from N = 256 when that measures faster; the same result bit for bit);
    N <= 32, the fused small-N loop; otherwise the batch is chunked over threads.
    The arrays the kernels take are built once per array (cached with it; the array is immutable).
    """
    if isinstance(dt_s, str):  # "1 ps"
        from stosim.quantities import quantity

        dt_s = quantity(dt_s, "time", "dt")
    dtype = _check_dtype(dtype)
    coupling_dtype = _check_coupling_dtype(coupling_dtype, dtype)
    check_step_count(n_steps)
    check_time_step(array, dt_s)
    if not isinstance(save_every, (int, np.integer)) or save_every < 0:
        raise ValueError(f"save_every = {save_every!r} must be an integer >= 0 (0: save nothing)")
    m0 = check_initial_state(initial_state, array.n_oscillators)
    n_batch, n_osc = m0.shape[0], array.n_oscillators
    n_saves = n_steps // save_every if save_every else 0
    if n_saves * 3 * n_batch * n_osc * dtype.itemsize > MAX_TRAJECTORY_BYTES:
        raise ValueError(
            f"save_every = {save_every} keeps {n_saves} states of {n_batch} x {n_osc} oscillators, more than "
            f"{MAX_TRAJECTORY_BYTES >> 30} GiB; save less often (a larger save_every)"
        )
    thermal = noise.temperature_k > 0
    dynamical = noise.dynamical_snr_db is not None and math.isfinite(noise.dynamical_snr_db)
    noiseless_rk4 = not thermal and not dynamical
    one = noiseless_rk4 and n_batch == 1 and n_osc > SMALL_N_MAX  # the batch-1 kernel
    ka = _kernel_arrays(array, dtype, coupling_dtype, one)
    uncoupled_one = noiseless_rk4 and n_batch == 1 and not ka.use_coupling  # each oscillator on its own
    coupling_t = ka.coupling_t if ka.coupling_t is not None else _coupling_for_kernel(array, dtype, coupling_dtype, one)
    n_chunks = _chunk_count(n_batch, n_osc)
    m = _to_chunks(m0.astype(dtype), n_chunks)  # (C, 3, Bc, N)
    per = m.shape[2]
    traj = np.empty((n_chunks, max(n_saves, 1), 3, per, n_osc), dtype=dtype)
    osc, use_coupling, p, lam = ka.osc, ka.use_coupling, ka.p, ka.lam
    if thermal:
        dev = array.device
        sigma_th = np.ascontiguousarray(
            thermal_field_sigma_oe(
                osc[OSC_DAMPING].astype(np.float64),
                noise.temperature_k,
                dev.gyromagnetic_ratio_rad_per_oe_s,
                dev.saturation_magnetization_emu_cm3,
                dev.volume_cm3,
                dt_s,
            )
            * np.ones(n_osc),
            dtype=dtype,
        )
        rng_th = noise_stream(seed, STREAM_THERMAL)
    else:
        sigma_th = ka.zeros_n
    factor = noise.dynamical_factor(dt_s) if dynamical else 0.0
    if dynamical:
        rng_dyn = noise_stream(seed, STREAM_DYNAMICAL)
    stats = np.zeros((n_chunks, 3))
    result = np.zeros((n_chunks, 2), dtype=np.int64)
    dummy = np.zeros((n_chunks, 1, 3, 1, 1), dtype=dtype)
    method = METHOD_HEUN if thermal else METHOD_RK4
    # the fused kernels (batch 1, or N <= SMALL_N_MAX noiseless) make no BLAS call: no thread limit to set
    blas_free = one or uncoupled_one or (noiseless_rk4 and n_osc <= SMALL_N_MAX)

    per_step = 3 * n_batch * n_osc
    if thermal or dynamical:
        chunk = max(1, NOISE_CHUNK_VALUES // per_step)  # bounded memory for the random numbers
    else:
        chunk = n_steps if progress is None else max(1, -(-n_steps // 100))
    done = 0
    if one and not uncoupled_one:  # the batch-1 kernel, on one thread or split (chosen per chunk)
        runner = _OneTrajectoryRunner(n_osc, numba.get_num_threads())
        inputs = _OneTrajectoryInputs(coupling_t, use_coupling, osc, lam, p, dtype.type(dt_s))
    with contextlib.nullcontext() if blas_free else _single_threaded_blas():
        while done < n_steps:
            k = min(chunk, n_steps - done)
            field_noise = (
                _to_chunks(rng_th.standard_normal((k, n_batch, n_osc, 3), dtype=dtype), n_chunks, lead=1)
                if thermal
                else dummy
            )
            state_noise = (
                _to_chunks(rng_dyn.standard_normal((k, n_batch, n_osc, 3), dtype=dtype), n_chunks, lead=1)
                if dynamical
                else dummy
            )
            save = save_every if save_every else n_steps + 1
            args = (coupling_t, use_coupling, osc, lam, p, dtype.type(dt_s), k, method, save, done)
            if uncoupled_one:
                result[0] = _run_uncoupled(m[0], osc, lam, p, dtype.type(dt_s), k, save, done, traj[0])
            elif one:
                result[0] = runner.run(m[0], inputs, k, save, done, traj[0])
            elif n_chunks == 1:  # no parallel region: it would wait on idle threads at every call
                result[0] = run_chunk(
                    m[0], *args, traj[0], field_noise[0], thermal, sigma_th, state_noise[0], dynamical, factor, stats[0]
                )
            else:
                run_chunks(
                    m, *args, traj, field_noise, thermal, sigma_th, state_noise, dynamical, factor, stats, result
                )
            if result[:, 0].max() >= 0:
                failed = np.flatnonzero(result[:, 0] >= 0)
                c = int(failed[0])
                step = done + int(result[c, 0]) + 1
                b, i = divmod(int(result[c, 1]), n_osc)
                raise SimulationDivergedError(
                    f"the state became non-finite at step {step} (t = {step * dt_s:.6g} s) in sample {c * per + b}, "
                    f"oscillator {i}; the time step dt = {dt_s:.3g} s may be too large for these fields, or a field "
                    "is beyond floating-point range (try a smaller dt; check coupling and device values)"
                )
            done += k
            if progress is not None:
                progress(done, n_steps)
    measured_dyn = None
    if dynamical:
        total = stats.sum(axis=0)
        measured_dyn = float(10 * np.log10(total[0] / total[1])) if total[1] > 0 else None
    if measured_dyn is not None and noise.dynamical_noise_reference_s is not None:
        # the kernels measure the SNR of one step's noise; over t_ref it is 10 log10(t_ref / dt) dB lower
        measured_dyn -= 10 * math.log10(noise.dynamical_noise_reference_s / dt_s)
    final = _from_chunks(m, n_batch)
    saved = _from_chunks(traj[:, :n_saves], n_batch) if save_every else None
    return final, saved, measured_dyn


@dataclasses.dataclass
class Trajectory:
    """A simulated (and, with observation noise, observed) trajectory.

    - ``time_s`` (S,): times of the recorded states in s, starting at 0.
    - ``m`` (S, B, N, 3): recorded magnetization (with observation noise if requested).
    - ``tmr_voltage_v`` (S, B, N): TMR output voltage V_i = I_i R(m_i) in V at each device's bias (drive)
      current I_i (the array's current, times the device's factor under variability).
    - ``final_state`` (B, N, 3): the noiseless end state of the evolution.
    """

    time_s: np.ndarray
    m: np.ndarray
    tmr_voltage_v: np.ndarray
    final_state: np.ndarray
    array: STOArray
    dt_s: float
    seed: int
    noise: NoiseSettings
    observation_snr_db: float | None
    measured_observation_snr_db: dict[str, float]
    measured_dynamical_snr_db: float | None
    dtype: str
    coupling_dtype: str = ""  # dtype W was stored in ("": that of ``dtype``)
    limit_warnings: tuple[str, ...] = ()  # device limits exceeded (run with allow_beyond_limits)
    m_noiseless: np.ndarray | None = None  # (S, B, N, 3) m before observation noise (None: no observation noise)
    tmr_voltage_noiseless_v: np.ndarray | None = None  # (S, B, N) likewise

    def to_dataset(self):
        """The trajectory as an xarray Dataset (units and long_name on every variable, provenance attrs).

        Dims: (time, oscillator, component) for one sample, (time, sample, oscillator, component) for more.
        Variables: ``m`` and ``tmr_voltage`` (as observed: with observation noise when it is on), with noise on
        also ``m_noiseless`` and ``tmr_voltage_noiseless``; ``coupling_matrix`` W (oscillator, oscillator_j)
        of H_coupling,i = mu sum_j W_ij m_x,j. Attributes: the resolved configuration with units
        (``config``, JSON), the seed, the package versions.
        A run beyond the device limits carries them in the attribute ``device_limit_warnings`` ("none"
        when within them).
        """
        import json

        ds = _trajectory_dataset(self)
        single = self.m.shape[1] == 1
        lead = ("time",) if single else ("time", "sample")
        if self.m_noiseless is not None:
            note = "before observation noise"
            ds["m_noiseless"] = (
                lead + ("oscillator", "component"),
                self.m_noiseless[:, 0] if single else self.m_noiseless,
                {"units": "1", "long_name": f"free-layer unit magnetization, {note}"},
            )
            v = self.tmr_voltage_noiseless_v
            ds["tmr_voltage_noiseless"] = (
                lead + ("oscillator",),
                v[:, 0] if single else v,
                {"units": "V", "long_name": f"TMR output voltage I R(m), {note}"},
            )
        ds["coupling_matrix"] = (
            ("oscillator", "oscillator_j"),
            np.asarray(self.array.coupling_matrix),
            {"units": "1", "long_name": "coupling matrix W: H_coupling,i = mu sum_j W_ij m_x,j"},
        )
        ds.attrs["config"] = json.dumps(self.resolved_config())
        ds.attrs["device_limit_warnings"] = "; ".join(self.limit_warnings) if self.limit_warnings else "none"
        ds.attrs["beyond_device_limits"] = int(bool(self.limit_warnings))
        return ds

    def resolved_config(self) -> dict[str, object]:
        """The run's settings as text with units (every one resolved, none left at "default")."""
        array, dev = self.array, self.array.device
        steps = round((self.time_s[-1] if self.time_s.size > 1 else 0.0) / self.dt_s)
        snr = {None: "off"}
        return {
            "device": dev.name,
            "n": int(array.n_oscillators),
            "coupling": f"{array.coupling_oe:.6g} Oe",
            "current": f"{array.current_a * 1e3:.6g} mA",
            "duration": format_time(steps * self.dt_s),
            "dt": format_time(self.dt_s),
            "save_every": (round(self.time_s[1] / self.dt_s) if self.time_s.size > 1 else 1),
            "samples": int(self.m.shape[1]),
            "temperature": f"{self.noise.temperature_k:g} K",
            "dynamical_snr": snr.get(self.noise.dynamical_snr_db, f"{self.noise.dynamical_snr_db} dB"),
            "observation_snr": snr.get(self.observation_snr_db, f"{self.observation_snr_db} dB"),
            "integrator": "stochastic Heun (Stratonovich)" if self.noise.temperature_k > 0 else "RK4",
            "seed": self.seed,
            "dtype": self.dtype,
            "coupling_dtype": self.coupling_dtype or self.dtype,
        }


def _trajectory_dataset(traj: Trajectory):  # xarray is imported on first use
    """The observed variables, coordinates and attributes of a :class:`Trajectory` as an xarray Dataset."""
    import xarray as xr

    single = traj.m.shape[1] == 1
    m = traj.m[:, 0] if single else traj.m
    v = traj.tmr_voltage_v[:, 0] if single else traj.tmr_voltage_v
    lead = ("time",) if single else ("time", "sample")
    noise_note = (
        "" if traj.observation_snr_db is None else f", with observation noise at {traj.observation_snr_db} dB SNR"
    )
    ds = xr.Dataset(
        {
            "m": (
                lead + ("oscillator", "component"),
                m,
                {"units": "1", "long_name": f"free-layer unit magnetization{noise_note}"},
            ),
            "tmr_voltage": (
                lead + ("oscillator",),
                v,
                {"units": "V", "long_name": f"TMR output voltage I R(m) at the bias current{noise_note}"},
            ),
        },
        coords={
            "time": ("time", traj.time_s, {"units": "s", "long_name": "time"}),
            "oscillator": ("oscillator", np.arange(traj.m.shape[2]), {"units": "1", "long_name": "oscillator index"}),
            "component": ("component", np.array(["x", "y", "z"]), {"long_name": "Cartesian component", "units": "1"}),
        },
    )
    if not single:
        ds = ds.assign_coords(sample=("sample", np.arange(traj.m.shape[1]), {"units": "1", "long_name": "sample"}))
    array = traj.array
    attrs = {
        **array.device.as_attrs(),
        **array.configuration(),
        "dt_s": traj.dt_s,
        "seed": traj.seed,
        "dtype": traj.dtype,
        "coupling_dtype": traj.coupling_dtype or traj.dtype,
        "temperature_k": traj.noise.temperature_k,
        "dynamical_snr_db": traj.noise.dynamical_snr_db,
        "observation_snr_db": traj.observation_snr_db,
        "measured_dynamical_snr_db": traj.measured_dynamical_snr_db,
        "measured_observation_snr_db": traj.measured_observation_snr_db or None,
        "integrator": "stochastic Heun (Stratonovich)" if traj.noise.temperature_k > 0 else "RK4",
    }
    ds.attrs.update(provenance_attrs(**attrs))
    return ds


def _bias_currents_a(array: STOArray) -> np.ndarray:
    """(N,) bias current of each device in A: I_i = I (1 + s_I xi_i) with device variability (the
    current that drives device i's spin torque), I for identical devices. Its TMR voltage is I_i R(m_i)."""
    factor = (
        array.variability.factors(array.n_oscillators)["current"]
        if array.variability is not None
        else np.ones(array.n_oscillators)
    )
    return array.current_a * factor


def simulate(
    array: STOArray,
    initial_state: np.ndarray,
    duration_s: float,
    dt_s: float,
    *,
    save_every: int = 1,
    temperature_k: float = 0.0,
    dynamical_snr_db: float | None = None,
    observation_snr_db: float | None = None,
    seed: int = 0,
    dtype=np.float64,
    progress: Callable[[int, int], None] | None = None,
    allow_beyond_limits: bool = False,
    dynamical_noise_reference_s: float | None = None,
    coupling_dtype=None,
) -> Trajectory:
    """Run ``array`` from ``initial_state`` ((N, 3) or (B, N, 3)) for ``duration_s`` in steps of ``dt_s``.

    The state is recorded at t = 0 and after every ``save_every`` steps. With
    ``observation_snr_db`` the recorded m and TMR voltage carry Gaussian observation noise of
    variance var(signal)/10^(SNR/10), the variance over all recorded samples of each.
    ``duration_s``, ``dt_s`` and ``temperature_k`` may be unit strings ("20 ns", "1 ps", "300 K").

    A bias current beyond the device's limits (:func:`check_device_limits`) raises
    :class:`DeviceLimitError`; with ``allow_beyond_limits`` the run is made, a
    :class:`DeviceLimitWarning` issued and the exceeded limits kept in ``Trajectory.limit_warnings``.

    ``dynamical_noise_reference_s``: None, the dynamical SNR is per step (dt-dependent); a time t_ref
    in s, the SNR of the noise accumulated over t_ref (dt-independent; :class:`NoiseSettings`).
    ``coupling_dtype``: None (W in ``dtype``) or float32: W rounded to float32 (relative 2^-24 per entry), products
    in ``dtype``; a single noiseless trajectory of a large array then reads half the bytes per product (:func:`evolve`).
    """
    from stosim.quantities import quantity

    duration_s, dt_s = quantity(duration_s, "time", "duration"), quantity(dt_s, "time", "dt")
    temperature_k = quantity(temperature_k, "temperature", "temperature")
    limit_warnings = check_device_limits(array, allow_beyond_limits=allow_beyond_limits, what="simulation")
    n_steps = steps_for_duration(duration_s, dt_s)
    if not isinstance(save_every, (int, np.integer)) or not 1 <= save_every <= n_steps:
        raise ValueError(f"save_every = {save_every!r} must be an integer in [1, {n_steps}] (the number of steps)")
    if observation_snr_db is not None:
        check_snr_db(observation_snr_db, "observation_snr")
    noise = NoiseSettings(
        temperature_k=float(temperature_k),
        dynamical_snr_db=dynamical_snr_db,
        dynamical_noise_reference_s=dynamical_noise_reference_s,
    )
    m0 = check_initial_state(initial_state, array.n_oscillators)
    final, saved, measured_dyn = evolve(
        array,
        m0,
        n_steps,
        dt_s,
        noise=noise,
        seed=seed,
        save_every=save_every,
        dtype=dtype,
        progress=progress,
        coupling_dtype=coupling_dtype,
    )
    m = np.concatenate([m0.astype(final.dtype)[None], saved], axis=0)
    time_s = np.arange(m.shape[0]) * (save_every * dt_s)
    p = np.asarray(array.device.reference_direction)
    dev = array.device
    voltage = voltage_at_bias_current_v(
        m @ p.astype(m.dtype), dev.parallel_resistance_ohm, dev.tmr_ratio, _bias_currents_a(array)
    ).astype(m.dtype)
    measured_obs: dict[str, float] = {}
    m_clean = v_clean = None
    if observation_snr_db is not None and math.isfinite(observation_snr_db):
        rng = noise_stream(seed, STREAM_OBSERVATION)
        m_obs = add_observation_noise(m, observation_snr_db, rng)
        v_obs = add_observation_noise(voltage, observation_snr_db, rng)
        measured_obs = {
            "m": measured_snr_db(m, m_obs - m),
            "tmr_voltage": measured_snr_db(voltage, v_obs - voltage),
        }
        m_clean, v_clean = m, voltage
        m, voltage = m_obs, v_obs
    return Trajectory(
        time_s=time_s,
        m=m,
        tmr_voltage_v=voltage,
        final_state=final,
        array=array,
        dt_s=float(dt_s),
        seed=int(seed),
        noise=noise,
        observation_snr_db=observation_snr_db,
        measured_observation_snr_db=measured_obs,
        measured_dynamical_snr_db=measured_dyn,
        dtype=np.dtype(dtype).name,
        coupling_dtype=_check_coupling_dtype(coupling_dtype, np.dtype(dtype)).name,
        limit_warnings=limit_warnings,
        m_noiseless=m_clean,
        tmr_voltage_noiseless_v=v_clean,
    )
