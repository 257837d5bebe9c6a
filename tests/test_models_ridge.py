"""Ridge readout numerics and input checks; size checks and output shapes of the model heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge

from stosim.models import CNNClassifier, ConvFrontEnd, LinearClassifier, MLPClassifier
from stosim.ridge import RidgeAccumulator

# ---------------------------------------------------------------------------- ridge


def _stream(x: np.ndarray, labels: np.ndarray, n_classes: int, batch: int = 64) -> RidgeAccumulator:
    acc = RidgeAccumulator(x.shape[1], n_classes)
    for i in range(0, x.shape[0], batch):
        acc.update(x[i : i + batch], labels[i : i + batch])
    return acc


def test_ridge_features_with_large_mean_and_small_spread() -> None:
    # magnetization-like features: mean 1, spread 1e-6. Centring X^T X at the end (subtracting
    # n mean mean^T) cancels ~12 digits; the streamed centred sums keep the scikit-learn answer.
    rng = np.random.default_rng(0)
    n, spread = 2000, 1e-6
    labels = rng.integers(0, 4, n)
    x = 1.0 + spread * rng.standard_normal((n, 12))
    x[:, 0] += spread * labels  # the signal
    alpha = 1e-3 * spread**2 * n
    w, b = _stream(x, labels, 4).solve(alpha)
    ref = Ridge(alpha=alpha, fit_intercept=True).fit(x, np.eye(4)[labels])
    np.testing.assert_allclose(x @ w + b, ref.predict(x), rtol=0, atol=1e-8)
    np.testing.assert_allclose(w, ref.coef_.T, rtol=1e-7, atol=0)


def test_ridge_constant_feature_gets_no_weight() -> None:
    # a constant feature (a saturated oscillator) carries nothing once centred: its weight is 0
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5000, 6))
    x[:, 2] = 0.7
    labels = rng.integers(0, 4, 5000)
    w, b = _stream(x, labels, 4, batch=50).solve(1e-8)
    assert np.max(np.abs(w[2])) < 1e-9
    ref = Ridge(alpha=1e-8, fit_intercept=True).fit(x, np.eye(4)[labels])
    np.testing.assert_allclose(w, ref.coef_.T, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(b, ref.intercept_, rtol=1e-9, atol=1e-12)


def test_ridge_rejects_malformed_labels_and_keeps_its_state() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((40, 5))
    labels = rng.integers(0, 3, 40)
    acc = _stream(x, labels, 3, batch=10)
    before = acc.solve(0.5)
    xb = rng.standard_normal((8, 5))
    bad_labels = {
        r"shape \(8, 1\).*\(8, 3\)": np.ones((8, 1)),  # used to broadcast silently into all classes
        r"shape \(8, 2\)": np.ones((8, 2)),
        r"7 labels for 8 feature rows": np.zeros(7, np.int64),
        r"dtype float64.*integer class indices": np.zeros(8),
        r"dtype bool": np.zeros(8, bool),
        r"\[0, 2\]; found 0\.\.3": np.array([0, 1, 2, 3, 0, 1, 2, 0]),
        r"targets contain non-finite": np.full((8, 3), np.nan),
    }
    for message, bad in bad_labels.items():
        with pytest.raises(ValueError, match=message):
            acc.update(xb, bad)
    with pytest.raises(ValueError, match="labels"):
        acc.update(xb, torch.zeros(8, 1, dtype=torch.int64))
    assert acc.count == 40
    after = acc.solve(0.5)
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    # valid inputs still work: torch labels, one-hot targets, an empty batch
    acc.update(torch.as_tensor(xb), torch.zeros(8, dtype=torch.int64))
    acc.update(xb, np.eye(3)[np.ones(8, np.int64)])
    acc.update(np.zeros((0, 5)), np.zeros(0, np.int64))
    assert acc.count == 56


def test_ridge_alpha_and_sizes_are_checked() -> None:
    acc = RidgeAccumulator(3, 2)
    acc.update(np.eye(3), np.array([0, 1, 1]))
    for bad in (float("inf"), 0.0, -1.0, float("nan"), "1", True):  # inf used to reach scipy
        with pytest.raises(ValueError, match=r"ridge alpha = .* is out of range; valid: a finite number > 0"):
            acc.solve(bad)  # type: ignore[arg-type]
    for n_features, n_classes, name in (
        (3.5, 2, "n_features"),
        (0, 2, "n_features"),
        (3, 1, "n_classes"),
        (3, 2.0, "n_classes"),
    ):
        with pytest.raises(ValueError, match=rf"{name} = .* is out of range"):
            RidgeAccumulator(n_features, n_classes)  # type: ignore[arg-type]
    assert RidgeAccumulator(np.int64(3), np.int64(2)).n_features == 3


# ---------------------------------------------------------------------------- model heads


def test_model_sizes_are_checked() -> None:
    # a 0-unit hidden layer or a 0-pixel input used to build a model that only outputs its bias
    with pytest.raises(ValueError, match=r"hidden = 0 is out of range; valid: an integer >= 1"):
        MLPClassifier(64, 10, 0)
    with pytest.raises(ValueError, match="n_inputs = 0"):
        LinearClassifier(0, 10)
    with pytest.raises(ValueError, match="n_classes = 1"):
        LinearClassifier(64, 1)
    with pytest.raises(ValueError, match="hidden = 2.5"):
        MLPClassifier(64, 10, 2.5)  # type: ignore[arg-type]
    # images too small for the 2x2 pool, or no channels: refused at construction, not in forward()
    with pytest.raises(ValueError, match=r"image_shape rows = 1 is out of range; valid: an integer >= 2"):
        CNNClassifier((1, 5), 10, 4)
    with pytest.raises(ValueError, match=r"image_shape = \(8,\)"):
        CNNClassifier((8,), 10, 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="channels = 0"):
        CNNClassifier((8, 8), 10, 4, channels=0)


@pytest.mark.parametrize("image_shape", [(8, 8), (7, 9), (2, 2)])
def test_model_heads_map_flat_images_to_class_scores(image_shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    rows, cols = image_shape
    x = torch.rand(5, rows * cols)
    front = ConvFrontEnd(image_shape, 3, torch.float32)
    assert front(x).shape == (5, front.n_outputs) and front.n_outputs == 3 * (rows // 2) * (cols // 2)
    for model in (
        LinearClassifier(rows * cols, 10),
        MLPClassifier(rows * cols, 10, 6),
        CNNClassifier(image_shape, 10, 6, channels=3),
    ):
        assert model(x).shape == (5, 10)
