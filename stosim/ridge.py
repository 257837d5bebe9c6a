"""Readout-only training: ridge regression from accumulated sufficient statistics.

For features X (n x F) and one-hot targets Y (n x K), the readout with an unpenalized bias is

    W = (X_c^T X_c + alpha I)^-1 X_c^T Y_c,   b = mean(Y) - mean(X) W,

with X_c, Y_c centred; without a bias (``fit_intercept=False``, for bias-free readouts such as the
FFESN's) W = (X^T X + alpha I)^-1 X^T Y, b = 0. Only the count, the means and the centred
cross-products X_c^T X_c, X_c^T Y_c are kept (float64), merged batch by batch with the pairwise
update of Chan, Golub & LeVeque (1979), so any number of batches, from any substrate (also
non-differentiable hardware), can be streamed. Keeping centred sums (rather than X^T X, from which
n mean(X)^T mean(X) would be subtracted at the end) avoids the cancellation that ruins the fit of
features with a large mean and a small spread, such as magnetizations near saturation.
This equals scikit-learn's ``Ridge(alpha, fit_intercept=...)``.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import scipy.linalg
import torch

from stosim.checks import check_count

__all__ = ["RidgeAccumulator"]


def _as_numpy(values: np.ndarray | torch.Tensor) -> np.ndarray:
    """A numpy view/copy of an array or (detached, CPU) tensor."""
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


class RidgeAccumulator:
    """Streams (features, labels) batches; :meth:`solve` returns the ridge readout (W, b).

    State (float64): ``count`` examples, ``mean_x`` (F,), ``mean_y`` (K,), and the centred
    cross-products ``cxx`` = X_c^T X_c (F x F) and ``cxy`` = X_c^T Y_c (F x K). The raw sums
    ``sum_x``, ``sum_y``, ``xtx`` = X^T X and ``xty`` = X^T Y are derived from them on access.
    """

    def __init__(self, n_features: int, n_classes: int) -> None:
        self.n_features = check_count(n_features, "n_features", 1)
        self.n_classes = check_count(n_classes, "n_classes", 2)
        self.count = 0
        self.mean_x = np.zeros(self.n_features)
        self.mean_y = np.zeros(self.n_classes)
        self.cxx = np.zeros((self.n_features, self.n_features))
        self.cxy = np.zeros((self.n_features, self.n_classes))

    @property
    def sum_x(self) -> np.ndarray:
        """Sum of the feature rows, (F,)."""
        return self.count * self.mean_x

    @property
    def sum_y(self) -> np.ndarray:
        """Sum of the target rows, (K,)."""
        return self.count * self.mean_y

    @property
    def xtx(self) -> np.ndarray:
        """Uncentred X^T X, (F x F)."""
        return self.cxx + self.count * np.outer(self.mean_x, self.mean_x)

    @property
    def xty(self) -> np.ndarray:
        """Uncentred X^T Y, (F x K)."""
        return self.cxy + self.count * np.outer(self.mean_x, self.mean_y)

    def _targets(self, labels: np.ndarray | torch.Tensor, batch: int) -> np.ndarray:
        """(batch, K) float64 targets: one-hot of integer labels (batch,), or targets (batch, K) as given."""
        lab = _as_numpy(labels)
        if lab.ndim == 1:
            if lab.shape[0] != batch:
                raise ValueError(f"{lab.shape[0]} labels for {batch} feature rows; expected one label per row")
            if lab.dtype == np.bool_ or not np.issubdtype(lab.dtype, np.integer):
                raise ValueError(
                    f"labels have dtype {lab.dtype}; expected integer class indices in [0, {self.n_classes - 1}]"
                )
            if lab.size and (lab.min() < 0 or lab.max() >= self.n_classes):
                raise ValueError(
                    f"labels must be in [0, {self.n_classes - 1}]; found {int(lab.min())}..{int(lab.max())}"
                )
            return np.eye(self.n_classes)[lab]
        if lab.ndim != 2 or lab.shape != (batch, self.n_classes):
            raise ValueError(
                f"labels have shape {lab.shape}; expected class indices ({batch},) "
                f"or targets ({batch}, {self.n_classes})"
            )
        y = np.asarray(lab, dtype=np.float64)
        if not np.all(np.isfinite(y)):
            raise ValueError("targets contain non-finite values")
        return y

    def update(self, features: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> None:
        """Add a batch: features (B, F), integer labels (B,) (or targets (B, K)).

        Everything is checked before the state changes: a rejected batch leaves the
        accumulator as it was.
        """
        x = np.asarray(_as_numpy(features), dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"features have shape {x.shape}; expected (batch, {self.n_features})")
        if not np.all(np.isfinite(x)):
            raise ValueError("features contain non-finite values")
        y = self._targets(labels, x.shape[0])
        n_b = x.shape[0]
        if n_b == 0:
            return
        mean_xb, mean_yb = x.mean(0), y.mean(0)
        xc, yc = x - mean_xb, y - mean_yb
        n_a, n = self.count, self.count + n_b
        dx, dy = mean_xb - self.mean_x, mean_yb - self.mean_y
        weight = n_a * n_b / n
        self.cxx += xc.T @ xc + weight * np.outer(dx, dx)
        self.cxy += xc.T @ yc + weight * np.outer(dx, dy)
        self.mean_x = self.mean_x + dx * (n_b / n)
        self.mean_y = self.mean_y + dy * (n_b / n)
        self.count = n

    def solve(self, alpha: float, fit_intercept: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(W (F x K), b (K,)) for ridge strength ``alpha`` (finite, > 0); b = 0 without ``fit_intercept``."""
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 < alpha < math.inf:
            raise ValueError(f"ridge alpha = {alpha!r} is out of range; valid: a finite number > 0")
        alpha_f = float(alpha)
        if self.count == 0:
            raise ValueError("no data accumulated; call update() first")
        regularizer = alpha_f * np.eye(self.n_features)
        if not fit_intercept:
            w = scipy.linalg.solve(self.xtx + regularizer, self.xty, assume_a="pos")
            return w, np.zeros(self.n_classes)
        w = scipy.linalg.solve(self.cxx + regularizer, self.cxy, assume_a="pos")
        return w, self.mean_y - self.mean_x @ w
