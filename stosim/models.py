"""Reservoir models (read-in -> substrate -> readout) and the baselines of equal hidden size.

- :class:`ReservoirClassifier`: Linear read-in -> fixed substrate -> Linear readout
  (docs/physics.md section 5); the substrate's parameters are buffers, never trained.
- :class:`DeepReservoirClassifier`: read-in -> substrate -> Linear -> substrate -> readout,
  the inner linear layer trainable (the seed study's deep coupled STOs).
- :class:`ConvReservoirClassifier`: one conv layer (+ ReLU, 2x2 max-pool) as the front end of
  the read-in (CNN + coupled STOs).
- Baselines: :class:`LinearClassifier` (logistic regression), :class:`MLPClassifier` (one
  hidden layer by default; deeper, tanh, spectral-radius initialized as options), :class:`CNNClassifier`
  (one conv layer and one hidden fully-connected layer).

Every model maps flat images (B, rows * cols) to class scores (B, classes). Inputs of another
dtype (torch's default float32, integer pixels, NumPy arrays) are cast to the model's dtype
(float64 unless built otherwise) first: see :func:`as_model_input`.
"""

from __future__ import annotations

import torch
from torch import nn

from stosim.checks import check_count
from stosim.substrates.base import Substrate

__all__ = [
    "ReservoirClassifier",
    "DeepReservoirClassifier",
    "ConvReservoirClassifier",
    "LinearClassifier",
    "MLPClassifier",
    "CNNClassifier",
    "ConvFrontEnd",
    "as_model_input",
    "init_spectral_radius_",
]


def as_model_input(x: object, dtype: torch.dtype) -> torch.Tensor:
    """``x`` (a tensor, NumPy array or nested list of numbers) as a tensor of the model's ``dtype``;
    ValueError for non-numeric input (complex, bool or object values)."""
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    if t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"model input has dtype {t.dtype}; expected real numbers (cast to the model's {dtype})")
    return t if t.dtype == dtype else t.to(dtype)


def _check_image_shape(image_shape: tuple[int, int]) -> tuple[int, int]:
    """``(rows, cols)`` in pixels, each >= 2 (the 2x2 max-pool needs at least one full window)."""
    shape = tuple(image_shape)
    if len(shape) != 2:
        raise ValueError(f"image_shape = {image_shape!r} is out of range; valid: (rows, cols), each an integer >= 2")
    rows = check_count(shape[0], "image_shape rows", 2)
    cols = check_count(shape[1], "image_shape cols", 2)
    return rows, cols


