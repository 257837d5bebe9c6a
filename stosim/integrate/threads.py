"""Thread control: BLAS stays single-threaded inside the kernels, which parallelize over the batch.

OpenBLAS threads competing with Numba's threads for the same cores slow the coupled step
by an order of magnitude on small machines, so the kernels run their matrix products
on one BLAS thread each.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator

import scipy.linalg.cython_blas  # noqa: F401  (the BLAS behind Numba's np.dot; loaded so it can be limited)
from threadpoolctl import ThreadpoolController

__all__ = ["single_threaded_blas"]


@functools.lru_cache(maxsize=1)
def _controller() -> ThreadpoolController:
    return ThreadpoolController()


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Limit every loaded BLAS library to one thread inside the block."""
    with _controller().limit(limits=1, user_api="blas"):
        yield
