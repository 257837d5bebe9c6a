"""Command-line choices of substrates and model kinds, read from the registries when first needed.

Building the parser must not import torch or numba (``stosim --help`` stays fast), so ``--substrate`` takes a
:class:`LazyChoices`: argparse asks it whether a value is valid (and lists it in the error) only when a
``--substrate`` is given, and that run imports the substrates anyway. Its flags show ``metavar="NAME"``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

__all__ = ["LazyChoices", "model_kind_choices", "lyapunov_choices", "ftmle_choices"]


class LazyChoices(Sequence):
    """The names ``names()`` returns, computed on first use (then kept)."""

    def __init__(self, names: Callable[[], Sequence[str]]) -> None:
        self._names_fn = names
        self._names: tuple[str, ...] | None = None

    def _get(self) -> tuple[str, ...]:
        if self._names is None:
            self._names = tuple(self._names_fn())
        return self._names

    def __getitem__(self, index: int) -> str:
        return self._get()[index]

    def __len__(self) -> int:
        return len(self._get())

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __contains__(self, value: object) -> bool:
        return value in self._get()

    def __repr__(self) -> str:
        return repr(list(self._get()))


def _kinds() -> tuple[str, ...]:
    from stosim.model_kinds import kind_names

    return kind_names()


def _lyapunov() -> tuple[str, ...]:
    from stosim.substrates.registry import lyapunov_names

    return lyapunov_names()


def _ftmle() -> tuple[str, ...]:
    from stosim.substrates.registry import specs

    return tuple(name for name, spec in specs().items() if spec.ftmle)


def model_kind_choices() -> LazyChoices:
    """``stosim train --substrate``: every model kind (stosim.model_kinds)."""
    return LazyChoices(_kinds)


def lyapunov_choices() -> LazyChoices:
    """``stosim lyapunov --substrate``: the substrates with a tangent system."""
    return LazyChoices(_lyapunov)


def ftmle_choices() -> LazyChoices:
    """``stosim ftmle --substrate``: the substrates ``stosim ftmle`` supports."""
    return LazyChoices(_ftmle)
