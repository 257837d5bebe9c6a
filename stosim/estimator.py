"""A scikit-learn style classifier over any substrate: ``fit(X, y)``, ``predict``, ``score``.

:class:`ReservoirEstimator` wraps :class:`stosim.models.ReservoirClassifier` (Linear read-in ->
fixed substrate -> Linear readout) behind the estimator conventions of scikit-learn, so a reservoir
is trained from arrays in a few lines::

    from stosim import ReservoirEstimator
    clf = ReservoirEstimator("sto", substrate_params={"n": 20, "coupling": "500 Oe", "duration": "100 ps"})
    clf.fit(X_train, y_train)            # X: (n_samples, n_features) numbers, y: (n_samples,) labels
    clf.predict(X_test), clf.predict_proba(X_test), clf.score(X_test, y_test)

Training (``training``):

- ``"ridge"`` (default): the read-in stays at its random initialization (drawn from ``seed``); the
  readout is the ridge-regression solution W = (F^T F + alpha I)^-1 F^T Y on the substrate's features F
  and one-hot targets Y (an intercept is fitted when the readout has a bias). Works for every
  substrate (only the forward run is needed); :meth:`ReservoirEstimator.partial_fit` streams it over
  batches, so the result after all batches equals one ``fit`` on their concatenation.
- ``"gradient"``: read-in and readout trained by Adam (or SGD) on the cross-entropy, through the
  substrate (it must be differentiable), mini-batches shuffled from ``seed``.

Labels may be any sortable values (ints, strings); ``classes_`` holds them sorted. :meth:`score` is the
mean accuracy as a fraction in [0, 1], as scikit-learn's ``score`` is (the files and the command line
report accuracy in percent). No scikit-learn import is needed; ``get_params``/``set_params`` follow its
rules, so ``sklearn.base.clone`` and ``GridSearchCV`` can use the estimator where scikit-learn is installed.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from stosim.checks import check_count
from stosim.models import ReservoirClassifier
from stosim.ridge import RidgeAccumulator
from stosim.substrates import registry
from stosim.substrates.base import Substrate

__all__ = ["ReservoirEstimator", "build_substrate", "dataset_arrays", "substrate_names"]

log = logging.getLogger(__name__)

_TRAININGS = ("ridge", "gradient")
_OPTIMIZERS = ("adam", "sgd")
_DTYPES = {"float64": torch.float64, "float32": torch.float32}
_EVAL_CHUNK = 256


def build_substrate(
    name: str, params: dict[str, Any] | None = None, *, seed: int = 0, dtype: str = "float64"
) -> Substrate:
    """The registered substrate called ``name`` (:func:`substrate_names`; :mod:`stosim.substrates.registry`)
    built by its class with constructor keywords ``params`` (quantities as unit strings or plain numbers in
    the keyword's unit, e.g. ``{"coupling": "500 Oe"}``); ``seed`` draws its fixed random matrix (a
    substrate whose spec declares ``seeded_matrix``) unless ``params`` gives one."""
    spec = _spec(name)
    kwargs = dict(params or {})
    kwargs["dtype"] = _torch_dtype(kwargs.get("dtype", dtype))
    if spec.seeded_matrix:
        kwargs.setdefault("seed", seed)
    return spec.cls(**kwargs)


def substrate_names() -> tuple[str, ...]:
    """The substrates :class:`ReservoirEstimator` builds by name: every registered one with a class."""
    return tuple(name for name, spec in registry.specs().items() if spec.cls is not None)


def _spec(name: object) -> registry.SubstrateSpec:
    spec = registry.specs().get(name) if isinstance(name, str) else None
    if spec is None or spec.cls is None:
        raise ValueError(
            f"substrate = {name!r} is not known; valid: one of {', '.join(substrate_names())} or a Substrate instance"
        )
    return spec


def dataset_arrays(
    name: str = "digits",
    *,
    data_dir: str | None = None,
    download: bool = False,
    seed: int = 0,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(X_train, y_train, X_test, y_test)`` of a named dataset ("digits", "mnist", "fashion-mnist"), the
    images flattened to rows of pixels in [0, 1] (float32), the labels int64: what ``stosim train --dataset``
    trains on, as arrays for :meth:`ReservoirEstimator.fit`."""
    from stosim.datasets import load_dataset

    train, test = load_dataset(name, data_dir, download, seed=seed, limit_train=limit_train, limit_test=limit_test)
    return train.flat(), train.labels, test.flat(), test.labels


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype = {dtype!r} is out of range; valid: 'float64' or 'float32'")
    return _DTYPES[dtype]


