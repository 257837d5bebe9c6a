"""Maximal Lyapunov exponent of the FFESN map x <- tanh(W x) (N = 500) for both masks of W, over rho.

The study's rule for its three FFESN rows (Table 1, appendix C.1) is the global dynamics of the map: a
fixed point (MLE < 0), periodic dynamics (MLE = 0) or chaos (MLE > 0). This prints the MLE (1/step) per
rho and mask, mean +/- std over seeds: one tangent vector v <- diag(1 - x_(k+1)^2) W v, renormalized every
step, over `steps` steps after `transient` (x_0 uniform in [-1, 1]). Usage:

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python experiments/table1/ffesn_mle_by_mask.py
"""

from __future__ import annotations

import numpy as np

from stosim.integrate.threads import single_threaded_blas
from stosim.substrates.ffesn import draw_ffesn_matrix

RHOS = (0.5, 0.9, 1.0, 1.05, 1.1, 1.15, 1.2, 1.25, 1.3, 1.4, 1.5, 2.0)
SEEDS = (0, 1, 2)
N, TRANSIENT, STEPS = 500, 500, 2000


def mle(w: np.ndarray, seed: int) -> float:
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed)))
    x = rng.uniform(-1.0, 1.0, w.shape[0])
    v = rng.standard_normal(w.shape[0])
    v /= np.linalg.norm(v)
    total = 0.0
    for k in range(TRANSIENT + STEPS):
        x = np.tanh(w @ x)
        v = (1.0 - x * x) * (w @ v)
        norm = np.linalg.norm(v)
        if norm == 0.0:
            return -np.inf
        v /= norm
        if k >= TRANSIENT:
            total += np.log(norm)
    return total / STEPS


def main() -> None:
    print("| rho | " + " | ".join(f"{m} mask" for m in ("independent", "symmetric")) + " |")
    print("| --- | --- | --- |")
    with single_threaded_blas():
        for rho in RHOS:
            cells = []
            for mask in ("independent", "symmetric"):
                values = [mle(draw_ffesn_matrix(N, rho, 0.5, s, mask), s) for s in SEEDS]
                cells.append(f"{np.mean(values):+.4f} +/- {np.std(values):.4f}")
            print(f"| {rho:g} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
