"""The prepared-linear W4A8 kernel: weights re-laid out once in VNNI blocks, the
activation quantizer, its checks and the matmul fused in one compiled call.

A model's forward (``NumbaBackend.linear_forward``) calls :func:`linear` (or
:func:`linear_parallel` for large products) once per layer: the float32 input is
scanned, quantized to INT8 and summed per group, the integer products and the
pinned epilogue run, and a status says whether a non-finite input was seen
(the caller then raises the spec's own error). No NumPy/torch round trip and no
thread-pool launch happens in between.

Blocked weight layout (:func:`repack`, once per layer). Weight rows go in
blocks of :data:`LANES` = 16 (one 512-bit vector of int32 lanes, lane i = row
16b + i); K goes in steps of 8 columns. One step of one block is 64 bytes::

    byte 4*i + j  (i < 16, j < 4):  low nibble  = u[16b + i, 8s + j]
                                    high nibble = u[16b + i, 8s + 4 + j]

with ``u = q ^ 8 = q + 8`` for symmetric weights (zero point 8) and ``u = q``
for asymmetric ones (zero point z[n, g]); columns past K and rows past N are
0. Step s of group g is ``s = g * G/8 + t`` (G a multiple of 8), so a group
never shares a step with the next one.

The tile (:func:`_make_tile`, LLVM IR through a Numba ``@intrinsic``) computes
R = 1 or 4 activation rows against one block, all groups: per step, the 64
weight bytes are loaded once and split into low and high nibbles; each row's
4 + 4 activation bytes are broadcast and multiplied into the 16 lanes
(``vpdpbusd``: u8 x s8, four products summed per int32 lane, exact; on a CPU
without AVX-512 VNNI the same sums from plain widening multiplies). At the
end of group g, per lane (= per output (m, n)), exactly the spec's epilogue::

    acc = sum_k u * qx  -  z[n, g] * xsum[m, g]       (= sum_k q * qx, int32, exact)
    y   = y + float32(acc) * wscale[n, g]             (y starts at +0.0; g ascending)

and after the last group ``y = y * xscale[m]``, then ``y = y + bias[n]`` (each a
separately rounded float32 operation: plain ``fmul``/``fadd``, no contraction
flags, so no FMA). The 16 lanes are 16 independent outputs, so no horizontal
reduction is ever needed and every output's float sequence is the spec's.

Work order: blocks of rows run in parallel panels (:func:`linear_parallel`);
inside a panel, activation rows are walked in chunks of :data:`M_CHUNK` (kept
in L2) and, per chunk, every block of the panel against every 4-row group of
the chunk (the block's weights stay in L1).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.extending import intrinsic

from ...spec.formats import FLOAT, INT4_SIGN_OFFSET
from . import activation
from ._jit import njit, njit_inline, pnjit, prange
from .packing import HIGH_NIBBLE, NIBBLE, SHIFT, SIGN_FLIP

#: weight rows per block (int32 lanes of a 512-bit vector)
LANES = 16
#: K columns per 64-byte step of a block
STEP_K = 8
STEP_BYTES = LANES * STEP_K // 2
#: activation rows per tile (then 4-row and 1-row tiles for the rest)
TILE_M = 8
#: activation rows per cache chunk
M_CHUNK = 64
#: zero bytes after each INT8 activation row: a row stride of a multiple of 4 KB (K = 4096) would put
#: the rows of a tile in the same L1 sets
X_PAD = 64
#: K columns per group range (16 KB of one block's weights; the epilogue sums are carried over)
K_CHUNK = 2048
#: multiply-adds (M * N * K) from which the blocked products run on every thread: below (about 20 us
#: of one-thread work), waking the thread pool (about 9 us with ``OMP_WAIT_POLICY=PASSIVE``) costs
#: more than the second thread saves. Every SmolLM2-135M layer at decode (M = 1) runs on one thread.
PARALLEL_MIN_MACS = 1 << 24
#: float32 bit pattern: exponent all ones (Inf/NaN) at or above this, once the sign is cleared
_NONFINITE = np.uint32(0x7F800000)
_ABS = np.uint32(0x7FFFFFFF)


def panel_size(nblk: int) -> int:
    """Weight blocks per parallel panel: 4 (64 rows share the L2-resident activations) when that
    still gives every thread several panels, fewer otherwise."""
    import numba

    threads = numba.get_num_threads()
    for p in (4, 2):
        if nblk >= 4 * p * threads:
            return p
    return 1


def supported(g: int) -> bool:
    """The blocked layout needs G (the group size, as resolved for K) to be a multiple of 8."""
    return g % STEP_K == 0


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


# ============================================================================ the tile (LLVM IR)

def _make_tile(rows: int, vnni: bool):
    """Intrinsic ``tile(wp, xp, xstride, xsp, xsstride, zp, wsp, ng, steps_full, steps_last, xscp,
    bp, has_bias, yp, ystride, g0, g1, first, last)``: ``rows`` activation rows against one weight
    block, groups g0..g1-1 (g1 > g0), on float32 [rows, 16] at ``yp`` (row stride ``ystride``
    floats): the epilogue sums start at +0.0 if ``first`` != 0, else continue from the values
    stored there by the previous group range; if ``last`` != 0 they are finished (``* xscale``,
    ``+ bias``) before they are stored. Addresses: wp the block's steps (uint8 [steps, 64]); xp
    the first activation row (int8, ``xstride`` bytes per row); xsp its group sums (int32,
    ``xsstride`` per row); zp, wsp the block's zero points and weight scales (int32 / float32
    [ng, 16]); xscp the rows' scales (float32); bp the block's bias (float32 [16]), added when
    ``has_bias`` != 0. Storing an unfinished float32 sum and loading it back is exact, so a
    split of the groups into ranges gives the same bits."""

    @intrinsic
    def tile(typingctx, wp, xp, xstride, xsp, xsstride, zp, wsp, ng, steps_full, steps_last, xscp, bp,
             has_bias, yp, ystride, g0, g1, first, last):
        sig = types.void(*([types.int64] * 19))

        def codegen(context, builder, signature, args):
            (wp, xp, xstride, xsp, xsstride, zp, wsp, ng, steps_full, steps_last, xscp, bp, has_bias, yp,
             ystride, g0, g1, first, last) = args
            i8, i32, i64, f32 = ir.IntType(8), ir.IntType(32), ir.IntType(64), ir.FloatType()
            vi, vf, vb = ir.VectorType(i32, LANES), ir.VectorType(f32, LANES), ir.VectorType(i8, 4 * LANES)
            wide = ir.VectorType(i32, 4 * LANES)

            def c64(v):
                return ir.Constant(i64, v)

            def load(addr, ty):
                return builder.load(builder.inttoptr(addr, ty.as_pointer()), align=1)

            def splat(v, vty):
                one = builder.insert_element(ir.Constant(vty, ir.Undefined), v, ir.Constant(i32, 0))
                return builder.shuffle_vector(one, ir.Constant(vty, ir.Undefined),
                                              ir.Constant(ir.VectorType(i32, LANES), [0] * LANES))

            if vnni:
                dpbusd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vi, [vi, vi, vi]),
                                                        "llvm.x86.avx512.vpdpbusd.512")

            def dot(acc, u, xword):
                """acc + per lane i: sum_j u[4i + j] * x[j] (u unsigned, x = the 4 bytes of xword, signed)."""
                xv = splat(xword, vi)
                if vnni:
                    return builder.call(dpbusd, [acc, builder.bitcast(u, vi), xv])
                prod = builder.mul(builder.zext(u, wide), builder.sext(builder.bitcast(xv, vb), wide))
                for j in range(4):
                    part = builder.shuffle_vector(prod, ir.Constant(wide, ir.Undefined),
                                                  ir.Constant(vi, [4 * i + j for i in range(LANES)]))
                    acc = builder.add(acc, part)
                return acc

            def y_addr(r):
                return builder.add(yp, builder.mul(builder.mul(ystride, c64(r)), c64(4)))

            fn = builder.function
            is_first = builder.icmp_signed("!=", first, c64(0))
            y_init = [builder.select(is_first, ir.Constant(vf, [0.0] * LANES), load(y_addr(r), vf))   # y = +0.0
                      for r in range(rows)]
            entry = builder.basic_block
            g_head = fn.append_basic_block("tile.group")
            s_body = fn.append_basic_block("tile.step")
            g_end = fn.append_basic_block("tile.epilogue")
            done = fn.append_basic_block("tile.done")
            builder.branch(g_head)

            builder.position_at_end(g_head)                     # for g in range(g0, g1)
            g = builder.phi(i64)
            g.add_incoming(g0, entry)
            ys = []
            for r in range(rows):
                y = builder.phi(vf)
                y.add_incoming(y_init[r], entry)
                ys.append(y)
            is_last = builder.icmp_signed("==", g, builder.sub(ng, c64(1)))
            nsteps = builder.select(is_last, steps_last, steps_full)
            first = builder.mul(g, steps_full)
            builder.branch(s_body)

            builder.position_at_end(s_body)                     # for t in range(nsteps): integer products
            t = builder.phi(i64)
            t.add_incoming(c64(0), g_head)
            # per row, the low and the high nibbles go into separate int32 sums (chains = 2 * rows:
            # with one row a single chain would wait on each vpdpbusd's latency); added at the end
            chains = 2
            accs = []
            for _ in range(rows * chains):
                a = builder.phi(vi)
                a.add_incoming(ir.Constant(vi, [0] * LANES), g_head)
                accs.append(a)
            step = builder.add(first, t)
            w = load(builder.add(wp, builder.mul(step, c64(STEP_BYTES))), vb)
            lo = builder.and_(w, ir.Constant(vb, [int(NIBBLE)] * (4 * LANES)))
            hi = builder.lshr(w, ir.Constant(vb, [SHIFT] * (4 * LANES)))
            xoff = builder.mul(step, c64(STEP_K))
            new_accs = []
            for r in range(rows):
                xa = builder.add(builder.add(xp, builder.mul(xstride, c64(r))), xoff)
                new_accs.append(dot(accs[chains * r], lo, load(xa, i32)))
                new_accs.append(dot(accs[chains * r + 1], hi, load(builder.add(xa, c64(4)), i32)))
            t_next = builder.add(t, c64(1))
            t.add_incoming(t_next, s_body)
            for a, na in zip(accs, new_accs):
                a.add_incoming(na, s_body)
            builder.cbranch(builder.icmp_signed("<", t_next, nsteps), s_body, g_end)

            builder.position_at_end(g_end)                      # the group's epilogue term, per lane
            sums = [builder.add(new_accs[chains * r], new_accs[chains * r + 1]) for r in range(rows)]
            z = load(builder.add(zp, builder.mul(g, c64(4 * LANES))), vi)
            ws = load(builder.add(wsp, builder.mul(g, c64(4 * LANES))), vf)
            new_ys = []
            for r in range(rows):
                xsa = builder.add(xsp, builder.mul(builder.add(builder.mul(xsstride, c64(r)), g), c64(4)))
                acc = builder.sub(sums[r], builder.mul(z, splat(load(xsa, i32), vi)))
                term = builder.fmul(builder.sitofp(acc, vf), ws)
                new_ys.append(builder.fadd(ys[r], term))
            g_next = builder.add(g, c64(1))
            g.add_incoming(g_next, g_end)
            for y, ny in zip(ys, new_ys):
                y.add_incoming(ny, g_end)
            builder.cbranch(builder.icmp_signed("<", g_next, g1), g_head, done)

            builder.position_at_end(done)                       # if last: y * xscale[m], then + bias[n]
            bias = load(bp, vf)
            use_bias = builder.icmp_signed("!=", has_bias, c64(0))
            is_last = builder.icmp_signed("!=", last, c64(0))
            for r in range(rows):
                y = builder.fmul(new_ys[r], splat(load(builder.add(xscp, c64(4 * r)), f32), vf))
                y = builder.select(use_bias, builder.fadd(y, bias), y)
                y = builder.select(is_last, y, new_ys[r])
                builder.store(y, builder.inttoptr(y_addr(r), vf.as_pointer()), align=1)
            return context.get_dummy_value()

        return sig, codegen

    return tile


tile8 = _make_tile(8, USE_VNNI)
tile4 = _make_tile(4, USE_VNNI)
tile1 = _make_tile(1, USE_VNNI)


@intrinsic
def _bits_as_float(typingctx, v):
    """Reinterpret a uint32 bit pattern as float32."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.uint32), codegen


