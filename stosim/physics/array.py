"""A coupled STO array: N identical (or varied) devices, coupling magnitude mu and matrix W."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from stosim.config import DeviceParameters, spin_torque_field_oe
from stosim.physics.coupling import load_coupling_matrix, random_coupling_matrix, validate_coupling_matrix
from stosim.physics.llg import N_OSC_PARAMS

__all__ = ["STOArray", "oscillator_parameters"]

MAX_OSCILLATORS = 100_000


def oscillator_parameters(device: DeviceParameters, n_oscillators: int, current_a: float) -> np.ndarray:
    """The (5, N) per-oscillator table of the kernels for N copies of ``device`` at ``current_a``.

    Rows: H_appl (Oe), H_K - 4 pi M (Oe), H_s0 = hbar eta I/(2 e M V) (Oe), alpha,
    gamma/(1 + alpha^2) (rad/(Oe s)).
    """
    alpha = device.damping
    row = np.array([
        device.applied_field_oe,
        device.effective_anisotropy_field_oe,
        spin_torque_field_oe(device, current_a),
        alpha,
        device.gyromagnetic_ratio_rad_per_oe_s / (1.0 + alpha * alpha),
    ])
    assert row.shape == (N_OSC_PARAMS,)
    return np.repeat(row[:, None], n_oscillators, axis=1)


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
                raise ValueError(f"coupling = {self.coupling_oe!r} Oe times coupling_matrix overflows; "
                                 "the product mu W must be finite")

    @classmethod
    def generate(cls, device: DeviceParameters, n_oscillators: int, coupling_oe: float, *,
                 seed: int = 0, current_a: float | None = None) -> "STOArray":
        """Array with a random W (uniform [-1, 1], zero diagonal, spectral radius 1) from ``seed``."""
        w = random_coupling_matrix(n_oscillators, np.random.SeedSequence(seed, spawn_key=(0,)))
        return cls(device, n_oscillators, float(coupling_oe), w,
                   device.current_a if current_a is None else float(current_a))

    @classmethod
    def with_matrix(cls, device: DeviceParameters, coupling_matrix: np.ndarray | str | Path, coupling_oe: float, *,
                    current_a: float | None = None) -> "STOArray":
        """Array with an explicit W (an array or a .npy file), used as it is (not rescaled)."""
        if isinstance(coupling_matrix, (str, Path)):
            w = load_coupling_matrix(coupling_matrix)
        else:
            w = validate_coupling_matrix(coupling_matrix)
        return cls(device, int(w.shape[0]), float(coupling_oe), w,
                   device.current_a if current_a is None else float(current_a))

    def oscillator_parameters(self) -> np.ndarray:
        """(5, N) per-oscillator parameter table for the kernels (float64)."""
        return oscillator_parameters(self.device, self.n_oscillators, self.current_a)

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
        }
