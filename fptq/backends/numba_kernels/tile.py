"""The tile of the blocked W4A8 kernel as LLVM IR (a Numba ``@intrinsic``), and the block layout.

:mod:`fptq.backends.numba_kernels.blocked` describes the layout and the
epilogue; this module emits the IR of one tile: ``rows`` activation rows
against one block of :data:`LANES` weight rows, over a range of groups, with
``vpdpbusd`` on AVX-512 VNNI and plain widening multiplies elsewhere. The
emission is split over :class:`_TileIR`'s methods, one per basic block of the
loop nest; the split changes no instruction (the optimized IR of tile1/4/8,
VNNI and not, is the same text as when it was one 136-line function).
"""

from __future__ import annotations

from types import SimpleNamespace

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.extending import intrinsic

from .packing import NIBBLE, SHIFT

__all__ = ["LANES", "STEP_K", "STEP_BYTES", "USE_VNNI", "tile1", "tile4", "tile8"]

#: weight rows per block (int32 lanes of a 512-bit vector)
LANES = 16
#: K columns per 64-byte step of a block
STEP_K = 8
STEP_BYTES = LANES * STEP_K // 2


def _vnni_target() -> bool:
    """True when the code Numba generates may use AVX-512 VNNI (``vpdpbusd`` on zmm)."""
    import llvmlite.binding as llvm
    from numba.core import config

    if config.CPU_NAME and config.CPU_NAME != "host":      # a portable (cross-CPU) build: only what is named
        feats = config.CPU_FEATURES or ""
        return "+avx512vnni" in feats and "+avx512bw" in feats
    f = llvm.get_host_cpu_features()
    return bool(f.get("avx512vnni")) and bool(f.get("avx512bw"))


USE_VNNI = _vnni_target()


#: The tile intrinsic's arguments, in order (all int64: addresses, sizes and flags).
_TILE_ARGS = ("wp", "xp", "xstride", "xsp", "xsstride", "zp", "wsp", "ng", "steps_full", "steps_last", "xscp",
              "bp", "has_bias", "yp", "ystride", "g0", "g1", "first", "last")


