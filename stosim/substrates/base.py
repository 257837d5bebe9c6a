"""The substrate interface (hardware abstraction).

A substrate is a fixed dynamical system used as a hidden layer: a read-in vector becomes a
valid initial state, the state evolves for a finite duration, and a readout vector is
observed. Simulators (coupled STOs, FFESN, Lorenz 96) and drivers of real devices implement
the same small interface, in the spirit of bluesky/ophyd ``describe()``/``read()``:

- :meth:`Substrate.describe`: sizes, units and meaning of state, read-in and readout;
- :meth:`Substrate.read_configuration`: a flat dict of the configuration (dataset attributes);
- :attr:`Substrate.dtype`: the floating dtype of its states;
- :attr:`Substrate.capabilities`: differentiable, stochastic, reproducible, hardware (derived from
  the capability mixins it declares, :mod:`stosim.substrates.protocols`);
- :meth:`Substrate.reset`: re-seed every random stream (noise), so a run can be repeated;
- :meth:`Substrate.initial_state`: read-in (B, readin_size) -> valid state (B, state_size);
- :meth:`Substrate.evolve`: states (B, state_size) -> states after the duration;
- :meth:`Substrate.readout`: states -> features (B, readout_size) (observation noise here);
- ``forward(readin) = readout(evolve(initial_state(readin)))``.

What a substrate can do beyond this is declared with the mixins of
:mod:`stosim.substrates.protocols` (``Differentiable``, ``Stochastic``, ``Timed``,
``HasTangentSystem``, ``Hardware``) and asked with ``isinstance``. Every substrate passes the
conformance suite :func:`stosim.testing.check_substrate`.

Differentiable substrates evolve torch tensors with gradients; the others return tensors
without a graph (train them with readout-only ridge regression). Out-of-range settings raise
``ValueError`` naming the parameter and its valid range; nothing is clamped.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any

import torch

from stosim.substrates.protocols import Differentiable, Hardware, Stochastic

__all__ = ["Capabilities", "SubstrateDescription", "Substrate"]


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a substrate can do.

    - ``differentiable``: gradients flow from readout to read-in through :meth:`Substrate.forward`.
    - ``stochastic``: it has noise; same seed (``reset``) gives the same run when ``reproducible``.
    - ``reproducible``: the same inputs after the same ``reset(seed)`` give the same outputs.
    - ``hardware``: it drives a physical device.
    """

    differentiable: bool
    stochastic: bool
    reproducible: bool
    hardware: bool = False

    @classmethod
    def from_protocols(cls, substrate: object) -> Capabilities:
        """The flags that follow from the mixins ``substrate`` declares (:mod:`stosim.substrates.protocols`).

        differentiable = Differentiable; hardware = Hardware; stochastic = Hardware or (Stochastic and
        ``noise_on``); reproducible = not Hardware. :attr:`Substrate.capabilities` is this by default;
        the conformance suite checks that a substrate overriding it agrees.
        """
        hardware = isinstance(substrate, Hardware)
        noisy = isinstance(substrate, Stochastic) and bool(substrate.noise_on)
        return cls(
            differentiable=isinstance(substrate, Differentiable),
            stochastic=hardware or noisy,
            reproducible=not hardware,
            hardware=hardware,
        )


@dataclasses.dataclass(frozen=True)
class SubstrateDescription:
    """Sizes, units and meaning of what a substrate takes and gives."""

    name: str
    state_size: int
    readin_size: int
    readout_size: int
    state_units: str
    readout_units: str
    time_unit: str
    summary: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Substrate(torch.nn.Module, abc.ABC):
    """Base class of every substrate (simulated or hardware). States are (B, state_size) tensors."""

    @abc.abstractmethod
    def describe(self) -> SubstrateDescription:
        """Sizes and units of state, read-in and readout."""

    @abc.abstractmethod
    def read_configuration(self) -> dict[str, float | int | str]:
        """Flat configuration (plain numbers and strings, units in the key names)."""

    @property
    @abc.abstractmethod
    def dtype(self) -> torch.dtype:
        """Floating dtype of the states (``torch.float64`` or ``torch.float32``)."""

    @property
    def capabilities(self) -> Capabilities:
        """What this substrate can do: :meth:`Capabilities.from_protocols` of its declared mixins."""
        return Capabilities.from_protocols(self)

    @abc.abstractmethod
    def reset(self, seed: int) -> None:
        """Re-seed every random stream (noise) of the substrate."""

    @abc.abstractmethod
    def initial_state(self, readin: torch.Tensor) -> torch.Tensor:
        """Map read-in vectors (B, readin_size) to valid initial states (B, state_size)."""

    @abc.abstractmethod
    def evolve(self, state: torch.Tensor) -> torch.Tensor:
        """Evolve states (B, state_size) for the substrate's duration; returns (B, state_size)."""

    def readout(self, state: torch.Tensor) -> torch.Tensor:
        """Features (B, readout_size) observed from states; the state itself by default."""
        return state

    def forward(self, readin: torch.Tensor) -> torch.Tensor:
        """readout(evolve(initial_state(readin)))."""
        self._check_readin(readin)
        return self.readout(self.evolve(self.initial_state(readin)))

    def _check_readin(self, readin: torch.Tensor) -> None:
        """Read-in must be a floating (B, readin_size) tensor of finite values, else ``ValueError``."""
        desc = self.describe()
        size = desc.readin_size
        if readin.ndim != 2 or readin.shape[1] != size:
            raise ValueError(f"read-in has shape {tuple(readin.shape)}; expected (batch, {size}) for {desc.name}")
        if not readin.is_floating_point():
            raise ValueError(
                f"read-in for {desc.name} has dtype {readin.dtype}; it must be a floating dtype "
                "(torch.float64 or torch.float32)"
            )
        if not torch.isfinite(readin).all():
            raise ValueError(f"read-in for {desc.name} contains non-finite values")
