"""A spinning barrier for a few threads that run one compiled time loop together (no parallel region per step).

A kernel that splits every step of a single trajectory over T threads must wait, after each stage, until
every thread has written its part of the stage state. A Numba parallel region per stage costs more than the
stage itself when the cores are shared (milliseconds per region under load, against 0.1-0.3 ms of work at
N = 1000), so the threads run their whole time loop each and meet at a barrier instead:

    arrive:  counter <- counter + 1          (atomic, sequentially consistent: earlier stores are visible)
    wait:    until counter >= T * generation  (atomic acquire loads; the thread's own count of barriers)

The counter only grows, so no reset is needed. While waiting, a thread gives its core away
(``sched_yield``) after :data:`SPINS_BEFORE_YIELD` polls, so a thread that the scheduler has put aside
(another process on the same core) gets to run instead of being waited on for a whole time slice.

The counter is an int64 array shared by the threads (element 0; element 1 tells the others that a thread has
failed, so that nobody waits for it forever); :func:`atomic_add` and :func:`atomic_load` are LLVM atomics on
an array element, usable from any ``@njit`` function.
"""

from __future__ import annotations

import sys

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["SPINS_BEFORE_YIELD", "atomic_add", "atomic_load", "wait_at_barrier"]

SPINS_BEFORE_YIELD = 2000  # polls of the counter before each sched_yield (a poll takes ~10-50 ns)
# the C library's "give my core to another thread" (POSIX; kernel32 on Windows), resolved in the running process
_YIELD_SYMBOL = "SwitchToThread" if sys.platform == "win32" else "sched_yield"


def _element_pointer(context, builder, arrty, arr, idx):
    ary = context.make_array(arrty)(context, builder, arr)
    return cgutils.get_item_pointer(context, builder, arrty, ary, [idx])


@intrinsic
def atomic_add(typingctx, arr, idx, value):
    """arr[idx] += value atomically (sequentially consistent) for a 1-D int64 array; returns the old value."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.ndim == 1):
        return None
    sig = types.int64(arr, types.intp, types.int64)

    def codegen(context, builder, signature, args):
        ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.atomic_rmw("add", ptr, args[2], "seq_cst")

    return sig, codegen


@intrinsic
def atomic_load(typingctx, arr, idx):
    """arr[idx] read atomically (acquire) for a 1-D int64 array: never hoisted out of a polling loop."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.ndim == 1):
        return None
    sig = types.int64(arr, types.intp)

    def codegen(context, builder, signature, args):
        ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.load_atomic(ptr, "acquire", 8)

    return sig, codegen


@intrinsic
def _sched_yield(typingctx):
    """sched_yield() from the C library (SwitchToThread() on Windows), resolved in the running process."""
    sig = types.int32()

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.IntType(32), [])
        fn = cgutils.get_or_insert_function(builder.module, fnty, _YIELD_SYMBOL)
        return builder.call(fn, [])

    return sig, codegen


@njit(cache=True, nogil=True)
def wait_at_barrier(counter, n_threads, generation):
    """Arrive at barrier number ``generation`` (1, 2, ... per thread) and wait for all ``n_threads`` threads.

    ``counter`` (int64 array of 2, zeros at the start) is shared by the threads: element 0 counts arrivals,
    element 1 is set (nonzero) by a thread that fails and will not arrive again. Every thread must pass the
    same sequence of barriers. Stores made before the call are visible to every thread after it. Returns
    False when the barrier was passed, True when it was abandoned because element 1 is set."""
    atomic_add(counter, 0, 1)
    target = n_threads * generation
    polls = 0
    while atomic_load(counter, 0) < target:
        if atomic_load(counter, 1) != 0:
            return True
        polls += 1
        if polls >= SPINS_BEFORE_YIELD:
            _sched_yield()
            polls = 0
    return False
