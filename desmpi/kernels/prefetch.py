"""Software prefetch of a table row for the gather/scatter kernels.

The sparse kernels touch rows in data order, at random places of tables larger than the
caches: without help each row costs a memory latency. ``prefetch_row(a, r)`` asks the CPU to
fetch the cache lines of row r of a 2-D C array (up to 320 bytes; LLVM's ``llvm.prefetch``,
read, high locality) a few iterations ahead; it has no effect on results. Where the
intrinsic cannot be compiled (an LLVM without it), it is a no-op.
"""

from __future__ import annotations

import logging

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

log = logging.getLogger(__name__)

AHEAD = 4  # occurrences ahead: measured best of 0/4/8/16/32 on DLRM-sized gathers
_MAX_LINES = 5  # a 256-byte row (64 float32) not aligned to a line spans 5 lines


@intrinsic
def _prefetch(typingctx, arr, row):
    if not (isinstance(arr, types.Array) and arr.ndim == 2 and arr.layout == "C"):
        return None
    sig = types.void(arr, types.int64)

    def codegen(context, builder, signature, args):
        aty = signature.args[0]
        ary = context.make_array(aty)(context, builder, args[0])
        i64 = ir.IntType(64)
        row = context.cast(builder, args[1], signature.args[1], types.int64)
        ptr = cgutils.get_item_pointer(context, builder, aty, ary, [row, ir.Constant(i64, 0)],
                                       wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        p8 = builder.bitcast(ptr, i8p)
        shape = cgutils.unpack_tuple(builder, ary.shape, 2)
        row_bytes = builder.mul(shape[1], ir.Constant(i64, aty.dtype.bitwidth // 8))
        span = builder.add(row_bytes, ir.Constant(i64, 63))  # lines the row can touch
        for k in range(_MAX_LINES):
            off = ir.Constant(i64, 64 * k)
            with builder.if_then(builder.icmp_signed("<", off, span)):
                builder.call(fn, [builder.gep(p8, [off]), ir.Constant(i32, 0),
                                  ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


@njit(inline="always")
def _real(a, r):
    _prefetch(a, r)


@njit(inline="always")
def _noop(a, r):
    pass


@njit(cache=True)
def _probe(a):
    for r in range(a.shape[0]):
        _real(a, r)
    return a[0, 0]


try:
    _probe(np.zeros((2, 4), np.float32))  # compiled once, then from numba's cache
    prefetch_row = _real
except Exception as e:  # pragma: no cover - depends on the LLVM numba was built with
    log.warning("software prefetch unavailable (%s): sparse kernels run without it", e)
    prefetch_row = _noop
