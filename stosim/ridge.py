"""Readout-only training: ridge regression from accumulated sufficient statistics.

For features X (n x F) and one-hot targets Y (n x K), the readout with an unpenalized bias is

    W = (X_c^T X_c + alpha I)^-1 X_c^T Y_c,   b = mean(Y) - mean(X) W,

with X_c, Y_c centred; without a bias (``fit_intercept=False``, for bias-free readouts such as the
FFESN's) W = (X^T X + alpha I)^-1 X^T Y, b = 0. Only sums are kept (n, sum X, sum Y, X^T X, X^T Y, in float64), so any
number of batches, from any substrate (also non-differentiable hardware), can be streamed.
This equals scikit-learn's ``Ridge(alpha, fit_intercept=...)``.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch

__all__ = ["RidgeAccumulator"]


class RidgeAccumulator:
    """Streams (features, labels) batches; :meth:`solve` returns the ridge readout (W, b)."""

    def __init__(self, n_features: int, n_classes: int) -> None:
        if n_features < 1 or n_classes < 2:
            raise ValueError(f"n_features = {n_features} must be >= 1 and n_classes = {n_classes} >= 2")
        self.n_features, self.n_classes = n_features, n_classes
        self.count = 0
        self.sum_x = np.zeros(n_features)
        self.sum_y = np.zeros(n_classes)
        self.xtx = np.zeros((n_features, n_features))
        self.xty = np.zeros((n_features, n_classes))

    def update(self, features: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> None:
        """Add a batch: features (B, F), integer labels (B,) (or targets (B, K))."""
        x = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
        lab = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"features have shape {x.shape}; expected (batch, {self.n_features})")
        if not np.all(np.isfinite(x)):
            raise ValueError("features contain non-finite values")
        if lab.ndim == 1:
            if lab.min(initial=0) < 0 or lab.max(initial=0) >= self.n_classes:
                raise ValueError(f"labels must be in [0, {self.n_classes - 1}]")
            y = np.eye(self.n_classes)[lab]
        else:
            y = np.asarray(lab, dtype=np.float64)
        self.count += x.shape[0]
        self.sum_x += x.sum(0)
        self.sum_y += y.sum(0)
        self.xtx += x.T @ x
        self.xty += x.T @ y

    def solve(self, alpha: float, fit_intercept: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(W (F x K), b (K,)) for ridge strength ``alpha`` > 0; b = 0 without ``fit_intercept``."""
        if not alpha > 0:
            raise ValueError(f"ridge alpha = {alpha!r} must be > 0")
        if self.count == 0:
            raise ValueError("no data accumulated; call update() first")
        if not fit_intercept:
            w = scipy.linalg.solve(self.xtx + alpha * np.eye(self.n_features), self.xty, assume_a="pos")
            return w, np.zeros(self.n_classes)
        mx, my = self.sum_x / self.count, self.sum_y / self.count
        xtx_c = self.xtx - self.count * np.outer(mx, mx)
        xty_c = self.xty - self.count * np.outer(mx, my)
        w = scipy.linalg.solve(xtx_c + alpha * np.eye(self.n_features), xty_c, assume_a="pos")
        return w, my - mx @ w
