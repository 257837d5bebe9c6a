"""The package's one-way layering and the absence of import cycles, as declared in pyproject.toml
(``[tool.importlinter]``: cli > sweep > studies > models/ridge/analysis > hardware > substrates >
simulation > integrate > physics > config > basics) and checked by import-linter's ``lint-imports``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _lint_imports() -> list[str]:
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    exe = shutil.which("lint-imports", path=search)
    if exe is None:
        pytest.skip(
            "import-linter is not installed (pip install -e '.[test]' installs it): "
            "the layer contract of pyproject.toml is not checked"
        )
    return [exe]


def test_the_import_contracts_of_pyproject_hold() -> None:
    cmd = _lint_imports() + ["--no-cache", "--config", str(REPO_ROOT / "pyproject.toml")]
    # the checkout's stosim, not an installed copy: import-linter finds the package on sys.path
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, f"lint-imports found broken contracts:\n{result.stdout}\n{result.stderr}"
    assert "0 broken" in result.stdout, result.stdout


def test_the_layer_contract_fails_on_an_upward_import(tmp_path: Path) -> None:
    """The contract is not vacuous: a copy of the package where a substrate imports a study is refused."""
    cmd = _lint_imports()
    pkg = tmp_path / "stosim"
    shutil.copytree(REPO_ROOT / "stosim", pkg, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "devices"))
    probe = pkg / "substrates" / "_upward_probe.py"
    probe.write_text(
        "import stosim.studies.training  # an upward import: the contract must refuse it\n", encoding="utf-8"
    )
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run(
        cmd + ["--no-cache"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode != 0, result.stdout
    assert "stosim.substrates._upward_probe -> stosim.studies.training" in result.stdout, result.stdout
