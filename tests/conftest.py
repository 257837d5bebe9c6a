"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from stosim.config import DeviceParameters, load_device

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO_ROOT.parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def device() -> DeviceParameters:
    """The seed study's pMTJ (devices/seed-pmtj.toml)."""
    return load_device()
