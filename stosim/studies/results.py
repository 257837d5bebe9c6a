"""A study's results on disk: ``results.json`` (the numbers) and ``results.md`` (the report) in its folder."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from stosim.storage import write_text_atomic

__all__ = ["write_results"]


def write_results(results: dict, out: Path, markdown: str) -> None:
    """Write ``out/results.json`` (NumPy scalars as numbers, non-finite floats as text) and ``out/results.md``."""
    write_text_atomic(json.dumps(results, indent=2, default=_json_default), out / "results.json")
    write_text_atomic(markdown, out / "results.md")


def _json_default(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    raise TypeError(f"not JSON: {type(v).__name__}")
