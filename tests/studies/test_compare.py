"""`stosim compare`: several experiments x seeds -> Markdown table; finished runs are reused."""

from __future__ import annotations

import pytest
from conftest import REPO_ROOT

from stosim.cli import main
from stosim.studies.compare import comparison_table
from stosim.studies.training import load_train_config

TABLE1 = sorted((REPO_ROOT / "experiments" / "table1").glob("*.toml"))


@pytest.mark.parametrize("path", [p for p in TABLE1 if p.name != "reference.toml"], ids=lambda p: p.stem)
def test_table1_files_are_valid(path):
    cfg = load_train_config(path)
    assert cfg.dataset == "mnist"


def test_compare_writes_a_markdown_table_and_reuses_runs(tmp_path, capsys):
    a, b = tmp_path / "lin.toml", tmp_path / "sto.toml"
    a.write_text(
        'substrate = "linear"\ndataset = "digits"\nepochs = 2\nlr = 0.05\nlimit_train = 200\nlimit_test = 100\n'
    )
    b.write_text(
        'substrate = "sto"\ndataset = "digits"\nn = 6\nduration = "10 ps"\nepochs = 1\n'
        "limit_train = 100\nlimit_test = 50\n"
    )
    (tmp_path / "reference.toml").write_text('lin = "92.5 / 92.4"\n')
    md = tmp_path / "table.md"
    args = ["compare", str(a), str(b), "--seeds", "0", "1", "--out", str(tmp_path / "runs"), "--markdown", str(md)]
    assert main(args) == 0
    table = md.read_text()
    assert "| lin | 2 |" in table and "| sto | 2 |" in table and "92.5 / 92.4" in table
    assert (tmp_path / "runs" / "sto" / "seed1" / "metrics.json").exists()
    mtime = (tmp_path / "runs" / "sto" / "seed1" / "metrics.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0  # second call reuses the finished runs
    assert (tmp_path / "runs" / "sto" / "seed1" / "metrics.json").stat().st_mtime_ns == mtime
    assert md.read_text() == table


def test_compare_finished_only_tabulates_existing_runs_and_skips_the_reference_file(tmp_path, capsys):
    a, b = tmp_path / "lin.toml", tmp_path / "mlp.toml"
    a.write_text(
        'substrate = "linear"\ndataset = "digits"\nepochs = 1\nlr = 0.05\nlimit_train = 100\nlimit_test = 50\n'
    )
    b.write_text('substrate = "mlp"\ndataset = "digits"\nn = 4\nepochs = 1\nlimit_train = 100\nlimit_test = 50\n')
    ref = tmp_path / "reference.toml"
    ref.write_text('lin = "92.5 / 92.4"\n')
    runs = tmp_path / "runs"
    # the glob experiments/*.toml includes reference.toml: it is not trained
    assert main(["compare", str(a), str(ref), "--seeds", "0", "1", "--out", str(runs)]) == 0
    assert main(["compare", str(b), "--seeds", "3", "--out", str(runs)]) == 0
    capsys.readouterr()
    md = tmp_path / "finished.md"
    assert (
        main(["compare", str(a), str(b), str(ref), "--finished-only", "--out", str(runs), "--markdown", str(md)]) == 0
    )
    table = md.read_text()
    assert "| lin | 2 |" in table and "| mlp | 1 |" in table
    # an experiment whose file changed since its runs is not tabulated, and nothing is trained
    b.write_text(b.read_text().replace("epochs = 1", "epochs = 2"))
    assert main(["compare", str(a), str(b), "--finished-only", "--out", str(runs), "--markdown", str(md)]) == 0
    assert "| mlp |" not in md.read_text()
    assert "(left out): mlp" in capsys.readouterr().err
    assert not (runs / "mlp" / "seed0").exists()
    assert main(["compare", str(b), "--finished-only", "--out", str(tmp_path / "empty")]) != 0
    assert "no finished run" in capsys.readouterr().err


def test_compare_refuses_two_experiments_of_one_name_and_counts_a_repeated_seed_once(tmp_path, capsys):
    text = 'substrate = "linear"\ndataset = "digits"\nepochs = 1\nlr = 0.05\nlimit_train = 100\nlimit_test = 50\n'
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "lin.toml").write_text(text)
    runs = tmp_path / "runs"
    # both would train into runs/lin/seed0
    assert (
        main(["compare", str(tmp_path / "a" / "lin.toml"), str(tmp_path / "b" / "lin.toml"), "--out", str(runs)]) == 2
    )
    assert "distinct names" in capsys.readouterr().err and not runs.exists()
    md = tmp_path / "table.md"
    assert (
        main(
            [
                "compare",
                str(tmp_path / "a" / "lin.toml"),
                "--seeds",
                "0",
                "0",
                "--out",
                str(runs),
                "--markdown",
                str(md),
            ]
        )
        == 0
    )
    assert "| lin | 1 |" in md.read_text()


def _summary(final: float, best: float) -> dict:
    return {
        "test_accuracy": final,
        "best_test_accuracy": best,
        "final_train_accuracy": 0.99,
        "epochs_to_converge": 3,
        "wall_time_s": 10.0,
    }


def test_table_gives_no_spread_for_one_seed_and_the_sample_std_for_more(tmp_path):
    results = {"one": [_summary(0.90, 0.91)], "two": [_summary(0.90, 0.91), _summary(0.92, 0.93)]}
    table = comparison_table(results, [tmp_path / "one.toml", tmp_path / "two.toml"])
    # one seed measures no spread: the mean alone, not "+/- 0.00"
    assert "| one | 1 | 91.00 | 90.00 | 99.00 | 3.0 | 10 |" in table
    # 90 and 92 %: sample std sqrt(((90 - 91)^2 + (92 - 91)^2) / (2 - 1)) = 1.41
    assert "| two | 2 | 93.00 | 91.00 +/- 1.41 | 99.00 | 3.0 | 10 |" in table


def test_finished_only_refuses_seeds_it_would_ignore(tmp_path, capsys):
    a = tmp_path / "lin.toml"
    a.write_text('substrate = "linear"\ndataset = "digits"\nepochs = 1\nlimit_train = 100\nlimit_test = 50\n')
    # --finished-only tabulates every finished seed: a --seeds beside it would be silently ignored
    assert main(["compare", str(a), "--finished-only", "--seeds", "0", "--out", str(tmp_path / "runs")]) == 2
    assert "--seeds: --finished-only" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_negative_seed_is_refused_before_anything_trains(tmp_path, capsys):
    a = tmp_path / "lin.toml"
    a.write_text('substrate = "linear"\ndataset = "digits"\nepochs = 1\nlimit_train = 100\nlimit_test = 50\n')
    with pytest.raises(SystemExit) as exc:  # not after seed 0 has trained (hours, for a real experiment)
        main(["compare", str(a), "--seeds", "0", "-1", "--out", str(tmp_path / "runs")])
    assert exc.value.code == 2
    assert "--seeds '-1': a seed must be an integer >= 0" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
