"""Training with non-differentiable hardware: readout-only ridge, and physics-aware training.

- Readout-only: the hardware's features (no gradient) feed a ridge regression
  (:func:`fit_ridge_readout`, :class:`stosim.ridge.RidgeAccumulator`).
- Physics-aware training (Wright et al., Nature 601, 549 (2022)): the forward pass runs on
  the hardware, the backward pass through a differentiable simulator model of it evaluated at
  the same input. :class:`~stosim.hardware.physics_aware_substrate.PhysicsAwareSubstrate` wraps
  (hardware, model) into one substrate whose ``forward`` returns the *hardware's* output and
  whose gradient is the vector-Jacobian product of the *model* (the station's simulator,
  :class:`~stosim.hardware.model.StationModel`, with the exact RK4 gradients of
  :func:`stosim.integrate.flow.sto_flow`). Downstream layers and the loss see what the hardware
  did; only the Jacobian comes from the model.

:func:`compare_sim_vs_physics_aware` shows what that buys on the 8x8 digits: a model trained
purely in simulation loses accuracy when moved to the mismatched hardware (here the digital
twin, :mod:`stosim.hardware.twin`); physics-aware training recovers most of it.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from stosim.hardware.lab_array import LabSTOArray
from stosim.hardware.model import StationModel
from stosim.hardware.physics_aware_substrate import PhysicsAwareSubstrate
from stosim.hardware.station import Station, load_station
from stosim.hardware.twin import DigitalTwin, Mismatch
from stosim.models import ReservoirClassifier
from stosim.ridge import RidgeAccumulator
from stosim.substrates.base import Substrate

__all__ = ["train_classifier", "accuracy", "fit_ridge_readout", "ComparisonResult", "compare_sim_vs_physics_aware"]


# ---------------------------------------------------------------------------------------
# Training helpers
# ---------------------------------------------------------------------------------------


def train_classifier(
    classifier: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float = 1e-2,
    batch_size: int = 64,
    seed: int = 0,
) -> list[float]:
    """Adam on the cross-entropy, mini-batches shuffled by ``seed``; returns the mean loss per epoch."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam([p for p in classifier.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=gen)
        total = 0.0
        for start in range(0, x.shape[0], batch_size):
            idx = order[start : start + batch_size]
            loss = torch.nn.functional.cross_entropy(classifier(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
        losses.append(total / x.shape[0])
    return losses


@torch.no_grad()
def accuracy(classifier: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Fraction of ``x`` classified as ``y``."""
    correct = 0
    for start in range(0, x.shape[0], batch_size):
        correct += int((classifier(x[start : start + batch_size]).argmax(1) == y[start : start + batch_size]).sum())
    return correct / x.shape[0]


@torch.no_grad()
def fit_ridge_readout(
    classifier: ReservoirClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    alpha: float = 1e-3,
    n_classes: int | None = None,
    batch_size: int = 1024,
) -> None:
    """Readout-only training: set ``classifier.readout`` to the ridge solution on its features of ``x``
    (the substrate is only run forward: works for non-differentiable hardware)."""
    k = int(n_classes if n_classes is not None else classifier.readout.out_features)
    acc = RidgeAccumulator(classifier.readout.in_features, k)
    for start in range(0, x.shape[0], batch_size):
        acc.update(classifier.features(x[start : start + batch_size]), y[start : start + batch_size])
    w, b = acc.solve(alpha)
    classifier.readout.weight.copy_(torch.as_tensor(w.T, dtype=classifier.readout.weight.dtype))
    if classifier.readout.bias is not None:
        classifier.readout.bias.copy_(torch.as_tensor(b, dtype=classifier.readout.bias.dtype))


# ---------------------------------------------------------------------------------------
# The comparison
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ComparisonResult:
    """Test accuracies (fractions) of the comparison; see :func:`compare_sim_vs_physics_aware`."""

    sim_on_model: float  # trained in simulation, evaluated in simulation
    sim_on_twin: float  # trained in simulation, evaluated on the hardware (twin)
    physics_aware_on_twin: float  # physics-aware training, evaluated on the hardware
    physics_aware_on_model: float  # physics-aware training, evaluated in simulation
    ridge_on_twin: float  # random fixed read-in, ridge readout on hardware features
    sim_readin_ridge_on_twin: float  # sim-trained read-in, readout re-fit by ridge on hardware features
    n_train: int
    n_test: int
    epochs: int
    seconds: dict[str, float]
    configuration: dict[str, Any]

    @property
    def sim_to_twin_drop(self) -> float:
        return self.sim_on_model - self.sim_on_twin

    @property
    def recovered_fraction(self) -> float:
        """(physics-aware on twin - sim on twin) / (sim on model - sim on twin)."""
        drop = self.sim_to_twin_drop
        return float("nan") if drop <= 0 else (self.physics_aware_on_twin - self.sim_on_twin) / drop

    def summary(self) -> str:
        return (
            f"digits, {self.n_train} train / {self.n_test} test, {self.epochs} epochs: "
            f"sim-trained {100 * self.sim_on_model:.1f} % in simulation -> {100 * self.sim_on_twin:.1f} % on the "
            f"twin; physics-aware {100 * self.physics_aware_on_twin:.1f} % on the twin "
            f"({100 * self.recovered_fraction:.0f} % of the drop recovered); ridge readout on hardware features: "
            f"{100 * self.ridge_on_twin:.1f} % (random read-in), {100 * self.sim_readin_ridge_on_twin:.1f} % "
            f"(sim-trained read-in)"
        )


def _digits(n_train: int | None, n_test: int | None, seed: int) -> tuple[torch.Tensor, ...]:
    from stosim.datasets import load_dataset

    train, test = load_dataset("digits", seed=seed)
    xtr = torch.as_tensor(train.flat(), dtype=torch.float64)
    ytr = torch.as_tensor(train.labels, dtype=torch.int64)
    xte = torch.as_tensor(test.flat(), dtype=torch.float64)
    yte = torch.as_tensor(test.labels, dtype=torch.int64)
    if n_train is not None:
        xtr, ytr = xtr[:n_train], ytr[:n_train]
    if n_test is not None:
        xte, yte = xte[:n_test], yte[:n_test]
    return xtr, ytr, xte, yte


def _classifier(n_inputs: int, substrate: Substrate, seed: int) -> ReservoirClassifier:
    torch.manual_seed(seed)
    return ReservoirClassifier(n_inputs, 10, substrate)


def _layers(classifier: ReservoirClassifier) -> dict[str, dict[str, torch.Tensor]]:
    return {
        name: {k: v.detach().clone() for k, v in getattr(classifier, name).state_dict().items()}
        for name in ("read_in", "readout")
    }


def _load_layers(classifier: ReservoirClassifier, layers: dict[str, dict[str, torch.Tensor]]) -> None:
    for name, state in layers.items():
        getattr(classifier, name).load_state_dict(state)


def compare_sim_vs_physics_aware(
    station: Station | str | Path = "twin-lab",
    mismatch: Mismatch | None = None,
    *,
    n_train: int | None = None,
    n_test: int | None = None,
    epochs: int = 10,
    lr: float = 1e-2,
    batch_size: int = 64,
    seed: int = 0,
    model_dt_s: float = 1e-12,
    twin_dt_s: float = 1e-12,
    ridge_alpha: float = 1e-3,
) -> ComparisonResult:
    """Train on digits in simulation and physics-aware on the twin; evaluate both on the twin.

    1. A :class:`ReservoirClassifier` (read-in, station model, readout) is trained end to end in
       simulation (:class:`StationModel`, nominal parameters) and evaluated there and on the
       hardware: a :class:`LabSTOArray` driving a :class:`DigitalTwin` with ``mismatch``
       (default ``Mismatch.lab(2.0, seed=seed)``: twice the spreads of a plausible lab), the
       readout and read-in unchanged.
    2. The same classifier, from the same initialization, is trained with physics-aware training
       (:class:`PhysicsAwareSubstrate`: forward on the twin, backward through the model) for the
       same epochs, and evaluated on the twin (and in simulation).
    3. Readout-only baselines on hardware features: a random read-in with a ridge readout, and the
       sim-trained read-in with its readout re-fit by ridge.

    Everything is seeded (``seed``: data split, initialization, batches; the mismatch's seed:
    the twin), so a run is repeatable.
    """
    st = station if isinstance(station, Station) else load_station(station)
    mismatch = Mismatch.lab(2.0, seed=seed) if mismatch is None else mismatch
    xtr, ytr, xte, yte = _digits(n_train, n_test, seed)
    model = StationModel(st, dt_s=model_dt_s)
    twin = DigitalTwin(st, mismatch, dt_s=twin_dt_s)
    seconds: dict[str, float] = {}
    with LabSTOArray(st, twin.resource_manager()) as hw:
        t0 = time.perf_counter()
        sim = _classifier(xtr.shape[1], model, seed)
        init = _layers(sim)
        train_classifier(sim, xtr, ytr, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
        seconds["train_sim"] = time.perf_counter() - t0
        sim_on_model = accuracy(sim, xte, yte)
        sim.substrate = hw
        sim_on_twin = accuracy(sim, xte, yte)
        fit_ridge_readout(sim, xtr, ytr, ridge_alpha)
        sim_readin_ridge = accuracy(sim, xte, yte)

        t0 = time.perf_counter()
        pat = _classifier(xtr.shape[1], PhysicsAwareSubstrate(hw, model), seed)
        _load_layers(pat, init)
        train_classifier(pat, xtr, ytr, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
        seconds["train_physics_aware"] = time.perf_counter() - t0
        pat_on_twin = accuracy(pat, xte, yte)
        pat.substrate = model
        pat_on_model = accuracy(pat, xte, yte)

        ridge = _classifier(xtr.shape[1], hw, seed)
        _load_layers(ridge, init)
        fit_ridge_readout(ridge, xtr, ytr, ridge_alpha)
        ridge_on_twin = accuracy(ridge, xte, yte)
        acquisitions = hw.acquisitions
    config = {
        **st.configuration(),
        **mismatch.as_attrs(),
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
        "model_dt_s": model_dt_s,
        "twin_dt_s": twin_dt_s,
        "ridge_alpha": ridge_alpha,
        "hardware_acquisitions": acquisitions,
    }
    return ComparisonResult(
        sim_on_model=sim_on_model,
        sim_on_twin=sim_on_twin,
        physics_aware_on_twin=pat_on_twin,
        physics_aware_on_model=pat_on_model,
        ridge_on_twin=ridge_on_twin,
        sim_readin_ridge_on_twin=sim_readin_ridge,
        n_train=int(xtr.shape[0]),
        n_test=int(xte.shape[0]),
        epochs=epochs,
        seconds=seconds,
        configuration=config,
    )
