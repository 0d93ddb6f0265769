"""A float32 block product as LLVM IR (a Numba ``@intrinsic``), ``out = Y @ R`` in the plain float order:
the online rotation's (Y float32 [p2, m], the rotated row, group a = ``y[a*m : (a+1)*m]``; R = rs
float32 [m, cp], cp a multiple of 16, columns past m zero: :func:`fptq.runtime.ops.padded_block`) and
the attention's scores (Y the query vectors, R the transposed keys: :mod:`fptq.runtime.attention`).

Every output is summed ``b`` ascending from +0.0, one multiply ``y[a, b] * rs[b, c]`` and one add per
term, each rounded (plain ``fmul`` / ``fadd``, no fast-math flags: no FMA, no reassociation) -- the
float operations of the plain loop, so the same bits (``tests/test_runtime_kernels.py``).

Why IR: the 1.5B's down-projection input rotation is ``8960 = 128 x 70``, 70 multiply-adds per value,
9 G per 512-token prefill. The Numba loop this replaced (two groups and four ``b`` per pass over the
outputs, kept in memory: per pass, loads and stores of every output) ran at about a third of the float
units' rate. Here a tile holds :data:`GROUPS` groups x 16 outputs in registers (eight zmm sums), and per
``b`` loads one 16-wide slice of ``rs`` and broadcasts one ``y`` value per group: the sums leave the
registers once per tile.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core.extending import intrinsic

from ..backends.numba_kernels.ir_loop import counted_loop

__all__ = ["GROUPS", "LANES", "block_product"]

#: groups per register tile (each its own 16-lane sum)
GROUPS = 8
#: float32 lanes per output slice (one 512-bit vector)
LANES = 16


def _emit(b, yp, ystride, rsp, rstride, m, ncols, p2, outp, ostride):
    f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
    vf = ir.VectorType(f32, LANES)
    c64 = lambda v: ir.Constant(i64, v)  # noqa: E731
    zero = ir.Constant(vf, [0.0] * LANES)

    def load(addr, ty):
        return b.load(b.inttoptr(addr, ty.as_pointer()), align=4)

    def splat(v):
        one = b.insert_element(ir.Constant(vf, ir.Undefined), v, ir.Constant(i32, 0))
        return b.shuffle_vector(one, ir.Constant(vf, ir.Undefined), ir.Constant(ir.VectorType(i32, LANES), [0] * LANES))

    def tile(groups, a0, cc):
        """Groups a0..a0+groups-1, outputs cc..cc+15: sums over b, stored to out."""
        def step(bi, sums):
            r = load(b.add(rsp, b.mul(b.add(b.mul(bi, rstride), cc), c64(4))), vf)
            out = []
            for g, s in enumerate(sums):
                yv = load(b.add(yp, b.mul(b.add(b.mul(b.add(a0, c64(g)), ystride), bi), c64(4))), f32)
                out.append(b.fadd(s, b.fmul(splat(yv), r)))
            return out

        _, sums = counted_loop(b, f"bp.b{groups}", c64(0), m, c64(1), [zero] * groups, step)
        for g, s in enumerate(sums):
            b.store(s, b.inttoptr(b.add(outp, b.mul(b.add(b.mul(b.add(a0, c64(g)), ostride), cc), c64(4))), vf.as_pointer()),
                    align=4)

    def per_slice(cc, _):
        def tiles(a0, __):
            tile(GROUPS, a0, cc)
            return []

        rest0, _ = counted_loop(b, "bp.a8", c64(0), p2, c64(GROUPS), [], tiles)   # the first group left over

        def singles(a0, __):
            tile(1, a0, cc)
            return []

        counted_loop(b, "bp.a1", rest0, p2, c64(1), [], singles)
        return []

    counted_loop(b, "bp.c", c64(0), ncols, c64(LANES), [], per_slice)


@intrinsic
def block_product(typingctx, yp, ystride, rsp, rstride, m, ncols, p2, outp, ostride):
    """``block_product(y, ystride, r, rstride, m, ncols, p2, out, ostride)``: float32
    ``out[a, c] = sum_{b < m} y[a, b] * r[b, c]`` for a < p2, c < ncols (a multiple of :data:`LANES`), each
    summed b ascending from +0.0 as the module docstring says. Addresses of row 0 and row strides in
    float32 elements; all arguments int64. The rotation: y [p2, m], r = rs [m, cp], out [p2, cp]; the
    attention's scores: y = the query vectors [n, hd], r = the transposed keys [hd, T], out = the scores."""
    sig = types.void(*([types.int64] * 9))

    def codegen(context, builder, signature, args):
        _emit(builder, *args)
        return context.get_dummy_value()

    return sig, codegen
