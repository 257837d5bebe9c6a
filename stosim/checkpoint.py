"""Training checkpoints: tensors and plain data on disk, validated on load, never code.

A checkpoint (``checkpoint.pt`` of ``stosim train``) is torch's zip format holding one dict of
plain data only::

    {"format": 1, "epoch": int, "wall_time_s": float, "config": {str: plain value},
     "history": [{"epoch": int, "train_loss": float | None, "train_accuracy": float,
                  "test_accuracy": float, "epoch_time_s": float}, ...],
     "model": {str: Tensor},                          # the model's state_dict
     "optimizer": {"state": {int: {str: Tensor}}, "param_groups": [{str: plain value}, ...]}}

It is read with ``torch.load(weights_only=True, map_location="cpu")``: torch's restricted
unpickler, which builds tensors, dicts, lists, tuples, str, int, float, bool and None and refuses
every other global (a pickled ``os.system`` is refused, never called). Anything that is not a zip
archive (an empty file, random bytes, a bare pickle) is refused before torch reads it.

On load every field is checked: the keys, the types, ``0 <= epoch <= config["epochs"]``, one
history record per epoch, finite numbers and tensors. :func:`restore_model` and
:func:`restore_optimizer` then check the tensors against the model built from the configuration
(names, shapes, dtypes) and the optimizer's state against its parameters. Every problem raises
:class:`CheckpointError` (a ``ValueError``) with one line naming the file and what is wrong.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from stosim.storage import atomic_output

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "CheckpointError",
    "load_checkpoint",
    "restore_model",
    "restore_optimizer",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = 1  # absent in checkpoints written before the format was numbered (same layout)
_KEYS = frozenset({"model", "optimizer", "epoch", "history", "config", "wall_time_s"})
_HISTORY_KEYS = frozenset({"epoch", "train_loss", "train_accuracy", "test_accuracy", "epoch_time_s"})
# optimizer state entries per parameter: Adam / AdamW, SGD with momentum
_OPTIMIZER_STATE_KEYS = {
    "adam": frozenset({"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}),
    "sgd": frozenset({"momentum_buffer"}),
}
_PLAIN = (str, int, float, bool, type(None))


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, not a checkpoint, holding code, or with
    missing, mistyped, non-finite or inconsistent contents. The message names the file."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A validated checkpoint (see the module docstring for the layout)."""

    path: Path
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    epoch: int
    history: list[dict[str, Any]]
    config: dict[str, Any]
    wall_time_s: float
    settings: Any = None  # what ``validate_config`` made of ``config`` (None without it)


def save_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    history: list[dict[str, Any]],
    config: dict[str, Any],
    wall_time_s: float,
) -> Path:
    """Write a checkpoint atomically (temporary file beside ``path``, then rename): a crash leaves
    the previous checkpoint or this one."""
    path = Path(path)
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": dict(model.state_dict()),
        "optimizer": optimizer.state_dict(),
        "epoch": int(epoch),
        "history": [dict(h) for h in history],
        "config": dict(config),
        "wall_time_s": float(wall_time_s),
    }
    with atomic_output(path) as tmp:
        torch.save(state, tmp)
    return path


