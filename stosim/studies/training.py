"""Training reservoir models end to end through the substrate (or readout-only by ridge regression).

:class:`TrainConfig` is the validated configuration (pydantic; TOML files in ``experiments/``
or command-line flags); :func:`train` runs it with a checkpoint after every epoch, so an
interrupted run resumes exactly where it stopped: data order, noise streams and optimizer
state depend only on (seed, epoch).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import time
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Callable, Literal

import numpy as np
import torch
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from stosim.checkpoint import load_checkpoint, restore_model, restore_optimizer, save_checkpoint
from stosim.checks import check_steps, read_toml
from stosim.datasets import ImageDataset, load_dataset
from stosim.integrate import buffers as gradient_buffers
from stosim.model_kinds import KIND_KEYS, kind, kind_names, kinds
from stosim.models import ConvReservoirClassifier
from stosim.parameters import SUBSTRATE_TIME_KEYS
from stosim.parameters import UNIT_DIMENSIONS as UNIT_DIMENSIONS
from stosim.parameters import get as get_parameter
from stosim.physics.noise import check_snr_db
from stosim.ridge import RidgeAccumulator
from stosim.storage import output_lock, remove_stale_temporaries, write_text_atomic
from stosim.substrates.protocols import Stochastic
from stosim.units import UnitError, format_quantity, format_time, parse_quantity, values_agree

__all__ = [
    "TrainConfig",
    "STO_SUBSTRATES",
    "STO_TIME_KEYS",
    "UNIT_DIMENSIONS",
    "train",
    "evaluate_accuracy",
    "TrainResult",
    "build_model",
    "load_train_config",
    "validate_train_config",
    "check_train_run",
    "with_defaults",
    "resolved_config",
    "run_seeds",
    "SUBSTRATE_KEYS",
    "substrate_keys",
    "config_differences",
    "model_inputs",
    "learning_rate",
    "ConfigError",
    "SUBSTRATES",
]

SUBSTRATES = kind_names()  # the model kinds (stosim.model_kinds) registered at import
log = logging.getLogger(__name__)  # diagnostics; the CLI shows them with -v
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
CURVE = "learning_curve.png"


def _field(name: str, default: Any, **kwargs: Any) -> Any:
    """The pydantic field of the parameter ``name`` (stosim.parameters: range and description)."""
    return get_parameter(name).field(default, **kwargs)


class ConfigError(ValueError):
    """An invalid training configuration; the message names the key."""


def _parse(value: Any, dimension: str, name: str) -> float:
    try:
        return parse_quantity(value, dimension, name=name)
    except UnitError as exc:
        raise ValueError(str(exc)) from None


# the substrates built on coupled STOs
STO_SUBSTRATES = frozenset(name for name, k in kinds().items() if k.substrate is not None and k.substrate.coupled_sto)


def _check_optional_snr_db(v: float | None, info: ValidationInfo) -> float | None:
    return None if v is None else check_snr_db(v, info.field_name)


# a noise SNR field of a config (dB; None or +inf: no noise), validated by check_snr_db
OptionalSNRdB = Annotated[float | None, AfterValidator(_check_optional_snr_db), Field(description="dB; +inf: no noise")]


class TrainConfig(BaseModel):
    """A training run. Quantities with units are strings ("500 Oe", "300 ps", "2.5 mA")."""

    # strict: a boolean is not a number (lr = true is refused, not trained at 1.0), a string not a number
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    substrate: str = Field(default=kind_names()[0], description="a model kind of stosim.model_kinds")
    dataset: Literal["digits", "mnist", "fashion-mnist"] = "digits"
    data_dir: str | None = None
    download: bool = False
    limit_train: int | None = _field("limit_train", None)
    limit_test: int | None = _field("limit_test", None)
    epochs: int = _field("epochs", 20)
    batch_size: int = _field("batch_size", 64)
    lr: float = _field("lr", 0.01)
    optimizer: Literal["adam", "sgd"] = "adam"
    lr_schedule: Literal["constant", "cosine"] = Field(
        default="constant",
        description="cosine: lr decays to 0 over the run, lr_k = lr (1 + cos(pi k / K)) / 2 "
        "at step k of K = epochs x batches per epoch",
    )
    momentum: float = _field("momentum", 0.9)
    weight_decay: float = _field(
        "weight_decay", 0.0, description="adam: decoupled weight decay (AdamW); sgd: L2 penalty coefficient"
    )
    input_offset: float = _field(
        "input_offset",
        0.0,
        allow_inf_nan=False,
        description="subtracted from every input value (pixels in [0, 1]) before the read-in; 0.5 centres the pixels",
    )
    seed: int = _field("seed", 0)
    dtype: Literal["float32", "float64"] = "float64"
    readout_only: bool = False
    ridge_alpha: float = _field("ridge_alpha", 1e-2)
    # substrate parameters (None: the substrate's default)
    n: int | None = _field("n", None)
    hidden: int | None = _field(
        "hidden", None, description="hidden units of mlp/cnn (default 3 x 100, the STO feature count)"
    )
    depth: int = _field("depth", 1, description="mlp: hidden layers of `hidden` units")
    activation: Literal["relu", "tanh"] = Field(default="relu", description="mlp: hidden activation")
    init_spectral_radius: float | None = _field(
        "init_spectral_radius",
        None,
        description="mlp (depth >= 2): square hidden weights drawn at this spectral radius",
    )
    coupling: float = _field("coupling", 500.0)
    current: float | None = _field("current", None)
    duration: float | None = _field("duration", None, description="sto: s; lorenz96: model time")
    dt: float | None = _field("dt", None, description="sto: s; lorenz96: model time")
    device: str | None = None
    spectral_radius: float = _field("spectral_radius", 1.0)
    steps: int = _field("steps", 5)
    mask: Literal["independent", "symmetric"] = _field(
        "mask",
        "independent",
        description="ffesn: W's mask, entries kept independently with probability 0.5, or a symmetric random "
        "graph with exactly round(0.5 N (N - 1) / 2) edges and zero diagonal (the seed study's code)",
    )
    forcing: float = _field("forcing", 8.0)
    conv_channels: int = _field("conv_channels", 8)
    g: float = _field("g", 1.5)
    network_time: Literal["continuous", "discrete"] = _field(
        "network_time",
        "continuous",
        description="rate network: tau dh/dt = -h + J tanh h (RK4, times in tau) or "
        "h_(s+1) = J tanh h_s (duration = steps)",
    )
    input_std: float = _field("input_std", 0.0)
    input_tau: float = _field("input_tau", 0.0)
    temperature: float = _field("temperature", 0.0)
    dynamical_snr: OptionalSNRdB = None
    dynamical_noise_reference: float | None = _field(
        "dynamical_noise_reference",
        None,
        description="s, e.g. '1 ps': the dynamical SNR is that of the noise accumulated over this time (a Wiener "
        "increment, independent of dt); None: per integration step, the seed study's (dt-dependent)",
    )
    observation_snr: OptionalSNRdB = None
    variability: float = _field("variability", 0.0)
    train_with_noise: bool = Field(default=True, description="False: train noiselessly, evaluate with the noise")

    @field_validator("substrate")
    @classmethod
    def _substrate(cls, v: str) -> str:
        if v not in kinds():
            valid = [repr(k) for k in kinds()]
            raise ValueError(f"Input should be {', '.join(valid[:-1])} or {valid[-1]}")
        return v

    @field_validator("*", mode="before")
    @classmethod
    def _units(cls, v: Any, info: ValidationInfo) -> Any:
        """A quantity with a unit ("500 Oe", "300 ps") in the internal unit of its parameter's dimension."""
        dimension = UNIT_DIMENSIONS.get(info.field_name)
        return _parse(v, dimension, info.field_name) if dimension is not None and isinstance(v, str) else v

    @model_validator(mode="after")
    def _readout_needs_reservoir(self) -> "TrainConfig":
        if self.readout_only and not kind(self.substrate).reservoir:
            raise ValueError(
                f"readout_only, substrate: a ridge readout needs a reservoir model; substrate = "
                f"{self.substrate!r} has no fixed features"
            )
        return self

    @property
    def default_n(self) -> int:
        return kind(self.substrate).default_n

    def resolved(self) -> dict[str, Any]:
        return self.model_dump()


