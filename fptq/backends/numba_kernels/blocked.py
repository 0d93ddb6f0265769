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
never shares a step with the next one. Per block and group the zero points are
16 bytes (uint8 ``zc [nblk, ng, 16]``, lane i = row 16b + i, 0 past N; the tile
zero-extends them to int32) and the weight scales 64 (float32 ``wsb``, same
shape): with G = 128, 1024 + 16 + 64 bytes read per block-group (int32 zero
points made that 1152, 4% more weight traffic at decode; issue 24).

The tile (:mod:`fptq.backends.numba_kernels.tile`, LLVM IR through a Numba ``@intrinsic``) computes
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
from .ir_loop import counted_loop
from .packing import HIGH_NIBBLE, NIBBLE, SHIFT, SIGN_FLIP
from .tile import LANES, STEP_BYTES, STEP_K, USE_VNNI, tile1, tile4, tile8  # noqa: F401 - part of this API

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


@intrinsic
def bits_as_float(typingctx, v):
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
    (wb uint8 [nblk, steps, 64], zc uint8 [nblk, ng, 16]: the zero points of the unsigned nibbles,
    8 for symmetric weights, 0 past N); see the module docstring.

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
    zc = np.zeros((nblk, ng, LANES), np.uint8)
    lo4, flip = NIBBLE, (SIGN_FLIP if signed else np.uint8(0))
    p = np.zeros(4, np.uint8)
    for r in range(n):
        b, i = r // LANES, r % LANES
        for j in range(ng):
            zc[b, j, i] = np.uint8(INT4_SIGN_OFFSET) if signed else zero[r, j]
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


@intrinsic
def byte_sum(typingctx, addr, n):
    """int32 sum of the ``n`` int8 values at address ``addr``: 64-byte vectors, then 8-byte ones, then single
    bytes, each vector sign-extended to int32 lanes and reduced (``llvm.vector.reduce.add``; integer sums, so
    the order changes nothing). 11x the speed of the plain loop on 128-byte groups (0.03 against 0.33 ms for
    512 x 1536; the loop was not vectorized well). Exact while the sum fits int32 (n < 2**24)."""
    def codegen(context, builder, signature, args):
        return _byte_sum_ir(builder, *args)

    return types.int32(types.int64, types.int64), codegen


def _byte_sum_ir(b, addr, n):
    i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
    i, acc = ir.Constant(i64, 0), ir.Constant(i32, 0)
    for width in (64, 8, 1):
        def trip(j, sums, width=width):
            ty = ir.VectorType(i8, width) if width > 1 else i8
            v = b.load(b.inttoptr(b.add(addr, j), ty.as_pointer()), align=1)
            if width == 1:
                return [b.add(sums[0], b.sext(v, i32))]
            vi = ir.VectorType(i32, width)
            red = cgutils.get_or_insert_function(b.module, ir.FunctionType(i32, [vi]), f"llvm.vector.reduce.add.v{width}i32")
            return [b.add(sums[0], b.call(red, [b.sext(v, vi)]))]

        i, (acc,) = counted_loop(b, f"bytesum{width}", i, n, ir.Constant(i64, width), [acc], trip)
    return acc


