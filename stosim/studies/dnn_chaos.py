"""Expansion (positive FTMLE) in conventional trained networks: the seed study's part II.1 and
appendices A.2-A.3 at a scale this machine can run.

A network is a discrete-time map with one layer = one time unit; for the per-sample input x,

    FTMLE_l(x)     = ln sigma_max(d h_{l+1} / d h_l)              (1/layer; layer l alone)
    FTMLE_total(x) = ln sigma_max(d h_L / d h_0) / L              (1/layer; the whole composition)

computed by :func:`stosim.analysis.ftmle.model_ftmle` in float64: the exact batched SVD when the
smaller side of a Jacobian is <= 64 (2-D inputs, logits), matrix-free Lanczos on J^T J (one
Jacobian-vector and one vector-Jacobian product per iteration, J never formed) otherwise.

Two studies (each a spec file in ``experiments/dnn/``, run by ``stosim dnn``):

- ``toy-ftmle`` (A.2): 5-hidden-layer MLPs trained on 2-D tasks (:mod:`stosim.studies.toy_tasks`),
  FTMLE maps over a uniform grid of the input plane (whole model and per layer) beside the
  decision regions; the boundary statistic compares the whole-model FTMLE within ``band`` grid
  cells of the decision boundary with that farther away.
- ``init-table`` (A.3, Tables 2-3): trained vs default-initialised vs Xavier-initialised
  networks (toy MLP, MNIST MLP, MNIST CNN, MNIST convolutional auto-encoder): mean, std and max
  FTMLE per layer and overall over the same test inputs.

Initializations: "default" is PyTorch's (``reset_parameters``: weights U(-1/sqrt(fan_in),
1/sqrt(fan_in)) via kaiming_uniform(a = sqrt 5), biases likewise), "xavier" is
``xavier_uniform_`` (gain 1) weights with zero biases. A trained network starts from the default
initialization of the same seed.
"""

from __future__ import annotations

import json
import math
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from stosim.analysis.ftmle import model_ftmle
from stosim.models import MLPClassifier
from stosim.studies.results import write_results
from stosim.studies.toy_tasks import grid_points, make_task, task_classes

__all__ = [
    "INITS",
    "STUDY_SCALE",
    "ConvAutoencoder",
    "DNNSpecError",
    "TableSpec",
    "ToySpec",
    "boundary_statistics",
    "fit_autoencoder",
    "fit_classifier",
    "ftmle_layers",
    "init_weights_",
    "layer_statistics",
    "load_dnn_spec",
    "mnist_cnn",
    "run_dnn_spec",
    "run_table_study",
    "run_toy_study",
    "toy_mlp",
]

INITS = ("trained", "default", "xavier")
Progress = Callable[[str], None]


class DNNSpecError(ValueError):
    """An invalid ``stosim dnn`` spec; the message names the key."""


