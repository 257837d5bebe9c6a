"""Compiler hints for the pointwise kernels: call them at the top of a Numba function (no-ops at run time).

The pointwise passes of an RK4 step (the right-hand side per oscillator, about 40 flops and a division, and
its vector-Jacobian product, about 100) run over rows of 200 oscillators with 10-20 array streams. Two
things LLVM does by default cost them time:

- **256-bit vectors on 512-bit hardware.** LLVM's tuning for most AVX-512 CPUs prefers 256-bit vectors (on
  early AVX-512 chips the wide units lowered the clock). :func:`prefer_wide_vectors` sets the function
  attribute ``"prefer-vector-width"="512"`` on the calling function only (the process-wide
  ``NUMBA_CPU_FEATURES=...,-prefer-256-bit`` would change every Numba function of the process). On a CPU
  without AVX-512 it changes nothing: LLVM uses the widest legal vectors.
- **Run-time overlap checks before every row.** Numba cannot say that two array arguments do not
  overlap, so before each vectorized inner loop LLVM compares the address range of every written stream
  with every other one (about 200 comparisons in the RK4 stage function, 300 in an adjoint stage: ~1,000
  and ~900 instructions of a loop of 2,000-3,200) and falls back to the scalar loop where they might
  overlap. :func:`arrays_do_not_overlap` marks the data pointers of the calling function's float arrays
  ``noalias`` (LLVM's ``restrict``): the checks go (34 and 95 comparisons are left).

Measured on this project's machine (Xeon, Emerald Rapids, one thread; ``bench_revisions.py`` against the
revision before, and passes timed alone in one process, interleaved): see the README's speed table.

The results are the same bit for bit: the widened loops compute each oscillator on its own (no reduction
across lanes but a boolean OR), with the same operations and fused multiply-adds in every lane.

**The promise behind** :func:`arrays_do_not_overlap`: while the function runs, no float array it writes is
also reached through another of its arguments (an input passed twice is fine, as long as neither copy is
written). Breaking it gives wrong numbers, not an error: every caller in stosim passes separate buffers,
and the functions that call it say so in their docstrings.

Numba's cache tracks the file of a cached kernel, not the files it calls into: after editing this module,
clear the kernels' cache (the ``__pycache__`` folders or ``NUMBA_CACHE_DIR``) so that no kernel compiled with
the old hints is loaded.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

__all__ = ["VECTOR_WIDTH_BITS", "arrays_do_not_overlap", "prefer_wide_vectors"]

VECTOR_WIDTH_BITS = 512
_WIDTH_ATTRIBUTE = f'"prefer-vector-width"="{VECTOR_WIDTH_BITS}"'


@intrinsic
def prefer_wide_vectors(typingctx):
    """Let LLVM vectorize the calling Numba function's loops :data:`VECTOR_WIDTH_BITS` wide.

    llvmlite's attribute set accepts only attributes without a value, so the string attribute goes into
    the set directly; llvmlite prints it in the function's definition, where LLVM reads it."""

    def codegen(context, builder, signature, args):
        set.add(builder.function.attributes, _WIDTH_ATTRIBUTE)
        return context.get_dummy_value()

    return types.none(), codegen


@intrinsic
def arrays_do_not_overlap(typingctx):
    """Mark the data pointers of the calling function's float32 / float64 array arguments ``noalias``.

    Numba passes an array as its fields (meminfo, parent, size, item size, data pointer, shape, strides);
    only the data pointers point to floats, so only they are marked (the meminfo of an array passed twice
    is reference-counted through both arguments and must not be)."""

    def codegen(context, builder, signature, args):
        for arg in builder.function.args:
            if isinstance(getattr(arg.type, "pointee", None), (ir.DoubleType, ir.FloatType)):
                arg.add_attribute("noalias")
        return context.get_dummy_value()

    return types.none(), codegen