@njit
def _group_sums(q, k, g, out):
    """out[j] = sum of the int8 q[j*G : min((j+1)*G, K)] as int32 (:func:`byte_sum`)."""
    base = _address(q)
    for j in range(out.size):
        lo = j * g
        out[j] = byte_sum(base + lo, min(g, k - lo))


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
        s = activation.scale_from_amax(bits_as_float(mx)) if dynamic else act_scale
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
    zp = _address(zc) + blk * ng * LANES          # uint8 zero points: 16 bytes per group
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
def blocks_into(xq, xs, xsum, wb, zc, wsb, bb, has_bias, g, steps_last, b0, b1, y):
    """Blocks b0..b1 against every activation row, on y [M, 16 * nblk]: rows in chunks of M_CHUNK,
    groups in ranges of about K_CHUNK columns (a block's weights for one range and a tile's activations
    stay in L1). Up to :data:`TILE_M` rows (decode) every block runs all its groups at once: its
    weights are then read once, front to back, and the whole product is one sequential stream (in
    ranges, a 1536 x 8960 product read 16 KB pieces 70 KB apart at half the speed)."""
    m = xq.shape[0]
    ng = zc.shape[1]
    gchunk = ng if m <= TILE_M else max(1, K_CHUNK // g)
    for c0 in range(0, m, M_CHUNK):
        c1 = min(c0 + M_CHUNK, m)
        for g0 in range(0, ng, gchunk):
            g1 = min(g0 + gchunk, ng)
            for blk in range(b0, b1):
                _rows(xq, xs, xsum, wb, zc, wsb, bb, has_bias, g, steps_last, blk, c0, c1, g0, g1, y)


@njit
def _inputs(m, wb, zc):
    """The activation buffers (xq, xs, xsum) of M rows against a linear of ``wb``/``zc``'s shape."""
    return (np.zeros((m, wb.shape[1] * STEP_K + X_PAD), np.int8), np.empty(m, FLOAT),
            np.empty((m, zc.shape[1]), np.int32))


@njit
def _buffers(m, wb, zc):
    xq, xs, xsum = _inputs(m, wb, zc)
    return xq, xs, xsum, np.empty((m, wb.shape[0] * LANES), FLOAT)


@njit
def quantize_input(x, act_scale, dynamic, wb, zc, g):
    """float32 x [M, K] quantized once for any linear of ``wb``/``zc``'s shape and this activation rule
    -> (xq, xs, xsum, rows of x holding a NaN/Inf): the inputs :func:`blocks_into` takes, the same bytes
    :func:`linear` makes."""
    xq, xs, xsum = _inputs(x.shape[0], wb, zc)
    bad = quantize_rows(x, x.view(np.uint32), act_scale, dynamic, g, xq, xs, xsum, 0, x.shape[0])
    return xq, xs, xsum, bad


@njit
def nonfinite_rows(y, n):
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
    blocks_into(xq, xs, xsum, wb, zc, wsb, bb, has_bias, g, steps_last, 0, wb.shape[0], y)
    return y, bad, nonfinite_rows(y, n)


@pnjit
def quantize_input_parallel(x, act_scale, dynamic, wb, zc, g):
    """:func:`quantize_input` with the rows quantized in parallel chunks (eight). Same bytes."""
    m = x.shape[0]
    xq, xs, xsum = _inputs(m, wb, zc)
    xbits = x.view(np.uint32)
    rchunk = max(1, (m + 7) // 8)
    bad = 0
    for c in prange((m + rchunk - 1) // rchunk):
        bad += quantize_rows(x, xbits, act_scale, dynamic, g, xq, xs, xsum, c * rchunk, min((c + 1) * rchunk, m))
    return xq, xs, xsum, bad


@pnjit
def linear_parallel(x, act_scale, dynamic, wb, zc, wsb, bb, has_bias, g, steps_last, n, panel):
    """:func:`linear` with the activation rows quantized in parallel chunks
    (:func:`quantize_input_parallel`) and the weight blocks in parallel panels of ``panel`` blocks. Same bits."""
    xq, xs, xsum, bad = quantize_input_parallel(x, act_scale, dynamic, wb, zc, g)
    y = np.empty((x.shape[0], wb.shape[0] * LANES), FLOAT)
    if bad:
        return y, bad, 0
    nblk = wb.shape[0]
    for p in prange((nblk + panel - 1) // panel):
        blocks_into(xq, xs, xsum, wb, zc, wsb, bb, has_bias, g, steps_last, p * panel, min((p + 1) * panel, nblk), y)
    return y, bad, nonfinite_rows(y, n)


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
    blocks_into(xq, xs, xsum, wb, zc, wsb, bb, has_bias, g, steps_last, 0, wb.shape[0], y)
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
        blocks_into(xq, xs, xsum, wb, zc, wsb, bb, has_bias, g, steps_last, p * panel, min((p + 1) * panel, nblk), y)
    return y
