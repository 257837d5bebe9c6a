"""One spin-torque oscillator: ``stosim.evolve`` beside cmtj, the same device and integrator, side by side.

cmtj (github.com/LemurPwned/cmtj, ``pip install cmtj``; not a dependency of stosim) integrates the LLGS
equation of macrospin layers in C++. Its single-layer STT model is the equation stosim integrates
(docs/PHYSICS.md section 1) once its parameters are mapped:

- cmtj's right-hand side is (1 + alpha^2)^-1 [-GYRO (m x H + alpha m x (m x H)) - T m x (m x p) + beta T m x p]
  with T = GYRO a_J eta, a_J = hbar I / (e M_s t) and eta = P L^2 / (L^2 + 1 + (L^2 - 1) m.p) (Slonczewski
  spacer parameter L); stosim's is -gamma/(1 + alpha^2) [m x B + alpha m x (m x B)] with B = H + H_s p x m,
  H_s = H_s0 / (1 + lambda m.p). For |m| = 1, m x (p x m) = -m x (m x p) and m x (m x (p x m)) = m x p, so the
  two are one equation when GYRO = gamma (then every field is in Oe), L^2 = (1 + lambda)/(1 - lambda),
  P = 1, beta = alpha, and the current makes a_J L^2 / (L^2 + 1) = -H_s0 (M_s = t = 1);
- H = H_appl e_z + (H_K - 4 pi M) m_z e_z: the external field driver along z and a uniaxial anisotropy along
  z with 2K/M_s = H_K - 4 pi M (no demagnetization tensor: stosim's H_K - 4 pi M already holds it);
- both take classical RK4 steps and normalize m after each, so one step of each must give the same state:
  checked here after 1 step (the right-hand sides; tolerance ``RHS_TOL`` relative to the step; measured 2e-9,
  above double round-off but far below what any wrongly mapped term would leave, 1e-3 or more; the residue
  was not traced into cmtj) and over the whole run (printed: ~2e-6 after 4999 steps).

Workload (the issue's, de Jong et al.'s batch-1 step): the default device, one oscillator (``batch1_array``
of ``bench_simulate.py``: N = 1, no coupling), 4999 RK4 steps of 10 ps, float64, from the same start.
Timed in interleaved rounds (default 7, the order rotated each round), each a block that repeats the run
for at least 0.2 s: cmtj logging every step (``writeFrequency`` = dt) and every 1000th, stosim saving every
step (``save_every=1``) and only the final state. cmtj's junction is built outside its timer (its run only
is timed); ``stosim.evolve`` is timed whole (its checks and set-up included). Reported: device-steps/s
(median over rounds) and the ratio stosim / cmtj in each round (median and min), logging every step
against every step and final state against every 1000th.

Usage: ``python benchmarks/bench_cmtj.py [--json] [--rounds R]``; without cmtj installed it says so and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import stosim  # noqa: E402
from benchmarks.bench_simulate import batch1_array  # noqa: E402

N_STEPS = 4999
DT_S = 1e-11
BLOCK_S = 0.2  # a timed block repeats a run until this long (a 4999-step run lasts ~0.5 ms)
RHS_TOL = 1e-6  # |m_cmtj - m_stosim| after one step, relative to |m_1 - m_0|
THETA0_RAD, PHI0_RAD = 0.3, 0.2  # the start, away from the fixed point on the z axis


def start_state() -> np.ndarray:
    """The unit start vector (3,) both codes begin from."""
    return np.array(
        [math.sin(THETA0_RAD) * math.cos(PHI0_RAD), math.sin(THETA0_RAD) * math.sin(PHI0_RAD), math.cos(THETA0_RAD)]
    )


@contextlib.contextmanager
def cmtj_in_oe(cmtj, gamma_rad_per_oe_s: float):
    """cmtj's gyromagnetic ratio set to stosim's gamma (rad/(Oe s)), so that its fields are in Oe; restored after."""
    constants = cmtj.constants.PhysicalConstants
    constants.set_gyromagnetic_ratio(gamma_rad_per_oe_s)
    try:
        yield constants
    finally:
        constants.resetToDefaults()


def cmtj_junction(cmtj, constants, array: stosim.STOArray, m0: np.ndarray):
    """A cmtj junction of one STT layer integrating stosim's equation for oscillator 0 of ``array`` (module
    docstring: the mapping), starting at ``m0`` (3,)."""
    h_appl, hk_eff, hs0, alpha, _ = array.oscillator_parameters()[:, 0]
    lam = array.device.torque_asymmetry
    slon_sq = (1.0 + lam) / (1.0 - lam)
    layer = cmtj.Layer.createSTTLayer(
        "free",
        cmtj.CVector(*m0),
        cmtj.CVector(0.0, 0.0, 1.0),  # anisotropy axis
        1.0,  # M_s
        1.0,  # thickness
        1.0,  # cell surface
        [cmtj.CVector(0.0, 0.0, 0.0)] * 3,  # no demagnetization tensor
        float(alpha),
        math.sqrt(slon_sq),  # Slonczewski spacer parameter L
        float(alpha),  # beta: the field-like term alpha H_s m x p of stosim's LL form
        1.0,  # spin polarisation P
    )
    layer.setReferenceLayer(cmtj.CVector(*np.asarray(array.device.reference_direction, dtype=float)))
    junction = cmtj.Junction([layer])
    junction.setLayerExternalFieldDriver("all", cmtj.AxialDriver(0.0, 0.0, float(h_appl)))
    junction.setLayerAnisotropyDriver("all", cmtj.ScalarDriver.getConstantDriver(float(hk_eff) / 2.0))
    current = -hs0 * constants.elementary_charge() / constants.hbar() * (slon_sq + 1.0) / slon_sq
    junction.setLayerCurrentDriver("all", cmtj.ScalarDriver.getConstantDriver(float(current)))
    return junction


def cmtj_trajectory(junction) -> np.ndarray:
    """The logged states (S, 3) of a junction's run."""
    log = junction.getLog()
    return np.stack([np.asarray(log["free_mx"]), np.asarray(log["free_my"]), np.asarray(log["free_mz"])], axis=-1)


