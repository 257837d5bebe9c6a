"""Sweep results in memory and on disk (an xarray Dataset written as HDF5 via h5netcdf, atomically).

Layout of a sweep file:

- dimensions: the grid keys in spec order, then ``seed`` (when the spec lists seeds), then the
  outputs' own dimensions (``epoch`` for learning curves, ``exponent`` for Lyapunov spectra); every
  coordinate in internal units with ``units`` and ``long_name``;
- one variable per output the spec produces (:meth:`~stosim.studies.sweep_points.PointKind.outputs_for`: a train
  sweep has ``ftmle_*`` variables only with ``ftmle_samples > 0``; accuracies in percent, units "%"),
  NaN where a point is pending or failed; ``wall_time_s``, ``run_seed``
  (the seed each point ran with), ``status`` ("done", "failed", "pending") and ``error`` (the
  message of a failed point, "" otherwise); every variable has ``units`` and ``long_name``;
- attributes: ``sweep_spec_json`` (the resolved spec), ``sweep_spec_sha256``, ``sweep_seeds``,
  ``sweep_runs`` (JSON: start/end time and cluster of each invocation), point counts, package
  versions and the creation time.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

import numpy as np

from stosim.storage import provenance_attrs, write_dataset_atomic
from stosim.studies.sweep_points import TEXT_UNITS
from stosim.sweep.spec import Point, ResolvedSweep
from stosim.units import values_agree

__all__ = ["SweepState", "read_sweep", "ResumeError", "STATUS_DONE", "STATUS_FAILED", "STATUS_PENDING", "FORMAT_ATTR"]

STATUS_DONE, STATUS_FAILED, STATUS_PENDING = "done", "failed", "pending"
FORMAT_ATTR = "stosim_sweep_format"


class ResumeError(ValueError):
    """The file to resume does not belong to this spec (or is not a sweep file)."""


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def read_sweep(path: str | Path):
    """The sweep file at ``path`` as an in-memory xarray Dataset (the file is closed again)."""
    import h5py
    import xarray as xr

    try:
        # h5py first: a file HDF5 cannot open, or whose root attributes it cannot read, leaves h5netcdf a
        # half-made File whose destructor raises (an "exception ignored" after the refusal)
        with h5py.File(path, "r") as f:
            f.attrs.get("_nc3_strict")
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            return ds.load()
    except FileNotFoundError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:  # h5py on a damaged file raises any
        raise ValueError(f"{path}: cannot read as a sweep file ({type(exc).__name__}: {exc})") from None


class SweepState:
    """Results of every point of a sweep, kept by the single writer and saved as a Dataset."""

    def __init__(self, sweep: ResolvedSweep) -> None:
        self.sweep = sweep
        shape = sweep.shape
        self.values: dict[str, np.ndarray] = {}
        for out in sweep.outputs:
            extra = tuple(len(d.values) for d in sweep.extra_dims if d.name in out.extra_dims)
            self.values[out.name] = np.full(shape + extra, np.nan)
        self.wall_time = np.full(shape, np.nan)
        self.status = np.full(shape, STATUS_PENDING, dtype=object)
        self.error = np.full(shape, "", dtype=object)
        self.run_seed = np.zeros(shape, dtype=np.int64)
        for p in sweep.points:
            self.run_seed[p.index] = p.seed
        self.runs: list[dict[str, Any]] = []
        self.started_utc: str | None = None
        self.saves = 0  # files written by this process

    # -- bookkeeping ---------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        return {s: int(np.sum(self.status == s)) for s in (STATUS_DONE, STATUS_FAILED, STATUS_PENDING)}

    def is_done(self, point: Point) -> bool:
        return self.status[point.index] == STATUS_DONE

    def record(self, point: Point, outcome: dict[str, Any]) -> None:
        """Store the outcome of :func:`~stosim.studies.sweep_points.execute_point` for ``point``."""
        idx = point.index
        self.wall_time[idx] = outcome.get("wall_time_s", np.nan)
        if outcome["status"] != STATUS_DONE:
            self.status[idx] = STATUS_FAILED
            self.error[idx] = str(outcome.get("error", "unknown error")) or "unknown error"
            for arr in self.values.values():
                arr[idx] = np.nan
            return
        values = outcome["values"]
        for out in self.sweep.outputs:
            value = np.asarray(values[out.name], dtype=np.float64)
            if out.extra_dims:
                row = np.full(self.values[out.name].shape[len(idx) :], np.nan)
                row[: value.shape[0]] = value
                self.values[out.name][idx] = row
            else:
                self.values[out.name][idx] = float(value)
        self.status[idx] = STATUS_DONE
        self.error[idx] = ""

    # -- dataset --------------------------------------------------------------------------------
    def to_dataset(self, *, finished: bool = False):
        import xarray as xr

        sw = self.sweep
        dims = sw.dim_names
        coords = {d.name: (d.name, d.values, dict(d.attrs)) for d in sw.dims + sw.extra_dims}
        data_vars: dict[str, Any] = {}
        done = self.status == STATUS_DONE
        for out in sw.outputs:
            attrs: dict[str, Any] = {"units": sw.output_units[out.name], "long_name": out.long_name}
            if not out.extra_dims:  # (curves are NaN-padded by design)
                # done points whose value is NaN / inf (undefined there, e.g. a standard error from one block)
                attrs["n_done_not_finite"] = int(np.sum(done & ~np.isfinite(self.values[out.name])))
            data_vars[out.name] = (dims + out.extra_dims, self.values[out.name], attrs)
        data_vars["wall_time_s"] = (
            dims,
            self.wall_time,
            {
                "units": "s",
                "long_name": "wall-clock time of the point in its worker "
                "(a worker's first point includes compilation and imports)",
            },
        )
        data_vars["run_seed"] = (dims, self.run_seed, {"units": "1", "long_name": "seed the point ran with"})
        data_vars["status"] = (
            dims,
            self.status.astype(str).astype(object),
            {"units": TEXT_UNITS, "long_name": "point status: done, failed or pending"},
        )
        data_vars["error"] = (
            dims,
            self.error.astype(str).astype(object),
            {"units": TEXT_UNITS, "long_name": "error message of a failed point (empty otherwise)"},
        )
        ds = xr.Dataset(data_vars, coords=coords)
        counts = self.counts()
        spec = sw.spec
        seeds_attr = (
            spec.seeds
            if spec.seeds is not None
            else f"derived: SeedSequence({0 if spec.seed is None else spec.seed}, spawn_key=(point index,)); "
            "see run_seed"
        )
        ds.attrs.update(
            provenance_attrs(
                **{
                    FORMAT_ATTR: 1,
                    "title": f"stosim sweep {spec.name} (kind = {spec.kind})",
                    "sweep_name": spec.name,
                    "sweep_kind": spec.kind,
                    "sweep_description": spec.description,
                    "sweep_spec_json": sw.resolved_json,
                    "sweep_spec_sha256": sw.spec_hash,
                    "sweep_spec_source": sw.source,
                    "sweep_seeds": seeds_attr,
                    "sweep_independent_seeds": spec.independent_seeds,
                    "sweep_dims": json.dumps(list(dims)),
                    "sweep_started_utc": self.started_utc or utc_now(),
                    "sweep_finished_utc": utc_now() if finished and counts[STATUS_PENDING] == 0 else "none",
                    "sweep_runs": json.dumps(self.runs),
                    "n_points": len(sw.points),
                    "n_done": counts[STATUS_DONE],
                    "n_failed": counts[STATUS_FAILED],
                    "n_pending": counts[STATUS_PENDING],
                }
            )
        )
        return ds

    def save(self, path: str | Path, *, finished: bool = False) -> Path:
        """Rewrite ``path`` atomically (temporary file beside it, then rename)."""
        self.saves += 1
        # the runner holds the output's lock for the whole sweep; checksums: a damaged file is refused on --resume
        return write_dataset_atomic(
            self.to_dataset(finished=finished), path, overwrite=True, lock=False, checksums=True
        )

    # -- resume -----------------------------------------------------------------------------------
    def _with_new_defaults(self, saved: dict[str, Any], mine: dict[str, Any]) -> dict[str, Any]:
        """A spec saved by an earlier version lacks the point-configuration keys added since; such a
        key is the same spec when this sweep (``mine``) leaves it at its default (the earlier behaviour).
        One saved before the device parameters were recorded (no ``devices``) is taken to have used
        today's device files."""
        if "devices" not in saved and "devices" in mine:
            saved["devices"] = mine["devices"]
        fields = self.sweep.kind.config.model_fields
        saved_base, my_base = saved.get("base"), mine.get("base")
        if isinstance(saved_base, dict) and isinstance(my_base, dict):
            for key, value in my_base.items():
                if (
                    key not in saved_base
                    and key in fields
                    and key not in saved.get("grid", {})
                    and json.loads(json.dumps(fields[key].default, default=str)) == value
                ):
                    saved_base[key] = value
        return saved

    def load_completed(self, path: str | Path) -> int:
        """Take the done points of the sweep file ``path`` (same resolved spec); returns their number.

        The file is data from an earlier run, perhaps damaged (a disk error, a half-copied file, an
        edit): it must read as HDF5, carry the sweep attributes (valid JSON where JSON is stored), the
        variables with the spec's dimensions, shapes and value types, the spec's coordinates, known
        status values and, for every done point, the seed the spec gives it and a finite wall time.
        Anything else is a :class:`ResumeError` naming the file and the attribute or variable."""
        try:
            import h5py

            # first h5py alone, every object and attribute: h5netcdf leaves a half-made File object behind
            # when opening or reading the attributes fails, whose clean-up prints a traceback at exit
            with h5py.File(path, "r") as f:
                _read_every_attribute(f)
                f.visititems(lambda _, obj: _read_every_attribute(obj))
            ds = read_sweep(path)
        except Exception as exc:  # damaged HDF5: OSError, KeyError, RuntimeError, TypeError, ...
            raise ResumeError(
                f"resume=True: cannot read {path} as a sweep file ({type(exc).__name__}: "
                f"{_first_line(exc)}); it is damaged or not a sweep file"
            ) from None
        if FORMAT_ATTR not in ds.attrs or "sweep_spec_json" not in ds.attrs:
            raise ResumeError(f"resume=True: {path} is not a stosim sweep file")
        version = _scalar(ds.attrs[FORMAT_ATTR])
        if version != 1:
            raise ResumeError(
                f"resume=True: {path}: attribute {FORMAT_ATTR} = {version!r:.60}; this version reads format 1"
            )
        mine = json.loads(self.sweep.resolved_json)
        saved = self._with_new_defaults(_json_attr(ds, path, "sweep_spec_json", dict), mine)
        diff = _diff(saved, mine)
        if diff:
            raise ResumeError(
                f"resume=True: {path} was written by a different spec (differs in {', '.join(diff)}); "
                "resume with the same spec, or pass overwrite=True to start again"
            )
        runs = _json_attr(ds, path, "sweep_runs", list, default="[]")
        if not all(isinstance(r, dict) for r in runs):
            raise ResumeError(f"resume=True: {path}: attribute sweep_runs must be a JSON list of records")
        started = ds.attrs.get("sweep_started_utc", "")
        if not isinstance(started, str):
            raise ResumeError(f"resume=True: {path}: attribute sweep_started_utc must be text, found {started!r:.60}")
        sw = self.sweep
        for name in ("status", "wall_time_s", "run_seed"):
            if name not in ds:
                raise ResumeError(f"resume=True: {path} lacks the variable {name}; it is not a complete sweep file")
        for out in sw.outputs:
            if out.name not in ds:
                raise ResumeError(f"resume=True: {path} lacks the variable {out.name}")
            _check_units(ds[out.name], out.name, sw.output_units[out.name], path)
        if tuple(ds["status"].dims) != sw.dim_names:
            raise ResumeError(f"resume=True: {path} has dimensions {ds['status'].dims}, expected {sw.dim_names}")
        self._check_coordinates(ds, path)
        expected = {"status": ("OSU", sw.shape), "wall_time_s": ("f", sw.shape), "run_seed": ("iu", sw.shape)}
        for out in sw.outputs:
            expected[out.name] = ("f", self.values[out.name].shape)
        for name, (kinds, shape) in expected.items():
            values = ds[name].values
            if values.shape != shape:
                raise ResumeError(f"resume=True: {name} in {path} has shape {values.shape}, expected {shape}")
            if values.dtype.kind not in kinds:
                raise ResumeError(
                    f"resume=True: {name} in {path} holds values of type {values.dtype}, expected {_KIND_NAMES[kinds]}"
                )
        status = ds["status"].values.astype(str)
        unknown = sorted(set(status.ravel().tolist()) - {STATUS_DONE, STATUS_FAILED, STATUS_PENDING})
        if unknown:
            raise ResumeError(
                f"resume=True: status in {path} holds {unknown[:3]!r}; valid: {STATUS_DONE}, "
                f"{STATUS_FAILED}, {STATUS_PENDING}"
            )
        done = status == STATUS_DONE
        seeds = ds["run_seed"].values
        if np.any(seeds[done] != self.run_seed[done]):
            raise ResumeError(
                f"resume=True: run_seed in {path} differs from the spec's seeds at "
                f"{int(np.sum(seeds[done] != self.run_seed[done]))} done point(s); the file is damaged"
            )
        wall = ds["wall_time_s"].values
        if not np.all(np.isfinite(wall[done]) & (wall[done] >= 0)):
            raise ResumeError(
                f"resume=True: wall_time_s in {path} is negative or not finite at a done point; the file is damaged"
            )
        for out in sw.outputs:
            self.values[out.name][done] = ds[out.name].values[done]
        self.wall_time[done] = wall[done]
        self.status[done] = STATUS_DONE
        self.runs = runs
        self.started_utc = started or None
        return int(done.sum())

    def _check_coordinates(self, ds: Any, path: str | Path) -> None:
        """The file's coordinates are the spec's (grid values, seeds, output dimensions)."""
        for dim in self.sweep.dims + self.sweep.extra_dims:
            if dim.name not in ds.coords:
                raise ResumeError(f"resume=True: {path} lacks the coordinate {dim.name}")
            found, want = ds[dim.name].values, np.asarray(dim.values)
            same = found.shape == want.shape and (
                np.array_equal(found.astype(str), want.astype(str))
                if want.dtype.kind in "OSU" or found.dtype.kind in "OSU"
                else bool(np.all(np.isclose(found, want, rtol=1e-12, atol=0, equal_nan=True)))
            )
            if not same:
                raise ResumeError(
                    f"resume=True: the coordinate {dim.name} in {path} is {found.tolist()!r:.80}, the spec "
                    f"gives {want.tolist()!r:.80}; the file is damaged or from another spec"
                )


