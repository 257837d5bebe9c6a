"""Best and mean over seeds of finished FFESN runs (``OUT/<name>/seed<k>/metrics.json``), as the seed study
reports them (best of 5 / mean of 5), for the rows named on the command line. Usage:

    python experiments/table1/ffesn_seed_summary.py data/table1 ffesn-study-rho1p0 ffesn-study-rho1p5

Per row: seeds; best test accuracy over epochs and seeds; mean +/- sample std (over seeds, as `stosim compare`)
of each run's best epoch; mean +/- std of the final (epoch 80) test accuracy; mean epochs to converge; mean wall
time; per-seed best / final.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def _mean_std(values: np.ndarray) -> str:
    return f"{values.mean():.2f} +/- {values.std(ddof=1):.2f}" if values.size > 1 else f"{values.mean():.2f}"


def main(out: Path, names: list[str]) -> None:
    print(
        "| row | seeds | best (%) | mean of per-seed best (%) | final, mean (%) | epochs to converge | s per run "
        "| per seed best / final (%) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in names:
        runs = []
        for folder in sorted((out / name).glob("seed*"), key=lambda f: int(f.name[4:])):
            metrics = folder / "metrics.json"
            if metrics.exists():
                runs.append((int(folder.name[4:]), json.loads(metrics.read_text())))
        if not runs:
            continue
        best = np.array([r["best_test_accuracy"] for _, r in runs])
        final = np.array([r["test_accuracy"] for _, r in runs])
        conv = np.mean([r["epochs_to_converge"] for _, r in runs])
        wall = np.mean([r["wall_time_s"] for _, r in runs])
        per_seed = ", ".join(f"{s}: {r['best_test_accuracy']:.2f} / {r['test_accuracy']:.2f}" for s, r in runs)
        print(
            f"| {name} | {len(runs)} ({', '.join(str(s) for s, _ in runs)}) | {best.max():.2f} | "
            f"{_mean_std(best)} | {_mean_std(final)} | {conv:.1f} | "
            f"{wall:.0f} | {per_seed} |"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