def agreement(cmtj, constants, array: stosim.STOArray, m0: np.ndarray) -> dict[str, float]:
    """Both trajectories logged every step: the difference after one step relative to the step, and the largest
    difference over the run (round-off of the mapped constants, grown by the dynamics)."""
    junction = cmtj_junction(cmtj, constants, array, m0)
    junction.runSimulation(N_STEPS * DT_S, DT_S, DT_S)
    theirs = cmtj_trajectory(junction)
    _, ours, _ = stosim.evolve(array, m0[None, None], N_STEPS, DT_S, save_every=1)
    ours = ours[:, 0, 0]
    n = min(len(theirs), len(ours))
    step = float(np.linalg.norm(ours[0] - m0))
    return {
        "logged_states": n,
        "first_step_rel_diff": float(np.max(np.abs(theirs[0] - ours[0]))) / step,
        "max_abs_diff_over_run": float(np.max(np.abs(theirs[:n] - ours[:n]))),
    }


def _block(run: Callable[[], float]) -> float:
    """Device-steps/s of ``run`` (returns its seconds) repeated for at least BLOCK_S."""
    seconds, runs = 0.0, 0
    while seconds < BLOCK_S:
        seconds += run()
        runs += 1
    return runs * N_STEPS / seconds


def timed_runs(cmtj, constants, array: stosim.STOArray, m0: np.ndarray) -> dict[str, Callable[[], float]]:
    """name -> one run returning its seconds."""

    def cmtj_run(write_every: int) -> Callable[[], float]:
        def run() -> float:
            junction = cmtj_junction(cmtj, constants, array, m0)
            t0 = time.perf_counter()
            junction.runSimulation(N_STEPS * DT_S, DT_S, write_every * DT_S)
            return time.perf_counter() - t0

        return run

    def stosim_run(save_every: int) -> Callable[[], float]:
        start = m0[None, None]

        def run() -> float:
            t0 = time.perf_counter()
            stosim.evolve(array, start, N_STEPS, DT_S, save_every=save_every)
            return time.perf_counter() - t0

        return run

    return {
        "cmtj_every_step": cmtj_run(1),
        "cmtj_every_1000th": cmtj_run(1000),
        "stosim_every_step": stosim_run(1),
        "stosim_final_only": stosim_run(0),
    }