def _as_json(config: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(config, default=str))


def with_defaults(saved_config: dict[str, Any]) -> dict[str, Any]:
    """A configuration saved by an earlier version, completed with today's defaults for the keys it
    lacks (keys added later, such as ``weight_decay``, default to the behaviour of that version)."""
    filled = {name: field.default for name, field in TrainConfig.model_fields.items()}
    filled.update(saved_config)
    return _as_json(filled)


def config_differences(saved_config: dict[str, Any], cfg: TrainConfig, ignore: tuple[str, ...] = ()) -> list[str]:
    """The keys (sorted, less ``ignore``) in which a saved configuration (a checkpoint's or
    ``metrics.json``'s, completed by :func:`with_defaults`) differs from ``cfg``; empty if the same run."""
    saved, current = with_defaults(saved_config), _as_json(cfg.resolved())
    ignore = (*ignore, *LOCATION_KEYS)  # where the (checksummed) data lives does not change the run
    # floats within a relative 1e-12: a quantity parsed by an earlier version may differ in its last bit
    return sorted(
        k for k in set(saved) | set(current) if k not in ignore and not values_agree(saved.get(k), current.get(k))
    )


def load_train_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """Read a TOML experiment file (keys of :class:`TrainConfig`), apply ``overrides``, validate."""
    path = Path(path)
    raw = read_toml(path, ConfigError, "experiment file")
    _check_file_units(raw, str(path))
    _resolve_file_paths(raw, path)
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return validate_train_config(raw, source=str(path))


