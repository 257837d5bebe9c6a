"""The generic RK4 step (stosim.integrate.explicit) against analytic solutions, in float64."""

from __future__ import annotations

import numpy as np
import torch

from stosim.integrate.explicit import rk4_step, rk4_step_with_tangents


def _rotate(x: np.ndarray) -> np.ndarray:
    """dx/dt = A x with A the generator of rotations: x(t) = (cos t x0 - sin t y0, sin t x0 + cos t y0)."""
    return np.array([-x[1], x[0]])


def _global_error(n_steps: int) -> float:
    x, h = np.array([1.0, 0.0]), 1.0 / n_steps
    for _ in range(n_steps):
        x = rk4_step(_rotate, x, h)
    return float(np.abs(x - np.array([np.cos(1.0), np.sin(1.0)])).max())


def test_rk4_converges_at_fourth_order():
    errors = [_global_error(n) for n in (10, 20, 40)]
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(np.abs(orders - 4.0) < 0.1), orders


def test_rk4_one_step_of_exponential_decay_is_its_taylor_polynomial():
    # for dx/dt = -x one RK4 step multiplies by 1 - h + h^2/2 - h^3/6 + h^4/24 exactly (torch, float64)
    h = 0.3
    x = torch.tensor([2.0], dtype=torch.float64)
    factor = 1 - h + h**2 / 2 - h**3 / 6 + h**4 / 24
    assert torch.allclose(rk4_step(lambda y: -y, x, h), x * factor, rtol=1e-15, atol=0)


def test_tangents_are_the_jacobian_of_the_discrete_map():
    # f(x) = (x1^2 - x0, sin x0): the tangent step equals central differences of the RK4 map
    def f(x):
        return np.array([x[1] ** 2 - x[0], np.sin(x[0])])

    def stage(x, v):
        jac = np.array([[-1.0, 2 * x[1]], [np.cos(x[0]), 0.0]])
        return f(x), v @ jac.T

    x0, h, eps = np.array([0.4, -0.7]), 0.2, 1e-6
    v = np.eye(2)
    x1, v1 = rk4_step_with_tangents(stage, x0, v, h)
    assert np.array_equal(x1, rk4_step(f, x0, h))
    fd = np.stack([(rk4_step(f, x0 + eps * e, h) - rk4_step(f, x0 - eps * e, h)) / (2 * eps) for e in np.eye(2)])
    assert np.abs(v1 - fd).max() < 1e-9
