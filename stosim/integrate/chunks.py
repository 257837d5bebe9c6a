"""Batch chunking of the Numba kernels: (B, N, 3) states <-> (C, 3, Bc, N) chunks.

Samples never interact, so each chunk runs its whole time loop on one thread; chunks are
small enough (<= CHUNK_MAX_SAMPLES samples) that a chunk's working set stays in cache.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["chunk_count", "to_chunks", "from_chunks", "PARALLEL_MIN_VALUES", "CHUNK_MAX_SAMPLES"]

PARALLEL_MIN_VALUES = 4096  # batch x N from which chunks run in parallel
CHUNK_MAX_SAMPLES = 32  # samples per chunk


def chunk_count(n_batch: int, n_osc: int) -> int:
    """Chunks the batch is split into: at least one per Numba thread for large work, and
    small enough (<= CHUNK_MAX_SAMPLES samples) that a chunk's working set stays in cache."""
    if n_batch * n_osc < PARALLEL_MIN_VALUES:
        return 1
    return max(min(numba.get_num_threads(), n_batch), -(-n_batch // CHUNK_MAX_SAMPLES))


def to_chunks(x: np.ndarray, n_chunks: int, lead: int = 0) -> np.ndarray:
    """(..., B, N, 3) with ``lead`` leading axes -> (C, ..., 3, Bc, N), padded with copies of sample 0.

    Always a new array (the kernels write into it; a view would write into the caller's input)."""
    n_batch = x.shape[lead]
    per = -(-n_batch // n_chunks)
    pad = n_chunks * per - n_batch
    if pad:
        filler = np.repeat(np.take(x, [0], axis=lead), pad, axis=lead)
        x = np.concatenate([x, filler], axis=lead)
    shape = x.shape[:lead] + (n_chunks, per) + x.shape[lead + 1 :]
    x = x.reshape(shape)  # (..., C, Bc, N, 3)
    axes = (lead,) + tuple(range(lead)) + (lead + 3, lead + 1, lead + 2)
    return x.transpose(axes).copy(order="C")


def from_chunks(x: np.ndarray, n_batch: int) -> np.ndarray:
    """(C, ..., 3, Bc, N) -> (..., B, N, 3), always a new array (never sharing memory with ``x``)."""
    n_lead = x.ndim - 4
    axes = tuple(range(1, 1 + n_lead)) + (0, n_lead + 2, n_lead + 3, n_lead + 1)
    y = x.transpose(axes)  # (..., C, Bc, N, 3)
    y = y.reshape(y.shape[:n_lead] + (-1,) + y.shape[-2:])
    return y[..., :n_batch, :, :].copy(order="C")
