"""Thread control: BLAS stays single-threaded inside the kernels, which parallelize over the batch.

OpenBLAS threads competing with Numba's threads for the same cores slow the coupled step
by an order of magnitude on small machines, so the kernels run their matrix products
on one BLAS thread each. A sweep worker runs one compute thread in all (:func:`one_compute_thread`).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

import scipy.linalg.cython_blas  # noqa: F401  (the BLAS behind Numba's np.dot; loaded so it can be limited)
from threadpoolctl import ThreadpoolController

from stosim.integrate.gemm import one_blas_thread

__all__ = ["one_compute_thread", "single_threaded_blas"]


@functools.lru_cache(maxsize=1)
def _controller() -> ThreadpoolController:
    return ThreadpoolController()


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Limit every loaded BLAS library to one thread inside the block (and the kernels' gemm in this thread)."""
    with _controller().limit(limits=1, user_api="blas"), one_blas_thread():
        yield


def one_compute_thread() -> None:
    """One compute thread for torch and Numba in this process (a sweep worker; BLAS: :func:`single_threaded_blas`).

    Numba sizes its thread pool from ``NUMBA_NUM_THREADS`` once, when it is imported, and reads the
    environment again before every compilation: a value changed in between makes that compilation fail
    ("Cannot set NUMBA_NUM_THREADS to a different value once the threads have been launched") as soon as
    the pool runs. A dask worker's environment can change after its process imported Numba (a nanny's
    ``env=`` is applied in the started process, whose spawn re-imports the ``stosim`` script), and with an
    empty Numba cache every point compiles. So the pool size is never changed here: the variable is set back
    to the size Numba loaded, and the threads used are masked to one with ``numba.set_num_threads(1)``.
    """
    import numba
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    loaded = str(numba.config.NUMBA_NUM_THREADS)
    if os.environ.get("NUMBA_NUM_THREADS", loaded) != loaded:
        os.environ["NUMBA_NUM_THREADS"] = loaded
    numba.set_num_threads(1)