# keys that say where something is, not what the run is (config_differences ignores them)
LOCATION_KEYS = ("data_dir", "download")
PATH_KEYS = ("data_dir", "device")  # paths in an experiment file, relative to the file's folder


def _resolve_file_paths(raw: dict[str, Any], path: Path) -> None:
    """Relative paths in an experiment file (``data_dir``, ``device``) are relative to the file's folder, so
    the file works from any working directory; they become absolute. A relative ``device`` that names no
    file there but does from the working directory (files written before this rule) is kept as it is."""
    for key in PATH_KEYS:
        value = raw.get(key)
        if not isinstance(value, str) or Path(value).expanduser().is_absolute():
            continue
        beside = (path.parent / value).resolve()
        if key == "device" and not beside.exists() and Path(value).exists():
            continue
        raw[key] = str(beside)


# UNIT_DIMENSIONS: dimension of each quantity that must carry a unit in experiment files and sweep specs
# (stosim.parameters); the substrate times (STO_TIME_KEYS) for the STO substrates only (Lorenz 96 time is in
# model time units, FFESN time in steps: plain numbers there)
STO_TIME_KEYS = SUBSTRATE_TIME_KEYS
_UNIT_EXAMPLES = MappingProxyType({"field": "500 Oe", "current": "2.5 mA", "temperature": "300 K", "time": "300 ps"})


def _check_file_units(raw: dict[str, Any], source: str) -> None:
    """Refuse a plain number where an experiment file needs a quantity with a unit ("duration = 300"
    for the STOs would be 300 s)."""
    substrate = raw.get("substrate", TrainConfig.model_fields["substrate"].default)
    sto = isinstance(substrate, str) and substrate in STO_SUBSTRATES
    for key, dimension in UNIT_DIMENSIONS.items():
        value = raw.get(key)
        if (key not in STO_TIME_KEYS or sto) and isinstance(value, (int, float)) and not isinstance(value, bool):
            raise ConfigError(
                f"{source}: {key} = {value!r} has no unit; write it with one, e.g. "
                f'{key} = "{_UNIT_EXAMPLES[dimension]}"'
            )


def validate_train_config(raw: dict[str, Any], source: str = "config") -> TrainConfig:
    """``raw`` (the keys of :class:`TrainConfig`) validated, with the checks of the run
    (:func:`check_train_run`): a configuration passes if and only if :func:`train` starts it."""
    try:
        cfg = TrainConfig.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ").removeprefix(f"{key}: ")  # the key is named once
            got = "" if err["type"] == "missing" else f" (got {err.get('input')!r})"
            lines.append(f"{source}: {key}: {msg}{got}")
        raise ConfigError("\n".join(lines)) from None
    check_train_run(cfg, source)
    return cfg


# the run-level checks build the substrates of at most this many oscillators / nodes exactly as the run does
# (W and its spectral radius: ~0.1 s at 1000); beyond, they check a lower bound of the STOs' precession rate
# (the coupling row sum sum_j |W_ij| >= the spectral radius 1), which refuses only what the run refuses
EXACT_CHECK_MAX_N = 1024
from stosim.substrates.ffesn import FFESN_CHECK_MAX_N  # noqa: E402, F401  (the run check's FFESN size limit)


def check_train_run(cfg: TrainConfig, source: str = "config", device: Any = None) -> None:
    """The checks the run applies beyond the fields of ``cfg``, without loading data or training: the device
    file loads (``device``: DeviceParameters to use instead of ``cfg.device``), the substrates build
    (coupling, current and the device-to-device variability in range, duration a whole multiple of dt) and
    the STO time step resolves the fastest precession (physics.array.check_time_step: the turn of m per
    step |dm/dt|_max dt <= 1 rad). Raises :class:`ConfigError` naming ``source`` and the key."""
    from threadpoolctl import threadpool_limits

    try:
        with threadpool_limits(1):  # small eigenvalue problems: BLAS threads only cost on a shared machine
            _check_substrates(cfg, device)
    except ConfigError:
        raise
    except (ValueError, OSError, ArithmeticError) as exc:  # ArithmeticError: T / dt beyond the float range
        text = str(exc)
        raise ConfigError(text if text.startswith(f"{source}:") else f"{source}: {text}") from None


