"""stosim's LLGS right-hand side and projected RK4 step against cmtj, an independent C++ macrospin code.

cmtj is not a dependency (``pip install cmtj`` to run these); the parameter mapping is the one of
``benchmarks/bench_cmtj.py`` (its docstring derives it). Both take classical RK4 steps and normalize, so
one step from the same state must give the same state; over 100 steps (1 ns) the two stay together.
"""

from __future__ import annotations

import numpy as np
import pytest

cmtj = pytest.importorskip("cmtj", reason="cmtj is not installed (optional: pip install cmtj)")

import stosim  # noqa: E402
from benchmarks.bench_cmtj import cmtj_in_oe, cmtj_junction, cmtj_trajectory  # noqa: E402
from benchmarks.bench_simulate import batch1_array  # noqa: E402

DT_S = 1e-11


@pytest.mark.parametrize("theta", [0.3, 1.2, 2.5])
def test_one_rk4_step_and_one_nanosecond_agree_with_cmtj(theta: float) -> None:
    array = batch1_array(stosim.load_device(), 1, DT_S)
    m0 = np.array([np.sin(theta) * np.cos(0.7), np.sin(theta) * np.sin(0.7), np.cos(theta)])
    _, _, _, alpha, pref = array.oscillator_parameters()[:, 0]
    with cmtj_in_oe(cmtj, float(pref * (1.0 + alpha * alpha))) as constants:
        junction = cmtj_junction(cmtj, constants, array, m0)
        junction.runSimulation(100 * DT_S, DT_S, DT_S)
        theirs = cmtj_trajectory(junction)
    _, ours, _ = stosim.evolve(array, m0[None, None], 100, DT_S, save_every=1)
    ours = ours[:, 0, 0]
    step = np.linalg.norm(ours[0] - m0)
    assert step > 1e-3  # the step moves m: the comparison is not between two resting states
    # one step: the same right-hand side (a wrong sign or factor in any term leaves >= 1e-3 of the step)
    assert np.max(np.abs(theirs[0] - ours[0])) < 1e-6 * step
    # 100 steps (1 ns): the same trajectory (cmtj's loop over t < T may log one state fewer)
    n = min(len(theirs), len(ours))
    assert n >= 99
    assert np.max(np.abs(theirs[:n] - ours[:n])) < 1e-6