def _fail(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path}: {what}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read(path: Path) -> Any:
    """The object stored in ``path``, through torch's weights-only unpickler (no code is run)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except FileNotFoundError:
        raise _fail(path, "file not found") from None
    except OSError as exc:
        raise _fail(path, f"cannot read ({exc.strerror or exc})") from None
    if not head:
        raise _fail(path, "empty file (0 bytes); not a checkpoint")
    if head != b"PK\x03\x04":
        kind = "a bare pickle" if head[:1] == b"\x80" else "unknown content"
        raise _fail(path, f"not a checkpoint: not a torch zip archive ({kind}, starts with {head!r})")
    if not zipfile.is_zipfile(path):
        raise _fail(path, "damaged or not a checkpoint (a truncated or corrupt zip archive: no central directory)")
    _check_entries(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # the weights-only unpickler names what it refused, e.g. "Unsupported global: GLOBAL posix.system"
        lines = str(exc).splitlines()
        detail = next(
            (line.strip() for line in lines if "unsupported" in line.lower() or "global" in line.lower()),
            _first_line(exc),
        )
        raise _fail(path, f"refused: it holds something other than tensors and plain data ({detail})") from None
    except Exception as exc:  # a damaged archive: RuntimeError, EOFError, zipfile errors, ...
        raise _fail(path, f"damaged or not a checkpoint ({type(exc).__name__}: {_first_line(exc)})") from None


def _check_entries(path: Path) -> None:
    """torch.save stores every entry of its archive uncompressed, so the entries fit in the file: a
    compressed entry, or entries larger than the file, would unpack to more memory than the file holds
    (a zip bomb) and are refused before anything is read."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise _fail(path, f"damaged or not a checkpoint ({type(exc).__name__}: {_first_line(exc)})") from None
    size = path.stat().st_size
    for info in entries:
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
            raise _fail(
                path,
                f"refused: entry {info.filename!r} is compressed ({info.compress_size} bytes unpacking to "
                f"{info.file_size}); torch.save stores entries uncompressed",
            )
    total = sum(info.file_size for info in entries)
    if total > size:
        raise _fail(path, f"refused: its entries declare {total} bytes, more than the file's {size} bytes")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite_number(path: Path, value: Any, name: str, *, low: float = -math.inf, high: float = math.inf) -> float:
    if not _is_number(value):
        raise _fail(path, f"{name} must be a number, found {type(value).__name__} {value!r:.60}")
    if not (math.isfinite(value) and low <= value <= high):
        raise _fail(path, f"{name} = {value!r} is out of range; valid: a finite number in [{low:g}, {high:g}]")
    return float(value)


def _check_tensor(path: Path, value: Any, name: str) -> torch.Tensor:
    if type(value) not in (torch.Tensor, torch.nn.Parameter):
        raise _fail(path, f"{name} must be a tensor, found {type(value).__name__}")
    if value.layout != torch.strided or value.is_quantized:
        raise _fail(path, f"{name} must be a dense tensor, found layout {value.layout}")
    if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise _fail(path, f"{name} holds {bad} non-finite value(s) (NaN or inf)")
    return value


