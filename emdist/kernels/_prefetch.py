"""Software prefetch of a block's rows, for compiled kernels that read a few rows of many.

A kernel that reads one row in five of a block, one after another, waits on memory for
each: the hardware prefetchers follow streams, not rows picked by a test, and the compute
between two reads keeps the core from running far enough ahead to overlap them. Asking for
the rows a few places ahead of the one computed (the LLVM ``prefetch`` intrinsic, a hint
that never faults and changes no value) overlaps the reads: on 400k x 32 float64 rows,
summing one row in five in row order took 7.1 ms without and 2.5 ms with
(benchmarks/README.md, "The bounded pass kernel: rows read from lists").
"""

from __future__ import annotations

from typing import Any, cast

from llvmlite import ir  # type: ignore[import-untyped]
from numba.core import types
from numba.extending import intrinsic

from emdist._typing import AnyArray
from emdist.kernels._jit import jit

__all__ = ["PREFETCH_AHEAD", "prefetch_row"]

#: How many rows ahead of the one computed a kernel asks for: enough to cover a read from
#: memory with the compute of the rows between (4, 8 and 16 measured alike).
PREFETCH_AHEAD = 8

_LINE = 64


def _prefetch_typer(typingctx: Any, address: Any) -> Any:
    """Ask for the cache line holding ``address`` (an integer) to be read into every cache."""
    if not isinstance(address, types.Integer):
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        byte_ptr = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = builder.module.declare_intrinsic(
            "llvm.prefetch", [byte_ptr], ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32])
        )
        # A read (0), kept in every level of cache (locality 3), of data (1).
        ptr = builder.inttoptr(args[0], byte_ptr)
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(address), codegen


_prefetch = cast(Any, intrinsic(_prefetch_typer))


@jit
def prefetch_row(X: AnyArray, i: int) -> None:
    """Ask for every cache line of row ``i`` of the 2-D array ``X`` (no value read)."""
    size = X.shape[1] * X.itemsize
    if size == 0:
        return
    start = X.ctypes.data + i * X.strides[0]
    for offset in range(0, size, _LINE):
        _prefetch(start + offset)
    # A row that does not start on a line boundary reaches into one more.
    _prefetch(start + size - 1)
