"""Physics-aware substrate: the hardware's forward pass with a simulator model's gradient.

Physics-aware training (Wright et al., Nature 601, 549 (2022)): the forward pass runs on the
hardware, the backward pass through a differentiable simulator model of it evaluated at the same
input. :class:`PhysicsAwareSubstrate` wraps (hardware, model) into one substrate whose ``forward``
returns the *hardware's* output and whose gradient is the vector-Jacobian product of the *model*
(the station's simulator, :class:`~stosim.hardware.model.StationModel`, with the exact RK4
gradients of :func:`stosim.integrate.flow.sto_flow`). Downstream layers and the loss see what the
hardware did; only the Jacobian comes from the model.

The training loop, the readout-only ridge fit and the simulation-vs-physics-aware comparison that
use it are a study: :mod:`stosim.studies.physics_aware`.
"""

from __future__ import annotations

import dataclasses

import torch

from stosim.substrates.base import Capabilities, Substrate, SubstrateDescription
from stosim.substrates.protocols import Differentiable, Hardware

__all__ = ["PhysicsAwareSubstrate", "physics_aware"]


class _PhysicsAware(torch.autograd.Function):
    """forward: the hardware's output; backward: the model's VJP at the same input."""

    @staticmethod
    def forward(ctx, readin: torch.Tensor, hardware: Substrate, model: Substrate) -> torch.Tensor:
        ctx.model = model
        ctx.save_for_backward(readin)
        with torch.no_grad():
            out = hardware(readin.detach())
        return out.to(dtype=readin.dtype, device=readin.device)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (readin,) = ctx.saved_tensors
        with torch.enable_grad():
            x = readin.detach().requires_grad_(True)
            y = ctx.model(x)
            (grad,) = torch.autograd.grad(y, x, grad_out)
        return grad, None, None


def physics_aware(readin: torch.Tensor, hardware: Substrate, model: Substrate) -> torch.Tensor:
    """``hardware(readin)`` with the gradient of ``model`` at ``readin`` (a function form of the wrapper)."""
    return _PhysicsAware.apply(readin, hardware, model)


class PhysicsAwareSubstrate(Substrate, Differentiable, Hardware):
    """Hardware forward, simulator backward: a differentiable stand-in for a hardware substrate.

    ``hardware`` and ``model`` must take the same read-in and give features of the same size and
    meaning (e.g. :class:`LabSTOArray` and :class:`StationModel` of one station). ``forward`` is
    the only differentiable path; ``initial_state``/``evolve``/``readout`` are the hardware's.
    """

    def __init__(self, hardware: Substrate, model: Substrate) -> None:
        super().__init__()
        dh, dm = hardware.describe(), model.describe()
        if (dh.readin_size, dh.readout_size) != (dm.readin_size, dm.readout_size):
            raise ValueError(
                f"hardware ({dh.readin_size} -> {dh.readout_size}) and model ({dm.readin_size} -> "
                f"{dm.readout_size}) read-in/readout sizes differ"
            )
        if not model.capabilities.differentiable:
            raise ValueError(f"the model {dm.name} is not differentiable")
        if not isinstance(hardware, Hardware):
            raise ValueError(f"hardware {dh.name} does not declare stosim.substrates.protocols.Hardware (measure())")
        self.hardware = hardware
        self.model = model

    @property
    def dtype(self) -> torch.dtype:
        return self.hardware.dtype

    @property
    def capabilities(self) -> Capabilities:
        c = self.hardware.capabilities
        return Capabilities(
            differentiable=True, stochastic=c.stochastic, reproducible=c.reproducible, hardware=c.hardware
        )

    def describe(self) -> SubstrateDescription:
        d = self.hardware.describe()
        return dataclasses.replace(
            d, name=f"physics-aware {d.name}", summary=f"{d.summary}; gradients from {self.model.describe().name}"
        )

    def read_configuration(self) -> dict[str, float | int | str]:
        cfg = dict(self.hardware.read_configuration())
        cfg.update({f"model_{k}": v for k, v in self.model.read_configuration().items()})
        cfg["training"] = "physics-aware"
        return cfg

    def reset(self, seed: int) -> None:
        self.hardware.reset(seed)
        self.model.reset(seed)

    def initial_state(self, readin: torch.Tensor) -> torch.Tensor:
        return self.hardware.initial_state(readin)

    def evolve(self, state: torch.Tensor) -> torch.Tensor:
        return self.hardware.evolve(state)

    def measure(self, state: torch.Tensor) -> torch.Tensor:
        return self.hardware.measure(state)

    def state_from_measurement(self, measurement: torch.Tensor) -> torch.Tensor:
        return self.hardware.state_from_measurement(measurement)

    def readout(self, state: torch.Tensor) -> torch.Tensor:
        return self.hardware.readout(state)

    def forward(self, readin: torch.Tensor) -> torch.Tensor:
        self._check_readin(readin)
        return _PhysicsAware.apply(readin, self.hardware, self.model)