def _check_plain(path: Path, value: Any, name: str, depth: int = 0) -> None:
    """``value`` is JSON-like plain data (str, int, float, bool, None, lists/tuples, dicts with str keys)."""
    if depth > 8:
        raise _fail(path, f"{name} is nested too deeply")
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(path, item, f"{name}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise _fail(path, f"{name} has a key of type {type(key).__name__} ({key!r:.40}); keys must be text")
            _check_plain(path, item, f"{name}.{key}", depth + 1)
        return
    raise _fail(path, f"{name} must be plain data, found {type(value).__name__}")


def _check_history(path: Path, history: Any, epoch: int) -> list[dict[str, Any]]:
    if not isinstance(history, list):
        raise _fail(path, f"history must be a list, found {type(history).__name__}")
    if len(history) != epoch:
        raise _fail(path, f"history has {len(history)} records for epoch = {epoch}; expected one per epoch")
    for i, record in enumerate(history):
        name = f"history[{i}]"
        if not isinstance(record, dict) or set(record) != _HISTORY_KEYS:
            found = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise _fail(path, f"{name} must be a record with keys {sorted(_HISTORY_KEYS)}, found {found}")
        if not _is_int(record["epoch"]) or record["epoch"] != i + 1:
            raise _fail(path, f"{name}.epoch = {record['epoch']!r}; expected {i + 1}")
        if record["train_loss"] is not None:
            _finite_number(path, record["train_loss"], f"{name}.train_loss", low=0.0)
        for key in ("train_accuracy", "test_accuracy"):
            _finite_number(path, record[key], f"{name}.{key}", low=0.0, high=1.0)
        _finite_number(path, record["epoch_time_s"], f"{name}.epoch_time_s", low=0.0)
    return history


def _check_optimizer_layout(path: Path, opt: Any) -> dict[str, Any]:
    if not isinstance(opt, dict) or set(opt) != {"state", "param_groups"}:
        found = sorted(map(str, opt)) if isinstance(opt, dict) else type(opt).__name__
        raise _fail(path, f"optimizer must be a dict with keys ['param_groups', 'state'], found {found}")
    groups, state = opt["param_groups"], opt["state"]
    if not isinstance(groups, list) or not groups or not all(isinstance(g, dict) for g in groups):
        raise _fail(path, "optimizer.param_groups must be a non-empty list of dicts")
    for k, group in enumerate(groups):
        _check_plain(path, group, f"optimizer.param_groups[{k}]")
        params = group.get("params")
        if not isinstance(params, list) or not all(_is_int(p) for p in params):
            raise _fail(path, f"optimizer.param_groups[{k}].params must be a list of integers")
        _finite_number(path, group.get("lr"), f"optimizer.param_groups[{k}].lr", low=0.0)
        for key, value in group.items():
            if _is_number(value) and not math.isfinite(value):
                raise _fail(path, f"optimizer.param_groups[{k}].{key} = {value!r} is not finite")
    if not isinstance(state, dict):
        raise _fail(path, f"optimizer.state must be a dict, found {type(state).__name__}")
    for index, entry in state.items():
        if not _is_int(index) or not isinstance(entry, dict):
            raise _fail(path, f"optimizer.state must map parameter indices to dicts, found {index!r:.40}")
        for key, value in entry.items():
            name = f"optimizer.state[{index}].{key}"
            if isinstance(value, torch.Tensor):
                _check_tensor(path, value, name)
            elif value is not None and not _is_number(value):
                raise _fail(path, f"{name} must be a tensor or a number, found {type(value).__name__}")
            elif _is_number(value) and not math.isfinite(value):
                raise _fail(path, f"{name} = {value!r} is not finite")
    return opt


def load_checkpoint(path: str | Path, validate_config: Callable[[dict[str, Any]], Any] | None = None) -> Checkpoint:
    """Read and check the checkpoint at ``path`` (never running code from it).

    ``validate_config(config)`` (optional) checks the saved configuration; a ``ValueError`` from it
    is reported as a :class:`CheckpointError` naming the file, and its result is kept as
    :attr:`Checkpoint.settings`. Raises :class:`CheckpointError` on any problem.
    """
    path = Path(path)
    raw = _read(path)
    if not isinstance(raw, dict):
        raise _fail(path, f"must hold a dict, found {type(raw).__name__}")
    keys = {str(k) for k in raw}
    missing, extra = sorted(_KEYS - keys), sorted(keys - _KEYS - {"format"})
    if missing or extra:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unknown {', '.join(extra)}"] if extra else []
        )
        raise _fail(path, f"{'; '.join(parts)} (expected keys {', '.join(sorted(_KEYS))})")
    if raw.get("format", CHECKPOINT_FORMAT) != CHECKPOINT_FORMAT:
        raise _fail(path, f"format = {raw['format']!r}; this version reads format {CHECKPOINT_FORMAT}")
    config = raw["config"]
    if not isinstance(config, dict):
        raise _fail(path, f"config must be a dict, found {type(config).__name__}")
    _check_plain(path, config, "config")
    settings = None
    if validate_config is not None:
        try:
            settings = validate_config(config)
        except ValueError as exc:
            raise _fail(path, f"config: {'; '.join(str(exc).splitlines())}") from None
    epochs = config.get("epochs")
    epoch = raw["epoch"]
    if not _is_int(epoch):
        raise _fail(path, f"epoch must be an integer, found {type(epoch).__name__} {epoch!r:.40}")
    high = epochs if _is_int(epochs) else math.inf
    if not 0 <= epoch <= high:
        raise _fail(path, f"epoch = {epoch} is out of range; valid: 0 <= epoch <= epochs = {epochs}")
    wall = _finite_number(path, raw["wall_time_s"], "wall_time_s", low=0.0)
    history = _check_history(path, raw["history"], epoch)
    model = raw["model"]
    if not isinstance(model, dict) or not model:
        raise _fail(path, "model must be a non-empty dict of tensors (a state_dict)")
    for name, tensor in model.items():
        if not isinstance(name, str):
            raise _fail(path, f"model has a key of type {type(name).__name__}; keys must be text")
        _check_tensor(path, tensor, f"model.{name}")
    optimizer = _check_optimizer_layout(path, raw["optimizer"])
    return Checkpoint(
        path=path,
        model=dict(model),
        optimizer=optimizer,
        epoch=epoch,
        history=history,
        config=config,
        wall_time_s=wall,
        settings=settings,
    )


