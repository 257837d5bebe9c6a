"""Wide SIMD vectors for the pointwise kernels: ``prefer_wide_vectors()`` at the top of a Numba function.

The pointwise passes of an RK4 step (the right-hand side and its vector-Jacobian product per oscillator,
about 40 and 100 flops with a division) are bound by arithmetic, not by memory: they ran as fast on a row
that fits the L1 cache as on a chunk that does not. LLVM vectorizes them 256 bits wide even where the CPU
has 512-bit registers and two 512-bit FMA units, because its tuning for most AVX-512 CPUs prefers 256-bit
vectors (on early AVX-512 chips the wide units lowered the clock). Measured on this project's machine (Xeon,
Emerald Rapids; one thread, two processes side by side on the two cores, 4 rounds): the forward and backward
pass of a training batch ran 1.1-1.4x faster (float64) and 1.2-1.5x (float32) with 512-bit vectors.

:func:`prefer_wide_vectors` sets the LLVM function attribute ``"prefer-vector-width"="512"`` on the function
it is called from, so only those kernels change, not the vector width of other Numba code in the process
(as the process-wide ``NUMBA_CPU_FEATURES=...,-prefer-256-bit`` would). On a CPU without AVX-512 the
attribute changes nothing (LLVM uses the widest legal vectors, 256 bits with AVX2). The results are the
same bit for bit: the loops it widens compute each oscillator on its own (no reductions across lanes but a
boolean OR), with the same operations and fused multiply-adds in every lane.
"""

from __future__ import annotations

from numba import types
from numba.extending import intrinsic

__all__ = ["VECTOR_WIDTH_BITS", "prefer_wide_vectors"]

VECTOR_WIDTH_BITS = 512
_ATTRIBUTE = f'"prefer-vector-width"="{VECTOR_WIDTH_BITS}"'


@intrinsic
def prefer_wide_vectors(typingctx):
    """Let LLVM vectorize the calling Numba function's loops :data:`VECTOR_WIDTH_BITS` wide (no-op at run time).

    llvmlite's attribute set accepts only attributes without a value, so the string attribute goes into
    the set directly; llvmlite prints it in the function's definition, where LLVM reads it."""

    def codegen(context, builder, signature, args):
        set.add(builder.function.attributes, _ATTRIBUTE)
        return context.get_dummy_value()

    return types.none(), codegen