# ----------------------------------------------------------------------------------------------
# specs
# ----------------------------------------------------------------------------------------------
class ToySpec(BaseModel):
    """A2: 5-hidden-layer MLPs on 2-D toy tasks, FTMLE maps over the input plane."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    study: Literal["toy-ftmle"]
    name: str = "toy-ftmle"
    tasks: list[Literal["spirals", "circles", "moons", "blobs"]] = Field(
        default_factory=lambda: ["spirals", "circles", "moons", "blobs"], min_length=1
    )
    n_train: int = Field(default=2000, ge=4, le=1_000_000)
    n_test: int = Field(default=1000, ge=4, le=1_000_000)
    depth: int = Field(default=5, ge=1, le=50, description="hidden layers")
    hidden: int = Field(default=64, ge=2, le=4096)
    activation: Literal["relu", "tanh"] = "tanh"
    epochs: int = Field(default=150, ge=1, le=100_000)
    batch_size: int = Field(default=100, ge=1, le=1_000_000)
    lr: float = Field(default=3e-3, gt=0, le=1)
    grid: int = Field(default=95, ge=4, le=1000, description="grid points per side (95^2 = 9025 ~ the study's 9000)")
    bound: float = Field(default=1.5, gt=0, le=100)
    band: int = Field(default=2, ge=1, le=100, description="grid cells from the boundary counted as 'near'")
    seed: int = Field(default=0, ge=0)


class TableSpec(BaseModel):
    """A3: trained vs default vs Xavier initialised networks, FTMLE statistics per layer."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    study: Literal["init-table"]
    name: str = "init-table"
    models: list[Literal["toy-mlp", "mnist-mlp", "mnist-cnn", "mnist-ae"]] = Field(
        default_factory=lambda: ["toy-mlp", "mnist-mlp", "mnist-cnn", "mnist-ae"], min_length=1
    )
    data_dir: str = "../shared/data/mnist"
    toy_task: Literal["spirals", "circles", "moons", "blobs"] = "spirals"
    toy_epochs: int = Field(default=150, ge=1, le=100_000)
    toy_grid: int = Field(default=95, ge=4, le=1000)
    n_train: int = Field(default=10_000, ge=10, le=60_000, description="MNIST training images")
    epochs: int = Field(default=3, ge=1, le=1000, description="MNIST epochs")
    batch_size: int = Field(default=64, ge=1, le=60_000)
    lr: float = Field(default=1e-3, gt=0, le=1)
    mlp_depth: int = Field(default=5, ge=1, le=50)
    mlp_hidden: int = Field(default=128, ge=2, le=4096)
    n_ftmle: int = Field(default=200, ge=1, le=10_000, description="MNIST test images analysed")
    method: Literal["auto", "lanczos", "power", "exact"] = "auto"
    tol: float = Field(default=1e-6, gt=0, lt=1)
    seed: int = Field(default=0, ge=0)


# what `--scale study` sets (the seed study's sizes where it states them; n_train / epochs for MNIST are
# not stated there: full training set, 10 epochs)
STUDY_SCALE: dict[str, dict[str, Any]] = {
    "toy-ftmle": {"n_train": 2000, "grid": 95, "epochs": 500},
    "init-table": {"toy_epochs": 500, "n_train": 60_000, "epochs": 10, "n_ftmle": 1000},
    "chaotic-init": {
        "n_train": 60_000,
        "n_test": 10_000,
        "epochs": 100,
        "rhos": [0.1, 0.3, 0.5, 0.7, 0.9, 1.1, 1.3, 1.5, 1.7, 2.0, 2.3, 2.6, 3.0, 4.0, 5.0, 7.0, 10.0],
    },
}


