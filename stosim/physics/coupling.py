"""Ampere-law field coupling of an STO array (docs/physics.md section 3).

The coupling field on oscillator i is H_coupling,i = mu sum_j W_ij m_x,j e_x (Oe), with
mu the coupling magnitude in Oe and W either

- generated: entries iid uniform in [-1, 1], zero diagonal, rescaled to spectral radius 1
  (seeded, so an array is reproducible), or
- given explicitly (a measured coupling matrix of a real array), used as it is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["random_coupling_matrix", "validate_coupling_matrix", "load_coupling_matrix", "spectral_radius"]


def spectral_radius(matrix: np.ndarray) -> float:
    """Largest |eigenvalue| of a square matrix."""
    if matrix.shape[0] == 0:
        return 0.0
    return float(np.max(np.abs(np.linalg.eigvals(matrix))))


def random_coupling_matrix(n_oscillators: int, seed: int | np.random.SeedSequence | np.random.Generator) -> np.ndarray:
    """W (N x N, float64): uniform [-1, 1] entries, zero diagonal, spectral radius 1.

    For N = 1 the only zero-diagonal matrix is [[0]], returned as it is.
    """
    if not isinstance(n_oscillators, (int, np.integer)) or n_oscillators < 1:
        raise ValueError(f"n_oscillators = {n_oscillators!r} must be an integer >= 1")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    w = rng.uniform(-1.0, 1.0, size=(n_oscillators, n_oscillators))
    np.fill_diagonal(w, 0.0)
    radius = spectral_radius(w)
    return w / radius if radius > 0 else w


def validate_coupling_matrix(matrix: np.ndarray, n_oscillators: int | None = None) -> np.ndarray:
    """Check an explicit W: shape (N, N) (any N when ``n_oscillators`` is None), real and finite.

    Returns it as float64 (a copy).
    """
    w = np.asarray(matrix)
    if n_oscillators is None:
        if w.ndim != 2 or w.shape[0] != w.shape[1] or w.shape[0] < 1:
            raise ValueError(f"coupling_matrix must be a square (N, N) matrix with N >= 1, got shape {w.shape}")
        n_oscillators = w.shape[0]
    if w.shape != (n_oscillators, n_oscillators):
        raise ValueError(
            f"coupling_matrix has shape {w.shape}; it must be (N, N) = ({n_oscillators}, {n_oscillators}) "
            "for an array of N oscillators"
        )
    if not np.issubdtype(w.dtype, np.number) or np.iscomplexobj(w):
        raise ValueError(f"coupling_matrix must hold real numbers, got dtype {w.dtype}")
    w = w.astype(np.float64, copy=True)
    if not np.all(np.isfinite(w)):
        bad = tuple(int(x) for x in np.argwhere(~np.isfinite(w))[0])
        raise ValueError(f"coupling_matrix has a non-finite entry at {bad}; all entries must be finite")
    return w


def load_coupling_matrix(path: str | Path, n_oscillators: int | None = None) -> np.ndarray:
    """Load an explicit W from a ``.npy`` file and validate it (see :func:`validate_coupling_matrix`)."""
    try:
        w = np.load(Path(path), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"coupling_matrix file {path}: cannot read a .npy array ({exc})") from None
    return validate_coupling_matrix(w, n_oscillators)