@functools.lru_cache(maxsize=256)
def _build_sto(
    n: int,
    coupling: float,
    dt: float,
    current: float | None,
    device: Any,
    seed: int,
    temperature: float,
    dynamical_snr: float | None,
    observation_snr: float | None,
    variability: float,
    dtype: str,
) -> None:
    """Build the CoupledSTOArray of these settings over one step (raises what the run's build raises);
    remembered, so that the points of a sweep that differ only in their duration build it once."""
    from stosim.substrates.sto_array import CoupledSTOArray

    CoupledSTOArray(
        n=n,
        coupling_oe=coupling,
        duration_s=dt,
        dt_s=dt,
        current_a=current,
        device=device,
        seed=seed,
        temperature_k=temperature,
        dynamical_snr_db=dynamical_snr,
        observation_snr_db=observation_snr,
        variability=variability,
        dtype=torch.float64 if dtype == "float64" else torch.float32,
    )


def _check_step_ratio(duration: float, dt: float) -> None:
    """Refuse duration / dt beyond MAX_STEPS before a substrate rounds it (an inf ratio cannot be rounded)."""
    if math.isfinite(duration) and math.isfinite(dt) and dt > 0:
        check_steps(duration / dt)


def _check_substrates(cfg: TrainConfig, device: Any) -> None:
    n = cfg.n or cfg.default_n
    if cfg.substrate in STO_SUBSTRATES:
        from stosim.config import DeviceParameters, load_device
        from stosim.physics.array import STOArray, check_time_step
        from stosim.simulation import steps_for_duration

        dev = device if isinstance(device, DeviceParameters) else load_device(cfg.device)
        seeds = tuple(cfg.seed + i for i in range(kind(cfg.substrate).matrix_seeds))
        _check_step_ratio(cfg.duration or 300e-12, cfg.dt or 1e-12)
        check_steps(steps_for_duration(cfg.duration or 300e-12, cfg.dt or 1e-12))
        if n <= EXACT_CHECK_MAX_N:
            for seed in seeds:  # as _sto builds them (duration checked above: one step of dt here)
                _build_sto(
                    n,
                    cfg.coupling,
                    cfg.dt or 1e-12,
                    cfg.current,
                    dev,
                    seed,
                    cfg.temperature,
                    cfg.dynamical_snr,
                    cfg.observation_snr,
                    cfg.variability,
                    cfg.dtype,
                )
        else:
            bound = STOArray.with_matrix(dev, np.array([[0.0, 1.0], [1.0, 0.0]]), cfg.coupling, current_a=cfg.current)
            check_time_step(bound, cfg.dt or 1e-12)
    else:
        spec = kind(cfg.substrate).substrate
        if spec is not None and spec.check is not None:
            spec.check(cfg, n, _torch_dtype(cfg))


def _torch_dtype(cfg: TrainConfig) -> torch.dtype:
    return torch.float64 if cfg.dtype == "float64" else torch.float32


def build_model(cfg: TrainConfig, n_inputs: int, n_classes: int, image_shape: tuple[int, int]) -> torch.nn.Module:
    """The model of ``cfg.substrate`` (a kind of :mod:`stosim.model_kinds`) with parameters initialized from
    ``cfg.seed``."""
    torch.manual_seed(cfg.seed)
    model_kind = kind(cfg.substrate)
    mlp_only = ("depth", "activation", "init_spectral_radius")
    if not set(mlp_only) <= set(model_kind.keys) and (
        cfg.depth != 1 or cfg.activation != "relu" or cfg.init_spectral_radius is not None
    ):
        owners = " or ".join(repr(k.name) for k in kinds().values() if set(mlp_only) <= set(k.keys))
        raise ConfigError(
            f"depth, activation and init_spectral_radius apply to substrate = {owners} only, not {cfg.substrate!r}"
        )
    return model_kind.build(cfg, n_inputs, n_classes, image_shape, _torch_dtype(cfg))


def _device_limit_warnings(model: torch.nn.Module, allow_beyond_limits: bool) -> tuple[str, ...]:
    """The device limits the model's STO arrays exceed (``check_device_limits``: refused unless allowed)."""
    from stosim.simulation import check_device_limits
    from stosim.substrates.sto_array import CoupledSTOArray

    found: list[str] = []
    for sub in _substrates(model):
        if isinstance(sub, CoupledSTOArray):
            found += check_device_limits(sub.array, allow_beyond_limits=allow_beyond_limits, what="training")
    return tuple(dict.fromkeys(found))