def load_dnn_spec(path: str | Path, scale: str = "file") -> BaseModel:
    """Read and validate a ``stosim dnn`` spec (TOML with ``study = "toy-ftmle" | "init-table" |
    "chaotic-init"``); ``scale = "study"`` replaces the sizes by :data:`STUDY_SCALE`."""
    from stosim.studies.chaotic_init import ChaoticInitSpec

    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DNNSpecError(f"{path}: cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise DNNSpecError(f"{path}: not valid TOML: {exc}") from None
    kinds = {"toy-ftmle": ToySpec, "init-table": TableSpec, "chaotic-init": ChaoticInitSpec}
    study = raw.get("study")
    if study not in kinds:
        raise DNNSpecError(f"{path}: study = {study!r}; valid: {', '.join(kinds)}")
    if scale not in ("file", "study"):
        raise DNNSpecError(f"scale = {scale!r}; valid: file, study")
    if scale == "study":
        raw = {**raw, **STUDY_SCALE[study]}
    try:
        return kinds[study].model_validate(raw)
    except ValidationError as exc:
        lines = [
            f"{path}: {'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r})" for e in exc.errors()
        ]
        raise DNNSpecError("\n".join(lines)) from None


def run_dnn_spec(spec: BaseModel, out: str | Path, progress: Progress | None = None) -> dict[str, Any]:
    """Run a loaded spec into the folder ``out`` (``results.json``, ``results.md``, PNG figures);
    returns the results dictionary."""
    from stosim.studies.chaotic_init import ChaoticInitSpec, run_chaotic_init_study

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(spec, ToySpec):
        return run_toy_study(spec, out, progress)
    if isinstance(spec, TableSpec):
        return run_table_study(spec, out, progress)
    if isinstance(spec, ChaoticInitSpec):
        return run_chaotic_init_study(spec, out, progress)
    raise DNNSpecError(f"not a dnn spec: {type(spec).__name__}")


# ----------------------------------------------------------------------------------------------
# models, initializations, layers
# ----------------------------------------------------------------------------------------------
def toy_mlp(n_classes: int, depth: int = 5, hidden: int = 64, activation: str = "tanh", seed: int = 0) -> MLPClassifier:
    """2 -> ``depth`` hidden layers of ``hidden`` units -> ``n_classes`` logits (float32, seeded)."""
    torch.manual_seed(seed)
    return MLPClassifier(2, n_classes, hidden, torch.float32, depth=depth, activation=activation)


class _CNN(nn.Module):
    """conv(1->8, 3x3)+ReLU, maxpool 2, conv(8->16, 3x3)+ReLU, maxpool 2, Linear(784->64)+ReLU, Linear(64->10)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.pool2 = nn.MaxPool2d(2)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(16 * 7 * 7, 64), nn.ReLU())
        self.readout = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.fc(self.pool2(self.conv2(self.pool1(self.conv1(x))))))


def mnist_cnn(seed: int = 0) -> nn.Module:
    """The small CNN classifier (a stand-in for the study's ResNet-50) on (B, 1, 28, 28) images."""
    torch.manual_seed(seed)
    return _CNN()


class ConvAutoencoder(nn.Module):
    """Encoder conv(1->8, s2)+ReLU, conv(8->16, s2)+ReLU (28x28 -> 16x7x7 = 784 numbers); decoder the
    mirror with transposed convolutions, ReLU then sigmoid (a stand-in for the study's ResNet-18 AE)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(8, 1, 3, stride=2, padding=1, output_padding=1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def init_weights_(model: nn.Module, scheme: str, seed: int) -> nn.Module:
    """Re-initialize every Linear / Conv layer of ``model`` in place: ``"default"`` (PyTorch's
    ``reset_parameters``) or ``"xavier"`` (``xavier_uniform_`` weights, zero biases), from ``seed``."""
    if scheme not in ("default", "xavier"):
        raise ValueError(f"scheme = {scheme!r} is out of range; valid: default, xavier")
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            if scheme == "default":
                m.reset_parameters()
            else:
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    return model


def ftmle_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers (one time unit each) of the study's models: an MLP's hidden blocks (Linear +
    activation) and readout; the CNN's conv blocks, pools, fully-connected block and readout; the
    auto-encoder's encoder and decoder."""
    if isinstance(model, MLPClassifier):
        mods = list(model.net)
        layers = [(f"hidden{k + 1}", nn.Sequential(mods[2 * k], mods[2 * k + 1])) for k in range(model.depth)]
        return layers + [("readout", mods[-1])]
    if isinstance(model, _CNN):
        return [(n, getattr(model, n)) for n in ("conv1", "pool1", "conv2", "pool2", "fc", "readout")]
    if isinstance(model, ConvAutoencoder):
        return [("encoder", model.encoder), ("decoder", model.decoder)]
    raise ValueError(f"no layer list for {type(model).__name__}")


def layer_ftmle(
    model: nn.Module, x: torch.Tensor, *, method: str = "auto", tol: float = 1e-6, seed: int = 0
) -> dict[str, np.ndarray]:
    """Per-sample FTMLE (1/layer) of each layer and of the whole model ("overall") at x, in float64."""
    model = _float64_copy(model)
    names, mods = zip(*ftmle_layers(model))
    res = model_ftmle(list(mods), x.to(torch.float64), method=method, tol=tol, seed=seed)
    out = {"overall": res.total.ftmle}
    out.update({name: r.ftmle for name, r in zip(names, res.layers)})
    out["_converged"] = np.array([res.total.all_converged and all(r.all_converged for r in res.layers)])
    return out


def _float64_copy(model: nn.Module) -> nn.Module:
    import copy

    m = copy.deepcopy(model).to(torch.float64)
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def layer_statistics(values: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """mean, std, max, fraction > 0 of each per-sample FTMLE array (finite values; -inf counted in
    ``n_minus_inf``)."""
    stats = {}
    for name, v in values.items():
        if name.startswith("_"):
            continue
        finite = v[np.isfinite(v)]
        stats[name] = {
            "mean": float(finite.mean()) if finite.size else float("nan"),
            "std": float(finite.std()) if finite.size else float("nan"),
            "max": float(finite.max()) if finite.size else float("nan"),
            "positive_fraction": float((v > 0).mean()),
            "n_minus_inf": int(np.isneginf(v).sum()),
        }
    return stats


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------
def _adam_epochs(
    model: nn.Module,
    n: int,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> None:
    """Adam over ``epochs`` passes of ``n`` examples, shuffled per epoch from ``seed``; ``batch_loss(idx)`` is the
    loss of the examples ``idx``. Leaves the model in eval mode."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            opt.zero_grad()
            batch_loss(order[i : i + batch_size]).backward()
            opt.step()
    model.eval()


def fit_classifier(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, batch_size: int, lr: float, seed: int
) -> float:
    """Adam on the cross-entropy, shuffled per epoch from ``seed``; returns the final training accuracy."""
    _adam_epochs(
        model,
        x.shape[0],
        lambda idx: nn.functional.cross_entropy(model(x[idx]), y[idx]),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
    )
    with torch.no_grad():
        return float((_predict(model, x) == y).double().mean())


def fit_autoencoder(model: nn.Module, x: torch.Tensor, *, epochs: int, batch_size: int, lr: float, seed: int) -> float:
    """Adam on the mean squared reconstruction error; returns the final mean squared error."""
    _adam_epochs(
        model,
        x.shape[0],
        lambda idx: nn.functional.mse_loss(model(x[idx]), x[idx]),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
    )
    with torch.no_grad():
        return float(
            sum(
                nn.functional.mse_loss(model(x[i : i + 1000]), x[i : i + 1000], reduction="sum")
                for i in range(0, x.shape[0], 1000)
            )
            / x.numel()
        )


def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i : i + 4096]).argmax(1) for i in range(0, x.shape[0], 4096)])


# ----------------------------------------------------------------------------------------------
# toy study (A.2)
# ----------------------------------------------------------------------------------------------
def boundary_statistics(pred: np.ndarray, ftmle: np.ndarray, band: int) -> dict[str, float]:
    """Whole-model FTMLE near vs far from the decision boundary on a grid.

    ``pred`` and ``ftmle`` are (n, n) over the grid. Boundary cells: a 4-neighbour has another
    predicted class; d = Euclidean distance (cells) to the nearest boundary cell. Returns the
    mean FTMLE for d <= ``band`` and d > ``band``, their difference, the fraction of positive
    FTMLE in each, and Spearman's correlation of FTMLE with d (negative: higher near boundaries).
    """
    from scipy import ndimage, stats

    edge = np.zeros(pred.shape, dtype=bool)
    edge[:, 1:] |= pred[:, 1:] != pred[:, :-1]
    edge[:, :-1] |= pred[:, 1:] != pred[:, :-1]
    edge[1:, :] |= pred[1:, :] != pred[:-1, :]
    edge[:-1, :] |= pred[1:, :] != pred[:-1, :]
    if not edge.any():
        return {
            "near_mean": float("nan"),
            "far_mean": float("nan"),
            "difference": float("nan"),
            "near_positive_fraction": float("nan"),
            "far_positive_fraction": float("nan"),
            "spearman_vs_distance": float("nan"),
        }
    dist = ndimage.distance_transform_edt(~edge)
    ok = np.isfinite(ftmle)
    near, far = ok & (dist <= band), ok & (dist > band)
    constant = np.ptp(ftmle[ok]) == 0 or np.ptp(dist[ok]) == 0  # a linear layer: one value everywhere
    rho = float("nan") if constant else stats.spearmanr(ftmle[ok].ravel(), dist[ok].ravel()).statistic
    return {
        "near_mean": float(ftmle[near].mean()),
        "far_mean": float(ftmle[far].mean()) if far.any() else float("nan"),
        "difference": float(ftmle[near].mean() - ftmle[far].mean()) if far.any() else float("nan"),
        "near_positive_fraction": float((ftmle[near] > 0).mean()),
        "far_positive_fraction": float((ftmle[far] > 0).mean()) if far.any() else float("nan"),
        "spearman_vs_distance": float(rho),
    }


def _train_toy(task: str, spec_like: Any, epochs: int, seed: int) -> tuple[MLPClassifier, dict[str, float]]:
    x, y = make_task(task, spec_like.n_train, seed)
    xt, yt = make_task(task, spec_like.n_test, seed + 1)
    model = toy_mlp(task_classes(task), spec_like.depth, spec_like.hidden, spec_like.activation, seed)
    xs, ys = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
    train_acc = fit_classifier(
        model, xs, ys, epochs=epochs, batch_size=spec_like.batch_size, lr=spec_like.lr, seed=seed
    )
    test_acc = float((_predict(model, torch.as_tensor(xt, dtype=torch.float32)) == torch.as_tensor(yt)).double().mean())
    return model, {"train_accuracy": train_acc, "test_accuracy": test_acc}


def run_toy_study(spec: ToySpec, out: Path, progress: Progress | None = None) -> dict[str, Any]:
    """Train one MLP per task, compute the FTMLE maps and the boundary statistics; one figure per task."""
    results: dict[str, Any] = {"spec": spec.model_dump(), "tasks": {}}
    xs, ys, pts = grid_points(spec.grid, spec.bound)
    grid = torch.as_tensor(pts)
    for task in spec.tasks:
        t0 = time.perf_counter()
        model, acc = _train_toy(task, spec, spec.epochs, spec.seed)
        values = layer_ftmle(model, grid, seed=spec.seed)
        pred = _predict(model, grid.float()).numpy().reshape(spec.grid, spec.grid)
        overall = values["overall"].reshape(spec.grid, spec.grid)
        entry = {
            **acc,
            "statistics": layer_statistics(values),
            "boundary": boundary_statistics(pred, overall, spec.band),
            "layer_boundary": {
                k: boundary_statistics(pred, v.reshape(spec.grid, spec.grid), spec.band)
                for k, v in values.items()
                if not k.startswith("_") and k != "overall"
            },
            "all_converged": bool(values["_converged"].all()),
            "wall_time_s": time.perf_counter() - t0,
        }
        results["tasks"][task] = entry
        x_train, y_train = make_task(task, spec.n_train, spec.seed)
        _plot_toy_maps(out / f"dnn_toy_{task}.png", task, xs, ys, pred, values, x_train, y_train, acc)
        if progress:
            progress(
                f"{task}: test accuracy {100 * acc['test_accuracy']:.1f}%, overall FTMLE near/far boundary "
                f"{entry['boundary']['near_mean']:.3f} / {entry['boundary']['far_mean']:.3f} 1/layer "
                f"({entry['wall_time_s']:.0f} s)"
            )
    write_results(results, out, _toy_markdown(results))
    return results


def _plot_toy_maps(
    path: Path,
    task: str,
    xs: np.ndarray,
    ys: np.ndarray,
    pred: np.ndarray,
    values: dict[str, np.ndarray],
    x_train: np.ndarray,
    y_train: np.ndarray,
    acc: dict,
) -> None:
    from matplotlib.colors import TwoSlopeNorm

    from stosim.plotting import _pyplot, save_figure

    plt = _pyplot()
    names = ["overall"] + [k for k in values if not k.startswith("_") and k != "overall"]
    n = len(xs)
    cols = math.ceil((len(names) + 1) / 2)
    fig, grid_axes = plt.subplots(2, cols, figsize=(2.9 * cols, 5.6), constrained_layout=True)
    axes = list(grid_axes.ravel())
    for ax in axes[len(names) + 1 :]:
        ax.set_visible(False)
    try:
        ext = (xs[0], xs[-1], ys[0], ys[-1])
        axes[0].imshow(pred, origin="lower", extent=ext, cmap="Pastel1", interpolation="nearest")
        axes[0].scatter(x_train[:400, 0], x_train[:400, 1], c=y_train[:400], s=3, cmap="tab10", vmin=0, vmax=9)
        axes[0].set_title(f"{task}: decision\n(test acc {100 * acc['test_accuracy']:.1f}%)", fontsize=8)
        for ax, name in zip(axes[1:], names):
            v = values[name].reshape(n, n)
            finite = v[np.isfinite(v)]
            lo, hi = float(finite.min()), float(finite.max())
            norm = TwoSlopeNorm(0.0, min(lo, -1e-6), max(hi, 1e-6))
            im = ax.imshow(v, origin="lower", extent=ext, cmap="RdBu_r", norm=norm, interpolation="nearest")
            ax.contour(xs, ys, pred, levels=np.arange(pred.max()) + 0.5, colors="k", linewidths=0.4)
            ax.set_title(f"FTMLE {name}\nmean {finite.mean():.2f}, max {hi:.2f}", fontsize=8)
            fig.colorbar(im, ax=ax, shrink=0.7)
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
        save_figure(fig, path)
    finally:
        plt.close(fig)


def _toy_markdown(results: dict) -> str:
    lines = [
        "| task | test acc | overall mean | overall max | "
        + " | ".join(f"{k} mean" for k in next(iter(results["tasks"].values()))["statistics"] if k != "overall")
        + " | near-boundary mean | far mean | Spearman(FTMLE, distance) |"
    ]
    lines.append("|" + " --- |" * (lines[0].count("|") - 1))
    for task, e in results["tasks"].items():
        st, b = e["statistics"], e["boundary"]
        layers = " | ".join(f"{v['mean']:.3f}" for k, v in st.items() if k != "overall")
        lines.append(
            f"| {task} | {100 * e['test_accuracy']:.1f}% | {st['overall']['mean']:.3f} | "
            f"{st['overall']['max']:.3f} | {layers} | {b['near_mean']:.3f} | {b['far_mean']:.3f} | "
            f"{b['spearman_vs_distance']:.2f} |"
        )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# init table (A.3)
# ----------------------------------------------------------------------------------------------
def _mnist(spec: TableSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from stosim.datasets import load_dataset

    train, test = load_dataset("mnist", spec.data_dir, limit_train=spec.n_train, limit_test=spec.n_ftmle)
    x = torch.as_tensor(train.images, dtype=torch.float32).reshape(-1, 1, 28, 28)
    y = torch.as_tensor(train.labels, dtype=torch.int64)
    xt = torch.as_tensor(test.images, dtype=torch.float32).reshape(-1, 1, 28, 28)
    return x, y, xt


def run_table_study(spec: TableSpec, out: Path, progress: Progress | None = None) -> dict[str, Any]:
    """FTMLE statistics of each model trained / default-initialised / Xavier-initialised."""
    results: dict[str, Any] = {"spec": spec.model_dump(), "models": {}}
    mnist = None
    for name in spec.models:
        t0 = time.perf_counter()
        if name == "toy-mlp":
            toy = _table_toy_spec(spec)
            trained, info = _train_toy(spec.toy_task, toy, toy.epochs, spec.seed)
            x_eval = torch.as_tensor(grid_points(toy.grid, toy.bound)[2])
        else:
            if mnist is None:
                mnist = _mnist(spec)
            x, y, x_eval = mnist
            trained = _fresh_model(name, spec)
            if name == "mnist-ae":
                info = {
                    "train_mse": fit_autoencoder(
                        trained, x, epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr, seed=spec.seed
                    )
                }
            else:
                info = {
                    "train_accuracy": fit_classifier(
                        trained, x, y, epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr, seed=spec.seed
                    )
                }
        models = {
            "trained": trained,
            "default": init_weights_(_fresh_model(name, spec), "default", spec.seed + 1),
            "xavier": init_weights_(_fresh_model(name, spec), "xavier", spec.seed + 1),
        }
        entry: dict[str, Any] = {"training": info, "n_samples": int(x_eval.shape[0])}
        dists = {}
        for init, model in models.items():
            xe = x_eval.flatten(1) if isinstance(model, _FlatMLP) else x_eval
            values = layer_ftmle(_inner(model), xe, method=spec.method, tol=spec.tol, seed=spec.seed)
            entry[init] = layer_statistics(values)
            entry[init]["_all_converged"] = bool(values["_converged"].all())
            dists[init] = values["overall"]
        entry["wall_time_s"] = time.perf_counter() - t0
        results["models"][name] = entry
        _plot_init_hist(out / f"dnn_init_{name}.png", name, dists)
        if progress:
            progress(
                f"{name}: overall mean FTMLE trained {entry['trained']['overall']['mean']:.3f}, default "
                f"{entry['default']['overall']['mean']:.3f}, xavier {entry['xavier']['overall']['mean']:.3f} "
                f"1/layer ({entry['wall_time_s']:.0f} s)"
            )
    write_results(results, out, _table_markdown(results))
    return results


def _table_toy_spec(spec: TableSpec) -> ToySpec:
    return ToySpec(study="toy-ftmle", tasks=[spec.toy_task], epochs=spec.toy_epochs, grid=spec.toy_grid, seed=spec.seed)


def _fresh_model(name: str, spec: TableSpec) -> nn.Module:
    """A newly (default-)initialised model of the table, seeded by ``spec.seed``."""
    if name == "toy-mlp":
        toy = _table_toy_spec(spec)
        return toy_mlp(task_classes(spec.toy_task), toy.depth, toy.hidden, toy.activation, spec.seed)
    torch.manual_seed(spec.seed)
    if name == "mnist-mlp":
        return _FlatMLP(MLPClassifier(784, 10, spec.mlp_hidden, depth=spec.mlp_depth))
    if name == "mnist-cnn":
        return mnist_cnn(spec.seed)
    return ConvAutoencoder()


class _FlatMLP(nn.Module):
    """An MLPClassifier fed (B, 1, 28, 28) images."""

    def __init__(self, mlp: MLPClassifier) -> None:
        super().__init__()
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x.flatten(1))


def _inner(model: nn.Module) -> nn.Module:
    return model.mlp if isinstance(model, _FlatMLP) else model


def _plot_init_hist(path: Path, name: str, dists: dict[str, np.ndarray]) -> None:
    from stosim.plotting import plot_histogram

    plot_histogram(dists, path, xlabel="overall FTMLE (1/layer)", title=f"{name}: trained vs untrained")


def _table_markdown(results: dict) -> str:
    out = []
    for name, e in results["models"].items():
        cols = [k for k in e["trained"] if not k.startswith("_")]
        out.append(f"**{name}** ({e['n_samples']} inputs; {json.dumps(e['training'])})\n")
        out.append("| init | stat | " + " | ".join(cols) + " |")
        out.append("|" + " --- |" * (len(cols) + 2))
        for init in INITS:
            for stat in ("mean", "std", "max"):
                out.append(f"| {init} | {stat} | " + " | ".join(f"{e[init][c][stat]:.3f}" for c in cols) + " |")
        out.append("")
    return "\n".join(out)
