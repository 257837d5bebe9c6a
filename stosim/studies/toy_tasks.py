"""Two-dimensional toy classification tasks (seeded, class-balanced) and the grid of test points.

Each task draws ``n`` points x in R^2 (dimensionless, inside roughly [-1.2, 1.2]^2) with integer
labels 0..C-1; class c gets ``n // C`` points plus one of the ``n % C`` remainders (lowest classes
first), so the classes are balanced to one point. Everything comes from
``numpy.random.Generator(PCG64(SeedSequence(seed)))``; no global RNG is touched.

- ``"spirals"`` (C = 2): two interleaved Archimedean spirals r = t / (3 pi), t in [0.25, 3] pi
  (1.5 turns), class c rotated by c pi; Gaussian noise of std ``0.03 * noise_scale``.
- ``"circles"`` (C = 2): radii 0.5 (class 0) and 1.0 (class 1), noise std ``0.08 * noise_scale``.
- ``"moons"`` (C = 2): the two interleaved half circles (as in scikit-learn's ``make_moons``),
  centred and scaled by 0.6, noise std ``0.06 * noise_scale``.
- ``"blobs"`` (C = 4): Gaussian blobs of std ``0.25 * noise_scale`` at (+-0.6, +-0.6).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from stosim.checks import check_count

__all__ = ["TASKS", "grid_points", "make_task", "task_classes"]

_Gen = Callable[[np.random.Generator, np.ndarray, float], np.ndarray]


def _spirals(rng: np.random.Generator, labels: np.ndarray, noise: float) -> np.ndarray:
    t = rng.uniform(0.25 * math.pi, 3.0 * math.pi, size=labels.size)
    r = t / (3.0 * math.pi)
    angle = t + math.pi * labels
    x = np.stack([r * np.cos(angle), r * np.sin(angle)], axis=1)
    return x + rng.normal(0.0, 0.03 * noise, size=x.shape)


def _circles(rng: np.random.Generator, labels: np.ndarray, noise: float) -> np.ndarray:
    angle = rng.uniform(0.0, 2.0 * math.pi, size=labels.size)
    r = np.where(labels == 0, 0.5, 1.0)
    x = np.stack([r * np.cos(angle), r * np.sin(angle)], axis=1)
    return x + rng.normal(0.0, 0.08 * noise, size=x.shape)


def _moons(rng: np.random.Generator, labels: np.ndarray, noise: float) -> np.ndarray:
    angle = rng.uniform(0.0, math.pi, size=labels.size)
    upper = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    lower = np.stack([1.0 - np.cos(angle), 0.5 - np.sin(angle)], axis=1)
    x = np.where(labels[:, None] == 0, upper, lower)
    x = 0.6 * (x - np.array([0.5, 0.25]))
    return x + rng.normal(0.0, 0.06 * noise, size=x.shape)


def _blobs(rng: np.random.Generator, labels: np.ndarray, noise: float) -> np.ndarray:
    centres = np.array([[-0.6, -0.6], [0.6, -0.6], [-0.6, 0.6], [0.6, 0.6]])
    return centres[labels] + rng.normal(0.0, 0.25 * noise, size=(labels.size, 2))


TASKS: dict[str, tuple[int, _Gen]] = {
    "spirals": (2, _spirals),
    "circles": (2, _circles),
    "moons": (2, _moons),
    "blobs": (4, _blobs),
}


def task_classes(name: str) -> int:
    """The number of classes of task ``name``."""
    if name not in TASKS:
        raise ValueError(f"task = {name!r} is out of range; valid: {', '.join(TASKS)}")
    return TASKS[name][0]


def make_task(name: str, n: int = 2000, seed: int = 0, noise_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points (n, 2) float64 and labels (n,) int64 of task ``name``, in random order.

    Balanced: class counts differ by at most one. ``noise_scale`` >= 0 multiplies the task's noise.
    Raises ``ValueError`` naming the parameter for an unknown task, n < number of classes, a
    negative seed or a negative / non-finite noise_scale.
    """
    n_classes = task_classes(name)
    n = check_count(n, "n", n_classes)
    seed = check_count(seed, "seed", 0)
    if not isinstance(noise_scale, (int, float)) or not math.isfinite(noise_scale) or noise_scale < 0:
        raise ValueError(f"noise_scale = {noise_scale!r} is out of range; valid: a finite number >= 0")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed)))
    labels = np.repeat(np.arange(n_classes), n // n_classes)
    labels = np.concatenate([labels, np.arange(n % n_classes)])
    labels = labels[rng.permutation(n)].astype(np.int64)
    x = TASKS[name][1](rng, labels, float(noise_scale))
    return x.astype(np.float64), labels


def grid_points(n_side: int, bound: float = 1.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A uniform ``n_side`` x ``n_side`` grid over [-bound, bound]^2: (xs, ys, points (n_side^2, 2));
    point k = (xs[k % n_side], ys[k // n_side]) (row-major over y)."""
    n_side = check_count(n_side, "n_side", 2)
    if not isinstance(bound, (int, float)) or not math.isfinite(bound) or bound <= 0:
        raise ValueError(f"bound = {bound!r} is out of range; valid: a finite number > 0")
    xs = np.linspace(-bound, bound, n_side)
    gx, gy = np.meshgrid(xs, xs)
    return xs, xs.copy(), np.stack([gx.ravel(), gy.ravel()], axis=1)