# the TrainConfig keys that set a substrate's (or a baseline's) parameters, per substrate; the other
# substrate keys do not apply to it (the command line refuses them, the resolved configuration omits them)
SUBSTRATE_KEYS = KIND_KEYS  # kind -> its keys, looked up in the registry (stosim.model_kinds)
_GENERAL_KEYS = (
    "substrate",
    "dataset",
    "data_dir",
    "limit_train",
    "limit_test",
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "lr_schedule",
    "momentum",
    "weight_decay",
    "input_offset",
    "seed",
    "dtype",
    "readout_only",
    "ridge_alpha",
)


def substrate_keys() -> frozenset[str]:
    """Every key that sets a parameter of some substrate or baseline (see :data:`SUBSTRATE_KEYS`)."""
    return frozenset(k for keys in SUBSTRATE_KEYS.values() for k in keys)


def resolved_config(cfg: TrainConfig) -> dict[str, Any]:
    """The run's configuration as it ran: every default filled in (no None), quantities as text with their
    unit ("500 Oe", "300 ps", "2.5 mA", "0 K"), only the substrate keys that apply to ``cfg.substrate``;
    noise SNRs left unset read "off". For ``metrics.json`` and file attributes (``config`` keeps the keys as
    given)."""
    from stosim.datasets import default_data_dir

    out: dict[str, Any] = {k: getattr(cfg, k) for k in _GENERAL_KEYS}
    if cfg.dataset == "digits":
        out["data_dir"] = "(built in: the 8 x 8 digits)"
    elif cfg.data_dir is None:
        out["data_dir"] = str(default_data_dir(cfg.dataset))
    for key in ("limit_train", "limit_test"):
        if out[key] is None:
            out[key] = "all"
    if not cfg.readout_only:
        out.pop("ridge_alpha")
    if cfg.optimizer != "sgd":
        out.pop("momentum")
    n = cfg.n or cfg.default_n
    sto = cfg.substrate in STO_SUBSTRATES
    values: dict[str, Any] = {
        "n": n,
        "hidden": cfg.hidden or 3 * n,
        "spectral_radius": cfg.spectral_radius,
        "steps": cfg.steps,
        "forcing": cfg.forcing,
        "conv_channels": cfg.conv_channels,
        "depth": cfg.depth,
        "activation": cfg.activation,
        "init_spectral_radius": ("default" if cfg.init_spectral_radius is None else cfg.init_spectral_radius),
        "variability": cfg.variability,
        "train_with_noise": cfg.train_with_noise,
        "coupling": format_quantity(cfg.coupling, "field"),
        "temperature": format_quantity(cfg.temperature, "temperature"),
    }
    values["dynamical_noise_reference"] = (
        "per step" if cfg.dynamical_noise_reference is None else format_time(cfg.dynamical_noise_reference)
    )
    for key in ("dynamical_snr", "observation_snr"):
        value = getattr(cfg, key)
        values[key] = "off" if value is None or math.isinf(value) else f"{value:g} dB"
    if sto:
        from stosim.config import default_device_path, load_device

        device_path = cfg.device or str(default_device_path())
        device = load_device(device_path)
        values["device"] = f"{device.name} ({device_path})"
        values["current"] = f"{(cfg.current if cfg.current is not None else device.current_a) * 1e3:.6g} mA"
        values["duration"] = format_time(cfg.duration or 300e-12)
        values["dt"] = format_time(cfg.dt or 1e-12)
    else:  # plain numbers in the substrate's time unit (Lorenz 96: model time; rate network: tau or steps)
        spec = kind(cfg.substrate).substrate
        values["duration"] = cfg.duration or (spec.duration if spec is not None and spec.duration else 1.0)
        values["dt"] = cfg.dt or (spec.dt if spec is not None and spec.dt else 0.01)
    for key in SUBSTRATE_KEYS[cfg.substrate]:
        out[key] = values[key] if key in values else getattr(cfg, key)
    return out


def run_seeds(cfg: TrainConfig) -> dict[str, int]:
    """Every seed of a run (all derived from ``cfg.seed``): what each one draws."""
    seeds = {"seed": cfg.seed, "initialization": cfg.seed, "data_order": cfg.seed, "noise": cfg.seed}
    if cfg.dataset == "digits":
        seeds["digits_split"] = cfg.seed
    model_kind = kind(cfg.substrate)
    if model_kind.substrate is not None and model_kind.substrate.seeded_matrix:
        seeds["substrate_matrix"] = cfg.seed
    if model_kind.matrix_seeds >= 2:
        seeds["second_substrate_matrix"] = cfg.seed + 1
    return seeds