@njit
def _address(a):
    return np.int64(a.ctypes.data)


# ============================================================================ weights, once per layer

@njit
def repack(packed, zero, k, g, signed):
    """packed uint8 [N, ceil(K/2)] (+ zero uint8 [N, ng], ignored if ``signed``) ->
    (wb uint8 [nblk, steps, 64], zc int32 [nblk, ng, 16]); see the module docstring.

    A step's 8 columns of one row are its packed bytes p0..p3 (columns 2t, 2t+1 in p_t's low and
    high nibble), so lane i of the step is the byte shuffle
    ``(p0.lo | p2.lo << 4, p0.hi | p2.hi << 4, p1.lo | p3.lo << 4, p1.hi | p3.hi << 4)``,
    XOR 0x88 for symmetric weights; columns past K are 0 (odd K: the spec's high nibble 0 of the
    last byte is re-zeroed after the XOR)."""
    n, kb = packed.shape
    ng = (k + g - 1) // g
    spg = g // STEP_K
    steps = (ng - 1) * spg + (k - (ng - 1) * g + STEP_K - 1) // STEP_K
    nblk = (n + LANES - 1) // LANES
    wb = np.zeros((nblk, steps, STEP_BYTES), np.uint8)
    zc = np.zeros((nblk, ng, LANES), np.int32)
    lo4, flip = NIBBLE, (SIGN_FLIP if signed else np.uint8(0))
    p = np.zeros(4, np.uint8)
    for r in range(n):
        b, i = r // LANES, r % LANES
        for j in range(ng):
            zc[b, j, i] = INT4_SIGN_OFFSET if signed else np.int32(zero[r, j])
        for s in range(steps):
            for t in range(4):
                c = 4 * s + t
                p[t] = packed[r, c] if c < kb else np.uint8(0)
            o = wb[b, s]
            o[4 * i] = ((p[0] & lo4) | ((p[2] & lo4) << SHIFT)) ^ flip
            o[4 * i + 1] = ((p[0] >> SHIFT) | ((p[2] >> SHIFT) << SHIFT)) ^ flip
            o[4 * i + 2] = ((p[1] & lo4) | ((p[3] & lo4) << SHIFT)) ^ flip
            o[4 * i + 3] = ((p[1] >> SHIFT) | ((p[3] >> SHIFT) << SHIFT)) ^ flip
        if signed:   # nibbles of columns >= K were 0 before the XOR: make them 0 again
            for c in range(k, steps * STEP_K):
                s, j = c // STEP_K, c % STEP_K
                byte = 4 * i + (j & 3)
                wb[b, s, byte] &= NIBBLE if j >= 4 else HIGH_NIBBLE
    return wb, zc


