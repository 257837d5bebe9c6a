"""Point kinds of a sweep: what one grid point runs, which parameters it takes, what it returns.

A :class:`PointKind` bundles

- ``config``: a pydantic model (extra keys forbidden) validated for every point before any work
  starts; quantities with units are strings in the spec ("500 Oe") and floats in internal units
  (Oe, s, A, K, dB) once validated;
- ``run(config) -> {output name: float or 1-D array}``: executed in a worker process;
- ``outputs``: the variables it may return, each with ``units`` and ``long_name`` and, where it exists
  only for some configurations, an ``applies(config)`` predicate; :meth:`PointKind.outputs_for` gives
  the variables of a given sweep (an output exists in a sweep file when it applies to one of its points);
- ``extra_dims(configs)``: coordinates of output dimensions beyond the grid (``epoch``, ``exponent``).

Kinds: ``train`` (a :class:`~stosim.studies.training.TrainConfig` run), ``mle`` (leading Lyapunov exponents of
a substrate's autonomous dynamics), ``simulate`` (statistics of a coupled STO array's free run),
``ftmle`` (per-sample finite-time MLE of a substrate's map x(0) -> x(T)), ``noise`` (a ``train`` run whose
trained coupled-STO model is evaluated at lists of noise levels). Adding a kind is a point
model, one ``run`` function and one entry in :func:`point_kinds`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import tempfile
import time
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Callable, Literal, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from stosim.parameters import TEXT_UNITS as PARAMETER_TEXT_UNITS
from stosim.parameters import get as get_parameter
from stosim.studies.substrate_names import (
    DEFAULT_SUBSTRATE,
    check_ftmle_substrate,
    check_lyapunov_substrate,
    ftmle_substrates,
    point_time_unit,
)
from stosim.studies.training import STO_SUBSTRATES, STO_TIME_KEYS, UNIT_DIMENSIONS, OptionalSNRdB, TrainConfig
from stosim.units import UnitError, parse_quantity

__all__ = [
    "PointKind",
    "Output",
    "point_kinds",
    "get_kind",
    "parameter_metadata",
    "DeviceOverrides",
    "TrainPoint",
    "MLEPoint",
    "SimulatePoint",
    "FTMLEPoint",
    "NoisePoint",
    "execute_point",
    "resolve_device",
    "device_toml",
    "STO_SUBSTRATES",
    "TEXT_UNITS",
    "normalize_raw",
]

MAX_ERROR_CHARS = 1500  # longer error messages are cut (numba typing errors run to pages)
TEXT_UNITS = PARAMETER_TEXT_UNITS  # the `units` attribute of text variables and categorical coordinates


def time_units(substrate: str, kind: str) -> str:
    """Internal unit of duration / dt / transient for ``substrate`` in a ``kind`` point."""
    if substrate in STO_SUBSTRATES:
        return "s"
    return point_time_unit(substrate, kind) or "1"


def parameter_metadata(key: str, substrate: str = DEFAULT_SUBSTRATE, kind: str = "train") -> tuple[str, str]:
    """(units, long_name) of a swept parameter (stosim.parameters; a substrate time is in the substrate's unit)."""
    param = get_parameter(key)
    return (time_units(substrate, kind) if param.substrate_time else param.unit), param.long_name


SNR_KEYS = frozenset({"dynamical_snr", "observation_snr", "eval_dynamical_snr", "eval_observation_snr"})


def normalize_raw(key: str, value: Any, substrate: str) -> Any:
    """Check a spec value before validation; returns the value the point configuration gets.

    Dimensional quantities must be strings with a unit ("500 Oe"; STO times "300 ps"), Lorenz 96 /
    FFESN times plain numbers; SNRs are numbers of dB, written 20 or "20 dB". Raises ValueError
    naming the key and what is accepted.
    """
    if isinstance(value, list):  # a list-valued key (the evaluation levels of a noise point)
        return [normalize_raw(key, v, substrate) for v in value]
    if key in SNR_KEYS and isinstance(value, str):
        text = value.strip()
        if text.endswith("dB"):
            try:
                return float(text[:-2])
            except ValueError:
                pass
        raise ValueError(f"{key}: expected a signal-to-noise ratio in dB such as 20 or '20 dB', got {value!r}")
    dimension = UNIT_DIMENSIONS.get(key)
    if dimension is None:
        return value
    if key in STO_TIME_KEYS and substrate not in STO_SUBSTRATES:
        if isinstance(value, str):
            raise ValueError(
                f"{key}: {substrate} time is a plain number ({time_units(substrate, 'mle')}s), not {value!r}"
            )
        return value
    parse_quantity(value, dimension, name=key)  # raises UnitError (a ValueError) naming the key
    return value


# ----------------------------------------------------------------------------------------------
# point configurations
# ----------------------------------------------------------------------------------------------


def _field(name: str, default: Any, **kwargs: Any) -> Any:
    """The pydantic field of the parameter ``name`` (stosim.parameters: range and description)."""
    return get_parameter(name).field(default, **kwargs)


def _unit(dimension: str):
    def parse(cls, value: Any, info) -> Any:
        if isinstance(value, str):
            try:
                return parse_quantity(value, dimension, name=info.field_name)
            except UnitError as exc:
                raise ValueError(str(exc)) from None
        return value

    return parse


class DeviceOverrides(BaseModel):
    """Device parameters that replace the device file's (STO substrates only); None: the file's value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    applied_field: float | None = _field("applied_field", None)
    anisotropy_field: float | None = _field("anisotropy_field", None)
    damping: float | None = _field("damping", None)
    polarization: float | None = _field("polarization", None)
    torque_asymmetry: float | None = _field("torque_asymmetry", None)
    tmr_ratio: float | None = _field("tmr_ratio", None)

    _fields_oe = field_validator("applied_field", "anisotropy_field", mode="before")(_unit("field"))

    def device_overrides(self) -> dict[str, float]:
        """DeviceParameters field -> value for the overrides that are set."""
        names = {
            "applied_field": "applied_field_oe",
            "anisotropy_field": "anisotropy_field_oe",
            "damping": "damping",
            "polarization": "polarization",
            "torque_asymmetry": "torque_asymmetry",
            "tmr_ratio": "tmr_ratio",
        }
        return {names[k]: float(getattr(self, k)) for k in names if getattr(self, k) is not None}


def _load_device(path: str | None):
    """The device file ``path`` (None: the default), read again whenever the file changed (cached per
    modification time and size, so a device file edited in a long-lived session is not served stale)."""
    from stosim.config import default_device_path

    try:
        st = (Path(path) if path is not None else default_device_path()).stat()
        version = (st.st_mtime_ns, st.st_size)
    except OSError:
        version = None  # load_device reports the unreadable file
    return _load_device_version(path, version)


@functools.lru_cache(maxsize=32)
def _load_device_version(path: str | None, version: tuple[int, int] | None):
    from stosim.config import load_device

    return load_device(path)


def resolve_device(device: str | None, overrides: Mapping[str, float]):
    """DeviceParameters of the file ``device`` (None: the seed study's pMTJ) with ``overrides`` applied."""
    dev = _load_device(device)
    return dev.replace(**overrides) if overrides else dev


def device_toml(dev) -> str:
    """A device file (``devices/*.toml`` schema) that loads back to exactly ``dev``."""
    import json

    p = ", ".join(repr(float(c)) for c in dev.reference_direction)
    return "\n".join(
        [
            f"name = {json.dumps(dev.name)}",
            'description = "written by stosim sweep: a device file with overridden parameters"',
            "[free_layer]",
            f'saturation_magnetization = "{dev.saturation_magnetization_emu_cm3!r} emu/cm^3"',
            f'anisotropy_field = "{dev.anisotropy_field_oe!r} Oe"',
            f"damping = {dev.damping!r}",
            f'radius = "{dev.radius_cm!r} cm"',
            f'thickness = "{dev.thickness_cm!r} cm"',
            f'gyromagnetic_ratio = "{dev.gyromagnetic_ratio_rad_per_oe_s!r} rad/(Oe s)"',
            "[spin_torque]",
            f"polarization = {dev.polarization!r}",
            f"asymmetry = {dev.torque_asymmetry!r}",
            f'current = "{dev.current_a!r} A"',
            "[reference_layer]",
            f"direction = [{p}]",
            "[applied_field]",
            f'z = "{dev.applied_field_oe!r} Oe"',
            "[tmr]",
            f'parallel_resistance = "{dev.parallel_resistance_ohm!r} Ohm"',
            f"tmr_ratio = {dev.tmr_ratio!r}",
            "",
        ]
    )


class _STOPointMixin:
    def check_point(self) -> None:
        """Checks beyond the fields: load the device file and apply the overrides (raises when out of range)."""
        substrate = getattr(self, "substrate", DEFAULT_SUBSTRATE)
        if substrate in STO_SUBSTRATES:
            resolve_device(self.device, self.device_overrides())


class TrainPoint(TrainConfig, DeviceOverrides, _STOPointMixin):
    """A ``train`` point: every :class:`~stosim.studies.training.TrainConfig` key plus device overrides, and
    ``ftmle_samples``: the FTMLE of the substrate over that many test samples, for the model at
    initialization (untrained read-in) and after training (reservoir substrates only; 0: none)."""

    ftmle_samples: int = _field("ftmle_samples", 0)

    @model_validator(mode="after")
    def _overrides_need_sto(self) -> "TrainPoint":
        if self.device_overrides() and self.substrate not in STO_SUBSTRATES:
            keys = ", ".join(k for k in DeviceOverrides.model_fields if getattr(self, k) is not None)
            raise ValueError(
                f"{keys}: device parameters apply to STO substrates only, not substrate = {self.substrate!r}"
            )
        return self

    def check_point(self) -> None:
        super().check_point()
        self.train_config()  # the TrainConfig this point will run

    def train_config(self, device: str | None = None) -> TrainConfig:
        fields = {k: getattr(self, k) for k in TrainConfig.model_fields}
        if device is not None:
            fields["device"] = device
        return TrainConfig(**fields)


def _time_validator(cls, value: Any, info) -> Any:
    if isinstance(value, str):
        substrate = info.data.get("substrate", DEFAULT_SUBSTRATE)
        if substrate not in STO_SUBSTRATES:
            raise ValueError(f"{substrate} time is a plain number, not {value!r}")
        try:
            return parse_quantity(value, "time", name=info.field_name)
        except UnitError as exc:
            raise ValueError(str(exc)) from None
    return value


class MLEPoint(DeviceOverrides, _STOPointMixin):
    """An ``mle`` point: leading Lyapunov exponents (QR method) of a substrate's autonomous dynamics.

    Times: STO in s (unit strings, e.g. "200 ns"), Lorenz 96 in model time, FFESN in steps;
    None: the defaults of :data:`stosim.studies.run_lyapunov.LYAPUNOV_DEFAULTS`.
    """

    substrate: str = DEFAULT_SUBSTRATE
    n: int | None = _field("n", None)
    dt: float | None = _field("dt", None)
    duration: float | None = _field("duration", None)
    transient: float | None = _field("transient", None)
    g: float = _field("g", 2.0)
    network_time: Literal["continuous", "discrete"] = "continuous"
    input_std: float = _field("input_std", 0.0)
    input_tau: float = _field("input_tau", 0.0)
    zero_diagonal: bool = False
    n_exponents: int = _field("n_exponents", 1)
    coupling: float = _field("coupling", 500.0)
    current: float | None = _field("current", None)
    device: str | None = None
    spectral_radius: float = _field("spectral_radius", 1.2)
    density: float = _field("density", 0.5)
    forcing: float = _field("forcing", 8.0)
    seed: int = _field("seed", 0)

    _coupling = field_validator("coupling", mode="before")(_unit("field"))
    _current = field_validator("current", mode="before")(_unit("current"))
    _times = field_validator("dt", "duration", "transient", mode="before")(_time_validator)
    _substrate = field_validator("substrate")(check_lyapunov_substrate)

    def tangent_keywords(self) -> dict[str, Any]:
        """The keywords of :func:`~stosim.studies.run_lyapunov.substrate_tangent_system` for this point (the
        device file with its overrides for the STOs); each substrate's tangent system takes its own of them."""
        device = resolve_device(self.device, self.device_overrides()) if self.substrate in STO_SUBSTRATES else None
        return {
            "seed": self.seed,
            "n": self.n,
            "dt": self.dt,
            "coupling_oe": self.coupling,
            "current_a": self.current,
            "device": device,
            "spectral_radius": self.spectral_radius,
            "density": self.density,
            "forcing": self.forcing,
            "g": self.g,
            "time": self.network_time,
            "input_std": self.input_std,
            "input_tau": self.input_tau,
            "zero_diagonal": self.zero_diagonal,
        }

    @model_validator(mode="after")
    def _check(self) -> "MLEPoint":
        if self.device_overrides() and self.substrate not in STO_SUBSTRATES:
            keys = ", ".join(k for k in DeviceOverrides.model_fields if getattr(self, k) is not None)
            raise ValueError(f"{keys}: device parameters apply to substrate = 'sto' only, not {self.substrate!r}")
        return self


class SimulatePoint(DeviceOverrides, _STOPointMixin):
    """A ``simulate`` point: a free run of N coupled STOs from a random (seeded) initial state."""

    n: int = _field("n", 10)
    coupling: float = _field("coupling", 500.0)
    current: float | None = _field("current", None)
    duration: float = _field("duration", 20e-9)
    dt: float = _field("dt", 1e-12)
    transient: float = _field("transient", 0.0, description="discarded transient, excluded from the statistics")
    save_every: int = _field("save_every", 10)
    temperature: float = _field("temperature", 0.0)
    dynamical_snr: OptionalSNRdB = None
    dynamical_noise_reference: float | None = _field("dynamical_noise_reference", None)
    observation_snr: OptionalSNRdB = None
    device: str | None = None
    dtype: Literal["float32", "float64"] = "float64"
    seed: int = _field("seed", 0)

    _coupling = field_validator("coupling", mode="before")(_unit("field"))
    _current = field_validator("current", mode="before")(_unit("current"))
    _temperature = field_validator("temperature", mode="before")(_unit("temperature"))
    _times = field_validator("dt", "duration", "transient", mode="before")(_time_validator)
    _reference = field_validator("dynamical_noise_reference", mode="before")(_unit("time"))

    @model_validator(mode="after")
    def _check(self) -> "SimulatePoint":
        if self.transient >= self.duration:
            raise ValueError(f"transient: {self.transient:g} s must be shorter than duration = {self.duration:g} s")
        return self


# ----------------------------------------------------------------------------------------------
# the kinds
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Output:
    """An output variable: ``units`` is a string or a function of a point configuration; ``applies``
    (None: always) says whether a point configuration produces it."""

    name: str
    units: str | Callable[[BaseModel], str]
    long_name: str
    extra_dims: tuple[str, ...] = ()
    applies: Callable[[BaseModel], bool] | None = None

    def units_for(self, config: BaseModel) -> str:
        return self.units(config) if callable(self.units) else self.units

    def applies_to(self, config: BaseModel) -> bool:
        return True if self.applies is None else bool(self.applies(config))


@dataclasses.dataclass(frozen=True)
class PointKind:
    """What a grid point of a sweep runs (see the module docstring)."""

    name: str
    config: type[BaseModel]
    run: Callable[[Any], dict[str, Any]]
    outputs: tuple[Output, ...]
    extra_dims: Callable[[list[Any]], dict[str, np.ndarray]] = lambda configs: {}
    description: str = ""

    def outputs_for(self, configs: list[Any]) -> tuple[Output, ...]:
        """The outputs a sweep over the point configurations ``configs`` produces: those that apply to at
        least one point (a point they do not apply to holds NaN)."""
        return tuple(out for out in self.outputs if any(out.applies_to(c) for c in configs))

    @property
    def substrate_default(self) -> str:
        field = self.config.model_fields.get("substrate")
        return field.default if field is not None else DEFAULT_SUBSTRATE


EXTRA_DIM_ATTRS = MappingProxyType(
    {
        "epoch": {"units": "1", "long_name": "training epoch"},
        "exponent": {"units": "1", "long_name": "Lyapunov exponent index (1: the largest)"},
        "sample": {"units": "1", "long_name": "input sample (random read-in)"},
        "eval_observation_snr": {"units": "dB", "long_name": "observation noise SNR of the evaluation"},
        "eval_dynamical_snr": {"units": "dB", "long_name": "dynamical noise SNR of the evaluation"},
        "eval_temperature": {"units": "K", "long_name": "temperature of the evaluation"},
    }
)


def _rate_units(cfg: BaseModel) -> str:
    """Units of an exponent (1/time unit); "1" for the baselines (linear, mlp, cnn), which have no
    dynamics (a train sweep of them has no FTMLE outputs)."""
    unit = time_units(cfg.substrate, "mle")
    if getattr(cfg, "network_time", None) == "discrete":  # discrete-time rate network
        unit = "step"
    return {"s": "1/s", "model time unit": "1/(model time unit)", "step": "1/step", "tau": "1/tau", "1": "1"}[unit]


def _run_train(cfg: TrainPoint) -> dict[str, Any]:
    return _train_point(cfg)


def _train_point(cfg: TrainPoint, after: Callable[[Any, Any], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Train as ``cfg`` says and return the train outputs; ``after(train_cfg, result)`` (the noise points'
    evaluations) runs on the trained model before the temporary run folder is removed."""
    from stosim.studies.training import train

    overrides = cfg.device_overrides()
    with tempfile.TemporaryDirectory(prefix="stosim-sweep-") as tmp:
        device = None
        if overrides and cfg.substrate in STO_SUBSTRATES:
            device = str(Path(tmp) / "device.toml")
            Path(device).write_text(device_toml(resolve_device(cfg.device, overrides)), encoding="utf-8")
        train_cfg = cfg.train_config(device)
        run_dir = Path(tmp) / "run"
        result = train(train_cfg, run_dir)
        extra = after(train_cfg, result) if after is not None else {}
        ftmle = _trained_untrained_ftmle(train_cfg, run_dir, cfg.ftmle_samples)
    history = result.history
    # accuracies in percent, as the CLI, the training logs and the comparison tables show them
    return {
        **ftmle,
        **extra,
        "test_accuracy": 100.0 * result.test_accuracy,
        "best_test_accuracy": 100.0 * result.best_test_accuracy,
        "final_train_accuracy": 100.0 * history[-1]["train_accuracy"],
        "epochs_to_converge": result.epochs_to_converge,
        "epochs_run": result.epochs,
        "test_accuracy_curve": 100.0 * np.array([h["test_accuracy"] for h in history], dtype=np.float64),
    }


def _has_ftmle(cfg: TrainPoint) -> bool:
    """Whether a train point computes the trained / untrained FTMLE (``ftmle_samples > 0`` on a reservoir
    substrate); otherwise the sweep file has no ``ftmle_*`` variables."""
    return cfg.ftmle_samples > 0 and cfg.substrate in ftmle_substrates()


def _trained_untrained_ftmle(train_cfg: TrainConfig, run_dir: Path, samples: int) -> dict[str, float]:
    """Mean and std of the per-sample FTMLE before and after training (NaN when not requested)."""
    keys = ("ftmle_untrained_mean", "ftmle_untrained_std", "ftmle_trained_mean", "ftmle_trained_std")
    if samples == 0 or train_cfg.substrate not in ftmle_substrates():
        return dict.fromkeys(keys, float("nan"))
    from stosim.studies.run_ftmle import dataset_ftmle

    untrained = dataset_ftmle(train_cfg, None, limit=samples)["ftmle"].values
    trained = dataset_ftmle(train_cfg, run_dir / "checkpoint.pt", limit=samples)["ftmle"].values
    return dict(
        zip(
            keys, (float(np.mean(untrained)), float(np.std(untrained)), float(np.mean(trained)), float(np.std(trained)))
        )
    )


def _train_epochs(configs: list[TrainPoint]) -> dict[str, np.ndarray]:
    return {"epoch": np.arange(1, max(c.epochs for c in configs) + 1)}


_TRAIN = PointKind(
    name="train",
    config=TrainPoint,
    run=_run_train,
    outputs=(
        Output("test_accuracy", "%", "test accuracy after the last epoch"),
        Output("best_test_accuracy", "%", "best test accuracy over the epochs"),
        Output("final_train_accuracy", "%", "training accuracy in the last epoch"),
        Output("epochs_to_converge", "1", "first epoch with test accuracy within 0.5 percentage points of the best"),
        Output("epochs_run", "1", "epochs trained (1 for a ridge readout)"),
        Output("test_accuracy_curve", "%", "test accuracy after each epoch", ("epoch",)),
        Output(
            "ftmle_untrained_mean", _rate_units, "mean FTMLE over test samples, untrained model", applies=_has_ftmle
        ),
        Output(
            "ftmle_untrained_std", _rate_units, "standard deviation of the FTMLE, untrained model", applies=_has_ftmle
        ),
        Output("ftmle_trained_mean", _rate_units, "mean FTMLE over test samples, trained model", applies=_has_ftmle),
        Output("ftmle_trained_std", _rate_units, "standard deviation of the FTMLE, trained model", applies=_has_ftmle),
    ),
    extra_dims=_train_epochs,
    description="train a reservoir model (stosim.studies.training.train) and evaluate it",
)


# the noise kinds of a noise point: (list field, output, extra dimension attrs' parameter)
_NOISE_EVALS = (
    ("observation", "eval_observation_snr", "accuracy_vs_observation_snr"),
    ("dynamical", "eval_dynamical_snr", "accuracy_vs_dynamical_snr"),
    ("thermal", "eval_temperature", "accuracy_vs_temperature"),
)
MAX_EVAL_LEVELS = 64


def _check_snr_list(cls, values: list[float], info) -> list[float]:
    from stosim.physics.noise import check_snr_db

    return [check_snr_db(v, info.field_name) for v in values]


class NoisePoint(TrainPoint):
    """A ``noise`` point: a ``train`` point (trained with its own noise settings, or noiselessly with
    ``train_with_noise = false``) whose trained model is then evaluated on the test set at every level of
    ``eval_observation_snr`` (dB), ``eval_dynamical_snr`` (dB; SNR per step or over
    ``dynamical_noise_reference``) and ``eval_temperature`` (K), one kind of noise at a time, the others
    off (:func:`stosim.studies.noise_robustness.accuracy_under_noise`). The lists go in ``[base]`` (every
    point is evaluated at the same levels); coupled-STO substrates only."""

    eval_observation_snr: list[float] = Field(default_factory=list, max_length=MAX_EVAL_LEVELS)
    eval_dynamical_snr: list[float] = Field(default_factory=list, max_length=MAX_EVAL_LEVELS)
    eval_temperature: list[Annotated[float, get_parameter("eval_temperature").field(...)]] = Field(
        default_factory=list, max_length=MAX_EVAL_LEVELS
    )

    _snrs = field_validator("eval_observation_snr", "eval_dynamical_snr")(_check_snr_list)

    @field_validator("eval_temperature", mode="before")
    @classmethod
    def _temperatures(cls, values: Any, info) -> Any:
        if isinstance(values, list):
            return [_unit("temperature")(cls, v, info) for v in values]
        return values

    @model_validator(mode="after")
    def _check_noise(self) -> "NoisePoint":
        if self.substrate not in STO_SUBSTRATES:
            raise ValueError(
                f"substrate = {self.substrate!r}: noise points evaluate coupled-STO substrates "
                f"({', '.join(sorted(STO_SUBSTRATES))})"
            )
        for _, key, _ in _NOISE_EVALS:
            levels = getattr(self, key)
            if len(set(levels)) != len(levels):
                raise ValueError(f"{key}: the levels must be distinct (got {levels})")
        return self


def _run_noise(cfg: NoisePoint) -> dict[str, Any]:
    import torch

    from stosim.datasets import load_dataset
    from stosim.studies.noise_robustness import accuracy_under_noise
    from stosim.studies.training import evaluate_accuracy, model_inputs

    def evaluate(train_cfg: TrainConfig, result: Any) -> dict[str, Any]:
        model = result.model
        _, test = load_dataset(
            train_cfg.dataset,
            train_cfg.data_dir,
            train_cfg.download,
            seed=train_cfg.seed,
            limit_train=train_cfg.limit_train,
            limit_test=train_cfg.limit_test,
        )
        dtype = next(model.parameters()).dtype
        x = model_inputs(train_cfg, test, dtype)
        y = torch.as_tensor(test.labels, dtype=torch.int64)
        batch = max(train_cfg.batch_size, 256)
        values: dict[str, Any] = {}
        subs = [m for m in model.modules() if hasattr(m, "noise_suspended")]
        with contextlib.ExitStack() as quiet:
            for sub in subs:
                quiet.enter_context(sub.noise_suspended())
            values["test_accuracy_noiseless"] = 100.0 * evaluate_accuracy(model, x, y, batch)
        for kind, key, output in _NOISE_EVALS:
            levels = getattr(cfg, key)
            if levels:
                acc = accuracy_under_noise(
                    model,
                    x,
                    y,
                    kind,
                    levels,
                    dynamical_noise_reference_s=cfg.dynamical_noise_reference,
                    seed=cfg.seed,
                    batch_size=batch,
                )
                values[output] = 100.0 * acc
        return values

    return _train_point(cfg, evaluate)


def _noise_dims(configs: list[NoisePoint]) -> dict[str, np.ndarray]:
    dims = _train_epochs(configs)
    for _, key, _ in _NOISE_EVALS:
        levels = getattr(configs[0], key)
        if any(getattr(c, key) != levels for c in configs):
            raise ValueError(f"{key}: every point must be evaluated at the same levels; give the list in [base]")
        if levels:
            dims[key] = np.asarray(levels, dtype=np.float64)
    return dims


def _evaluates(key: str) -> Callable[[BaseModel], bool]:
    return lambda cfg: bool(getattr(cfg, key))


_NOISE = PointKind(
    name="noise",
    config=NoisePoint,
    run=_run_noise,
    outputs=(
        *_TRAIN.outputs,
        Output("test_accuracy_noiseless", "%", "test accuracy of the trained model evaluated without noise"),
        *(
            Output(output, "%", f"test accuracy of the trained model with {kind} noise only", (key,), _evaluates(key))
            for kind, key, output in _NOISE_EVALS
        ),
    ),
    extra_dims=_noise_dims,
    description="train a coupled-STO model, then evaluate it at lists of observation, dynamical, thermal noise levels",
)


def _run_mle(cfg: MLEPoint) -> dict[str, Any]:
    from stosim.studies.run_lyapunov import substrate_lyapunov

    result = substrate_lyapunov(
        cfg.substrate,
        n_exponents=cfg.n_exponents,
        duration=cfg.duration,
        transient=cfg.transient,
        **cfg.tangent_keywords(),
    )
    return {
        "mle": result.mle,
        "mle_standard_error": float(result.standard_error[0]),
        "mle_relative_change_last_quarter": float(result.relative_change_last_quarter[0]),
        "lyapunov_exponents": np.asarray(result.exponents, dtype=np.float64),
        "kaplan_yorke_dimension": result.kaplan_yorke_dimension,
        "ks_entropy": result.ks_entropy,
    }


_MLE = PointKind(
    name="mle",
    config=MLEPoint,
    run=_run_mle,
    outputs=(
        Output("mle", _rate_units, "maximum Lyapunov exponent"),
        Output("mle_standard_error", _rate_units, "standard error of the MLE (20 blocks)"),
        Output("mle_relative_change_last_quarter", "1", "relative change of the running MLE over the last quarter"),
        Output("lyapunov_exponents", _rate_units, "leading Lyapunov exponents (descending)", ("exponent",)),
        Output(
            "kaplan_yorke_dimension",
            "1",
            "Kaplan-Yorke dimension of the computed exponents (a lower bound when their sum is positive)",
        ),
        Output(
            "ks_entropy",
            _rate_units,
            "KS entropy bound (sum of the positive computed exponents; a lower "
            "bound when the last computed exponent is positive)",
        ),
    ),
    extra_dims=lambda configs: {"exponent": np.arange(1, max(c.n_exponents for c in configs) + 1)},
    description="Lyapunov exponents of a substrate's autonomous dynamics (stosim.studies.run_lyapunov)",
)


def _run_simulate(cfg: SimulatePoint) -> dict[str, Any]:
    from stosim.physics.array import STOArray
    from stosim.simulation import random_initial_state, simulate, steps_for_duration

    dev = resolve_device(cfg.device, cfg.device_overrides())
    array = STOArray.generate(dev, cfg.n, cfg.coupling, seed=cfg.seed, current_a=cfg.current)
    save_every = min(cfg.save_every, steps_for_duration(cfg.duration, cfg.dt))
    traj = simulate(
        array,
        random_initial_state(cfg.n, cfg.seed),
        cfg.duration,
        cfg.dt,
        save_every=save_every,
        temperature_k=cfg.temperature,
        dynamical_snr_db=cfg.dynamical_snr,
        observation_snr_db=cfg.observation_snr,
        seed=cfg.seed,
        dtype=np.float32 if cfg.dtype == "float32" else np.float64,
        dynamical_noise_reference_s=cfg.dynamical_noise_reference,
    )
    keep = traj.time_s >= cfg.transient - 1e-9 * cfg.dt
    m = traj.m[keep, 0].astype(np.float64)  # (S, N, 3)
    v = traj.tmr_voltage_v[keep, 0].astype(np.float64)  # (S, N)
    mx = m[..., 0]
    return {
        "tmr_voltage_mean": float(v.mean()),
        "tmr_voltage_std": float(v.std()),
        "mx_mean": float(mx.mean()),
        "mx_std": float(mx.std()),
        "mx_amplitude": float(mx.std(axis=0).mean()),
        "mx_mean_field_std": float(mx.mean(axis=1).std()),
        "mz_mean": float(m[..., 2].mean()),
        "measured_dynamical_snr": (
            math.nan if traj.measured_dynamical_snr_db is None else float(traj.measured_dynamical_snr_db)
        ),
        "recorded_states": int(keep.sum()),
    }


_SIMULATE = PointKind(
    name="simulate",
    config=SimulatePoint,
    run=_run_simulate,
    outputs=(
        Output("tmr_voltage_mean", "V", "TMR output voltage, mean over time (after the transient) and oscillators"),
        Output("tmr_voltage_std", "V", "TMR output voltage, standard deviation over time and oscillators"),
        Output("mx_mean", "1", "m_x, mean over time and oscillators"),
        Output("mx_std", "1", "m_x, standard deviation over time and oscillators"),
        Output("mx_amplitude", "1", "m_x, standard deviation over time, averaged over oscillators"),
        Output("mx_mean_field_std", "1", "array-mean m_x, standard deviation over time (collective oscillation)"),
        Output("mz_mean", "1", "m_z, mean over time and oscillators"),
        Output("measured_dynamical_snr", "dB", "measured dynamical noise SNR (NaN without dynamical noise)"),
        Output("recorded_states", "1", "recorded states in the statistics"),
    ),
    description="free run of a coupled STO array (stosim.simulate), summary statistics",
)


class FTMLEPoint(DeviceOverrides, _STOPointMixin):
    """An ``ftmle`` point: per-sample finite-time MLE ln sigma_max(dx(T)/dx(0)) / T of a substrate's map.

    x(0) = ``substrate.initial_state(readin)`` for ``samples`` read-in vectors drawn standard normal
    (times ``readin_scale``) from ``seed``; :func:`stosim.analysis.ftmle.substrate_ftmle`.
    Times: STO in s (default T = 300 ps, dt = 1 ps), Lorenz 96 in model time (default 1.0, 0.01);
    the FFESN map is ``steps`` steps.
    """

    substrate: str = DEFAULT_SUBSTRATE
    n: int | None = _field("n", None)
    dt: float | None = _field("dt", None)
    duration: float | None = _field("duration", None)
    g: float = _field("g", 2.0)
    network_time: Literal["continuous", "discrete"] = "continuous"
    coupling: float = _field("coupling", 500.0)
    current: float | None = _field("current", None)
    device: str | None = None
    spectral_radius: float = _field("spectral_radius", 1.0)
    steps: int = _field("steps", 5)
    density: float = _field("density", 0.5)
    forcing: float = _field("forcing", 8.0)
    samples: int = _field("samples", 16)
    readin_scale: float = _field("readin_scale", 1.0, allow_inf_nan=False)
    method: Literal["auto", "exact", "lanczos", "power"] = "auto"
    tol: float = _field("tol", 1e-8)
    max_iter: int = _field("max_iter", 300)
    seed: int = _field("seed", 0)

    _coupling = field_validator("coupling", mode="before")(_unit("field"))
    _current = field_validator("current", mode="before")(_unit("current"))
    _times = field_validator("dt", "duration", mode="before")(_time_validator)
    _substrate = field_validator("substrate")(check_ftmle_substrate)

    @model_validator(mode="after")
    def _check(self) -> "FTMLEPoint":
        if self.device_overrides() and self.substrate not in STO_SUBSTRATES:
            keys = ", ".join(k for k in DeviceOverrides.model_fields if getattr(self, k) is not None)
            raise ValueError(f"{keys}: device parameters apply to substrate = 'sto' only, not {self.substrate!r}")
        return self


def _run_ftmle(cfg: FTMLEPoint) -> dict[str, Any]:
    import torch

    from stosim.analysis.ftmle import substrate_ftmle

    if cfg.substrate == "sto":
        from stosim.substrates.sto_array import CoupledSTOArray

        sub = CoupledSTOArray(
            n=cfg.n or 100,
            coupling_oe=cfg.coupling,
            duration_s=cfg.duration or 300e-12,
            dt_s=cfg.dt or 1e-12,
            current_a=cfg.current,
            device=resolve_device(cfg.device, cfg.device_overrides()),
            seed=cfg.seed,
        )
    elif cfg.substrate == "ffesn":
        from stosim.substrates.ffesn import FFESN

        sub = FFESN(
            n=cfg.n or 500, spectral_radius=cfg.spectral_radius, steps=cfg.steps, density=cfg.density, seed=cfg.seed
        )
    elif cfg.substrate == "rate-network":
        from stosim.substrates.rate_network import RateNetwork

        discrete = cfg.network_time == "discrete"
        sub = RateNetwork(
            n=cfg.n or 200,
            g=cfg.g,
            time=cfg.network_time,
            seed=cfg.seed,
            dt=cfg.dt or 0.1,
            duration=float(cfg.steps) if discrete else (cfg.duration or 5.0),
        )
    else:
        from stosim.substrates.lorenz96 import Lorenz96

        sub = Lorenz96(n=cfg.n or 500, forcing=cfg.forcing, duration=cfg.duration or 1.0, dt=cfg.dt or 0.01)
    size = sub.describe().readin_size
    gen = torch.Generator().manual_seed(cfg.seed)
    readin = cfg.readin_scale * torch.randn(cfg.samples, size, generator=gen, dtype=torch.float64)
    result = substrate_ftmle(
        sub, readin.to(sub.dtype), method=cfg.method, tol=cfg.tol, max_iter=cfg.max_iter, seed=cfg.seed
    )
    f = np.asarray(result.ftmle, dtype=np.float64)
    return {
        "ftmle_mean": float(f.mean()),
        "ftmle_std": float(f.std()),
        "ftmle_min": float(f.min()),
        "ftmle_max": float(f.max()),
        "ftmle_converged_fraction": float(np.mean(result.converged)),
        "ftmle_samples": f,
    }


_FTMLE = PointKind(
    name="ftmle",
    config=FTMLEPoint,
    run=_run_ftmle,
    outputs=(
        Output("ftmle_mean", _rate_units, "finite-time MLE, mean over samples"),
        Output("ftmle_std", _rate_units, "finite-time MLE, standard deviation over samples"),
        Output("ftmle_min", _rate_units, "finite-time MLE, smallest over samples"),
        Output("ftmle_max", _rate_units, "finite-time MLE, largest over samples"),
        Output("ftmle_converged_fraction", "1", "fraction of samples whose sigma_max iteration converged"),
        Output("ftmle_samples", _rate_units, "finite-time MLE of each sample", ("sample",)),
    ),
    extra_dims=lambda configs: {"sample": np.arange(max(c.samples for c in configs))},
    description="finite-time MLE of a substrate's map x(0) -> x(T) (stosim.analysis.ftmle)",
)


@functools.lru_cache(maxsize=1)
def point_kinds() -> Mapping[str, PointKind]:
    """The point kinds by name (read-only)."""
    kinds = {k.name: k for k in (_TRAIN, _MLE, _SIMULATE, _FTMLE, _NOISE)}
    return MappingProxyType(kinds)


def get_kind(name: str) -> PointKind:
    try:
        return point_kinds()[name]
    except KeyError:
        raise ValueError(f"kind = {name!r}; valid: {', '.join(point_kinds())}") from None


# ----------------------------------------------------------------------------------------------
# execution in a worker
# ----------------------------------------------------------------------------------------------


def _one_thread() -> None:
    """One compute thread for torch and Numba in this process (BLAS is limited around the run); works
    whenever Numba was imported and whatever the worker's environment says (stosim.integrate.threads)."""
    from stosim.integrate.allocator import heap_for_temporaries
    from stosim.integrate.threads import one_compute_thread

    one_compute_thread()
    heap_for_temporaries()  # a dask nanny's MALLOC_TRIM_THRESHOLD_ made training points 5x slower


def execute_point(kind_name: str, config: dict[str, Any]) -> dict[str, Any]:
    """Run one point in this process; never raises for a failing point.

    Returns ``{"status": "done", "values": {...}, "wall_time_s": ...}`` or
    ``{"status": "failed", "error": "ExceptionType: message", "wall_time_s": ...}``.
    """
    import traceback

    from threadpoolctl import threadpool_limits

    t0 = time.perf_counter()
    try:
        _one_thread()
        kind = get_kind(kind_name)
        cfg = kind.config.model_validate(config)
        with threadpool_limits(limits=1):
            values = kind.run(cfg)
    except Exception as exc:  # recorded per point; the sweep goes on
        where = traceback.extract_tb(exc.__traceback__)[-1]
        message = str(exc)
        if len(message) > MAX_ERROR_CHARS:
            message = message[:MAX_ERROR_CHARS] + " [...]"
        return {
            "status": "failed",
            "error": f"{type(exc).__name__}: {message} (at {Path(where.filename).name}:{where.lineno})",
            "wall_time_s": time.perf_counter() - t0,
        }
    return {"status": "done", "values": values, "wall_time_s": time.perf_counter() - t0}