def _substrates(model: torch.nn.Module):
    from stosim.substrates.base import Substrate

    return [m for m in model.modules() if isinstance(m, Substrate)]


@dataclasses.dataclass
class TrainResult:
    """Outcome of :func:`train`: per-epoch history and summary numbers."""

    history: list[dict[str, float]]
    test_accuracy: float
    best_test_accuracy: float
    epochs: int
    epochs_to_converge: int
    wall_time_s: float
    out_dir: Path | None
    model: torch.nn.Module

    def summary(self) -> dict[str, Any]:
        return {
            "test_accuracy": self.test_accuracy,
            "best_test_accuracy": self.best_test_accuracy,
            "epochs": self.epochs,
            "epochs_to_converge": self.epochs_to_converge,
            "wall_time_s": self.wall_time_s,
            "final_train_accuracy": self.history[-1]["train_accuracy"],
        }


ACCURACY_KEYS = frozenset({"test_accuracy", "best_test_accuracy", "final_train_accuracy", "train_accuracy"})


def _in_percent(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with its accuracies (fractions in :class:`TrainResult` and the history) in percent."""
    return {k: 100.0 * v if k in ACCURACY_KEYS else v for k, v in record.items()}


def _epochs_to_converge(history: list[dict[str, float]]) -> int:
    """First epoch whose test accuracy is within 0.5 percentage points of the best."""
    best = max(h["test_accuracy"] for h in history)
    return next(int(h["epoch"]) for h in history if h["test_accuracy"] >= best - 0.005)


def _saved_config(config: dict[str, Any]) -> TrainConfig:
    """A checkpoint's configuration, validated (an earlier version's lacks later keys: their defaults)."""
    return validate_train_config(config, source="config")


def evaluate_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """Fraction of ``x`` classified as ``y``, evaluated in chunks of max(batch_size, 256) images."""
    model.eval()
    correct = 0
    chunk = max(batch_size, 256)
    with torch.no_grad():
        for i in range(0, x.shape[0], chunk):
            correct += int((model(x[i : i + chunk]).argmax(1) == y[i : i + chunk]).sum())
    return correct / x.shape[0]


def model_inputs(cfg: TrainConfig, ds: ImageDataset, dtype: torch.dtype) -> torch.Tensor:
    """The images of ``ds`` as a model trained with ``cfg`` sees them: flattened, minus ``input_offset``."""
    return torch.as_tensor(ds.flat() - cfg.input_offset, dtype=dtype)


def _tensors(cfg: TrainConfig, ds: ImageDataset, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    return model_inputs(cfg, ds, dtype), torch.as_tensor(ds.labels, dtype=torch.int64)


def _reset_noise(model: torch.nn.Module, seed: int, epoch: int, phase: int) -> None:
    for k, sub in enumerate(_substrates(model)):
        sub.reset(int(np.random.SeedSequence(seed, spawn_key=(epoch, phase, k)).generate_state(1)[0]))


def _fit_ridge(
    model: torch.nn.Module,
    cfg: TrainConfig,
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    on_batch: Callable[[int, int], None] | None,
) -> None:
    if not hasattr(model, "features"):
        raise ConfigError(f"readout_only needs a reservoir model; substrate = {cfg.substrate!r} has no fixed features")
    readout = model.reservoir.readout if isinstance(model, ConvReservoirClassifier) else model.readout
    acc = RidgeAccumulator(readout.in_features, n_classes)
    model.eval()
    n_batches = math.ceil(x.shape[0] / cfg.batch_size)
    with torch.no_grad():
        for k, i in enumerate(range(0, x.shape[0], cfg.batch_size)):
            acc.update(model.features(x[i : i + cfg.batch_size]), y[i : i + cfg.batch_size])
            if on_batch:
                on_batch(k + 1, n_batches)
        w, b = acc.solve(cfg.ridge_alpha, fit_intercept=readout.bias is not None)
        readout.weight.copy_(torch.as_tensor(w.T, dtype=readout.weight.dtype))
        if readout.bias is not None:
            readout.bias.copy_(torch.as_tensor(b, dtype=readout.bias.dtype))


def _train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    n_classes: int,
    epoch: int,
    n_batches: int,
    readout_only: bool,
    on_batch: Callable[[int, int], None] | None,
) -> tuple[float | None, int | None]:
    """One pass over the training data (shuffled from (seed, epoch)); returns (summed loss, correct) or,
    for a ridge readout, (None, None)."""
    if readout_only:
        _fit_ridge(model, cfg, x_train, y_train, n_classes, on_batch)
        return None, None
    model.train()
    order = torch.randperm(x_train.shape[0], generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
    loss_sum, train_correct = 0.0, 0
    for k in range(n_batches):
        idx = order[k * cfg.batch_size : (k + 1) * cfg.batch_size]
        xb, yb = x_train[idx], y_train[idx]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, (epoch - 1) * n_batches + k, cfg.epochs * n_batches)
        optimizer.zero_grad()
        logits = model(xb)
        loss = torch.nn.functional.cross_entropy(logits, yb)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"the loss became non-finite at epoch {epoch}, batch {k + 1}; lower the learning rate (lr = {cfg.lr})"
            )
        loss.backward()
        optimizer.step()
        loss_sum += float(loss.detach()) * len(idx)
        train_correct += int((logits.argmax(1) == yb).sum())
        if on_batch:
            on_batch(k + 1, n_batches)
    return loss_sum, train_correct


def _optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """Adam (AdamW when ``weight_decay`` > 0: w <- w - lr wd w besides the Adam step) or SGD with
    momentum (``weight_decay`` adds wd w to the gradient, the L2 penalty wd |w|^2 / 2)."""
    if cfg.optimizer == "adam":
        if cfg.weight_decay > 0:
            return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.Adam(params, lr=cfg.lr)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def learning_rate(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of ``total_steps``.

    constant: ``cfg.lr``; cosine: lr_k = lr (1 + cos(pi k / K)) / 2 (k = step, K = total_steps), from
    ``lr`` at the first step towards 0 at the last. A function of the step alone, so a resumed run
    continues the same schedule.
    """
    if not 0 <= step < total_steps:
        raise ValueError(f"step = {step} must lie in [0, total_steps = {total_steps})")
    if cfg.lr_schedule == "constant":
        return cfg.lr
    return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * step / total_steps))


