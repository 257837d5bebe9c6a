"""Build the documentation: an HTML API reference from the docstrings (pdoc) beside the tutorial.

    python -m stosim.docs --out docs/api            # the public API and every module under stosim
    python -m stosim.docs --out /tmp/api stosim.estimator stosim.quantities   # only these modules

The reference is written to ``OUT/`` (``OUT/index.html``); ``docs/tutorial.md`` is copied beside it.
A module that fails to import fails the build (a docstring that cannot be rendered is a defect).
Needs ``pdoc`` (the ``docs`` and ``test`` extras of the package).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

__all__ = ["DEFAULT_MODULES", "build_docs", "main"]

# the package: pdoc documents it and its submodules; the lab drivers and sweeps are included
DEFAULT_MODULES = ("stosim",)
TUTORIAL = Path(__file__).resolve().parent.parent / "docs" / "tutorial.md"


def build_docs(out: str | Path, modules: Sequence[str] = DEFAULT_MODULES) -> Path:
    """Write the HTML API reference of ``modules`` (with their submodules) to ``out``; returns the index."""
    try:
        import pdoc
    except ImportError:
        raise RuntimeError("building the docs needs pdoc: pip install 'stosim[docs]' (or pip install pdoc)") from None
    import pdoc.render

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pdoc.render.configure(docformat="restructuredtext", show_source=False, search=True)
    with warnings.catch_warnings():  # a package's spec already added some submodules that we list too
        warnings.filterwarnings(
            "ignore", message=r".*adds a module named .* has already been added", category=UserWarning
        )
        pdoc.pdoc(*_with_submodules(modules), output_directory=out)
    if TUTORIAL.exists():
        shutil.copyfile(TUTORIAL, out / TUTORIAL.name)
    index = out / "index.html"
    if not index.exists():  # one module: pdoc writes no index, the module's page is the entry
        pages = sorted(out.glob("**/*.html"))
        if not pages:
            raise RuntimeError(f"pdoc wrote no page to {out}")
        index = pages[0]
    return index


def _with_submodules(modules: Sequence[str]) -> list[str]:
    """``modules`` and every submodule of the packages among them (pdoc follows a package's ``__all__``,
    which names the public API, not the modules), less ``__main__``."""
    import importlib
    import pkgutil

    names: list[str] = []
    for name in modules:
        names.append(name)
        module = importlib.import_module(name)
        if hasattr(module, "__path__"):
            names += [
                info.name
                for info in pkgutil.walk_packages(module.__path__, prefix=f"{name}.")
                if not info.name.endswith("__main__")
            ]
    return list(dict.fromkeys(names))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stosim.docs",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("modules", nargs="*", default=list(DEFAULT_MODULES), help="modules to document")
    parser.add_argument("--out", type=Path, default=Path("docs/api"), help="output folder")
    args = parser.parse_args(argv)
    try:
        index = build_docs(args.out, args.modules)
    except (RuntimeError, ImportError) as exc:
        print(f"stosim.docs: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {index}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
