"""The reverse stages' arithmetic for a reference layer along x (``llg_vjp_point_along_x``) against the
definition and against the generic vector-Jacobian product, and the kernels' choice between the two.

Tolerances (float64): 1e-14 relative to the largest cotangent against the generic ``llg_vjp_point`` (the
same terms less those that vanish for p = (p_x, 0, 0)), 1e-12 against torch autograd of ``llg_point``'s body
(the right-hand side every engine evaluates), 1e-13 between the adjoint gradients of the two kernels over
300 RK4 steps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from physics_devices import ARRAYS

from stosim.integrate.adjoint import adjoint_kept_chunk, forward_keep_chunk
from stosim.integrate.flow import _ArrayTensors
from stosim.physics.llg import (
    ReferenceAlongX,
    llg_point,
    llg_vjp_noiseless,
    llg_vjp_point,
    llg_vjp_point_along_x,
    oscillator_rows,
    reference_for_kernels,
)

N = 40


def _inputs(arr, sign: float, seed: int):
    """Off-sphere states (|m| 0.5-1.5), x fields, cotangents and the device rows of every oscillator."""
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((3, N))
    m *= rng.uniform(0.5, 1.5, N) / np.linalg.norm(m, axis=0)
    hx = 300.0 * rng.standard_normal(N)
    v = rng.standard_normal((3, N)) * 1e10  # the scale of dm/dt (1/s)
    rows = oscillator_rows.py_func(arr.oscillator_parameters())
    return m, hx, v, rows, arr.device.torque_asymmetry, sign


@pytest.mark.parametrize("name", sorted(ARRAYS))
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_along_x_equals_the_generic_vjp_and_autograd_of_the_definition(name, sign):
    arr = ARRAYS[name](N)
    m, hx, v, (h_appl, hk_eff, hs0, alpha, pref), lam, px = _inputs(arr, sign, 7)
    mx, my, mz = m
    fast = np.array(llg_vjp_point_along_x.py_func(mx, my, mz, hx, *v, h_appl, hk_eff, hs0, alpha, pref, lam, px, 1.0))
    zero = np.zeros(N)
    generic = np.array(
        llg_vjp_point.py_func(mx, my, mz, hx, zero, zero, *v, h_appl, hk_eff, hs0, alpha, pref, lam, px, 0.0, 0.0, 1.0)
    )
    scale = np.abs(generic).max(axis=1, keepdims=True)
    assert np.all(np.abs(fast - generic) <= 1e-14 * scale)
    # the definition: autograd of llg_point's body (torch), v^T df/dm and v^T df/dh_x
    tm = torch.tensor(m, requires_grad=True)
    th = torch.tensor(hx, requires_grad=True)
    f = llg_point.py_func(
        tm[0], tm[1], tm[2], th, 0.0, 0.0, *(torch.as_tensor(r) for r in (h_appl, hk_eff, hs0, alpha, pref)),
        lam, px, 0.0, 0.0, 1.0,
    )  # fmt: skip
    (sum(fi * torch.as_tensor(vi) for fi, vi in zip(f, v))).sum().backward()
    ref = np.concatenate([tm.grad.numpy(), th.grad.numpy()[None]])
    assert np.all(np.abs(fast - ref) <= 1e-12 * np.abs(ref).max(axis=1, keepdims=True))


def test_reference_for_kernels_chooses_along_x_only_for_p_on_the_x_axis():
    along = reference_for_kernels(np.array([-1.0, 0.0, 0.0], dtype=np.float32))
    assert isinstance(along, ReferenceAlongX) and along.px == -1.0 and isinstance(along.px, np.float32)
    tilted = np.array([0.6, 0.0, 0.8])
    assert reference_for_kernels(tilted) is not None and not isinstance(reference_for_kernels(tilted), tuple)
    assert not isinstance(reference_for_kernels(np.array([0.0, 0.0, 1.0])), tuple)
    with pytest.raises(ValueError, match=r"reference direction p must have shape \(3,\)"):
        reference_for_kernels(np.ones(2))


def test_llg_vjp_noiseless_dispatches_on_the_type_of_p():
    """The Python body of the dispatcher (what the overload compiles) picks the same arithmetic."""
    arr = ARRAYS["seed"](N)
    m, hx, v, rows, lam, _ = _inputs(arr, 1.0, 3)
    along = llg_vjp_noiseless(ReferenceAlongX(1.0, 0.0, 0.0), *m, hx, *v, *rows, lam, 1.0)
    generic = llg_vjp_noiseless(np.array([1.0, 0.0, 0.0]), *m, hx, *v, *rows, lam, 1.0)
    for a, g in zip(along, generic):
        assert np.all(np.abs(a - g) <= 1e-14 * np.abs(g).max())


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-13), (np.float32, 2e-5)])
def test_adjoint_kernel_along_x_equals_the_generic_kernel(dtype, tol):
    """adjoint_kept_chunk compiled for a ReferenceAlongX and for the array p = e_x: the same gradient over
    300 steps (N = 40, 8 samples) to round-off; the along-x kernel is a signature of its own."""
    arr = ARRAYS["seed"](N)
    prm = _ArrayTensors(arr, dtype)
    assert isinstance(prm.p_adjoint, ReferenceAlongX)
    rng = np.random.default_rng(1)
    m = rng.standard_normal((3, 8, N))
    m /= np.linalg.norm(m, axis=0)
    steps, dt = 300, dtype(1e-12)
    states = np.zeros((steps + 1, 3, 8, N), dtype)
    states[0] = m
    fields = np.zeros((steps, 5, 8, N), dtype)
    assert forward_keep_chunk(states, fields, prm.coupling_t, True, prm.osc, prm.lam, prm.p, dt) == -1
    g0 = rng.standard_normal((3, 8, N)).astype(dtype)
    grads = [
        adjoint_kept_chunk(states, fields, g0.copy(), prm.coupling, True, prm.osc, prm.lam, p, dt)
        for p in (prm.p_adjoint, prm.p)
    ]
    assert np.abs(grads[0] - grads[1]).max() <= tol * np.abs(grads[1]).max()
    kinds = {str(sig[7]) for sig in adjoint_kept_chunk.signatures}
    assert any("ReferenceAlongX" in k for k in kinds) and any("array" in k for k in kinds)


def test_a_tilted_reference_layer_keeps_the_generic_kernel():
    p = _ArrayTensors(ARRAYS["all-terms"](N), np.float64).p_adjoint
    assert isinstance(p, np.ndarray) and np.all(p != 0)
