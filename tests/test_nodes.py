"""The composable node API (stosim.nodes): ReadIn >> Reservoir >> Ridge, checked against the same steps
written out by hand and against the closed-form ridge solution (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stosim.nodes import Chain, ReadIn, Reservoir, Ridge
from stosim.substrates.ffesn import FFESN


def _data(n: int = 120, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    labels = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int) + 2 * (x[:, 2] > 0.5)
    return x, labels


def test_chain_equals_the_steps_written_out() -> None:
    x, labels = _data()
    sub = FFESN(n=30, spectral_radius=1.2, steps=3, seed=1)
    esn = ReadIn(seed=4) >> Reservoir(sub) >> Ridge(alpha=1e-3)
    assert isinstance(esn, Chain) and len(esn.nodes) == 3
    esn.fit(x, labels)
    # by hand: the read-in matrix, the substrate's forward pass, the ridge normal equations
    a = esn.nodes[0].matrix
    assert a.shape == (30, 6)
    with torch.no_grad():
        feats = sub(torch.as_tensor(x @ a.T)).numpy()
    classes = np.unique(labels)
    y = (labels[:, None] == classes[None, :]).astype(float)
    fc, yc = feats - feats.mean(0), y - y.mean(0)
    w = np.linalg.solve(fc.T @ fc + 1e-3 * np.eye(30), fc.T @ yc)
    b = y.mean(0) - feats.mean(0) @ w
    np.testing.assert_allclose(esn.run(x), feats @ w + b, rtol=1e-9, atol=1e-10)
    np.testing.assert_array_equal(esn.predict(x), classes[np.argmax(feats @ w + b, axis=1)])
    assert esn.score(x, labels) > 0.8  # a separable task; the training accuracy of the readout


def test_ridge_recovers_a_linear_map() -> None:
    rng = np.random.default_rng(1)
    f = rng.standard_normal((200, 5))
    w_true, b_true = rng.standard_normal((5, 2)), np.array([0.3, -1.0])
    ridge = Ridge(alpha=1e-10).fit(f, f @ w_true + b_true)
    np.testing.assert_allclose(ridge.weight, w_true, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(ridge.bias, b_true, rtol=1e-7, atol=1e-9)
    assert ridge.classes_ is None


def test_a_stochastic_reservoir_is_reproducible_per_seed() -> None:
    x, _ = _data(n=8, d=4)

    def features(seed: int) -> np.ndarray:
        chain = ReadIn(seed=0) >> Reservoir(
            "sto", n=4, coupling="500 Oe", duration="20 ps", dt="1 ps", observation_snr_db=20.0, seed=seed
        )
        return chain.run(x)

    a, b, c = features(0), features(0), features(1)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (8, 12) and not np.allclose(a, c)


def test_clear_errors() -> None:
    x, labels = _data(n=10, d=3)
    with pytest.raises(ValueError, match="not fitted"):
        Ridge().run(x)
    with pytest.raises(ValueError, match="not trainable"):
        (ReadIn(seed=0) >> Reservoir(FFESN(n=5, seed=0))).fit(x, labels)
    with pytest.raises(ValueError, match="put a ReadIn before it"):
        Reservoir(FFESN(n=5, seed=0)).run(x)
    with pytest.raises(ValueError, match="alpha"):
        Ridge(alpha=0.0)
    with pytest.raises(ValueError, match="non-finite"):
        (ReadIn(seed=0) >> Reservoir(FFESN(n=5, seed=0)) >> Ridge()).fit(np.full((4, 3), np.nan), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="regression outputs"):
        chain = ReadIn(seed=0) >> Reservoir(FFESN(n=5, seed=0)) >> Ridge()
        chain.fit(x, np.ones((10, 2))).predict(x)
    with pytest.raises(TypeError, match="chained"):
        ReadIn(n_outputs=3) >> 5  # noqa: B018
