"""Composable reservoir nodes: ``ReadIn() >> Reservoir(substrate) >> Ridge()``.

The pieces a reservoir computer is made of, in the style ReservoirPy users know (nodes chained with
``>>``, ``fit`` on the last trainable node, ``run`` through all of them), over any stosim substrate:

- :class:`ReadIn`: a fixed random linear map u = x A^T + c from the inputs to the substrate's read-in
  size, A_ij ~ N(0, scale^2 / n_inputs), c = 0, drawn from ``seed`` on the first call (its input size is
  learnt from the data).
- :class:`Reservoir`: a substrate as a node, features = ``substrate.forward(u)`` (read-in -> state ->
  evolve -> readout), run without a gradient in chunks; a stochastic substrate is re-seeded from
  ``seed`` before every run, so each run is reproducible.
- :class:`Ridge`: a trainable linear readout y = f W + b, fitted by ridge regression
  W = (F_c^T F_c + alpha I)^-1 F_c^T Y_c, b = mean(Y) - mean(F) W (:class:`stosim.ridge.RidgeAccumulator`);
  targets are a (n, K) array (regression) or integer class labels (n,) (one-hot; ``Chain.predict`` then
  returns the arg-max class).
- :class:`Chain`: nodes composed with ``>>``; ``fit(X, Y)`` runs every node but the last and fits the last,
  ``run(X)`` runs them all.

Example::

    from stosim.nodes import ReadIn, Reservoir, Ridge
    esn = ReadIn(seed=0) >> Reservoir("sto", n=20, coupling="500 Oe", duration="100 ps") >> Ridge(alpha=1e-2)
    esn.fit(X_train, y_train)
    esn.predict(X_test)          # class labels; esn.run(X_test): the readout's outputs (n, K)

Arrays are NumPy arrays (or anything ``numpy.asarray`` takes); outputs are float64 NumPy arrays.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from stosim.checks import check_count, check_seed
from stosim.ridge import RidgeAccumulator
from stosim.substrates.base import Substrate
from stosim.substrates.protocols import Stochastic

__all__ = ["Node", "ReadIn", "Reservoir", "Ridge", "Chain"]

_CHUNK = 256


def _as_2d(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"{name} has shape {arr.shape}; expected (n_samples >= 1, n_features)")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values")
    return arr


class Node:
    """A step of a reservoir computer: ``run(x) -> y`` on (n_samples, features) arrays; ``a >> b`` chains."""

    trainable = False

    def run(self, x: Any) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, x: Any) -> np.ndarray:
        return self.run(x)

    def __rshift__(self, other: Node) -> Chain:
        if not isinstance(other, Node):
            raise TypeError(f"a node can be chained only with another node, not {type(other).__name__}")
        return Chain(*_parts(self), *_parts(other))


def _parts(node: Node) -> tuple[Node, ...]:
    return node.nodes if isinstance(node, Chain) else (node,)


class ReadIn(Node):
    """Fixed random read-in u = x A^T, A_ij ~ N(0, scale^2 / n_inputs), A drawn from ``seed``; the output size
    is ``n_outputs`` or, in a chain, the read-in size of the next :class:`Reservoir`."""

    def __init__(self, n_outputs: int | None = None, *, scale: float = 1.0, seed: int = 0) -> None:
        if n_outputs is not None:
            check_count(n_outputs, "n_outputs")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (0 < scale < math.inf):
            raise ValueError(f"scale = {scale!r} must be a finite number > 0")
        self.n_outputs, self.scale, self.seed = n_outputs, float(scale), check_seed(seed)
        self.matrix: np.ndarray | None = None

    def run(self, x: Any) -> np.ndarray:
        x = _as_2d(x, "read-in input")
        if self.n_outputs is None:
            raise ValueError("ReadIn needs n_outputs, or a Reservoir after it in a chain to take its read-in size")
        if self.matrix is None:
            rng = np.random.default_rng(np.random.SeedSequence(self.seed))
            self.matrix = rng.standard_normal((self.n_outputs, x.shape[1])) * (self.scale / math.sqrt(x.shape[1]))
        elif self.matrix.shape[1] != x.shape[1]:
            raise ValueError(
                f"read-in input has {x.shape[1]} features; this ReadIn was drawn for {self.matrix.shape[1]}"
            )
        return x @ self.matrix.T


class Reservoir(Node):
    """A substrate as a node: a :class:`~stosim.substrates.base.Substrate`, or a name and its constructor
    keywords (``Reservoir("ffesn", n=100, spectral_radius=1.2)``, quantities as unit strings or numbers)."""

    def __init__(self, substrate: Substrate | str, *, seed: int = 0, **params: Any) -> None:
        seed = check_seed(seed)
        if isinstance(substrate, str):
            from stosim.estimator import build_substrate

            substrate = build_substrate(substrate, params, seed=seed)
        elif params:
            raise ValueError(
                f"constructor keywords {sorted(params)} are given with a substrate instance; "
                "pass either a name with keywords or an instance"
            )
        if not isinstance(substrate, Substrate):
            raise ValueError(f"substrate = {substrate!r} must be a Substrate or a substrate name")
        self.substrate, self.seed, self._runs = substrate, int(seed), 0

    @property
    def readin_size(self) -> int:
        return self.substrate.describe().readin_size

    def run(self, x: Any) -> np.ndarray:
        u = torch.as_tensor(_as_2d(x, "reservoir input"), dtype=self.substrate.dtype)
        if u.shape[1] != self.readin_size:
            raise ValueError(
                f"reservoir input has {u.shape[1]} features; {self.substrate.describe().name} "
                f"takes {self.readin_size} (put a ReadIn before it)"
            )
        if isinstance(self.substrate, Stochastic):
            self._runs += 1
            seq = np.random.SeedSequence(self.seed, spawn_key=(self._runs,))
            self.substrate.reset(int(seq.generate_state(1)[0]))
        with torch.no_grad():
            out = [self.substrate(u[i : i + _CHUNK]) for i in range(0, u.shape[0], _CHUNK)]
        return torch.cat(out).to(torch.float64).numpy()


class Ridge(Node):
    """Linear readout fitted by ridge regression (``alpha`` > 0; an unpenalized intercept unless
    ``fit_intercept=False``)."""

    trainable = True

    def __init__(self, alpha: float = 1e-2, *, fit_intercept: bool = True) -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (0 < alpha < math.inf):
            raise ValueError(f"alpha = {alpha!r} must be a finite number > 0")
        self.alpha, self.fit_intercept = float(alpha), bool(fit_intercept)
        self.weight: np.ndarray | None = None
        self.bias: np.ndarray | None = None
        self.classes_: np.ndarray | None = None

    def fit(self, features: Any, targets: Any) -> Ridge:
        f = _as_2d(features, "ridge features")
        y = np.asarray(targets)
        if y.ndim == 1:  # class labels -> one-hot over the sorted classes
            self.classes_, y = np.unique(y, return_inverse=True)
            n_out = len(self.classes_)
        else:
            self.classes_ = None
            y = _as_2d(y, "ridge targets")
            n_out = y.shape[1]
        if y.shape[0] != f.shape[0]:
            raise ValueError(f"{y.shape[0]} targets for {f.shape[0]} feature rows; expected one per row")
        acc = RidgeAccumulator(f.shape[1], n_out)
        acc.update(f, y)
        self.weight, self.bias = acc.solve(self.alpha, fit_intercept=self.fit_intercept)
        return self

    def run(self, features: Any) -> np.ndarray:
        if self.weight is None:
            raise ValueError("this Ridge readout is not fitted yet; call fit (or Chain.fit) first")
        f = _as_2d(features, "ridge features")
        if f.shape[1] != self.weight.shape[0]:
            raise ValueError(
                f"ridge features have {f.shape[1]} columns; the readout was fitted on {self.weight.shape[0]}"
            )
        return f @ self.weight + self.bias


class Chain(Node):
    """Nodes run one after the other; ``fit`` fits the last node on the outputs of the others."""

    def __init__(self, *nodes: Node) -> None:
        if not nodes or not all(isinstance(n, Node) for n in nodes):
            raise ValueError("a Chain needs one or more nodes")
        self.nodes = tuple(nodes)
        for before, after in zip(self.nodes, self.nodes[1:]):  # a ReadIn takes the size of the reservoir after it
            if isinstance(before, ReadIn) and before.n_outputs is None and isinstance(after, Reservoir):
                before.n_outputs = after.readin_size

    @property
    def trainable(self) -> bool:  # type: ignore[override]
        return self.nodes[-1].trainable

    def _through(self, nodes: tuple[Node, ...], x: Any) -> np.ndarray:
        for node in nodes:
            x = node.run(x)
        return np.asarray(x, dtype=np.float64)

    def fit(self, x: Any, y: Any) -> Chain:
        last = self.nodes[-1]
        if not last.trainable:
            raise ValueError(f"the last node of the chain ({type(last).__name__}) is not trainable; end it with Ridge")
        last.fit(self._through(self.nodes[:-1], x), y)
        return self

    def run(self, x: Any) -> np.ndarray:
        return self._through(self.nodes, x)

    def predict(self, x: Any) -> np.ndarray:
        """Class labels (the arg-max output) of a chain whose readout was fitted on labels."""
        last = self.nodes[-1]
        classes = getattr(last, "classes_", None)
        if classes is None:
            raise ValueError("predict needs a readout fitted on class labels; use run for regression outputs")
        return classes[np.argmax(self.run(x), axis=1)]

    def score(self, x: Any, y: Any) -> float:
        """Mean accuracy (fraction) of :meth:`predict` on labels ``y``."""
        return float(np.mean(self.predict(x) == np.asarray(y)))