class _TileIR:
    """The LLVM IR of one tile, emitted by :func:`_make_tile`'s codegen: the vector types, the
    emitting helpers, and the tile's arguments (``a.wp``, ``a.g0``, ...). Splitting the emission
    into the methods below changes no instruction: the IR of tile1/4/8 is the same text as when it
    was one function (checked by dumping ``inspect_llvm`` before and after)."""

    def __init__(self, builder, rows: int, vnni: bool, args):
        self.b, self.rows, self.vnni = builder, rows, vnni
        self.a = SimpleNamespace(**dict(zip(_TILE_ARGS, args)))
        self.i8, self.i32, self.i64, self.f32 = ir.IntType(8), ir.IntType(32), ir.IntType(64), ir.FloatType()
        self.vi, self.vf = ir.VectorType(self.i32, LANES), ir.VectorType(self.f32, LANES)
        self.vz = ir.VectorType(self.i8, LANES)          # a group's 16 uint8 zero points
        self.vb, self.wide = ir.VectorType(self.i8, 4 * LANES), ir.VectorType(self.i32, 4 * LANES)
        if vnni:
            self.dpbusd = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(self.vi, [self.vi, self.vi, self.vi]), "llvm.x86.avx512.vpdpbusd.512")

    def c64(self, v):
        return ir.Constant(self.i64, v)

    def load(self, addr, ty):
        return self.b.load(self.b.inttoptr(addr, ty.as_pointer()), align=1)

    def splat(self, v, vty):
        one = self.b.insert_element(ir.Constant(vty, ir.Undefined), v, ir.Constant(self.i32, 0))
        return self.b.shuffle_vector(one, ir.Constant(vty, ir.Undefined),
                                     ir.Constant(ir.VectorType(self.i32, LANES), [0] * LANES))

    def dot(self, acc, u, xword):
        """acc + per lane i: sum_j u[4i + j] * x[j] (u unsigned, x = the 4 bytes of xword, signed)."""
        b, xv = self.b, self.splat(xword, self.vi)
        if self.vnni:
            return b.call(self.dpbusd, [acc, b.bitcast(u, self.vi), xv])
        prod = b.mul(b.zext(u, self.wide), b.sext(b.bitcast(xv, self.vb), self.wide))
        for j in range(4):
            part = b.shuffle_vector(prod, ir.Constant(self.wide, ir.Undefined),
                                    ir.Constant(self.vi, [4 * i + j for i in range(LANES)]))
            acc = b.add(acc, part)
        return acc

    def y_addr(self, r):
        return self.b.add(self.a.yp, self.b.mul(self.b.mul(self.a.ystride, self.c64(r)), self.c64(4)))

    def group_head(self):
        """Entry and the head of ``for g in range(g0, g1)``: the rows' running sums (+0.0 if ``first``,
        else loaded from y), the steps of group g and its first step. Returns the loop's blocks."""
        b, a, vf = self.b, self.a, self.vf
        fn = b.function
        is_first = b.icmp_signed("!=", a.first, self.c64(0))
        y_init = [b.select(is_first, ir.Constant(vf, [0.0] * LANES), self.load(self.y_addr(r), vf))  # y = +0.0
                  for r in range(self.rows)]
        entry = b.basic_block
        blocks = [fn.append_basic_block(n) for n in ("tile.group", "tile.step", "tile.epilogue", "tile.done")]
        b.branch(blocks[0])
        b.position_at_end(blocks[0])
        self.g = b.phi(self.i64)
        self.g.add_incoming(a.g0, entry)
        self.ys = []
        for r in range(self.rows):
            y = b.phi(vf)
            y.add_incoming(y_init[r], entry)
            self.ys.append(y)
        is_last = b.icmp_signed("==", self.g, b.sub(a.ng, self.c64(1)))
        self.nsteps = b.select(is_last, a.steps_last, a.steps_full)
        self.step0 = b.mul(self.g, a.steps_full)
        b.branch(blocks[1])
        return blocks

    def steps(self, g_head, s_body, g_end):
        """``for t in range(nsteps)``: the integer products. Per row, the low and the high nibbles go
        into separate int32 sums (chains = 2 * rows: with one row a single chain would wait on each
        vpdpbusd's latency), added in :meth:`group_end`."""
        b, a = self.b, self.a
        b.position_at_end(s_body)
        t = b.phi(self.i64)
        t.add_incoming(self.c64(0), g_head)
        accs = []
        for _ in range(self.rows * 2):
            acc = b.phi(self.vi)
            acc.add_incoming(ir.Constant(self.vi, [0] * LANES), g_head)
            accs.append(acc)
        step = b.add(self.step0, t)
        w = self.load(b.add(a.wp, b.mul(step, self.c64(STEP_BYTES))), self.vb)
        lo = b.and_(w, ir.Constant(self.vb, [int(NIBBLE)] * (4 * LANES)))
        hi = b.lshr(w, ir.Constant(self.vb, [SHIFT] * (4 * LANES)))
        xoff = b.mul(step, self.c64(STEP_K))
        self.new_accs = []
        for r in range(self.rows):
            xa = b.add(b.add(a.xp, b.mul(a.xstride, self.c64(r))), xoff)
            self.new_accs.append(self.dot(accs[2 * r], lo, self.load(xa, self.i32)))
            self.new_accs.append(self.dot(accs[2 * r + 1], hi, self.load(b.add(xa, self.c64(4)), self.i32)))
        t_next = b.add(t, self.c64(1))
        t.add_incoming(t_next, s_body)
        for acc, nacc in zip(accs, self.new_accs):
            acc.add_incoming(nacc, s_body)
        b.cbranch(b.icmp_signed("<", t_next, self.nsteps), s_body, g_end)

    def group_end(self, g_head, g_end, done):
        """The group's epilogue term per lane: ``y += float32(sum - z * xsum) * wscale``; next group."""
        b, a = self.b, self.a
        b.position_at_end(g_end)
        sums = [b.add(self.new_accs[2 * r], self.new_accs[2 * r + 1]) for r in range(self.rows)]
        z = b.zext(self.load(b.add(a.zp, b.mul(self.g, self.c64(LANES))), self.vz), self.vi)
        ws = self.load(b.add(a.wsp, b.mul(self.g, self.c64(4 * LANES))), self.vf)
        self.new_ys = []
        for r in range(self.rows):
            xsa = b.add(a.xsp, b.mul(b.add(b.mul(a.xsstride, self.c64(r)), self.g), self.c64(4)))
            acc = b.sub(sums[r], b.mul(z, self.splat(self.load(xsa, self.i32), self.vi)))
            term = b.fmul(b.sitofp(acc, self.vf), ws)
            self.new_ys.append(b.fadd(self.ys[r], term))
        g_next = b.add(self.g, self.c64(1))
        self.g.add_incoming(g_next, g_end)
        for y, ny in zip(self.ys, self.new_ys):
            y.add_incoming(ny, g_end)
        b.cbranch(b.icmp_signed("<", g_next, a.g1), g_head, done)

    def finish(self, done):
        """If ``last``: y * xscale[m], then + bias[n]; store the rows."""
        b, a, vf = self.b, self.a, self.vf
        b.position_at_end(done)
        bias = self.load(a.bp, vf)
        use_bias = b.icmp_signed("!=", a.has_bias, self.c64(0))
        is_last = b.icmp_signed("!=", a.last, self.c64(0))
        for r in range(self.rows):
            y = b.fmul(self.new_ys[r], self.splat(self.load(b.add(a.xscp, self.c64(4 * r)), self.f32), vf))
            y = b.select(use_bias, b.fadd(y, bias), y)
            y = b.select(is_last, y, self.new_ys[r])
            b.store(y, b.inttoptr(self.y_addr(r), vf.as_pointer()), align=1)