_KIND_NAMES = {"OSU": "text", "f": "floating-point numbers", "iu": "integers"}


def _check_units(var: Any, name: str, want: str, path: str | Path) -> None:
    """The file's ``units`` of output ``name`` are the ones this version writes (``want``): values in
    other units cannot be continued. Accuracies were stored as fractions (units "1") before they were
    stored in percent (units "%")."""
    found = var.attrs.get("units")
    found = _scalar(found) if found is not None else None
    if found == want:
        return
    if want == "%" and found == "1":
        raise ResumeError(
            f"resume=True: {path}: {name} was written with accuracy as a fraction by an earlier "
            "version (units '1'; this version stores percent, units '%'); start a new file"
        )
    raise ResumeError(
        f"resume=True: {path}: {name} has units {found!r:.40}, this version writes {want!r}; start a new file"
    )


def _read_every_attribute(obj: Any) -> None:
    for name in obj.attrs:
        obj.attrs[name]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no message"


def _scalar(value: Any) -> Any:
    """An HDF5 attribute read back as a NumPy scalar or a 1-element array, as a Python value."""
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    return value.item() if isinstance(value, np.generic) else value


def _json_attr(ds: Any, path: str | Path, name: str, kind: type, default: str | None = None) -> Any:
    """Attribute ``name`` of ``ds`` parsed as JSON of type ``kind``; a ResumeError naming file and attribute."""
    text = ds.attrs.get(name, default)
    if not isinstance(text, str):
        raise ResumeError(f"resume=True: {path}: attribute {name} must be JSON text, found {type(text).__name__}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResumeError(f"resume=True: {path}: attribute {name} is not valid JSON ({exc})") from None
    if not isinstance(value, kind):
        raise ResumeError(
            f"resume=True: {path}: attribute {name} must hold a JSON {kind.__name__}, found {type(value).__name__}"
        )
    return value


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Keys (``grid.coupling``, ``base.lr``, ...) where two resolved specs differ
    (:func:`stosim.units.values_agree`: floats within a relative 1e-12, integers exactly)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in a or key not in b:
                out.append(name)
            else:
                out.extend(_diff(a[key], b[key], name))
        return out
    return [] if values_agree(a, b) else [prefix or "(spec)"]
