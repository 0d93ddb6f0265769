"""Explicit-SIMD building block of the W4A8 matmul: a dot product of packed
INT4 weight bytes with INT8 activations, written as portable LLVM vector IR
through a Numba ``@intrinsic``.

Why not a plain loop: LLVM's auto-vectorizer turns the nibble loop into
16-lane code with a horizontal reduction per group (measured ~25 cycles per
64 weight bytes here). Stated as one vector expression per chunk, ::

    u = zext(concat(w & 0xF, w >> 4))        # <2W x i8> -> <2W x i32>, unsigned nibbles
    x = sext(concat(xe, xo))                 # <2W x i8> -> <2W x i32>, INT8 activations
    s = llvm.vector.reduce.add(u * x)        # exact int32

the X86 backend lowers ``reduce.add(mul(zext u8, sext s8))`` to ``vpdpbusd``
(AVX-512 VNNI / AVX-VNNI: 64 byte products per instruction) and to
``vpmaddwd`` sequences elsewhere; other targets get their own lowering of the
same generic IR. Nothing here is target-specific and the result is exact:
every product is at most 15 * 128 in magnitude and a chunk's sum fits int32.

Semantics (``W`` = 16, 32 or 64 bytes, ``R`` = 1 or 4 activation rows)::

    dot(wp, xep, xop, xstride, flip)[r] =
        sum_{i < W}  lo(w[i] ^ flip) * xe[r, i] + hi(w[i] ^ flip) * xo[r, i]

with ``w``, ``xe``, ``xo`` read from the raw addresses ``wp``, ``xep + r*xstride``,
``xop + r*xstride`` (int8 / uint8, no alignment needed). Callers guarantee the
W bytes are in bounds. ``flip = 0x88`` turns two's complement nibbles into
``q + 8`` (so symmetric weights become unsigned, with zero point 8).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.extending import intrinsic

from ._jit import njit, njit_inline
from .packing import NIBBLE, SHIFT

WIDTHS = (64, 32, 16)


def _make_dot(rows: int, width: int, weights_advance: bool = False):
    """The intrinsic for R = ``rows`` dot products of ``width`` bytes. Row r reads the
    activations at ``xep + r*xstride``, ``xop + r*xstride`` and the weights at ``wp``
    (one weight chunk against R activation rows) or, if ``weights_advance``, at
    ``wp + r*xstride`` (R consecutive groups of one weight row and one activation row)."""
    ret = types.int32 if rows == 1 else types.UniTuple(types.int32, rows)

    @intrinsic
    def dot(typingctx, wp, xep, xop, xstride, flip):
        sig = ret(types.int64, types.int64, types.int64, types.int64, types.uint8)

        def codegen(context, builder, signature, args):
            wp, xep, xop, xstride, flip = args
            i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
            vb = ir.VectorType(i8, width)
            wide = ir.VectorType(i32, 2 * width)

            def load(addr):
                return builder.load(builder.inttoptr(addr, vb.as_pointer()), align=1)

            splat = builder.insert_element(ir.Constant(vb, ir.Undefined), flip, ir.Constant(i32, 0))
            splat = builder.shuffle_vector(splat, ir.Constant(vb, ir.Undefined),
                                           ir.Constant(ir.VectorType(i32, width), [0] * width))
            concat = ir.Constant(ir.VectorType(i32, 2 * width), list(range(2 * width)))

            def nibbles(addr):   # <2W x i8>: the W low nibbles, then the W high nibbles
                w = builder.xor(load(addr), splat)
                lo = builder.and_(w, ir.Constant(vb, [int(NIBBLE)] * width))
                hi = builder.lshr(w, ir.Constant(vb, [SHIFT] * width))
                return builder.shuffle_vector(lo, hi, concat)

            u = nibbles(wp)
            reduce_add = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(i32, [wide]), f"llvm.vector.reduce.add.v{2 * width}i32")
            sums = []
            for r in range(rows):
                off = builder.mul(xstride, ir.Constant(i64, r))
                if weights_advance and r:
                    u = nibbles(builder.add(wp, off))
                x = builder.shuffle_vector(load(builder.add(xep, off)), load(builder.add(xop, off)), concat)
                prod = builder.mul(builder.zext(u, wide), builder.sext(x, wide))
                sums.append(builder.call(reduce_add, [prod]))
            if rows == 1:
                return sums[0]
            return context.make_tuple(builder, signature.return_type, sums)

        return sig, codegen

    return dot


dot1_64, dot1_32, dot1_16 = (_make_dot(1, w) for w in WIDTHS)
dot4_64, dot4_32, dot4_16 = (_make_dot(4, w) for w in WIDTHS)
#: four consecutive groups of W bytes (one weight row, one activation row)
groups4_64, groups4_32, groups4_16 = (_make_dot(4, w, weights_advance=True) for w in WIDTHS)


def _make_load(nbtype, bits: int):
    @intrinsic
    def load(typingctx, addr):
        def codegen(context, builder, signature, args):
            ptr = builder.inttoptr(args[0], ir.IntType(bits).as_pointer())
            return builder.load(ptr, align=1)

        return nbtype(types.int64), codegen

    return load


load_u8 = _make_load(types.uint8, 8)
load_i8 = _make_load(types.int8, 8)


@njit
def address(a):
    """Address of an array's first element, as int64 (what the intrinsics take)."""
    return np.int64(a.ctypes.data)