def _make_tile(rows: int, vnni: bool):
    """Intrinsic ``tile(wp, xp, xstride, xsp, xsstride, zp, wsp, ng, steps_full, steps_last, xscp,
    bp, has_bias, yp, ystride, g0, g1, first, last)``: ``rows`` activation rows against one weight
    block, groups g0..g1-1 (g1 > g0), on float32 [rows, 16] at ``yp`` (row stride ``ystride``
    floats): the epilogue sums start at +0.0 if ``first`` != 0, else continue from the values
    stored there by the previous group range; if ``last`` != 0 they are finished (``* xscale``,
    ``+ bias``) before they are stored. Addresses: wp the block's steps (uint8 [steps, 64]); xp
    the first activation row (int8, ``xstride`` bytes per row); xsp its group sums (int32,
    ``xsstride`` per row); zp, wsp the block's zero points and weight scales (uint8 / float32
    [ng, 16]; the zero points are zero-extended to int32); xscp the rows' scales (float32); bp the
    block's bias (float32 [16]), added when ``has_bias`` != 0. Storing an unfinished float32 sum
    and loading it back is exact, so a split of the groups into ranges gives the same bits. The IR
    is emitted by :class:`_TileIR`."""

    @intrinsic
    def tile(typingctx, wp, xp, xstride, xsp, xsstride, zp, wsp, ng, steps_full, steps_last, xscp, bp,
             has_bias, yp, ystride, g0, g1, first, last):
        sig = types.void(*([types.int64] * len(_TILE_ARGS)))

        def codegen(context, builder, signature, args):
            t = _TileIR(builder, rows, vnni, args)
            g_head, s_body, g_end, done = t.group_head()
            t.steps(g_head, s_body, g_end)
            t.group_end(g_head, g_end, done)
            t.finish(done)
            return context.get_dummy_value()

        return sig, codegen

    return tile


tile8 = _make_tile(8, USE_VNNI)
tile4 = _make_tile(4, USE_VNNI)
tile1 = _make_tile(1, USE_VNNI)
