"""Mean-field (DMFT) and random-matrix approximations for random rate networks (NumPy float64).

Discrete time, h_{s+1} = J phi(h_s) + I_s with J_ij ~ N(0, g^2/N), phi = tanh, white input of
variance sigma^2 (N -> infinity; Molgedey, Schuchhardt & Schuster 1992; Engelken et al. 2023):

    Delta = g^2 <phi(h)^2> + sigma^2,        h ~ N(0, Delta)      (self-consistent variance)
    lambda_max = 1/2 ln( g^2 <phi'(h)^2> )                       (per step)

Gaussian averages by the trapezoidal rule on a fine grid (Gauss-Hermite quadrature converges too slowly
for large Delta: the poles of tanh approach the real axis in the scaled variable; see gaussian_average).
Without input, Delta = 0 for g <= 1 and lambda_max = ln g; the finite-N statement below onset is lambda_max = ln rho(J).

Random-matrix approximations of the full spectrum (i = 1..N, descending):

- ``ginibre_product_spectrum``: products of i.i.d. real Gaussian N x N matrices with entry variance
  s^2 (Newman 1986): lambda_i = 1/2 [ln(2 s^2) + psi((N - i + 1)/2)], here s^2 = g^2 <phi'^2> / N
  (discrete time: the Jacobians J D_s replaced by independent Ginibre matrices of the same norm);
- ``annealed_product_spectrum``: QR spectrum of products of independent J_s D_s with fresh J_s and
  D_s = diag(phi'(h)), h_i ~ N(0, Delta) (numerical, no analytic step);
- ``averaged_jacobian_spectrum``: continuous time near onset, where phi' changes slowly: the real
  parts of the eigenvalues of the time-averaged Jacobian -1 + J diag(<phi'(h)>), sorted;
- ``linear_spectrum``: intense chaos (large g), a rapidly decorrelating random Jacobian gives
  equally spaced exponents (Newman 1986, continuous products): lambda_i = c + s (N + 1 - 2 i)/N,
  anchored at the measured mean c and largest exponent (one-parameter shape test).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import digamma

__all__ = [
    "gaussian_average",
    "dmft_discrete",
    "dmft_discrete_mle",
    "ginibre_product_spectrum",
    "annealed_product_spectrum",
    "averaged_jacobian_spectrum",
    "linear_spectrum",
    "point_symmetry",
]

# Gaussian averages: trapezoidal rule in z = h / sqrt(Delta) on [-12, 12] with step 1/400. tanh has poles at
# h = i pi/2, i.e. z = i pi / (2 sqrt(Delta)), close to the real axis for large Delta, where Gauss-Hermite
# quadrature converges slowly (121 nodes: <phi'^2> 10 % low at g = 5, Delta = 20.6); the trapezoidal rule
# converges like exp(-2 pi d / step) with d the distance of the poles (error < 1e-12 for Delta <= 1e4).
_Z = np.linspace(-12.0, 12.0, 9601)
_WEIGHTS = np.exp(-0.5 * _Z * _Z) / math.sqrt(2.0 * math.pi) * (_Z[1] - _Z[0])


def gaussian_average(f, variance: float) -> float:
    """<f(h)> for h ~ N(0, variance) (trapezoidal rule on a fine grid; see the comment above)."""
    if not (math.isfinite(variance) and variance >= 0):
        raise ValueError(f"variance = {variance!r} must be finite and >= 0")
    return float(np.dot(_WEIGHTS, f(math.sqrt(variance) * _Z)))


def _check_gain(g: float, input_std: float) -> None:
    if not (math.isfinite(g) and 0 < g <= 100):
        raise ValueError(f"g = {g!r} must be in (0, 100]")
    if not (math.isfinite(input_std) and 0 <= input_std <= 100):
        raise ValueError(f"input_std = {input_std!r} must be in [0, 100]")


def dmft_discrete(g: float, input_std: float = 0.0, tol: float = 1e-13, max_iter: int = 10_000) -> float:
    """Self-consistent variance Delta = g^2 <tanh(h)^2> + input_std^2 of the discrete-time network."""
    _check_gain(g, input_std)
    if g <= 1.0 and input_std == 0.0:
        return 0.0
    delta = max(g * g, 1.0) + input_std**2
    for _ in range(max_iter):
        new = g * g * gaussian_average(lambda h: np.tanh(h) ** 2, delta) + input_std**2
        if abs(new - delta) <= tol * max(delta, 1e-300):
            return new
        delta = new
    raise RuntimeError(f"DMFT iteration did not converge for g = {g}, input_std = {input_std}")


def dmft_discrete_mle(g: float, input_std: float = 0.0) -> float:
    """Mean-field lambda_max = 1/2 ln(g^2 <phi'(h)^2>) per step, h ~ N(0, Delta)."""
    delta = dmft_discrete(g, input_std)
    return 0.5 * math.log(g * g * gaussian_average(lambda h: (1.0 - np.tanh(h) ** 2) ** 2, delta))


def ginibre_product_spectrum(n: int, g: float, input_std: float = 0.0) -> np.ndarray:
    """lambda_i = 1/2 [ln(2 s^2) + psi((N-i+1)/2)], s^2 = g^2 <phi'^2> / N (per step), descending."""
    delta = dmft_discrete(g, input_std)
    s2 = g * g * gaussian_average(lambda h: (1.0 - np.tanh(h) ** 2) ** 2, delta) / n
    i = np.arange(1, n + 1)
    return 0.5 * (np.log(2.0 * s2) + digamma((n - i + 1) / 2.0))


def annealed_product_spectrum(
    n: int, g: float, n_steps: int = 400, input_std: float = 0.0, seed: int = 0
) -> np.ndarray:
    """QR spectrum of products of independent J_s diag(phi'(h_s)), J_s ~ N(0, g^2/N), h_s ~ N(0, Delta)."""
    delta = dmft_discrete(g, input_std)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(11,)))
    q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    logs = np.zeros(n)
    for _ in range(n_steps):
        j = rng.standard_normal((n, n)) * (g / math.sqrt(n))
        d = 1.0 - np.tanh(math.sqrt(delta) * rng.standard_normal(n)) ** 2
        q, r = np.linalg.qr(j @ (d[:, None] * q))
        logs += np.log(np.abs(np.diag(r)))
    return np.sort(logs / n_steps)[::-1]