class ReservoirClassifier(nn.Module):
    """u -> readout(substrate(read_in(u))); ``read_in`` and ``readout`` are trainable Linear layers."""

    def __init__(
        self,
        n_inputs: int,
        n_classes: int,
        substrate: Substrate,
        *,
        readin_bias: bool = True,
        readout_bias: bool = True,
    ) -> None:
        super().__init__()
        n_inputs, n_classes = check_count(n_inputs, "n_inputs"), check_count(n_classes, "n_classes", 2)
        desc = substrate.describe()
        dtype = substrate.dtype
        self.read_in = nn.Linear(n_inputs, desc.readin_size, bias=readin_bias, dtype=dtype)
        self.substrate = substrate
        self.readout = nn.Linear(desc.readout_size, n_classes, bias=readout_bias, dtype=dtype)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the readout sees: substrate(read_in(x)), (B, readout_size)."""
        return self.substrate(self.read_in(as_model_input(x, self.read_in.weight.dtype)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.features(x))


class DeepReservoirClassifier(nn.Module):
    """u -> read_in -> substrate_1 -> inner Linear -> substrate_2 -> readout (all linear layers trainable)."""

    def __init__(self, n_inputs: int, n_classes: int, first: Substrate, second: Substrate) -> None:
        super().__init__()
        n_inputs, n_classes = check_count(n_inputs, "n_inputs"), check_count(n_classes, "n_classes", 2)
        d1, d2 = first.describe(), second.describe()
        dtype = first.dtype
        self.read_in = nn.Linear(n_inputs, d1.readin_size, dtype=dtype)
        self.first = first
        self.inner = nn.Linear(d1.readout_size, d2.readin_size, dtype=dtype)
        self.second = second
        self.readout = nn.Linear(d2.readout_size, n_classes, dtype=dtype)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = as_model_input(x, self.read_in.weight.dtype)
        return self.second(self.inner(self.first(self.read_in(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.features(x))


class ConvFrontEnd(nn.Module):
    """One conv layer: (B, rows*cols) -> Conv2d(1, C, 3, padding 1) -> ReLU -> MaxPool(2)
    -> flat (B, C*rows/2*cols/2)."""

    def __init__(self, image_shape: tuple[int, int], channels: int, dtype: torch.dtype) -> None:
        super().__init__()
        image_shape = _check_image_shape(image_shape)
        channels = check_count(channels, "channels")
        self.image_shape = image_shape
        self.conv = nn.Conv2d(1, channels, kernel_size=3, padding=1, dtype=dtype)
        self.pool = nn.MaxPool2d(2)
        self.n_outputs = channels * (image_shape[0] // 2) * (image_shape[1] // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = as_model_input(x, self.conv.weight.dtype)
        img = x.reshape(x.shape[0], 1, *self.image_shape)
        return self.pool(torch.relu(self.conv(img))).flatten(1)


class ConvReservoirClassifier(nn.Module):
    """CNN front end as read-in: conv layer -> Linear -> substrate -> readout."""

    def __init__(self, image_shape: tuple[int, int], n_classes: int, substrate: Substrate, channels: int = 8) -> None:
        super().__init__()
        dtype = substrate.dtype
        self.front = ConvFrontEnd(image_shape, channels, dtype)
        self.reservoir = ReservoirClassifier(self.front.n_outputs, n_classes, substrate)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.reservoir.features(self.front(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reservoir(self.front(x))


class LinearClassifier(nn.Module):
    """Logistic regression: one Linear layer (trained with cross-entropy)."""

    def __init__(self, n_inputs: int, n_classes: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        n_inputs, n_classes = check_count(n_inputs, "n_inputs"), check_count(n_classes, "n_classes", 2)
        self.linear = nn.Linear(n_inputs, n_classes, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(as_model_input(x, self.linear.weight.dtype))


class MLPClassifier(nn.Module):
    """``depth`` hidden layers of ``hidden`` units (default: one ReLU layer, the seed study's baseline).

    Layout: Linear(n_inputs, hidden) -> act -> [Linear(hidden, hidden) -> act] x (depth - 1) ->
    Linear(hidden, n_classes), all in ``self.net`` (an ``nn.Sequential``). ``activation``: "relu"
    or "tanh". ``spectral_radius`` (rho, in (0, 10]): the square hidden-to-hidden weights (there are
    depth - 1 of them) are drawn uniform in [-1, 1] and rescaled so that max |eig(W)| = rho exactly
    (float64 eigenvalues; :func:`stosim.substrates.ffesn.draw_ffesn_matrix` with density 1), seeded
    by ``init_seed`` and the layer index; biases and the other layers keep PyTorch's default
    initialization. With the defaults the module and its random draws are the one-layer MLP's.
    """

    def __init__(
        self,
        n_inputs: int,
        n_classes: int,
        hidden: int,
        dtype: torch.dtype = torch.float32,
        *,
        depth: int = 1,
        activation: str = "relu",
        spectral_radius: float | None = None,
        init_seed: int = 0,
    ) -> None:
        super().__init__()
        n_inputs, n_classes = check_count(n_inputs, "n_inputs"), check_count(n_classes, "n_classes", 2)
        hidden = check_count(hidden, "hidden")
        depth = check_count(depth, "depth")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation = {activation!r} is out of range; valid: {', '.join(_ACTIVATIONS)}")
        layers: list[nn.Module] = [nn.Linear(n_inputs, hidden, dtype=dtype), _ACTIVATIONS[activation]()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden, dtype=dtype), _ACTIVATIONS[activation]()]
        layers.append(nn.Linear(hidden, n_classes, dtype=dtype))
        self.net = nn.Sequential(*layers)
        self.depth = depth
        if spectral_radius is not None:
            if depth < 2:
                raise ValueError(
                    f"spectral_radius = {spectral_radius!r} needs depth >= 2 (square hidden-to-hidden "
                    f"weights); got depth = {depth}"
                )
            init_spectral_radius_(self.hidden_weights(), spectral_radius, init_seed)

    def hidden_weights(self) -> list[nn.Parameter]:
        """The square hidden-to-hidden weight matrices (depth - 1 of them), input side first."""
        linears = [m for m in self.net if isinstance(m, nn.Linear)]
        return [m.weight for m in linears[1:-1]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(as_model_input(x, self.net[0].weight.dtype))


_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


def init_spectral_radius_(weights: list[torch.Tensor], spectral_radius: float, seed: int) -> None:
    """Overwrite each square matrix in ``weights`` (in place, no gradient) with a uniform [-1, 1] draw
    rescaled to spectral radius ``spectral_radius`` (max |eigenvalue|, in (0, 10]); matrix k is drawn
    from ``SeedSequence([seed, k])``."""
    import numpy as np

    from stosim.substrates.ffesn import draw_ffesn_matrix

    seed = check_count(seed, "init_seed", 0)
    for k, w in enumerate(weights):
        if w.ndim != 2 or w.shape[0] != w.shape[1]:
            raise ValueError(f"weight {k} has shape {tuple(w.shape)}; a spectral radius needs a square matrix")
        sub_seed = int(np.random.SeedSequence([seed, k]).generate_state(1)[0])
        drawn = draw_ffesn_matrix(w.shape[0], spectral_radius, 1.0, sub_seed)
        with torch.no_grad():
            w.copy_(torch.as_tensor(drawn, dtype=w.dtype))


class CNNClassifier(nn.Module):
    """One conv layer (+ ReLU, max-pool) and one hidden fully-connected layer of ``hidden`` ReLU units."""

    def __init__(
        self,
        image_shape: tuple[int, int],
        n_classes: int,
        hidden: int,
        channels: int = 8,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.front = ConvFrontEnd(image_shape, channels, dtype)
        self.head = MLPClassifier(self.front.n_outputs, n_classes, hidden, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.front(x))