class ReservoirEstimator:
    """Reservoir classifier with the scikit-learn estimator interface.

    Parameters
    ----------
    substrate:
        the name of a registered substrate (:func:`substrate_names`: "sto", the coupled STOs, by default;
        "ffesn", "lorenz96", "rate-network", ...) or a :class:`~stosim.substrates.base.Substrate` instance
        (used as it is; its dtype is the model's).
    substrate_params:
        keywords of the substrate class's constructor (the class its registry entry declares), e.g.
        ``{"n": 50, "coupling": "500 Oe", "duration": "300 ps", "dt": "1 ps"}`` for "sto" or ``{"n": 100,
        "g": 1.5, "duration": 5.0}`` for "rate-network" (names only).
    training:
        "ridge" (readout by ridge regression, fixed random read-in) or "gradient" (end to end).
    epochs, batch_size, lr, optimizer:
        gradient training: passes over the data, mini-batch size, learning rate, "adam" or "sgd";
        ``batch_size`` is also the chunk of the ridge pass.
    ridge_alpha:
        ridge strength alpha > 0 (features are dimensionless).
    input_offset:
        subtracted from every input value before the read-in (0.5 centres pixels in [0, 1]).
    seed:
        read-in initialization, shuffling, noise streams and the substrate's random matrix.
    dtype:
        "float64" (default) or "float32"; inputs of any real dtype are cast to it.
    verbose:
        show a tqdm progress bar over the batches.

    Fitted attributes: ``classes_``, ``n_features_in_``, ``model_`` (the torch module), ``history_``
    (per-epoch mean loss of gradient training).
    """

    _estimator_type = "classifier"

    def __init__(
        self,
        substrate: str | Substrate = registry.names()[0],
        *,
        substrate_params: dict[str, Any] | None = None,
        training: str = "ridge",
        epochs: int = 10,
        batch_size: int = 64,
        lr: float = 0.01,
        optimizer: str = "adam",
        ridge_alpha: float = 1e-2,
        input_offset: float = 0.0,
        seed: int = 0,
        dtype: str = "float64",
        verbose: bool = False,
    ) -> None:
        self.substrate = substrate
        self.substrate_params = substrate_params
        self.training = training
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.ridge_alpha = ridge_alpha
        self.input_offset = input_offset
        self.seed = seed
        self.dtype = dtype
        self.verbose = verbose

    # -- scikit-learn parameter protocol ----------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's parameters as given (scikit-learn's ``get_params``)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> ReservoirEstimator:
        """Set constructor parameters by name; unknown names raise ValueError naming the valid ones."""
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"{name!r} is not a parameter of ReservoirEstimator; valid: {', '.join(valid)}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if not _same(v, defaults.get(k))]
        return f"ReservoirEstimator({', '.join(changed)})"

    # -- fitting -----------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any) -> ReservoirEstimator:
        """Fit a new model on ``X`` (n_samples, n_features) and labels ``y`` (n_samples,); returns self."""
        self._check_settings()
        x, labels = self._check_xy(X, y, first=True)
        self.classes_ = np.unique(labels)
        if self.classes_.size < 2:
            raise ValueError(f"y holds {self.classes_.size} class; a classifier needs at least 2")
        self._new_model(x.shape[1])
        targets = torch.as_tensor(np.searchsorted(self.classes_, labels), dtype=torch.int64)
        if self.training == "ridge":
            self._accumulator = None
            self._ridge_update(x, targets)
        else:
            self._fit_gradient(x, targets)
        return self

    def partial_fit(self, X: Any, y: Any, classes: Any = None) -> ReservoirEstimator:
        """Streaming ridge readout: add a batch and re-solve. ``classes`` (every label that will appear) is
        required on the first call; the result after several calls equals :meth:`fit` on all batches."""
        self._check_settings()
        if self.training != "ridge":
            raise ValueError(f"partial_fit streams the ridge readout; training = {self.training!r} needs fit()")
        first = not hasattr(self, "model_") or getattr(self, "_accumulator", None) is None
        x, labels = self._check_xy(X, y, first=first)
        if first:
            if classes is None:
                raise ValueError(
                    "classes: the first call to partial_fit needs every label that will appear "
                    "(partial_fit(X, y, classes=[...]))"
                )
            self.classes_ = np.unique(np.asarray(classes))
            if self.classes_.size < 2:
                raise ValueError(f"classes holds {self.classes_.size} class; a classifier needs at least 2")
            self._new_model(x.shape[1])
            self._accumulator = None
        unknown = np.setdiff1d(labels, self.classes_)
        if unknown.size:
            raise ValueError(f"y holds labels {unknown.tolist()[:5]} not in classes {self.classes_.tolist()}")
        self._ridge_update(x, torch.as_tensor(np.searchsorted(self.classes_, labels), dtype=torch.int64))
        return self

    # -- prediction --------------------------------------------------------------------------------
    def decision_function(self, X: Any) -> np.ndarray:
        """Readout scores (n_samples, n_classes): the logits of gradient training, the ridge outputs."""
        self._check_fitted()
        x = self._check_x(X)
        out = []
        with torch.no_grad(), self._noise_stream(phase=1):
            self.model_.eval()
            for i in range(0, x.shape[0], _EVAL_CHUNK):
                out.append(self.model_(x[i : i + _EVAL_CHUNK]).numpy())
        return np.concatenate(out, axis=0)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities (n_samples, n_classes): softmax of :meth:`decision_function` (calibrated
        by gradient training; for a ridge readout only a monotone map of its scores)."""
        scores = self.decision_function(X)
        scores = scores - scores.max(axis=1, keepdims=True)
        p = np.exp(scores)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X: Any) -> np.ndarray:
        """Predicted labels (n_samples,), from ``classes_``."""
        self._check_fitted()
        return self.classes_[np.argmax(self.decision_function(X), axis=1)]

    def score(self, X: Any, y: Any) -> float:
        """Mean accuracy on (X, y) as a fraction in [0, 1] (scikit-learn's convention)."""
        labels = np.asarray(y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else y)
        predicted = self.predict(X)
        if labels.shape != predicted.shape:
            raise ValueError(f"y has shape {labels.shape}; expected ({predicted.shape[0]},), one label per row of X")
        return float(np.mean(predicted == labels))

    # -- internals ---------------------------------------------------------------------------------
    def _check_settings(self) -> None:
        if self.training not in _TRAININGS:
            raise ValueError(f"training = {self.training!r} is out of range; valid: {', '.join(_TRAININGS)}")
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer = {self.optimizer!r} is out of range; valid: {', '.join(_OPTIMIZERS)}")
        check_count(self.epochs, "epochs", 1)
        check_count(self.batch_size, "batch_size", 1)
        check_count(self.seed, "seed", 0)
        for name, value, low in (("lr", self.lr, 0.0), ("ridge_alpha", self.ridge_alpha, 0.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value < math.inf:
                raise ValueError(f"{name} = {value!r} is out of range; valid: a finite number > {low:g}")
        if not isinstance(self.input_offset, (int, float)) or not math.isfinite(self.input_offset):
            raise ValueError(f"input_offset = {self.input_offset!r} must be a finite number")
        _torch_dtype(self.dtype)

    def _model_dtype(self) -> torch.dtype:
        return self.substrate.dtype if isinstance(self.substrate, Substrate) else _torch_dtype(self.dtype)

    def _check_x(self, X: Any, n_features: int | None = None) -> torch.Tensor:
        try:
            x = np.asarray(X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else X)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"X: cannot read an array of numbers ({exc})") from None
        if x.dtype.kind not in "iuf":
            raise ValueError(f"X has dtype {x.dtype}; expected real numbers (int or float)")
        if x.ndim != 2 or x.shape[0] < 1:
            raise ValueError(f"X has shape {x.shape}; expected (n_samples, n_features) with n_samples >= 1")
        expected = n_features if n_features is not None else getattr(self, "n_features_in_", None)
        if expected is not None and x.shape[1] != expected:
            raise ValueError(f"X has {x.shape[1]} features; this estimator was fitted with {expected}")
        if not np.isfinite(x).all():
            raise ValueError("X contains NaN or infinite values")
        return torch.as_tensor(x - self.input_offset, dtype=self._model_dtype())

    def _check_xy(self, X: Any, y: Any, first: bool) -> tuple[torch.Tensor, np.ndarray]:
        x = self._check_x(X, None if first else self.n_features_in_)
        labels = np.asarray(y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else y)
        if labels.ndim != 1 or labels.shape[0] != x.shape[0]:
            raise ValueError(f"y has shape {labels.shape}; expected ({x.shape[0]},), one label per row of X")
        return x, labels

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise RuntimeError("this ReservoirEstimator is not fitted yet; call fit(X, y) first")

    def _new_model(self, n_features: int) -> None:
        if isinstance(self.substrate, Substrate):
            sub, bias = self.substrate, True
        else:
            spec = _spec(self.substrate)
            sub = build_substrate(spec.name, self.substrate_params, seed=self.seed, dtype=self.dtype)
            bias = spec.readout_bias  # as in `stosim train` (e.g. the FFESN's read-in and readout have no bias)
        with torch.random.fork_rng(devices=[]):  # the read-in's initialization from seed, global RNG untouched
            torch.manual_seed(self.seed)
            self.model_ = ReservoirClassifier(n_features, len(self.classes_), sub, readin_bias=bias, readout_bias=bias)
        self.n_features_in_ = int(n_features)
        self.history_: list[float] = []
        self._calls = 0
        log.debug("built %s reservoir: %s", sub.describe().name, sub.describe().summary)

    @contextlib.contextmanager
    def _noise_stream(self, phase: int) -> Iterator[None]:
        """Re-seed the substrate's noise from (seed, phase, call) so that every run is reproducible."""
        self._calls = getattr(self, "_calls", 0) + 1
        seq = np.random.SeedSequence(self.seed, spawn_key=(phase, self._calls if phase == 0 else 0))
        self.model_.substrate.reset(int(seq.generate_state(1)[0]))
        yield

    def _batches(self, n: int, desc: str) -> Any:
        from tqdm import tqdm

        starts = range(0, n, self.batch_size)
        return tqdm(starts, desc=desc, unit="batch", disable=not self.verbose, leave=False)

    def _ridge_update(self, x: torch.Tensor, targets: torch.Tensor) -> None:
        readout = self.model_.readout
        if self._accumulator is None:
            self._accumulator = RidgeAccumulator(readout.in_features, len(self.classes_))
        self.model_.eval()
        with torch.no_grad(), self._noise_stream(phase=0):
            for i in self._batches(x.shape[0], "ridge readout"):
                self._accumulator.update(
                    self.model_.features(x[i : i + self.batch_size]), targets[i : i + self.batch_size]
                )
            w, b = self._accumulator.solve(self.ridge_alpha, fit_intercept=readout.bias is not None)
            readout.weight.copy_(torch.as_tensor(w.T, dtype=readout.weight.dtype))
            if readout.bias is not None:
                readout.bias.copy_(torch.as_tensor(b, dtype=readout.bias.dtype))

    def _fit_gradient(self, x: torch.Tensor, targets: torch.Tensor) -> None:
        sub = self.model_.substrate
        if not sub.capabilities.differentiable:
            raise ValueError(
                f"training = 'gradient' needs a differentiable substrate; {sub.describe().name} is not "
                "(use training = 'ridge')"
            )
        params = [p for p in self.model_.parameters() if p.requires_grad]
        opt = (
            torch.optim.Adam(params, lr=self.lr)
            if self.optimizer == "adam"
            else torch.optim.SGD(params, lr=self.lr, momentum=0.9)
        )
        gen = torch.Generator().manual_seed(self.seed)
        for epoch in range(1, self.epochs + 1):
            self.model_.train()
            order = torch.randperm(x.shape[0], generator=gen)
            total = 0.0
            with self._noise_stream(phase=0):
                for i in self._batches(x.shape[0], f"epoch {epoch}/{self.epochs}"):
                    idx = order[i : i + self.batch_size]
                    loss = torch.nn.functional.cross_entropy(self.model_(x[idx]), targets[idx])
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"the loss became non-finite at epoch {epoch}; lower lr (lr = {self.lr})"
                        )
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * idx.numel()
            self.history_.append(total / x.shape[0])
            log.info("epoch %d: mean loss %.4g", epoch, self.history_[-1])


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except (TypeError, ValueError, RuntimeError):
        return a is b
