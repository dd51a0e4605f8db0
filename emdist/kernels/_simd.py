"""Explicit 8-lane float32 stores for compiled kernels whose loops LLVM cannot vectorise.

numba compiles with LLVM's loop vectoriser but without its SLP vectoriser: a loop over a
runtime length vectorises, a run of a few statements (or a loop of a known, short length,
which LLVM unrolls first) does not. The ``full`` mixture features write each row of the
upper triangle of ``(x - c)(x - c)ᵀ`` as a run of ``d - i`` products; a loop of that
length vectorises badly (a vector body of 32 lanes and a scalar remainder, most of the rows),
and the loop of fixed length ``d`` that replaced it writes 1 024 products for 528. One
intrinsic call here is one 8-lane multiply and one unaligned 8-lane store, whatever the
optimiser would have made of the loop: 640 products written per row (80 stores) for the
full triangle. The products are IEEE float32 multiplies, the same bits as the scalar ones.
"""

from __future__ import annotations

from typing import Any, cast

from llvmlite import ir  # type: ignore[import-untyped]
from numba.core import types
from numba.extending import intrinsic

__all__ = ["LANES", "store_scaled8"]

#: Lanes of :func:`store_scaled8`: the float32 lanes of one AVX register.
LANES = 8


def _store_scaled8_typer(typingctx: Any, dst: Any, src: Any, scale: Any) -> Any:
    """``dst[0:8] = scale * src[0:8]``, float32, at integer addresses (no alignment needed)."""
    if not (isinstance(dst, types.Integer) and isinstance(src, types.Integer)):
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        lanes = ir.VectorType(ir.FloatType(), LANES)
        pointer = lanes.as_pointer()
        values = builder.load(builder.inttoptr(args[1], pointer), align=4)
        factor = context.cast(builder, args[2], signature.args[2], types.float32)
        i32 = ir.IntType(32)
        first = builder.insert_element(ir.Constant(lanes, None), factor, ir.Constant(i32, 0))
        everywhere = ir.Constant(ir.VectorType(i32, LANES), [0] * LANES)
        splat = builder.shuffle_vector(first, ir.Constant(lanes, None), everywhere)
        builder.store(builder.fmul(values, splat), builder.inttoptr(args[0], pointer), align=4)
        return context.get_dummy_value()

    return types.void(dst, src, scale), codegen


#: ``store_scaled8(dst, src, scale)``: the 8 float32 at address ``src`` times ``scale``
#: (rounded to float32 first) stored at address ``dst``. Both ranges must be readable and
#: writable for 8 values: the caller pads what it reads and owns what it overwrites.
store_scaled8 = cast(Any, intrinsic(_store_scaled8_typer))