@njit
def block_rows(a, nblk):
    """float32 [N, ng] -> [nblk, ng, 16] (rows past N are 0)."""
    n, ng = a.shape
    out = np.zeros((nblk, ng, LANES), FLOAT)
    for r in range(n):
        for j in range(ng):
            out[r // LANES, j, r % LANES] = a[r, j]
    return out


# ============================================================================ activations: check + quantize + sums

@njit
def _abs_bits_max(xb):
    """max over the row of (bits & 0x7FFFFFFF): >= 0x7F800000 iff the row holds a NaN/Inf;
    otherwise the bit pattern of the row's amax (non-negative floats order as their bits)."""
    mx = np.uint32(0)
    for i in range(xb.size):
        v = xb[i] & _ABS
        if v > mx:
            mx = v
    return mx


@njit
def _quantize_row(x, s, q):
    for i in range(x.size):
        q[i] = activation.quantize_one(x[i], s)


@njit
def _group_sums(q, k, g, out):
    for j in range(out.size):
        acc = np.int32(0)
        for i in range(j * g, min((j + 1) * g, k)):
            acc += np.int32(q[i])
        out[j] = acc


@njit
def quantize_rows(x, xbits, act_scale, dynamic, g, xq, xs, xsum, r0, r1):
    """Rows r0..r1 of float32 x [M, K] -> int8 xq[:, :K] (the rest stays 0), scales xs [M] and
    group sums xsum [M, ng]: per token (``dynamic``: scale = max(amax / 127, 2**-126)) or with the
    static ``act_scale``. Returns the number of rows holding a NaN/Inf (those rows are not quantized)."""
    k = x.shape[1]
    bad = 0
    for r in range(r0, r1):
        mx = _abs_bits_max(xbits[r])
        if mx >= _NONFINITE:
            bad += 1
            continue
        s = activation.scale_from_amax(_bits_as_float(mx)) if dynamic else act_scale
        xs[r] = s
        _quantize_row(x[r], s, xq[r, :k])
        _group_sums(xq[r], k, g, xsum[r])
    return bad


# ============================================================================ the products and the epilogue

@njit_inline
def _rows(xq, xs, xsum, wb, zc, wsb, bb, has_bias, g, steps_last, blk, m0, m1, g0, g1, y):
    """Activation rows m0..m1 against weight block ``blk``, groups g0..g1, on
    y[m0:m1, 16*blk : 16*blk + 16] (started at g0 == 0, finished at g1 == ng)."""
    ng = np.int64(zc.shape[1])
    xstride, xsstride, ystride = np.int64(xq.shape[1]), np.int64(xsum.shape[1]), np.int64(y.shape[1])
    hb = np.int64(1 if has_bias else 0)
    first, last = np.int64(1 if g0 == 0 else 0), np.int64(1 if g1 == ng else 0)
    g0, g1 = np.int64(g0), np.int64(g1)
    wp = _address(wb) + blk * wb.shape[1] * STEP_BYTES
    zp = _address(zc) + blk * ng * LANES * 4
    wsp = _address(wsb) + blk * ng * LANES * 4
    bp = _address(bb) + blk * LANES * 4
    xa, xsa, xsc, ya = _address(xq), _address(xsum), _address(xs), _address(y)
    spg = np.int64(g // STEP_K)
    steps_last = np.int64(steps_last)
    m = m0
    while m + 8 <= m1:
        tile8(wp, xa + m * xstride, xstride, xsa + m * xsstride * 4, xsstride, zp, wsp, ng, spg, steps_last,
              xsc + m * 4, bp, hb, ya + (m * ystride + blk * LANES) * 4, ystride, g0, g1, first, last)
        m += 8
    while m + 4 <= m1:
        tile4(wp, xa + m * xstride, xstride, xsa + m * xsstride * 4, xsstride, zp, wsp, ng, spg, steps_last,
              xsc + m * 4, bp, hb, ya + (m * ystride + blk * LANES) * 4, ystride, g0, g1, first, last)
        m += 4
    while m < m1:
        tile1(wp, xa + m * xstride, xstride, xsa + m * xsstride * 4, xsstride, zp, wsp, ng, spg, steps_last,
              xsc + m * 4, bp, hb, ya + (m * ystride + blk * LANES) * 4, ystride, g0, g1, first, last)
        m += 1


@njit
def _panel(xq, xs, xsum, wb, zc, wsb, bb, has_bias, g, steps_last, b0, b1, y):
    """Blocks b0..b1 against every activation row: rows in chunks of M_CHUNK, groups in ranges of
    about K_CHUNK columns (a block's weights for one range and a tile's activations stay in L1)."""
    m = xq.shape[0]
    ng = zc.shape[1]
    gchunk = max(1, K_CHUNK // g)
    for c0 in range(0, m, M_CHUNK):
        c1 = min(c0 + M_CHUNK, m)
        for g0 in range(0, ng, gchunk):
            g1 = min(g0 + gchunk, ng)
            for blk in range(b0, b1):
                _rows(xq, xs, xsum, wb, zc, wsb, bb, has_bias, g, steps_last, blk, c0, c1, g0, g1, y)


@njit
def _buffers(m, wb, zc):
    xq = np.zeros((m, wb.shape[1] * STEP_K + X_PAD), np.int8)
    xs = np.empty(m, FLOAT)
    xsum = np.empty((m, zc.shape[1]), np.int32)
    y = np.empty((m, wb.shape[0] * LANES), FLOAT)
    return xq, xs, xsum, y


@njit
def _nonfinite_rows(y, n):
    """Rows of y[:, :n] holding a NaN/Inf."""
    yb = y.view(np.uint32)
    bad = 0
    for r in range(y.shape[0]):
        if _abs_bits_max(yb[r, :n]) >= _NONFINITE:
            bad += 1
    return bad


@njit
def linear(x, act_scale, dynamic, wb, zc, wsb, bb, has_bias, g, steps_last, n):
    """The whole prepared linear on one thread: float32 x [M, K] (C-contiguous) -> (float32
    y [M, 16 * nblk] (columns past ``n`` are padding), rows of x holding a NaN/Inf (y is garbage
    if > 0), rows of y[:, :n] holding a NaN/Inf)."""
    m = x.shape[0]
    xq, xs, xsum, y = _buffers(m, wb, zc)
    bad = quantize_rows(x, x.view(np.uint32), act_scale, dynamic, g, xq, xs, xsum, 0, m)
    if bad:
        return y, bad, 0
    _panel(xq, xs, xsum, wb, zc, wsb, bb, has_bias, g, steps_last, 0, wb.shape[0], y)
    return y, bad, _nonfinite_rows(y, n)


@pnjit
def linear_parallel(x, act_scale, dynamic, wb, zc, wsb, bb, has_bias, g, steps_last, n, panel):
    """:func:`linear` with the activation rows quantized in parallel chunks and the weight blocks
    in parallel panels of ``panel`` blocks. Same bits."""
    m = x.shape[0]
    xq, xs, xsum, y = _buffers(m, wb, zc)
    xbits = x.view(np.uint32)
    rchunk = max(1, (m + 7) // 8)
    bad = 0
    for c in prange((m + rchunk - 1) // rchunk):
        bad += quantize_rows(x, xbits, act_scale, dynamic, g, xq, xs, xsum, c * rchunk, min((c + 1) * rchunk, m))
    if bad:
        return y, bad, 0
    nblk = wb.shape[0]
    for p in prange((nblk + panel - 1) // panel):
        _panel(xq, xs, xsum, wb, zc, wsb, bb, has_bias, g, steps_last, p * panel, min((p + 1) * panel, nblk), y)
    return y, bad, _nonfinite_rows(y, n)


@njit
def matmul_q(qx, xs_in, wb, zc, wsb, bb, has_bias, k, g, steps_last):
    """The blocked matmul on ready INT8 activations qx [M, K] with scales xs_in float32 [M]
    (for the bench and tests; same kernel as :func:`linear`) -> float32 [M, 16 * nblk]."""
    m = qx.shape[0]
    xq, xs, xsum, y = _buffers(m, wb, zc)
    for r in range(m):
        xs[r] = xs_in[r]
        xq[r, :k] = qx[r]
        _group_sums(xq[r], k, g, xsum[r])
    _panel(xq, xs, xsum, wb, zc, wsb, bb, has_bias, g, steps_last, 0, wb.shape[0], y)
    return y


@pnjit
def matmul_q_parallel(qx, xs_in, wb, zc, wsb, bb, has_bias, k, g, steps_last, panel):
    """:func:`matmul_q`, blocks in parallel panels."""
    m = qx.shape[0]
    xq, xs, xsum, y = _buffers(m, wb, zc)
    for r in prange(m):
        xs[r] = xs_in[r]
        xq[r, :k] = qx[r]
        _group_sums(xq[r], k, g, xsum[r])
    nblk = wb.shape[0]
    for p in prange((nblk + panel - 1) // panel):
        _panel(xq, xs, xsum, wb, zc, wsb, bb, has_bias, g, steps_last, p * panel, min((p + 1) * panel, nblk), y)
    return y