def restore_model(ckpt: Checkpoint, model: torch.nn.Module) -> None:
    """Load the checkpoint's tensors into ``model`` after checking that they are exactly its
    state_dict's: the same names, shapes and dtypes."""
    expected = model.state_dict()
    missing, extra = sorted(set(expected) - set(ckpt.model)), sorted(set(ckpt.model) - set(expected))
    if missing or extra:
        raise _fail(
            ckpt.path,
            f"model tensors do not match the configured model (missing: {missing or 'none'}; "
            f"unexpected: {extra or 'none'})",
        )
    for name, ref in expected.items():
        got = ckpt.model[name]
        if got.shape != ref.shape or got.dtype != ref.dtype:
            raise _fail(
                ckpt.path,
                f"model.{name} has shape {tuple(got.shape)} and dtype {got.dtype}; the configured "
                f"model needs shape {tuple(ref.shape)} and dtype {ref.dtype}",
            )
    model.load_state_dict(ckpt.model)


def _optimizer_kind(optimizer: torch.optim.Optimizer) -> str:
    return "sgd" if isinstance(optimizer, torch.optim.SGD) else "adam"


def restore_optimizer(ckpt: Checkpoint, optimizer: torch.optim.Optimizer) -> None:
    """Load the checkpoint's optimizer state into ``optimizer`` after checking it against the
    optimizer's parameters: the same groups and parameter indices, the same kind of optimizer
    (Adam / AdamW or SGD), and per-parameter state tensors of each parameter's shape and dtype."""
    path, saved = ckpt.path, ckpt.optimizer
    fresh = optimizer.state_dict()["param_groups"]
    groups = saved["param_groups"]
    if len(groups) != len(fresh):
        raise _fail(path, f"optimizer has {len(groups)} parameter groups; the configured one has {len(fresh)}")
    kind = _optimizer_kind(optimizer)
    for k, (group, ref) in enumerate(zip(groups, fresh)):
        if group["params"] != ref["params"]:
            raise _fail(
                path,
                f"optimizer.param_groups[{k}] lists parameters {group['params']}; the configured "
                f"model has {ref['params']}",
            )
        marker = "betas" if kind == "adam" else "momentum"
        if marker not in group:
            raise _fail(path, f"optimizer state is not that of the configured optimizer ({kind}: no {marker})")
    params = {
        index: p
        for group, ref in zip(optimizer.param_groups, fresh)
        for index, p in zip(ref["params"], group["params"])
    }
    for index, entry in saved["state"].items():
        if index not in params:
            raise _fail(path, f"optimizer.state has an entry for parameter {index}, which the model does not have")
        unknown = sorted(set(entry) - _OPTIMIZER_STATE_KEYS[kind])
        if unknown:
            raise _fail(path, f"optimizer.state[{index}] has {unknown}, not state of the configured optimizer ({kind})")
        param = params[index]
        for key, value in entry.items():
            if key == "step":
                step = float(value) if isinstance(value, torch.Tensor) and value.numel() == 1 else value
                if not _is_number(step) or step < 0 or step != math.floor(step):
                    raise _fail(path, f"optimizer.state[{index}].step must be a whole number >= 0, found {value!r:.40}")
            elif value is not None and (
                not isinstance(value, torch.Tensor) or value.shape != param.shape or value.dtype != param.dtype
            ):
                found = (
                    f"shape {tuple(value.shape)}, dtype {value.dtype}"
                    if isinstance(value, torch.Tensor)
                    else type(value).__name__
                )
                raise _fail(
                    path,
                    f"optimizer.state[{index}].{key} has {found}; parameter {index} has shape "
                    f"{tuple(param.shape)}, dtype {param.dtype}",
                )
    try:
        optimizer.load_state_dict(saved)
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise _fail(path, f"optimizer state does not fit the configured optimizer ({_first_line(exc)})") from None
