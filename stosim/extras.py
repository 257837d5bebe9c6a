"""Optional parts of stosim (the ``[project.optional-dependencies]`` of its package).

- ``cluster``: dask and distributed, for parallel sweeps (``stosim sweep``);
- ``hardware``: pyvisa and pyvisa-sim, for lab stations (:class:`stosim.hardware.LabSTOArray`).

:func:`require` fails with one message that names the extra to install.
"""

from __future__ import annotations

import importlib.util

__all__ = ["MissingExtraError", "require"]


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def require(module: str, extra: str, purpose: str) -> None:
    """Raise :class:`MissingExtraError` unless ``module`` (a top-level module name) can be imported.

    Example: ``require("distributed", "cluster", "a parallel sweep")`` without dask.distributed raises
    "a parallel sweep needs distributed, which is not installed: pip install 'stosim[cluster]'".
    """
    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(
            f"{purpose} needs {module}, which is not installed: pip install 'stosim[{extra}]'", name=module
        )
