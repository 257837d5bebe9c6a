"""Sweep specifications (TOML), validated in full before any work starts.

::

    name = "smoke"
    kind = "train"                  # train | mle | simulate | ftmle | noise  (see stosim.studies.sweep_points)
    seeds = [0, 1]                  # a `seed` dimension; or `seed = 0`: per-point seeds derived from it
    [base]                          # fixed parameters: keys of the kind's point configuration
                                    # (a list only for a list-valued key: a noise point's levels)
    substrate = "sto"
    epochs = 2
    [grid]                          # swept parameters: each a non-empty list of distinct values
    coupling = ["100 Oe", "500 Oe", "1000 Oe"]
    duration = ["100 ps", "300 ps"]

Seeds: with ``seeds = [...]`` every grid point runs once per listed seed, which is used as is
(common random numbers: the same W, read-in initialization and noise streams at every grid
point); ``independent_seeds = true`` instead derives a seed per (listed seed, grid point) with
``SeedSequence(seed, spawn_key=(point index,))``. Without ``seeds`` there is no seed dimension and
every grid point gets ``SeedSequence(seed, spawn_key=(point index,))`` (``seed`` defaults to 0).
The point index is the flat C-order index over the grid dimensions in the order of ``[grid]``.

:func:`resolve_spec` validates every point's configuration (an invalid spec fails with a message
that names the key, ``base.KEY`` or ``grid.KEY[i]``) and gives a :class:`ResolvedSweep`: the
dimensions with coordinates in internal units, the points with their seeds, and the resolved spec
(all defaults filled in) that a resumed run must match.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from stosim.checks import read_toml
from stosim.parameters import get as get_parameter
from stosim.studies.substrate_names import DEFAULT_SUBSTRATE
from stosim.studies.sweep_points import (
    EXTRA_DIM_ATTRS,
    STO_SUBSTRATES,
    TEXT_UNITS,
    DeviceOverrides,
    Output,
    PointKind,
    get_kind,
    normalize_raw,
    parameter_metadata,
    point_kinds,
    resolve_device,
)

__all__ = [
    "SweepSpec",
    "SpecError",
    "load_spec",
    "parse_spec",
    "resolve_spec",
    "ResolvedSweep",
    "Point",
    "MAX_POINTS",
    "SPEC_FORMAT",
]

MAX_POINTS = 1_000_000
DEFAULT_DEVICE_KEY = "(default)"  # the device of points that name none (the seed study's pMTJ)
SPEC_FORMAT = 1
Scalar = str | bool | int | float


class SpecError(ValueError):
    """An invalid sweep specification; the message names the key (``base.KEY``, ``grid.KEY[i]``, ...)."""


def derive_seed(entropy: int, index: int) -> int:
    """A 31-bit seed from ``SeedSequence(entropy, spawn_key=(index,))``."""
    return int(np.random.SeedSequence(int(entropy), spawn_key=(int(index),)).generate_state(1)[0] >> 1)


SEED = get_parameter("seed")  # (stosim.parameters: [0, 2**32 - 1])


class SweepSpec(BaseModel):
    """The TOML file as written (quantities still strings); see the module docstring."""

    # strict: a boolean is not a seed or a number, a string not a number
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str = Field(min_length=1, max_length=200)
    kind: str
    description: str = ""
    seed: int | None = SEED.field(None, description="root seed of the points' seeds")
    seeds: list[Annotated[int, SEED.field(...)]] | None = None
    independent_seeds: bool = False
    base: dict[str, Scalar | list[Scalar]] = {}  # lists: list-valued keys (a noise point's levels)
    grid: dict[str, list[Scalar]] = {}

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", v):
            raise ValueError("use letters, digits and _ . + - only")
        return v

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v not in point_kinds():
            raise ValueError(f"unknown kind; valid: {', '.join(point_kinds())}")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("empty list; give at least one seed (or leave seeds out)")
        if any(s < 0 for s in v):
            raise ValueError("seeds must be >= 0")
        if len(set(v)) != len(v):
            raise ValueError("seeds must be distinct")
        return v

    @field_validator("grid")
    @classmethod
    def _grid(cls, v: dict[str, list[Scalar]]) -> dict[str, list[Scalar]]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"{key}: empty list; give at least one value")
            normalized = [json.dumps(x) for x in values]
            if len(set(normalized)) != len(normalized):
                dup = next(x for x in values if normalized.count(json.dumps(x)) > 1)
                raise ValueError(f"{key}: value {dup!r} appears twice; grid values must be distinct")
        return v

    @model_validator(mode="after")
    def _combinations(self) -> "SweepSpec":
        if self.seed is not None and self.seeds is not None:
            raise ValueError(
                "seed, seeds: give either seed (the root of per-point seeds) or seeds (a seed dimension), not both"
            )
        if self.independent_seeds and self.seeds is None:
            raise ValueError("independent_seeds: needs seeds = [...]")
        for section in ("base", "grid"):
            if "seed" in getattr(self, section):
                raise ValueError(f"{section}.seed: set seeds with the top-level seeds = [...] or seed = N")
        both = sorted(set(self.base) & set(self.grid))
        if both:
            raise ValueError(f"{', '.join('grid.' + k for k in both)}: also set in [base]; keep one")
        return self


def _format_validation_error(source: str, exc: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        key = prefix + ".".join(loc) if loc else prefix.rstrip(".") or "(file)"
        # section-level checks name the entry: "grid" + "coupling: empty list" -> "grid.coupling: empty list";
        # model-level checks name their keys: "seed, seeds: give either ..."
        head, sep, rest = msg.partition(": ")
        if sep and len(loc) <= 1 and re.fullmatch(r"[\w.\[\], ]+", head):
            key = ", ".join(f"{key}.{h}" if loc and not h.startswith(f"{key}.") else h for h in head.split(", "))
            msg = rest
        # list items in a table: grid.coupling.1 -> grid.coupling[1]
        key = re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", key)
        got = err.get("input")
        got_text = "" if isinstance(got, dict) or err["type"] in ("extra_forbidden", "missing") else f" (got {got!r})"
        lines.append(f"{source}: {key}: {msg}{got_text}")
    return "\n".join(lines)


def parse_spec(raw: dict[str, Any], source: str = "spec") -> SweepSpec:
    """Validate the top level of a spec (a dict as read from TOML)."""
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(_format_validation_error(source, exc)) from None


def load_spec(path: str | Path) -> "ResolvedSweep":
    """Read, validate and resolve a sweep TOML file."""
    path = Path(path)
    raw = read_toml(path, SpecError, "sweep spec")
    return resolve_spec(parse_spec(raw, str(path)), source=str(path))


@dataclasses.dataclass(frozen=True)
class Point:
    """One run: grid position ``index`` (over all dimensions, seed last), its configuration and seed."""

    index: tuple[int, ...]
    flat: int
    grid_index: int
    coords: dict[str, Any]
    config: dict[str, Any]
    seed: int


@dataclasses.dataclass(frozen=True)
class Dimension:
    name: str
    values: np.ndarray
    attrs: dict[str, str]


@dataclasses.dataclass(frozen=True)
class ResolvedSweep:
    """A validated sweep: dimensions (grid keys in order, then ``seed``), points, outputs."""

    spec: SweepSpec
    kind: PointKind
    dims: tuple[Dimension, ...]
    points: tuple[Point, ...]
    extra_dims: tuple[Dimension, ...]
    output_units: dict[str, str]
    resolved: dict[str, Any]
    source: str = "spec"
    outputs: tuple[Output, ...] = ()  # the kind's outputs this sweep produces (PointKind.outputs_for)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(d.values) for d in self.dims)

    @property
    def dim_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.dims)

    @property
    def resolved_json(self) -> str:
        return json.dumps(self.resolved, sort_keys=True, default=_json_default)

    @property
    def spec_hash(self) -> str:
        return hashlib.sha256(self.resolved_json.encode()).hexdigest()

    def __len__(self) -> int:
        return len(self.points)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON-serializable: {value!r}")


def _json_safe(value: Any) -> Any:
    """JSON-comparable value: non-finite floats as strings ('inf', 'nan')."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _coordinate_array(values: list[Any]) -> np.ndarray:
    if all(isinstance(v, bool) for v in values):
        return np.asarray([int(v) for v in values], dtype=np.int64)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.int64)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.float64)
    return np.asarray([str(v) for v in values], dtype=object)


