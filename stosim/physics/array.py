"""A coupled STO array: N identical (or varied) devices, coupling magnitude mu and matrix W."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from stosim.config import DeviceParameters, spin_torque_field_oe
from stosim.physics.coupling import load_coupling_matrix, random_coupling_matrix, validate_coupling_matrix
from stosim.physics.llg import (
    N_OSC_PARAMS,
    OSC_ANISOTROPY_OE,
    OSC_APPLIED_FIELD_OE,
    OSC_DAMPING,
    OSC_PREFACTOR,
    OSC_TORQUE_FIELD_OE,
)

__all__ = [
    "STOArray",
    "Variability",
    "oscillator_parameters",
    "check_step_count",
    "check_time_step",
    "MAX_ROTATION_PER_STEP_RAD",
]

MAX_OSCILLATORS = 100_000
# the largest turn of m per integration step that check_time_step accepts (RK4 loses its accuracy, and
# soon its stability, as the precession angle per step approaches 1 rad)
MAX_ROTATION_PER_STEP_RAD = 1.0


VARIABLE_PARAMETERS = ("anisotropy_field", "damping", "current")


@dataclasses.dataclass(frozen=True)
class Variability:
    """Device-to-device variability: each oscillator's H_K, alpha and I drawn as x (1 + s xi),
    xi standard normal, s the relative spread of that parameter (0: identical devices), from ``seed``.

    A draw outside the physical range (alpha < 0 or >= 1, H_K < 0, a current factor <= 0, which would
    reverse that device's current) raises rather than being clipped.
    """

    anisotropy_field: float = 0.0
    damping: float = 0.0
    current: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in VARIABLE_PARAMETERS:
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value <= 0.5):
                raise ValueError(f"variability of {name} = {value!r} must be a relative spread in [0, 0.5]")

    @classmethod
    def uniform(cls, spread: float, seed: int = 0) -> "Variability":
        """The same relative spread for H_K, alpha and I."""
        return cls(anisotropy_field=spread, damping=spread, current=spread, seed=seed)

    @property
    def is_zero(self) -> bool:
        return all(getattr(self, name) == 0 for name in VARIABLE_PARAMETERS)

    def factors(self, n_oscillators: int) -> dict[str, np.ndarray]:
        """1 + s xi per parameter, (N,) each (independent streams per parameter)."""
        out = {}
        for k, name in enumerate(VARIABLE_PARAMETERS):
            rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(11, k)))
            out[name] = 1.0 + getattr(self, name) * rng.standard_normal(n_oscillators)
        return out


def oscillator_parameters(
    device: DeviceParameters, n_oscillators: int, current_a: float, variability: Variability | None = None
) -> np.ndarray:
    """The (5, N) per-oscillator table of the kernels for N copies of ``device`` at ``current_a``.

    Rows: H_appl (Oe), H_K - 4 pi M (Oe), H_s0 = hbar eta I/(2 e M V) (Oe), alpha,
    gamma/(1 + alpha^2) (rad/(Oe s)). With ``variability`` each oscillator's H_K, alpha and I
    are scaled by its own factor.
    """
    ones = np.ones(n_oscillators)
    f = (
        variability.factors(n_oscillators)
        if variability is not None and not variability.is_zero
        else {name: ones for name in VARIABLE_PARAMETERS}
    )
    alpha = device.damping * f["damping"]
    h_k = device.anisotropy_field_oe * f["anisotropy_field"]
    if np.any(alpha < 0) or np.any(alpha >= 1) or np.any(h_k < 0) or np.any(f["current"] <= 0):
        raise ValueError(
            "device variability drew a damping outside [0, 1), a negative anisotropy field or a "
            "reversed current (factor 1 + s xi <= 0); reduce the spread (or change its seed)"
        )
    table = np.empty((N_OSC_PARAMS, n_oscillators))
    table[OSC_APPLIED_FIELD_OE] = device.applied_field_oe
    table[OSC_ANISOTROPY_OE] = h_k - 4 * math.pi * device.saturation_magnetization_emu_cm3
    table[OSC_TORQUE_FIELD_OE] = spin_torque_field_oe(device, current_a) * f["current"]
    table[OSC_DAMPING] = alpha
    table[OSC_PREFACTOR] = device.gyromagnetic_ratio_rad_per_oe_s / (1.0 + alpha * alpha)
    return table


@dataclasses.dataclass(frozen=True, eq=False)
class STOArray:
    """N coupled STOs: H_coupling,i = mu sum_j W_ij m_x,j e_x.

    Build with :meth:`generate` (random W, seeded) or :meth:`with_matrix` (an explicit,
    e.g. measured, W). ``current_a`` is the bias current of every device (A).
    """

    device: DeviceParameters
    n_oscillators: int
    coupling_oe: float
    coupling_matrix: np.ndarray
    current_a: float
    variability: Variability | None = None

    def __post_init__(self) -> None:
        n = self.n_oscillators
        if not isinstance(n, (int, np.integer)) or not 1 <= n <= MAX_OSCILLATORS:
            raise ValueError(f"n_oscillators = {n!r} must be an integer in [1, {MAX_OSCILLATORS}]")
        if not math.isfinite(self.coupling_oe) or abs(self.coupling_oe) > 1e6:
            raise ValueError(f"coupling = {self.coupling_oe!r} Oe must be finite with |mu| <= 1e6 Oe")
        if not math.isfinite(self.current_a) or abs(self.current_a) > 1.0:
            raise ValueError(f"current = {self.current_a!r} A must be finite with |I| <= 1 A")
        object.__setattr__(self, "coupling_matrix", validate_coupling_matrix(self.coupling_matrix, n))
        self.coupling_matrix.setflags(write=False)
        with np.errstate(over="ignore"):
            if not np.all(np.isfinite(self.coupling_oe * self.coupling_matrix)):
                raise ValueError(
                    f"coupling = {self.coupling_oe!r} Oe times coupling_matrix overflows; "
                    "the product mu W must be finite"
                )
        self.oscillator_parameters()  # variability draws outside the physical range raise here, at construction
        # rad/s, for check_time_step (computed once: the array is immutable)
        object.__setattr__(self, "max_precession_rate_rad_s", max_precession_rate(self))

    @classmethod
    def generate(
        cls,
        device: DeviceParameters,
        n_oscillators: int,
        coupling_oe: float,
        *,
        seed: int = 0,
        current_a: float | None = None,
        variability: Variability | None = None,
    ) -> "STOArray":
        """Array with a random W (uniform [-1, 1], zero diagonal, spectral radius 1) from ``seed``."""
        w = random_coupling_matrix(n_oscillators, np.random.SeedSequence(seed, spawn_key=(0,)))
        return cls(
            device,
            n_oscillators,
            float(coupling_oe),
            w,
            device.current_a if current_a is None else float(current_a),
            variability,
        )

    @classmethod
    def with_matrix(
        cls,
        device: DeviceParameters,
        coupling_matrix: np.ndarray | str | Path,
        coupling_oe: float,
        *,
        current_a: float | None = None,
        variability: Variability | None = None,
    ) -> "STOArray":
        """Array with an explicit W (an array or a .npy file), used as it is (not rescaled)."""
        if isinstance(coupling_matrix, (str, Path)):
            w = load_coupling_matrix(coupling_matrix)
        else:
            w = validate_coupling_matrix(coupling_matrix)
        return cls(
            device,
            int(w.shape[0]),
            float(coupling_oe),
            w,
            device.current_a if current_a is None else float(current_a),
            variability,
        )

    def oscillator_parameters(self) -> np.ndarray:
        """(5, N) per-oscillator parameter table for the kernels (float64)."""
        return oscillator_parameters(self.device, self.n_oscillators, self.current_a, self.variability)

    def coupling_transposed_oe(self) -> np.ndarray:
        """(mu W)^T in Oe, so that the coupling field of a batch is H_x = m_x @ (mu W)^T."""
        return np.ascontiguousarray((self.coupling_oe * self.coupling_matrix).T)

    def configuration(self) -> dict[str, float | int | str]:
        """Flat description for dataset attributes."""
        return {
            "n_oscillators": int(self.n_oscillators),
            "coupling_oe": float(self.coupling_oe),
            "current_a": float(self.current_a),
            "coupling_matrix_spectral_radius": float(np.max(np.abs(np.linalg.eigvals(self.coupling_matrix)))),
            **(
                {f"variability_{k}": getattr(self.variability, k) for k in (*VARIABLE_PARAMETERS, "seed")}
                if self.variability is not None
                else {}
            ),
        }


def max_precession_rate(array: STOArray) -> float:
    """Upper bound of |dm/dt| in rad/s over every state of ``array``.

    |dm/dt| = gamma/(1 + alpha^2) |m x B + alpha m x (m x B)| <= gamma/(1 + alpha^2) (1 + alpha) |B|,
    |B| <= |H_appl| + |H_K'| + |mu| sum_j |W_ij| + |H_s0| / (1 - |lambda|)  (|H_s| = |H_s0 / (1 + lambda m.p)|).
    """
    osc = array.oscillator_parameters()
    h_coupling = abs(array.coupling_oe) * np.abs(array.coupling_matrix).sum(axis=1)
    h_torque = np.abs(osc[OSC_TORQUE_FIELD_OE]) / (1.0 - abs(array.device.torque_asymmetry))
    field = np.abs(osc[OSC_APPLIED_FIELD_OE]) + np.abs(osc[OSC_ANISOTROPY_OE]) + h_coupling + h_torque
    return float(np.max(osc[OSC_PREFACTOR] * (1.0 + osc[OSC_DAMPING]) * field))


def check_step_count(n_steps: int) -> None:
    """Refuse a number of integration steps that is not an integer >= 1."""
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
        raise ValueError(f"n_steps = {n_steps!r} must be an integer >= 1")


def check_time_step(array: STOArray, dt_s: float) -> None:
    """Refuse a step ``dt_s`` (s) that is not a finite number > 0, or over which m could turn by more
    than MAX_ROTATION_PER_STEP_RAD: the integration would be silently wrong (the projection onto the
    sphere hides any blow-up)."""
    if isinstance(dt_s, bool) or not isinstance(dt_s, (int, float, np.integer, np.floating)) or not 0 < dt_s < math.inf:
        raise ValueError(f"dt = {dt_s!r} s must be a finite number > 0 s")
    rate = array.max_precession_rate_rad_s
    if rate * dt_s > MAX_ROTATION_PER_STEP_RAD:
        raise ValueError(
            f"dt = {dt_s:g} s is too large for this array: its fastest precession, up to "
            f"{rate:.3g} rad/s (fields up to mu sum_j |W_ij| = "
            f"{abs(array.coupling_oe) * np.abs(array.coupling_matrix).sum(axis=1).max():.4g} Oe of "
            f"coupling), turns m by up to {rate * dt_s:.3g} rad per step; use "
            f"dt <= {MAX_ROTATION_PER_STEP_RAD / rate:.3g} s"
        )
