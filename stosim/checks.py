"""Checks of arguments and input files shared across modules (each raises ValueError naming the parameter or
the file and its valid range)."""

from __future__ import annotations

import numbers
import os
import stat
import tomllib
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_FILE_BYTES",
    "MAX_NESTING",
    "MAX_SEED",
    "MAX_STEPS",
    "check_count",
    "check_seed",
    "check_steps",
    "nesting_depth",
    "read_toml",
]

# the largest seed: numpy's SeedSequence takes any integer >= 0 and torch's manual_seed any below 2**64, but
# the digits train/test split (scikit-learn's random_state) takes 32-bit seeds only, and the training order
# generator is seeded with seed * 100_003 + epoch, which must stay below 2**64
MAX_SEED = 2**32 - 1
MAX_FILE_BYTES = 1 << 20  # configuration files (TOML) are read only up to this size (1 MiB)
MAX_NESTING = 32  # tables, arrays and inline tables nested deeper than this are refused
# the most integration steps of one run (1 ms at 1 ps); the Numba kernels take the count as an int64, and a
# dt far below the physics' time scale ("1e-300 ps") would otherwise start a run that never ends
MAX_STEPS = 10**9


def check_count(value: object, name: str, minimum: int = 1) -> int:
    """``value`` as an int; ValueError naming ``name`` unless it is an integer (not a bool, not a float
    such as 2.0) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} = {value!r} is out of range; valid: an integer >= {minimum}")
    return int(value)


def check_seed(value: object, name: str = "seed") -> int:
    """``value`` as an int; ValueError naming ``name`` unless it is an integer (not a bool) in [0, MAX_SEED]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value <= MAX_SEED:
        raise ValueError(f"{name} = {value!r} is out of range; valid: an integer in [0, 2**32 - 1 = {MAX_SEED}]")
    return int(value)


def check_steps(n_steps: float, duration: str = "duration", dt: str = "dt") -> float:
    """``n_steps`` (= duration / dt) unless it exceeds MAX_STEPS; the ValueError names both keys."""
    if not n_steps <= MAX_STEPS:
        raise ValueError(
            f"{duration} / {dt} = {n_steps:.3g} integration steps is out of range; valid: at most "
            f"{MAX_STEPS:.0e} steps (choose a larger {dt} or a shorter {duration})"
        )
    return n_steps


def nesting_depth(value: Any) -> int:
    """How deeply dicts and lists nest in ``value`` (a scalar: 0, ``{"a": 1}``: 1), counted without recursion."""
    depth, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth = max(depth, level + 1)
        if depth > MAX_NESTING + 1:  # deep enough to refuse; stop counting
            return depth
        stack.extend((child, level + 1) for child in children)
    return depth


def read_toml(path: str | Path, error: type[ValueError] = ValueError, what: str = "file") -> dict[str, Any]:
    """The TOML document in ``path`` as a dict, read within bounds: a regular file of at most MAX_FILE_BYTES,
    UTF-8, valid TOML, nested at most MAX_NESTING levels deep. Anything else raises ``error`` (a ValueError
    subclass) whose message starts with the file's name and says what is wrong."""
    path = Path(path)
    try:
        info = os.stat(path)  # before opening: opening a FIFO would wait for a writer
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{path}: cannot read {what}: not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise error(
                f"{path}: {what} of {info.st_size} bytes is too large; valid: at most {MAX_FILE_BYTES} bytes (1 MiB)"
            )
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    if len(data) > MAX_FILE_BYTES:  # grew while it was read
        raise error(f"{path}: {what} is too large; valid: at most {MAX_FILE_BYTES} bytes (1 MiB)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not valid TOML: not UTF-8 text (byte {exc.start})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:
        raise error(
            f"{path}: not valid TOML: arrays or inline tables nested too deeply; valid: at most {MAX_NESTING} levels"
        ) from None
    if nesting_depth(raw) > MAX_NESTING:
        raise error(
            f"{path}: tables and arrays nested more than {MAX_NESTING} levels deep; valid: at most {MAX_NESTING} levels"
        )
    return raw
