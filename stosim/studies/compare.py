"""Model comparisons over several seeds, as a Markdown table (the seed study's MNIST Table 1).

Each experiment file is trained once per seed into ``OUT/<name>/seed<k>`` (a finished run is
reused, an interrupted one resumed), then the table lists best and mean test accuracy over the
seeds, the spread, epochs to converge and wall time, next to published values when a
``reference.toml`` (name -> text) lies beside the experiment files. ``collect_finished`` builds the
same table from the runs already finished (different seed counts per experiment, nothing trained).
"""

from __future__ import annotations

import json
import statistics
import tomllib
from pathlib import Path
from typing import Callable

from stosim.studies.training import ConfigError, TrainConfig, TrainResult, config_differences, load_train_config, train

__all__ = ["REFERENCE_FILE", "experiment_files", "run_comparison", "collect_finished", "comparison_table"]

REFERENCE_FILE = "reference.toml"  # published values (experiment name -> text) beside the experiment files


def experiment_files(paths: list[Path]) -> list[Path]:
    """The experiment files among ``paths``: a glob such as ``experiments/table1/*.toml`` also
    matches the reference file of published values, which is not an experiment."""
    return [Path(p) for p in paths if Path(p).name != REFERENCE_FILE]


def _experiment_names(configs: list[Path]) -> list[str]:
    """The run-folder names (file names without ``.toml``) of ``configs``; they must be distinct, since
    every experiment's runs go to ``OUT/<name>``."""
    names = [Path(c).stem for c in configs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(
            f"configs: the experiment files must have distinct names (runs go to OUT/<name>); "
            f"{', '.join(repeated)} appear(s) more than once"
        )
    return names


def _finished(cfg: TrainConfig, out: Path) -> dict | None:
    """The saved summary of a finished run in ``out``, if it was made with ``cfg`` (seed included)."""
    metrics = out / "metrics.json"
    if metrics.exists():
        saved = json.loads(metrics.read_text())
        if "config" in saved and not config_differences(saved["config"], cfg):
            return saved
    return None


def _run_one(config: Path, seed: int, out: Path, on_epoch: Callable | None) -> dict:
    cfg = load_train_config(config, seed=seed)
    saved = _finished(cfg, out)
    if saved is not None:
        return saved
    result: TrainResult = train(cfg, out, resume=(out / "checkpoint.pt").exists(), on_epoch=on_epoch)
    return {**result.summary(), "config": cfg.resolved()}


def run_comparison(
    configs: list[Path],
    seeds: list[int],
    out_dir: Path,
    on_run: Callable[[str, int], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> dict[str, list[dict]]:
    """Train every config for every seed (a seed given twice counts once); returns name -> list of
    per-seed summaries."""
    results: dict[str, list[dict]] = {}
    for name, config in zip(_experiment_names(configs), configs):
        for seed in dict.fromkeys(seeds):
            if on_run:
                on_run(name, seed)
            results.setdefault(name, []).append(_run_one(Path(config), seed, out_dir / name / f"seed{seed}", on_epoch))
    return results


def collect_finished(configs: list[Path], out_dir: Path) -> dict[str, list[dict]]:
    """Summaries of the finished runs ``OUT/<name>/seed<k>`` of every config (any seeds; none trained).

    A run counts when its ``metrics.json`` exists and was made with the config as it is now; configs
    without a finished run are left out of the result.
    """
    results: dict[str, list[dict]] = {}
    for name, config in zip(_experiment_names(configs), configs):
        folders = sorted((out_dir / name).glob("seed*"), key=lambda f: (len(f.name), f.name))
        for folder in folders:
            seed_text = folder.name.removeprefix("seed")
            if not seed_text.isdigit():
                continue
            saved = _finished(load_train_config(config, seed=int(seed_text)), folder)
            if saved is not None:
                results.setdefault(name, []).append(saved)
    return results


def _references(configs: list[Path]) -> dict[str, str]:
    refs: dict[str, str] = {}
    for folder in {Path(c).resolve().parent for c in configs}:
        path = folder / REFERENCE_FILE
        if path.exists():
            refs.update({k: str(v) for k, v in tomllib.loads(path.read_text()).items()})
    return refs


def _mean_std(values: list[float]) -> str:
    """ "mean +/- std" of ``values`` (%, two decimals), std the sample standard deviation
    sqrt(sum (x - mean)^2 / (n - 1)); one value has no spread to show, so it is given alone (a
    "+/- 0.00" would claim a spread of zero that no second seed measured)."""
    mean = statistics.mean(values)
    return f"{mean:.2f} +/- {statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"


def _percent(run: dict, key: str) -> float:
    """An accuracy of a run summary in %: ``metrics.json`` stores percent (``accuracy_units = "%"``); a
    fresh :meth:`TrainResult.summary` and the files of earlier versions hold fractions."""
    return float(run[key]) if run.get("accuracy_units") == "%" else 100.0 * float(run[key])


def comparison_table(results: dict[str, list[dict]], configs: list[Path]) -> str:
    """Markdown table: best test accuracy (over epochs and seeds), mean +/- std of the final test accuracy
    over seeds (%; the mean alone for one seed), training accuracy in the last epoch (%, mean over seeds:
    the fraction of training images classified correctly by the model of each step as it trained; with
    the test accuracy it shows overfitting), epochs to converge, wall time."""
    refs = _references(configs)
    lines = [
        "| model | seeds | best test acc. over epochs and seeds (%) | "
        "final test acc., mean +/- std over seeds (%) | "
        "train acc. in the last epoch (%, mean) | epochs to converge (mean) | "
        "wall time per run (s, mean) | seed study best / mean (%) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, runs in results.items():
        best = [_percent(r, "best_test_accuracy") for r in runs]
        final = [_percent(r, "test_accuracy") for r in runs]
        lines.append(
            f"| {name} | {len(runs)} | {max(best):.2f} | {_mean_std(final)} | "
            f"{statistics.mean(_percent(r, 'final_train_accuracy') for r in runs):.2f} | "
            f"{statistics.mean(r['epochs_to_converge'] for r in runs):.1f} | "
            f"{statistics.mean(r['wall_time_s'] for r in runs):.0f} | {refs.get(name, '')} |"
        )
    return "\n".join(lines) + "\n"
