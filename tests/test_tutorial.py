"""docs/tutorial.md runs as written: its ```python blocks are executed in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

TUTORIAL = Path(__file__).resolve().parent.parent / "docs" / "tutorial.md"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def code_blocks(text: str) -> list[str]:
    """The ```python blocks of a Markdown text, in order."""
    return _BLOCK.findall(text)


def test_code_blocks_are_found() -> None:
    text = "intro\n```python\nx = 1\n```\nmore\n```bash\nls\n```\n```python\ny = x + 1\n```\n"
    assert code_blocks(text) == ["x = 1\n", "y = x + 1\n"]


def test_tutorial_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = code_blocks(TUTORIAL.read_text(encoding="utf-8"))
    assert len(blocks) >= 6, "the tutorial lost its code blocks"
    monkeypatch.chdir(tmp_path)  # the tutorial writes files in the working folder
    namespace: dict[str, object] = {"__name__": "tutorial"}
    for k, block in enumerate(blocks, 1):
        try:
            exec(compile(block, f"{TUTORIAL.name} block {k}", "exec"), namespace)  # our own docs
        except Exception as exc:  # name the failing block
            raise AssertionError(f"docs/tutorial.md code block {k} failed: {exc!r}\n{block}") from exc
    out = capsys.readouterr().out
    assert "500 Oe" in out and "accuracy" in out
    assert (tmp_path / "trajectory.h5").exists()
    # the reservoirs learned something (chance is 10 %)
    assert namespace["clf"].score(namespace["X_test"], namespace["y_test"]) > 0.5