@njit_inline
def _tail(wa, xa, ya, nbytes, flip):
    """Scalar remainder (< 16 bytes) of :func:`dots1`."""
    acc = 0
    for i in range(nbytes):
        b = load_u8(wa + i) ^ flip
        acc += np.int32(load_i8(xa + i)) * np.int32(b & NIBBLE) + np.int32(load_i8(ya + i)) * np.int32(b >> SHIFT)
    return acc


@njit_inline
def dots1(wa, xa, ya, kb, nbytes, flip):
    """``sum_{i < nbytes} lo(w[i]^flip) * xe[i] + hi(w[i]^flip) * xo[i]`` as int64, where
    w, xe, xo are the bytes at addresses wa, xa, ya (kb: the activation row stride,
    unused for one row). Only addresses cross the call: passing arrays costs
    more than the work."""
    acc = 0
    i = 0
    while i + 64 <= nbytes:
        acc += dot1_64(wa + i, xa + i, ya + i, kb, flip)
        i += 64
    if i + 32 <= nbytes:
        acc += dot1_32(wa + i, xa + i, ya + i, kb, flip)
        i += 32
    if i + 16 <= nbytes:
        acc += dot1_16(wa + i, xa + i, ya + i, kb, flip)
        i += 16
    if i < nbytes:
        acc += _tail(wa + i, xa + i, ya + i, nbytes - i, flip)
    return acc


@njit_inline
def dots4(wa, xa, ya, kb, nbytes, flip):
    """:func:`dots1` for the four activation rows at xa + r*kb, ya + r*kb (r = 0..3) at
    once: each weight chunk is loaded and split into nibbles once for all four."""
    a0 = 0
    a1 = 0
    a2 = 0
    a3 = 0
    i = 0
    while i + 64 <= nbytes:
        s = dot4_64(wa + i, xa + i, ya + i, kb, flip)
        a0 += s[0]
        a1 += s[1]
        a2 += s[2]
        a3 += s[3]
        i += 64
    if i + 32 <= nbytes:
        s = dot4_32(wa + i, xa + i, ya + i, kb, flip)
        a0 += s[0]
        a1 += s[1]
        a2 += s[2]
        a3 += s[3]
        i += 32
    if i + 16 <= nbytes:
        s = dot4_16(wa + i, xa + i, ya + i, kb, flip)
        a0 += s[0]
        a1 += s[1]
        a2 += s[2]
        a3 += s[3]
        i += 16
    if i < nbytes:
        r = nbytes - i
        a0 += _tail(wa + i, xa + i, ya + i, r, flip)
        a1 += _tail(wa + i, xa + kb + i, ya + kb + i, r, flip)
        a2 += _tail(wa + i, xa + 2 * kb + i, ya + 2 * kb + i, r, flip)
        a3 += _tail(wa + i, xa + 3 * kb + i, ya + 3 * kb + i, r, flip)
    return a0, a1, a2, a3