def averaged_jacobian_spectrum(J: np.ndarray, mean_slope: np.ndarray) -> np.ndarray:
    """Sorted real parts of the eigenvalues of -1 + J diag(<phi'>) (1/tau), descending."""
    m = np.asarray(J, dtype=np.float64) * np.asarray(mean_slope, dtype=np.float64)[None, :]
    return np.sort(np.linalg.eigvals(m).real - 1.0)[::-1]


def linear_spectrum(n: int, mean: float, largest: float) -> np.ndarray:
    """Equally spaced exponents, point-symmetric about ``mean``, the first equal to ``largest``."""
    i = np.arange(1, n + 1)
    slope = (largest - mean) * n / (n - 1) if n > 1 else 0.0
    return mean + slope * (n + 1 - 2 * i) / n


def point_symmetry(exponents: np.ndarray) -> dict[str, float]:
    """Point symmetry of a full spectrum: centre c = mean, deviation (lambda_i + lambda_{N+1-i})/2 - c.

    Returns ``centre``, ``max_deviation``, ``rms_deviation`` (same units) and ``relative`` = rms
    deviation / (lambda_1 - lambda_N) (0 for a perfectly point-symmetric spectrum).
    """
    lam = np.sort(np.asarray(exponents, dtype=np.float64))[::-1]
    c = float(lam.mean())
    dev = 0.5 * (lam + lam[::-1]) - c
    width = float(lam[0] - lam[-1])
    rms = float(np.sqrt(np.mean(dev * dev)))
    return {
        "centre": c,
        "max_deviation": float(np.max(np.abs(dev))),
        "rms_deviation": rms,
        "relative": rms / width if width > 0 else float("nan"),
    }
