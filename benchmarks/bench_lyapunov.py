"""Cost of Lyapunov spectra (tangent propagation + QR) against the plain two-trajectory MLE.

What is measured
----------------
For each case in ``CASES`` (a list of functions returning a :class:`Case`), on the same orbit
and the same number of steps:

1. ``qr_full``   -- ``lyapunov_spectrum`` with all exponents of the case (Lorenz 96: all N = 40);
2. ``qr_mle``    -- ``lyapunov_spectrum`` with one exponent (the MLE only, one tangent vector);
3. ``two_traj``  -- ``two_trajectory_mle``: a fiducial and a perturbed trajectory (epsilon 1e-8),
   renormalized at the same interval as the QR runs re-orthonormalize.

The orbit is first run onto the attractor (untimed); each timed run then includes the same
tangent-alignment transient and the same averaging window. Every method is repeated R times
(5; 1 with --quick), interleaved (each round runs every method once, rotated order), and the
figures are medians with min and max. BLAS is limited to one thread (threadpoolctl) for all
methods (multi-threaded BLAS crawls on small products on loaded machines). The load average before
and after is printed: other jobs on the machine slow every figure alike.

Reported: seconds per run and per step, the ratios ``qr_full / two_traj`` (what the whole
spectrum costs relative to the classic MLE-only method) and ``qr_mle / two_traj``, and the
exponents' summary of the full-spectrum run (MLE +- standard error, the two-trajectory MLE,
Kaplan-Yorke dimension, KS entropy, number of positive exponents, sum of exponents against
the time-averaged divergence). The summary of a 20-time-unit run has standard errors of ~0.1
on single exponents; tests/analysis/test_lyapunov_models.py (slow) checks long runs against published
values.

Cases: Lorenz 96, N = 40, F = 8, RK4 dt = 0.01, 20 model time units averaged after 5 units
of alignment (2000 + 500 steps), re-orthonormalized every 10 steps; coupled STO array, N = 200,
mu = 500 Oe, dt = 1 ps, 10 ns after 2 ns of alignment (10,000 + 2,000 steps), the leading 10
exponents as the "full" run.

Usage: ``python benchmarks/bench_lyapunov.py [--json] [--quick] [--repeats R]``; ``--json`` adds
one final line with a JSON object (``cases``: one object per case with the figures above,
``load_average_before`` / ``_after``, ``blas_threads``). Runs in about 10 s on 2 shared cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from typing import Callable

import numpy as np

from stosim.analysis.lyapunov import TangentSystem, lyapunov_spectrum, two_trajectory_mle
from stosim.analysis.tangent_models import Lorenz96Tangent
from stosim.integrate.threads import single_threaded_blas


@dataclasses.dataclass
class Case:
    """One benchmark row: a tangent system, a state on its attractor and the run lengths (steps)."""

    name: str
    system: TangentSystem
    x0: np.ndarray  # already on the attractor (the settling run is not timed)
    n_exponents: int  # for the full-spectrum run
    n_steps: int  # averaging window
    transient_steps: int  # tangent alignment, timed (part of every method's run)
    every: int  # re-orthonormalization / renormalization interval
    epsilon: float = 1e-8  # two-trajectory separation (state units)


def case_lorenz96() -> Case:
    """Lorenz 96, N = 40, F = 8 (RK4, dt = 0.01): 20 time units after 5 units of alignment."""
    system = Lorenz96Tangent(40, 8.0, dt=0.01)
    x = 8.0 + np.random.default_rng(0).standard_normal(40)
    x = system.steps(x, 2_000)  # 20 time units onto the attractor
    return Case("lorenz96 N=40 F=8 dt=0.01", system, x, 40, 2_000, 500, 10)


def case_sto_array() -> Case:
    """Coupled STO array, N = 200, mu = 500 Oe (chaotic), dt = 1 ps: 10 ns after 2 ns of alignment;
    the "full" run takes the leading 10 of the 400 exponents."""
    from stosim.studies.run_lyapunov import substrate_tangent_system

    system, x = substrate_tangent_system("sto", n=200, seed=0, coupling_oe=500.0, dt=1e-12)
    x = system.steps(x, 10_000)  # 10 ns onto the attractor
    return Case("coupled STOs N=200 mu=500 Oe dt=1 ps", system, x, 10, 10_000, 2_000, 10, epsilon=1e-9)


CASES: list[Callable[[], Case]] = [case_lorenz96, case_sto_array]


def _run_methods(case: Case) -> dict[str, Callable[[], object]]:
    system, x0 = case.system, case.x0
    return {
        "qr_full": lambda: lyapunov_spectrum(
            system,
            x0,
            case.n_exponents,
            case.n_steps,
            transient_steps=case.transient_steps,
            reorthonormalize_every=case.every,
        ),
        "qr_mle": lambda: lyapunov_spectrum(
            system, x0, 1, case.n_steps, transient_steps=case.transient_steps, reorthonormalize_every=case.every
        ),
        "two_traj": lambda: two_trajectory_mle(
            system,
            x0,
            case.n_steps,
            transient_steps=case.transient_steps,
            epsilon=case.epsilon,
            renormalize_every=case.every,
        ),
    }


def bench_case(case: Case, repeats: int) -> dict:
    methods = _run_methods(case)
    names = list(methods)
    times: dict[str, list[float]] = {k: [] for k in names}
    results: dict[str, object] = {}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotated order
            t0 = time.perf_counter()
            results[name] = methods[name]()
            times[name].append(time.perf_counter() - t0)
            time.sleep(0.2)
    steps = case.n_steps + case.transient_steps
    med = {k: statistics.median(v) for k, v in times.items()}
    full = results["qr_full"]
    lam = full.exponents
    row = {
        "name": case.name,
        "n_exponents": case.n_exponents,
        "n_steps": case.n_steps,
        "transient_steps": case.transient_steps,
        "step_time": case.system.step_time,
        "time_unit": case.system.time_unit,
        "reorthonormalize_every": case.every,
        "repeats": repeats,
    }
    for k in names:
        row[f"{k}_s"] = med[k]
        row[f"{k}_s_min"] = min(times[k])
        row[f"{k}_s_max"] = max(times[k])
        row[f"{k}_us_per_step"] = 1e6 * med[k] / steps
    row["ratio_full_vs_two_trajectory"] = med["qr_full"] / med["two_traj"]
    row["ratio_mle_vs_two_trajectory"] = med["qr_mle"] / med["two_traj"]
    row["mle"] = full.mle
    row["mle_standard_error"] = float(full.standard_error[0])
    row["mle_qr_single_vector"] = results["qr_mle"].mle
    row["mle_two_trajectory"] = float(results["two_traj"])
    row["kaplan_yorke_dimension"] = full.kaplan_yorke_dimension
    row["ks_entropy"] = full.ks_entropy
    row["n_positive"] = int(np.sum(lam > 0))
    row["n_positive_3se"] = int(np.sum(lam > 3 * full.standard_error))
    row["sum_of_exponents"] = float(lam.sum())
    try:
        row["divergence"] = float(case.system.divergence(case.x0))
    except NotImplementedError:
        row["divergence"] = None
    row["exponents"] = [float(v) for v in lam]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="add one final line with a JSON object")
    parser.add_argument("--quick", action="store_true", help="one repeat (smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 5)")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 5)
    if repeats < 1:
        parser.error("--repeats must be >= 1")
    load_before = os.getloadavg()
    rows = []
    with single_threaded_blas():
        for make in CASES:
            rows.append(bench_case(make(), repeats))
    load_after = os.getloadavg()

    print(
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; BLAS threads: 1; "
        f"median of {repeats} interleaved repeat(s), (min .. max)"
    )
    for row in rows:
        steps = row["n_steps"] + row["transient_steps"]
        print(
            f"\n{row['name']}: {row['n_steps']} steps averaged + {row['transient_steps']} alignment "
            f"({steps * row['step_time']:g} {row['time_unit']}), every {row['reorthonormalize_every']} steps"
        )
        labels = {
            "qr_full": f"lyapunov_spectrum, {row['n_exponents']} exponents",
            "qr_mle": "lyapunov_spectrum, MLE only",
            "two_traj": "two_trajectory_mle",
        }
        for key, label in labels.items():
            print(
                f"  {label:38s} {row[f'{key}_s']:8.3f} s  ({row[f'{key}_s_min']:.3f} .. {row[f'{key}_s_max']:.3f})"
                f"  {row[f'{key}_us_per_step']:8.1f} us/step"
            )
        print(
            f"  ratio full spectrum / two-trajectory: {row['ratio_full_vs_two_trajectory']:.2f}x; "
            f"MLE-only QR / two-trajectory: {row['ratio_mle_vs_two_trajectory']:.2f}x"
        )
        unit = row["time_unit"]
        print(
            f"  MLE {row['mle']:.3f} +- {row['mle_standard_error']:.3f} 1/{unit} "
            f"(one vector {row['mle_qr_single_vector']:.3f}, two-trajectory {row['mle_two_trajectory']:.3f}); "
            f"D_KY {row['kaplan_yorke_dimension']:.2f}; "
            f"KS {row['ks_entropy']:.2f} 1/{unit}; positive exponents {row['n_positive']} "
            f"({row['n_positive_3se']} above 3 standard errors)"
        )
        if row["divergence"] is not None:
            print(f"  sum of exponents {row['sum_of_exponents']:.6f} vs divergence {row['divergence']:g}")
    if args.json:
        print(
            json.dumps(
                {
                    "cases": rows,
                    "load_average_before": load_before,
                    "load_average_after": load_after,
                    "blas_threads": 1,
                    "repeats": repeats,
                }
            )
        )


if __name__ == "__main__":
    main()
