"""The C heap of a worker process: tensor-sized temporaries from the heap, not from fresh mappings.

glibc's malloc serves a request above the mmap threshold (128 KiB at start) with a fresh ``mmap`` and
returns it with ``munmap``; the kernel then zero-fills every page on first touch. By default the threshold
rises to the size of the largest such block freed, so the temporaries of a training step (a (500, 100)
float64 tensor is 400 KiB) soon come from the heap. Setting any of ``MALLOC_TRIM_THRESHOLD_``,
``MALLOC_TOP_PAD_``, ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_MMAP_MAX_`` switches that adjustment off, and
dask's nanny sets ``MALLOC_TRIM_THRESHOLD_=65536`` in every worker it starts: there each temporary is
mapped, zero-filled and unmapped again. A Lorenz 96 training point (N = 100, batch 500) ran 5.4x slower
for it, in a dask worker as in a process started with that variable (``benchmarks/bench_sweep.py``).

:func:`heap_for_temporaries` sets the thresholds explicitly (``mallopt``) when one of these variables is
set: blocks below :data:`MMAP_THRESHOLD_BYTES` from the heap, whose free top is returned to the system
beyond :data:`TRIM_THRESHOLD_BYTES`. Results do not change; only where memory comes from.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

__all__ = ["heap_for_temporaries", "MMAP_THRESHOLD_BYTES", "TRIM_THRESHOLD_BYTES", "FIXED_BY_ENVIRONMENT"]

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's largest mmap threshold on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD_BYTES = 64 * 1024 * 1024
# environment variables that fix glibc's thresholds (and so switch off their adjustment)
FIXED_BY_ENVIRONMENT = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_MMAP_MAX_")


@functools.lru_cache(maxsize=1)
def _mallopt():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int)
    fn.restype = ctypes.c_int
    return fn


def heap_for_temporaries(environ: dict[str, str] | None = None) -> bool:
    """Where the environment fixes glibc's malloc thresholds (``FIXED_BY_ENVIRONMENT``; dask's nanny
    does), set the mmap threshold to ``MMAP_THRESHOLD_BYTES`` and the trim threshold to
    ``TRIM_THRESHOLD_BYTES``. Returns True when they were set, False when nothing was to be done (no
    such variable, or not glibc on Linux)."""
    env = os.environ if environ is None else environ
    if not any(name in env for name in FIXED_BY_ENVIRONMENT):
        return False
    mallopt = _mallopt()
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
