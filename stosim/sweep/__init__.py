"""Parameter sweeps: TOML specs, parallel runs on dask.distributed, resumable HDF5 results, plots.

>>> from stosim.sweep import load_spec, run_sweep, read_sweep, plot_sweep
>>> sweep = load_spec("experiments/smoke-sweep.toml")      # validated and resolved before any work
>>> summary = run_sweep(sweep, "data/smoke.h5", workers=2)  # or scheduler="tcp://host:8786"
>>> ds = read_sweep("data/smoke.h5")                         # xarray: dims = grid keys (+ seed)
>>> plot_sweep(ds, "test_accuracy", x="coupling", y="duration", out="smoke.png")

Modules: :mod:`~stosim.sweep.spec` (the TOML format), :mod:`~stosim.studies.sweep_points` (what a point runs:
``train``, ``mle``, ``simulate``, ``ftmle``), :mod:`~stosim.sweep.store` (the file), :mod:`~stosim.sweep.runner`
(the cluster and the single writer), :mod:`~stosim.sweep.plot`.
"""

from stosim.studies.sweep_points import PointKind, point_kinds
from stosim.sweep.plot import PlotError, plot_sweep
from stosim.sweep.runner import PointEvent, SweepFailedError, SweepSummary, run_sweep
from stosim.sweep.spec import ResolvedSweep, SpecError, SweepSpec, load_spec, parse_spec, resolve_spec
from stosim.sweep.store import ResumeError, read_sweep

__all__ = [
    "load_spec",
    "parse_spec",
    "resolve_spec",
    "SweepSpec",
    "ResolvedSweep",
    "SpecError",
    "run_sweep",
    "SweepSummary",
    "PointEvent",
    "SweepFailedError",
    "ResumeError",
    "read_sweep",
    "plot_sweep",
    "PlotError",
    "PointKind",
    "point_kinds",
]