def resolve_spec(spec: SweepSpec, source: str = "spec") -> ResolvedSweep:
    """Validate every point of ``spec`` and resolve coordinates, seeds and the resolved spec."""
    kind = get_kind(spec.kind)
    model = kind.config
    fields = set(model.model_fields) - {"seed"}
    for section in ("base", "grid"):
        for key in getattr(spec, section):
            if key not in fields:
                valid = ", ".join(sorted(fields))
                raise SpecError(f"{source}: {section}.{key}: unknown key for kind = {spec.kind!r}; valid: {valid}")

    def substrate_of(values: dict[str, Any]) -> str:
        return str(values.get("substrate", kind.substrate_default))

    def validate(values: dict[str, Any], where: dict[str, str]) -> BaseModel:
        """Validate one configuration; ``where`` maps keys to the spec location to name in errors."""
        substrate = substrate_of(values)
        normalized = {}
        for key, value in values.items():
            try:
                normalized[key] = normalize_raw(key, value, substrate)
            except ValueError as exc:
                msg = str(exc).removeprefix(f"{key}: ")
                raise SpecError(f"{source}: {where.get(key, 'base.' + key)}: {msg}") from None
        values = normalized
        try:
            cfg = model.model_validate({**values, "seed": 0}, strict=True)
        except ValidationError as exc:
            lines = []
            for err in exc.errors():
                key = str(err["loc"][0]) if err["loc"] else ""
                msg = err["msg"].removeprefix("Value error, ")
                name = where.get(key) or (f"base.{key}" if key else _describe(values, where))
                head, sep, rest = msg.partition(": ")
                if not key and sep and all(k in values for k in head.split(", ")):  # a check across keys
                    name = ", ".join(where.get(k, f"base.{k}") for k in head.split(", "))
                    msg = rest
                lines.append(f"{source}: {name}: {msg}" + ("" if key not in values else f" (got {values[key]!r})"))
            raise SpecError("\n".join(lines)) from None
        try:
            if hasattr(cfg, "check_point"):
                cfg.check_point()
        except (ValueError, OSError) as exc:
            keys = [k for k in DeviceOverrides.model_fields if k in values] + (["device"] if "device" in values else [])
            name = ", ".join(where.get(k, f"base.{k}") for k in keys) or "device"
            raise SpecError(f"{source}: {name}: {exc}") from None
        return cfg

    base = dict(spec.base)
    where_base = {k: f"base.{k}" for k in base}
    for key, values in spec.grid.items():
        for i, value in enumerate(values):
            if isinstance(value, (list, dict)):
                raise SpecError(f"{source}: grid.{key}[{i}]: expected a single value, got {value!r}")

    grid_keys = list(spec.grid)
    grid_shape = [len(spec.grid[k]) for k in grid_keys]
    n_grid = math.prod(grid_shape)  # Python integers: np.prod wraps around (256 values x 8 keys gave 0)
    n_seeds = len(spec.seeds) if spec.seeds is not None else 1
    if n_grid * n_seeds > MAX_POINTS:
        raise SpecError(f"{source}: grid: {n_grid * n_seeds} points, more than {MAX_POINTS}; split the sweep")

    configs: list[BaseModel] = []
    grid_configs: list[dict[str, Any]] = []
    coordinates: dict[str, dict[int, Any]] = {k: {} for k in grid_keys}  # in internal units
    # whole points only: [base] alone, or one grid value with it, may break a rule across keys
    # (transient < duration, ...) that every point keeps; errors name base.KEY / grid.KEY[i]
    for combo in itertools.product(*[range(s) for s in grid_shape]):
        values = {**base, **{k: spec.grid[k][i] for k, i in zip(grid_keys, combo)}}
        where = {**where_base, **{k: f"grid.{k}[{i}]" for k, i in zip(grid_keys, combo)}}
        cfg = validate(values, where)
        configs.append(cfg)
        grid_configs.append(cfg.model_dump())
        for k, i in zip(grid_keys, combo):
            coordinates[k].setdefault(i, getattr(cfg, k))

    # coordinates in internal units, read back from the validated configurations; two values that
    # convert to the same one ("500 Oe", "0.5 kOe") would be two points at one coordinate
    dims: list[Dimension] = []
    for key in grid_keys:
        coord_values = [coordinates[key][i] for i in range(len(spec.grid[key]))]
        for j, value in enumerate(coord_values):
            first = next((i for i, v in enumerate(coord_values) if v == value), j)  # (NaN equals nothing)
            if first != j:
                raise SpecError(
                    f"{source}: grid.{key}[{first}] and grid.{key}[{j}] are the same value "
                    f"({spec.grid[key][first]!r}, {spec.grid[key][j]!r}); grid values must be distinct"
                )
        units = {
            parameter_metadata(key, getattr(c, "substrate", kind.substrate_default), kind.name)[0] for c in configs
        }
        if len(units) > 1:
            raise SpecError(
                f"{source}: grid.{key}: the points mix units ({', '.join(sorted(units))}) because "
                "they mix substrate families; sweep one family per spec"
            )
        arr = _coordinate_array(coord_values)
        unit = units.pop() if arr.dtype != object else TEXT_UNITS
        long_name = parameter_metadata(key, DEFAULT_SUBSTRATE, kind.name)[1]
        if any(isinstance(v, bool) for v in coord_values):
            long_name += " (1 = true)"
        dims.append(Dimension(key, arr, {"units": unit, "long_name": long_name}))
    if spec.seeds is not None:
        dims.append(
            Dimension(
                "seed",
                np.asarray(spec.seeds, dtype=np.int64),
                {"units": "1", "long_name": "seed (W, read-in initialization, data order, noise)"},
            )
        )

    root = 0 if spec.seed is None else spec.seed
    points: list[Point] = []
    seed_list = spec.seeds if spec.seeds is not None else [None]
    flat = 0
    for g, (combo, cfg_dict) in enumerate(zip(itertools.product(*[range(s) for s in grid_shape]), grid_configs)):
        for s_i, s in enumerate(seed_list):
            if s is None:
                run_seed, index = derive_seed(root, g), tuple(combo)
            else:
                run_seed = derive_seed(s, g) if spec.independent_seeds else int(s)
                index = (*combo, s_i)
            coords = {
                d.name: d.values[i].item() if hasattr(d.values[i], "item") else d.values[i] for d, i in zip(dims, index)
            }
            config = {**cfg_dict, "seed": run_seed}
            _check_run(kind, model.model_validate(config, strict=True), source, _point_name(spec, combo, grid_keys, s))
            points.append(Point(index=index, flat=flat, grid_index=g, coords=coords, config=config, seed=run_seed))
            flat += 1

    extra = tuple(
        Dimension(name, np.asarray(values), dict(EXTRA_DIM_ATTRS.get(name, {"units": "1", "long_name": name})))
        for name, values in kind.extra_dims(configs).items()
    )
    outputs = kind.outputs_for(configs)
    output_units = {}
    for out in outputs:
        units = {out.units_for(c) for c in configs if out.applies_to(c)}
        if len(units) > 1:
            raise SpecError(
                f"{source}: grid: output {out.name} would mix units ({', '.join(sorted(units))}); "
                "sweep one substrate family per spec"
            )
        output_units[out.name] = units.pop()

    # the base keys as validated alone where they can be (as sweep files written before store them),
    # else as in the first point (they are the same in every point)
    try:
        base_config = validate(base, where_base).model_dump()
    except SpecError:
        base_config = grid_configs[0]
    base_resolved = {k: _json_safe(v) for k, v in base_config.items() if k not in grid_keys and k != "seed"}
    resolved = {
        "format": SPEC_FORMAT,
        "name": spec.name,
        "kind": spec.kind,
        "seed": spec.seed,
        "seeds": spec.seeds,
        "independent_seeds": spec.independent_seeds,
        "base": base_resolved,
        "grid": {d.name: [_json_safe(v) for v in d.values.tolist()] for d in dims if d.name != "seed"},
        "grid_units": {d.name: d.attrs["units"] for d in dims if d.name != "seed"},
        "devices": _device_records(grid_configs),
    }
    return ResolvedSweep(
        spec=spec,
        kind=kind,
        dims=tuple(dims),
        points=tuple(points),
        extra_dims=extra,
        output_units=output_units,
        resolved=resolved,
        source=source,
        outputs=outputs,
    )


