"""Capabilities of a substrate as small declared interfaces (ABC mixins).

A substrate (:class:`stosim.substrates.base.Substrate`) declares what it can do by inheriting
these mixins next to ``Substrate``; callers ask with ``isinstance`` (never by probing for
attributes)::

    class CoupledSTOArray(Substrate, Differentiable, Stochastic, Timed, HasTangentSystem): ...

    if isinstance(sub, Stochastic):
        with sub.noise_suspended(): ...

Each mixin is an :class:`abc.ABC`: a class that declares one and lacks one of its abstract
members cannot be instantiated. They combine with ``torch.nn.Module`` (the base of every
substrate) and are checked nominally, so a lab's own driver declares them the same way.

- :class:`Differentiable`: gradients flow from the readout back to the read-in through
  ``forward`` (a marker: no members of its own).
- :class:`Stochastic`: it has noise streams; :attr:`Stochastic.noise_on` says whether any noise
  is configured, :meth:`Stochastic.noise_suspended` switches it off inside a ``with`` block, and
  ``reset(seed)`` re-seeds it.
- :class:`Timed`: :attr:`Timed.duration`, the evolution time T of ``evolve`` in the substrate's
  own time unit (``describe().time_unit``: s, model time units, steps).
- :class:`HasTangentSystem`: exact tangent operators of the flow map x(0) -> x(T)
  (:meth:`HasTangentSystem.flow_operators`, J v and J^T u, used by the FTMLE) and the
  projection onto the tangent space of the state manifold (:meth:`HasTangentSystem.project_tangent`).
- :class:`Hardware`: it drives a physical device. Measurement is its own declared step:
  :meth:`Hardware.measure` runs the device from prepared states and returns the raw measured
  quantity, :meth:`Hardware.state_from_measurement` converts that into states, and ``evolve`` is
  their composition (so it returns states, like every substrate's).

The :class:`~stosim.substrates.base.Capabilities` flags follow from these declarations
(:meth:`Capabilities.from_protocols <stosim.substrates.base.Capabilities.from_protocols>`):
differentiable = Differentiable; hardware = Hardware; stochastic = Hardware or (Stochastic and
noise_on); reproducible = not Hardware (hardware noise cannot be re-seeded).
"""

from __future__ import annotations

import abc
import contextlib
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pragma: no cover - typing only
    from stosim.substrates.flow_operators import FlowOperators

__all__ = ["PROTOCOLS", "Differentiable", "Hardware", "HasTangentSystem", "Stochastic", "Timed"]


class Differentiable(abc.ABC):
    """Gradients flow from the readout to the read-in through ``forward`` (finite, exact or model-based)."""

    __slots__ = ()


class Stochastic(abc.ABC):
    """Noise streams that ``reset(seed)`` re-seeds and :meth:`noise_suspended` switches off."""

    __slots__ = ()

    @property
    @abc.abstractmethod
    def noise_on(self) -> bool:
        """Whether any noise is configured (a finite SNR, T > 0 K, ...); False: the runs are deterministic."""

    @abc.abstractmethod
    def noise_suspended(self) -> contextlib.AbstractContextManager[None]:
        """A context manager inside which the substrate runs without any noise (noiseless training)."""

    @abc.abstractmethod
    def reset(self, seed: int) -> None:
        """Re-seed every noise stream: the same inputs after the same ``reset(seed)`` give the same outputs."""


class Timed(abc.ABC):
    """``evolve`` advances the state by a fixed time :attr:`duration`."""

    __slots__ = ()

    @property
    @abc.abstractmethod
    def duration(self) -> float:
        """T, the time ``evolve`` advances, in ``describe().time_unit`` (a finite number > 0)."""


class HasTangentSystem(abc.ABC):
    """Exact tangent operators of the flow map x(0) -> x(T) on flat (B, state_size) states."""

    __slots__ = ()

    @abc.abstractmethod
    def flow_operators(self) -> FlowOperators:
        """J v and J^T u of the (noise-free) flow map, its tangent projection, T and its unit
        (:class:`stosim.substrates.flow_operators.FlowOperators`)."""

    @abc.abstractmethod
    def project_tangent(self, x0: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Project vectors v (B, state_size) onto the tangent space of the state manifold at x0 (B, state_size)."""


class Hardware(abc.ABC):
    """A physical device; its ``evolve(state)`` must be ``state_from_measurement(measure(state))``."""

    __slots__ = ()

    @abc.abstractmethod
    def measure(self, state: torch.Tensor) -> torch.Tensor:
        """Prepare the device in ``state`` (B, state_size), let it evolve, and return the raw measured
        quantity (B, ...) as a float64 tensor without a graph (units in the driver's ``describe()``)."""

    @abc.abstractmethod
    def state_from_measurement(self, measurement: torch.Tensor) -> torch.Tensor:
        """The states (B, state_size) a measurement determines (refusing readings that cannot be data)."""


PROTOCOLS: tuple[type, ...] = (Differentiable, Stochastic, Timed, HasTangentSystem, Hardware)
"""Every capability a substrate can declare."""