def train(
    cfg: TrainConfig,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    on_batch: Callable[[int, int], None] | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    allow_beyond_limits: bool = False,
) -> TrainResult:
    """Train ``cfg``; with ``out_dir``: checkpoint every epoch, ``metrics.json`` and a learning-curve PNG,
    written by this process alone (it holds :func:`~stosim.storage.output_lock` on the checkpoint; the
    temporary files a killed run left beside these outputs are removed).

    ``resume`` continues from ``out_dir/checkpoint.pt`` (same configuration except ``epochs``, which
    may change only with a constant learning rate).
    ``on_batch(done, total)`` and ``on_epoch(record)`` report progress.
    An STO bias current beyond the device's limits raises ``DeviceLimitError``
    (:func:`stosim.simulation.check_device_limits`); with ``allow_beyond_limits`` training runs with a
    warning, and ``metrics.json`` lists the limits exceeded under ``device_limit_warnings``.
    The buffers the steps reused for their gradients (:mod:`stosim.integrate.buffers`) are freed at the end.
    """
    try:
        if out_dir is None:
            return _train(
                cfg, None, resume=resume, on_batch=on_batch, on_epoch=on_epoch, allow_beyond_limits=allow_beyond_limits
            )
        out = Path(out_dir)
        with output_lock(out / CHECKPOINT):
            for name in (METRICS, CURVE):
                remove_stale_temporaries(out / name)
            return _train(
                cfg, out, resume=resume, on_batch=on_batch, on_epoch=on_epoch, allow_beyond_limits=allow_beyond_limits
            )
    finally:
        gradient_buffers.release()


