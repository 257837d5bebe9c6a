"""The pool of the gradient's kept states and stage fields: reused across steps, never while in use."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from stosim.integrate import buffers
from stosim.integrate.flow import sto_flow
from stosim.physics.array import STOArray


def _unit(batch: int, n: int, seed: int) -> torch.Tensor:
    m = torch.randn(batch, n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return m / m.norm(dim=-1, keepdim=True)


def test_a_buffer_returns_when_its_view_dies_and_is_taken_again():
    buffers.release()
    a = buffers.take(1000, np.float64)
    assert a.shape == (1000,) and a.dtype == np.float64
    assert buffers.free_bytes() == 0
    address = a.__array_interface__["data"][0]
    del a
    gc.collect()
    assert buffers.free_bytes() == 8000
    b = buffers.take(1000, np.float64)  # the same memory again
    assert b.__array_interface__["data"][0] == address and buffers.free_bytes() == 0
    c = buffers.take(1000, np.float64)  # b is in use: a new buffer
    assert c.__array_interface__["data"][0] != address
    del b, c
    gc.collect()
    assert buffers.free_bytes() == 16000
    buffers.release()
    assert buffers.free_bytes() == 0


def test_the_pool_keeps_at_most_its_limit(monkeypatch):
    buffers.release()
    monkeypatch.setattr(buffers, "MAX_FREE_BYTES", 20_000)
    views = [buffers.take(1000, np.float64) for _ in range(4)]
    del views
    gc.collect()
    assert buffers.free_bytes() == 16_000  # two of 8,000 bytes fit, the older two were freed
    buffers.release()


def test_training_steps_reuse_the_kept_buffer_and_a_retained_graph_keeps_its_own(device):
    """N = 40 (the plan that keeps the stage fields): after each backward pass the buffer is free again; with
    retain_graph=True it stays in use, a second backward gives the same gradient, and a forward pass made
    meanwhile gets other memory (its gradient is unchanged by it)."""
    buffers.release()
    array = STOArray.generate(device, 40, 500.0, seed=4)
    weights = torch.randn(3, 40, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def grad(seed: int) -> torch.Tensor:
        x = _unit(3, 40, seed).requires_grad_(True)
        (sto_flow(x, array, 30, 1e-12) * weights).sum().backward()
        return x.grad

    g0 = grad(0)
    gc.collect()
    held = buffers.free_bytes()
    assert held > 0
    g0_again = grad(0)
    gc.collect()
    assert buffers.free_bytes() == held  # taken and given back: one buffer for both steps
    assert torch.equal(g0, g0_again)

    x = _unit(3, 40, 0).requires_grad_(True)
    loss = (sto_flow(x, array, 30, 1e-12) * weights).sum()
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    assert buffers.free_bytes() == 0  # still saved by the retained graph
    g1 = grad(1)  # another step meanwhile: its own buffer, the retained one untouched
    x.grad = None
    loss.backward()
    assert torch.equal(x.grad, first) and torch.equal(first, g0)
    assert not torch.equal(g1, g0)
    del loss
    gc.collect()
    assert buffers.free_bytes() == 2 * held
    buffers.release()


def test_training_frees_the_pool_when_it_ends():
    from stosim.studies.training import TrainConfig, train

    cfg = TrainConfig(dataset="digits", substrate="sto", n=40, limit_train=200, limit_test=100, epochs=1)
    buffers.release()
    held_during = []
    train(cfg, on_epoch=lambda record: held_during.append(buffers.free_bytes()))
    assert held_during[0] > 0  # the steps' buffer, free between steps
    assert buffers.free_bytes() == 0


def test_the_gradient_memory_budget_comes_from_the_environment(monkeypatch, device):
    from stosim.integrate.flow import (
        DEFAULT_CHECKPOINT_BYTES,
        GRADIENT_MEMORY_ENV,
        gradient_memory_bytes,
        keeps_stage_fields,
    )

    monkeypatch.delenv(GRADIENT_MEMORY_ENV, raising=False)
    assert gradient_memory_bytes() == DEFAULT_CHECKPOINT_BYTES
    monkeypatch.setenv(GRADIENT_MEMORY_ENV, "64")
    assert gradient_memory_bytes() == 64 << 20
    for bad in ("0", "-3", "1.5", "lots"):
        monkeypatch.setenv(GRADIENT_MEMORY_ENV, bad)
        with pytest.raises(ValueError, match=f"{GRADIENT_MEMORY_ENV} = .* valid: an integer number of MiB >= 1"):
            gradient_memory_bytes()
    monkeypatch.delenv(GRADIENT_MEMORY_ENV)
    array = STOArray.generate(device, 40, 500.0, seed=4)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="checkpoint_bytes = .* valid: an integer >= 1"):
            sto_flow(_unit(2, 40, 0), array, 3, 1e-12, checkpoint_bytes=bad)
    # 1 MiB is too small for the kept states and fields of 400 samples (28 MB): the same gradient from checkpoints
    assert keeps_stage_fields(30, 40, 3 * 416 * 40 * 8, DEFAULT_CHECKPOINT_BYTES)
    assert not keeps_stage_fields(30, 40, 3 * 416 * 40 * 8, 1 << 20)
    monkeypatch.setenv(GRADIENT_MEMORY_ENV, "1")
    x = _unit(400, 40, 0).requires_grad_(True)
    sto_flow(x, array, 30, 1e-12)[..., 0].sum().backward()
    monkeypatch.delenv(GRADIENT_MEMORY_ENV)
    y = _unit(400, 40, 0).requires_grad_(True)
    sto_flow(y, array, 30, 1e-12)[..., 0].sum().backward()
    assert torch.equal(x.grad, y.grad)
