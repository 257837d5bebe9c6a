"""`stosim compare`: several experiments x seeds -> Markdown table; finished runs are reused."""

from __future__ import annotations

import pytest

from stosim.cli import main
from stosim.training import load_train_config

from conftest import REPO_ROOT

TABLE1 = sorted((REPO_ROOT / "experiments" / "table1").glob("*.toml"))


@pytest.mark.parametrize("path", [p for p in TABLE1 if p.name != "reference.toml"], ids=lambda p: p.stem)
def test_table1_files_are_valid(path):
    cfg = load_train_config(path)
    assert cfg.dataset == "mnist"


def test_compare_writes_a_markdown_table_and_reuses_runs(tmp_path, capsys):
    a, b = tmp_path / "lin.toml", tmp_path / "sto.toml"
    a.write_text('substrate = "linear"\ndataset = "digits"\nepochs = 2\nlr = 0.05\nlimit_train = 200\nlimit_test = 100\n')
    b.write_text('substrate = "sto"\ndataset = "digits"\nn = 6\nduration = "10 ps"\nepochs = 1\n'
                 'limit_train = 100\nlimit_test = 50\n')
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