def _device_records(configs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The parameters of every device file the STO points load (key: the file or name as given,
    "(default)" for the seed study's pMTJ), before overrides: a resumed sweep compares them, so a
    device file edited between the runs is not mixed into one result file."""
    names = sorted(
        {
            c.get("device") or DEFAULT_DEVICE_KEY
            for c in configs
            if "device" in c and c.get("substrate", DEFAULT_SUBSTRATE) in STO_SUBSTRATES
        }
    )
    return {
        name: {
            k: _json_safe(v)
            for k, v in dataclasses.asdict(resolve_device(None if name == DEFAULT_DEVICE_KEY else name, {})).items()
        }
        for name in names
    }


def _describe(values: dict[str, Any], where: dict[str, str]) -> str:
    swept = [where[k] for k in values if where.get(k, "").startswith("grid.")]
    return "grid point " + ", ".join(swept) if swept else "base"


def _point_name(spec: SweepSpec, combo: tuple[int, ...], grid_keys: list[str], seed: int | None) -> str:
    """How an error names a point: its grid entries (``grid.coupling[2]``), its seed if listed, else base."""
    parts = [f"grid.{k}[{i}] = {spec.grid[k][i]!r}" for k, i in zip(grid_keys, combo)]
    if seed is not None:
        parts.append(f"seeds: {seed}")
    return "grid point " + ", ".join(parts) if parts else "base"


def _check_run(kind: PointKind, cfg: BaseModel, source: str, where: str) -> None:
    """The checks the point's run applies when it starts (the substrate builds with this point's seed, the
    STO time step resolves the fastest precession, the step count is bounded), so that a spec validates if
    and only if every point starts; raises SpecError naming the point."""
    from threadpoolctl import threadpool_limits

    try:
        with threadpool_limits(1):  # small eigenvalue problems: BLAS threads only cost on a shared machine
            _run_checks(kind.name, cfg)
    except (ValueError, OSError, ArithmeticError) as exc:
        text = str(exc)
        if text.startswith("config: "):
            text = text.removeprefix("config: ")
        raise SpecError(f"{source}: {where}: {text}") from None


def _run_checks(kind: str, cfg: Any) -> None:
    from stosim.checks import check_steps
    from stosim.studies.training import EXACT_CHECK_MAX_N, FFESN_CHECK_MAX_N, check_train_run

    sto = getattr(cfg, "substrate", DEFAULT_SUBSTRATE) in STO_SUBSTRATES
    device = resolve_device(cfg.device, cfg.device_overrides()) if sto else None
    if kind in ("train", "noise"):  # a noise point trains as a train point does
        check_train_run(cfg.train_config(), device=device)
    elif kind == "simulate":
        from stosim.physics.array import STOArray, check_time_step
        from stosim.simulation import steps_for_duration

        check_steps(steps_for_duration(cfg.duration, cfg.dt))
        if cfg.n <= EXACT_CHECK_MAX_N:
            array = STOArray.generate(device, cfg.n, cfg.coupling, seed=cfg.seed, current_a=cfg.current)
        else:  # coupling row sum 1, a lower bound of sum_j |W_ij| for a W of spectral radius 1
            array = STOArray.with_matrix(
                device, np.array([[0.0, 1.0], [1.0, 0.0]]), cfg.coupling, current_a=cfg.current
            )
        check_time_step(array, cfg.dt)
    elif kind == "mle":
        from stosim.studies.run_lyapunov import LYAPUNOV_DEFAULTS, substrate_tangent_system

        limit = FFESN_CHECK_MAX_N if cfg.substrate == "ffesn" else EXACT_CHECK_MAX_N
        if (cfg.n or LYAPUNOV_DEFAULTS[cfg.substrate]["n"]) <= limit:
            substrate_tangent_system(cfg.substrate, **cfg.tangent_keywords())  # what the point will build
    elif kind == "ftmle":
        if cfg.substrate == "sto" and (cfg.n or 100) <= EXACT_CHECK_MAX_N:
            from stosim.substrates.sto_array import CoupledSTOArray

            sub = CoupledSTOArray(
                n=cfg.n or 100,
                coupling_oe=cfg.coupling,
                duration_s=cfg.duration or 300e-12,
                dt_s=cfg.dt or 1e-12,
                current_a=cfg.current,
                device=device,
                seed=cfg.seed,
            )
            check_steps(sub.n_steps)
        elif cfg.substrate == "ffesn" and (cfg.n or 500) <= FFESN_CHECK_MAX_N:
            from stosim.substrates.ffesn import FFESN

            FFESN(
                n=cfg.n or 500, spectral_radius=cfg.spectral_radius, steps=cfg.steps, density=cfg.density, seed=cfg.seed
            )
        elif cfg.substrate == "lorenz96":
            from stosim.substrates.lorenz96 import Lorenz96

            check_steps(
                Lorenz96(n=cfg.n or 500, forcing=cfg.forcing, duration=cfg.duration or 1.0, dt=cfg.dt or 0.01).n_steps
            )