def run(rounds: int) -> dict | None:
    """The side-by-side measurement, or None when cmtj is not installed."""
    try:
        import cmtj
    except ImportError:
        return None
    array = batch1_array(stosim.load_device(), 1, DT_S)
    m0 = start_state()
    _, _, _, alpha, pref = array.oscillator_parameters()[:, 0]
    with cmtj_in_oe(cmtj, float(pref * (1.0 + alpha * alpha))) as constants:
        check = agreement(cmtj, constants, array, m0)
        runs = timed_runs(cmtj, constants, array, m0)
        rates: dict[str, list[float]] = {name: [] for name in runs}
        names = list(runs)
        for r in range(rounds):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                rates[name].append(_block(runs[name]))
    every = [s / c for s, c in zip(rates["stosim_every_step"], rates["cmtj_every_step"])]
    final = [s / c for s, c in zip(rates["stosim_final_only"], rates["cmtj_every_1000th"])]
    return {
        "cmtj_version": getattr(cmtj, "__version__", "unknown"),
        "device_steps_per_s": {name: statistics.median(v) for name, v in rates.items()},
        "device_steps_per_s_min_max": {name: [min(v), max(v)] for name, v in rates.items()},
        "ratio_vs_cmtj_logging_every_step": statistics.median(every),
        "ratio_vs_cmtj_logging_every_step_min": min(every),
        "ratio_final_vs_cmtj_logging_every_1000th": statistics.median(final),
        "ratio_final_vs_cmtj_logging_every_1000th_min": min(final),
        "agreement": check,
        "agreement_ok": check["first_step_rel_diff"] < RHS_TOL,
        "steps": N_STEPS,
        "dt_s": DT_S,
        "rounds": rounds,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one final line with the results as JSON")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    res = run(args.rounds)
    if res is None:
        print("cmtj is not installed (pip install cmtj): nothing to compare against")
        return 0
    rate = res["device_steps_per_s"]
    print(
        f"one STO, {N_STEPS} RK4 steps of {DT_S * 1e12:g} ps, float64, {args.rounds} interleaved rounds "
        f"(cmtj {res['cmtj_version']}); device-steps/s, median [min..max]:"
    )
    for name, v in rate.items():
        lo, hi = res["device_steps_per_s_min_max"][name]
        print(f"    {name:<20} {v:10.3g}  [{lo:.3g}..{hi:.3g}]")
    print(
        f"stosim / cmtj, both logging every step: {res['ratio_vs_cmtj_logging_every_step']:.2f} "
        f"(min {res['ratio_vs_cmtj_logging_every_step_min']:.2f}); stosim final state only / cmtj logging every "
        f"1000th: {res['ratio_final_vs_cmtj_logging_every_1000th']:.2f} "
        f"(min {res['ratio_final_vs_cmtj_logging_every_1000th_min']:.2f})"
    )
    a = res["agreement"]
    print(
        f"same dynamics: after one step |cmtj - stosim| / |step| = {a['first_step_rel_diff']:.1e} "
        f"({'OK' if res['agreement_ok'] else 'FAIL'}, tolerance {RHS_TOL:g}); largest difference over "
        f"{a['logged_states']} logged states {a['max_abs_diff_over_run']:.1e}"
    )
    if args.json:
        print(json.dumps(res))
    return 0 if res["agreement_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
