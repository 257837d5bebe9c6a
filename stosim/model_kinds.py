"""The model kinds of ``substrate = "..."`` in a training configuration, declared once each.

One layer above the substrate registry (:mod:`stosim.substrates.registry`): every registered substrate is a
reservoir model kind of the same name (Linear read-in -> substrate -> Linear readout,
:class:`~stosim.models.ReservoirClassifier`); the kinds declared here wrap the coupled STOs differently
(deep, convolutional front end) or are the baselines without a substrate (linear, mlp, cnn).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import torch

from stosim.models import (
    CNNClassifier,
    ConvReservoirClassifier,
    DeepReservoirClassifier,
    LinearClassifier,
    MLPClassifier,
    ReservoirClassifier,
)
from stosim.substrates import registry
from stosim.substrates.registry import SubstrateSpec

__all__ = ["ModelKind", "KIND_KEYS", "kinds", "kind", "kind_names", "substrate_time_unit", "BASELINE_DEFAULT_N"]

BASELINE_DEFAULT_N = 100  # the baselines' n (their hidden size is 3 n: the feature count of 100 STOs)


@dataclasses.dataclass(frozen=True)
class ModelKind:
    """A model kind: ``build(cfg, n_inputs, n_classes, image_shape, dtype) -> nn.Module``; ``keys``: the
    TrainConfig keys it reads; ``substrate``: the substrate it is built on (None: a baseline); ``reservoir``:
    fixed features (a ridge readout applies); ``matrix_seeds``: how many substrates (seed, seed + 1, ...)."""

    name: str
    summary: str
    keys: tuple[str, ...]
    build: Callable[..., torch.nn.Module]
    substrate: SubstrateSpec | None = None
    reservoir: bool = True
    matrix_seeds: int = 1

    @property
    def default_n(self) -> int:
        return self.substrate.default_n if self.substrate is not None else BASELINE_DEFAULT_N


def _reservoir_kind(spec: SubstrateSpec) -> ModelKind:
    def build(
        cfg: Any, n_inputs: int, n_classes: int, image_shape: tuple[int, int], dtype: torch.dtype
    ) -> torch.nn.Module:
        return ReservoirClassifier(
            n_inputs,
            n_classes,
            spec.build(cfg, cfg.seed, dtype),
            readin_bias=spec.readout_bias,
            readout_bias=spec.readout_bias,
        )

    return ModelKind(spec.name, f"reservoir model: {spec.summary}", spec.keys, build, substrate=spec)


def _hidden(cfg: Any) -> int:
    return cfg.hidden or 3 * (cfg.n or BASELINE_DEFAULT_N)  # equal to the feature count of n coupled STOs


def _declared() -> tuple[ModelKind, ...]:
    from stosim.substrates import sto_array

    sto = sto_array.SPEC
    return (
        ModelKind(
            "linear",
            "baseline: logistic regression on the pixels",
            (),
            lambda cfg, i, c, shape, dtype: LinearClassifier(i, c, dtype),
            reservoir=False,
        ),
        ModelKind(
            "mlp",
            "baseline: multilayer perceptron of hidden units (depth layers)",
            ("n", "hidden", "depth", "activation", "init_spectral_radius"),
            lambda cfg, i, c, shape, dtype: MLPClassifier(
                i,
                c,
                _hidden(cfg),
                dtype,
                depth=cfg.depth,
                activation=cfg.activation,
                spectral_radius=cfg.init_spectral_radius,
                init_seed=cfg.seed,
            ),
            reservoir=False,
        ),
        ModelKind(
            "cnn",
            "baseline: one conv layer and one hidden fully-connected layer",
            ("n", "hidden", "conv_channels"),
            lambda cfg, i, c, shape, dtype: CNNClassifier(
                shape, c, _hidden(cfg), channels=cfg.conv_channels, dtype=dtype
            ),
            reservoir=False,
        ),
        ModelKind(
            "cnn-sto",
            "one conv layer as the front end of coupled STOs",
            (*sto.keys, "conv_channels"),
            lambda cfg, i, c, shape, dtype: ConvReservoirClassifier(
                shape, c, sto.build(cfg, cfg.seed, dtype), channels=cfg.conv_channels
            ),
            substrate=sto,
        ),
        ModelKind(
            "deep-sto",
            "two coupled STO arrays with a trainable linear layer between",
            sto.keys,
            lambda cfg, i, c, shape, dtype: DeepReservoirClassifier(
                i, c, sto.build(cfg, cfg.seed, dtype), sto.build(cfg, cfg.seed + 1, dtype)
            ),
            substrate=sto,
            matrix_seeds=2,
        ),
    )


def kinds() -> Mapping[str, ModelKind]:
    """Every model kind by name: the registered substrates' reservoir models, then the kinds declared here."""
    found = {name: _reservoir_kind(spec) for name, spec in registry.specs().items()}
    for declared in _declared():
        found.setdefault(declared.name, declared)
    return MappingProxyType(found)


def kind_names() -> tuple[str, ...]:
    return tuple(kinds())


def kind(name: str) -> ModelKind:
    """The model kind ``name``; ``ValueError`` naming the valid ones otherwise."""
    found = kinds().get(name)
    if found is None:
        raise ValueError(f"substrate = {name!r}; valid: {', '.join(kinds())}")
    return found


def substrate_time_unit(name: str) -> str | None:
    """The time unit of the kind's substrate (None: a baseline or an unknown name)."""
    found = kinds().get(name)
    return None if found is None or found.substrate is None else found.substrate.time_unit


class _KindKeys(Mapping):
    """kind name -> the TrainConfig keys it reads, looked up in the registry on each access."""

    def __getitem__(self, name: str) -> tuple[str, ...]:
        return kinds()[name].keys

    def __iter__(self):
        return iter(kinds())

    def __len__(self) -> int:
        return len(kinds())

    def __repr__(self) -> str:
        return f"KIND_KEYS({dict(self)!r})"


KIND_KEYS: Mapping[str, tuple[str, ...]] = _KindKeys()