def _train(
    cfg: TrainConfig,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    on_batch: Callable[[int, int], None] | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    allow_beyond_limits: bool = False,
) -> TrainResult:
    """The body of :func:`train` (with ``out_dir``, its caller holds the output lock)."""
    check_train_run(cfg)  # the checks stosim validate applies, before any data is loaded
    t_start = time.perf_counter()
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    train_ds, test_ds = load_dataset(
        cfg.dataset, cfg.data_dir, cfg.download, seed=cfg.seed, limit_train=cfg.limit_train, limit_test=cfg.limit_test
    )
    dtype = _torch_dtype(cfg)
    x_train, y_train = _tensors(cfg, train_ds, dtype)
    x_test, y_test = _tensors(cfg, test_ds, dtype)
    n_classes = train_ds.n_classes
    model = build_model(cfg, x_train.shape[1], n_classes, train_ds.image_shape)
    limit_warnings = _device_limit_warnings(model, allow_beyond_limits)
    log.info(
        "training %s on %s (%d train, %d test images): %s",
        cfg.substrate,
        cfg.dataset,
        x_train.shape[0],
        x_test.shape[0],
        resolved_config(cfg),
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _optimizer(cfg, params)
    history: list[dict[str, float]] = []
    start_epoch = 1
    elapsed_before = 0.0
    if resume:
        if out is None or not (out / CHECKPOINT).exists():
            raise FileNotFoundError(f"resuming: no {CHECKPOINT} in {out}; start without resuming")
        ckpt = load_checkpoint(out / CHECKPOINT, validate_config=_saved_config)
        # more epochs extend a constant-lr run; a cosine schedule is fixed by its epoch count
        diff = config_differences(ckpt.config, cfg, ignore=("epochs",) if cfg.lr_schedule == "constant" else ())
        if diff:
            raise ConfigError(
                f"resuming: the checkpoint in {out} was made with a different configuration ({diff}); "
                f"train into another folder or delete {out / CHECKPOINT}"
            )
        restore_model(ckpt, model)
        restore_optimizer(ckpt, optimizer)
        if cfg.epochs < ckpt.epoch:
            raise ConfigError(
                f"resuming: epochs = {cfg.epochs}, but the checkpoint in {out} has already "
                f"trained {ckpt.epoch} epochs; epochs must be >= {ckpt.epoch}"
            )
        history = ckpt.history
        start_epoch = ckpt.epoch + 1
        elapsed_before = ckpt.wall_time_s

    differentiable = all(s.capabilities.differentiable for s in _substrates(model))
    readout_only = cfg.readout_only or not differentiable
    n_batches = math.ceil(x_train.shape[0] / cfg.batch_size)
    last_epoch = 1 if readout_only else cfg.epochs  # a ridge readout is exact after one pass over the data
    for epoch in range(start_epoch, last_epoch + 1):
        t_epoch = time.perf_counter()
        _reset_noise(model, cfg.seed, epoch, 0)
        quiet = contextlib.ExitStack()
        if not cfg.train_with_noise:
            for sub in _substrates(model):
                if isinstance(sub, Stochastic):
                    quiet.enter_context(sub.noise_suspended())
        with quiet:
            loss_sum, train_correct = _train_epoch(
                model, optimizer, cfg, x_train, y_train, n_classes, epoch, n_batches, readout_only, on_batch
            )
        _reset_noise(model, cfg.seed, epoch, 1)
        train_acc = (
            train_correct / x_train.shape[0]
            if train_correct is not None
            else evaluate_accuracy(model, x_train, y_train, cfg.batch_size)
        )
        test_acc = evaluate_accuracy(model, x_test, y_test, cfg.batch_size)
        record = {
            "epoch": epoch,
            "train_loss": None if loss_sum is None else loss_sum / x_train.shape[0],
            "train_accuracy": train_acc,
            "test_accuracy": test_acc,
            "epoch_time_s": time.perf_counter() - t_epoch,
        }
        history.append(record)
        log.info(
            "%s epoch %d: train accuracy %.4f, test accuracy %.4f (%.1f s)",
            cfg.substrate,
            epoch,
            train_acc,
            test_acc,
            record["epoch_time_s"],
        )
        if out is not None:
            save_checkpoint(
                out / CHECKPOINT,
                model=model,
                optimizer=optimizer,
                epoch=epoch,
                history=history,
                config=cfg.resolved(),
                wall_time_s=elapsed_before + time.perf_counter() - t_start,
            )
        if on_epoch:
            on_epoch(record)
    wall = elapsed_before + time.perf_counter() - t_start
    result = TrainResult(
        history=history,
        test_accuracy=history[-1]["test_accuracy"],
        best_test_accuracy=max(h["test_accuracy"] for h in history),
        epochs=len(history),
        epochs_to_converge=_epochs_to_converge(history),
        wall_time_s=wall,
        out_dir=out,
        model=model,
    )
    if out is not None:
        from stosim.storage import package_versions

        versions = package_versions()
        # files give accuracies in percent (as sweep files and the printed lines do); TrainResult keeps fractions
        metrics = {
            **_in_percent(result.summary()),
            "accuracy_units": "%",
            "config": cfg.resolved(),
            "resolved_config": resolved_config(cfg),
            "seeds": run_seeds(cfg),
            "stosim_version": versions["stosim"],
            "versions": versions,
            "history": [_in_percent(h) for h in history],
            "n_train": int(x_train.shape[0]),
            "n_test": int(x_test.shape[0]),
            "n_parameters": sum(p.numel() for p in params),
            "device_limit_warnings": list(limit_warnings),
        }
        write_text_atomic(json.dumps(metrics, indent=2, default=str), out / METRICS)
        from stosim.plotting import plot_learning_curve

        plot_learning_curve(history, out / CURVE, title=f"{cfg.substrate} on {cfg.dataset}")
    return result
