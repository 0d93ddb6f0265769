"""The W4A8 matmul kernels (spec section 6): exact int32 group sums, the pinned
float32 epilogue, and the fused matmul (three paths, identical bits).

Integer core, packed paths (even G). A weight byte i of row n holds columns 2i
(low nibble) and 2i+1 (high nibble), so the activations are split once per call
into even and odd columns, ``xe[m, i] = qx[m, 2i]``, ``xo[m, i] = qx[m, 2i+1]``
(0 past an odd K), and group g (bytes ``[g*G/2, (g+1)*G/2)``) is::

    acc[m, n, g] = sum_i lo_i * xe[m, i] + hi_i * xo[m, i]  -  z[n, g] * xsum[m, g]

with unsigned nibbles ``lo, hi`` in [0, 15] and ``xsum[m, g] = sum(qx over the
group)``. Asymmetric weights are unsigned already; a symmetric (two's
complement) nibble q is read as ``q ^ 8 = q + 8`` with the zero point z = 8.
The unsigned-times-signed byte products are what :mod:`.simd` turns into
``vpdpbusd``. Products and sums are integers: any order gives the same int32
(|acc| <= 1920 * G < 2**31, spec "Overflow").

Generic path (any G, used for odd G, where a group can end mid-byte): a tile of
weight rows is unpacked once into int8 ``d = q - z`` and reused for every
activation row (plain int8 dot loops, which LLVM vectorizes to ``vpmaddwd``).

Epilogue, per (m, n), exactly the spec's order (float32, each op separately
rounded; Numba emits plain ``fmul``/``fadd`` without contraction flags, so no
FMA)::

    y = +0.0
    for g in 0 .. ng-1:  y = y + float32(acc[m, n, g]) * wscale[n, g]
    y = y * xscale[m];   y = y + bias[n]   (if a bias is given)

Paths, chosen by :func:`choose_path`:

* ``decode`` (M <= :data:`DECODE_MAX_M`): parallel over tiles of
  :data:`DECODE_TILE_N` weight rows; per weight row, every activation row (in
  blocks of 4 that share each loaded and split weight chunk): the weight bytes
  stream from memory once and are reused from L1 for all M rows.
* ``tiled`` (larger M): parallel over tiles of :data:`TILE_N` weight rows; per
  block of 4 activation rows, every weight row of the tile: the 4 activation
  rows stay in L1 and the tile's weights (TILE_N * K/2 bytes) in L2, so memory
  traffic is the weights once plus the activations once per tile.
* ``generic``: see above.
"""

from __future__ import annotations

import numpy as np

from ...spec.formats import FLOAT, INT4_SIGN_OFFSET
from . import blocked, simd
from .packing import SIGN_FLIP, unpack_row
from ._jit import njit, njit_inline, pnjit, prange

#: largest M served by the decode path
DECODE_MAX_M = 16
#: weight rows per parallel tile of the decode path
DECODE_TILE_N = 16
#: weight rows per parallel tile of the tiled and generic paths
TILE_N = 64
PATHS = ("decode", "blocked", "tiled", "generic")


# ============================================================================ the float epilogue

@njit_inline
def _group_term(a, z, xsum_j, ws):
    """One group's epilogue term: ``float32(int32(a - z * xsum_j)) * ws`` (one rounded multiply)."""
    return FLOAT(np.int32(a - np.int64(z) * xsum_j)) * ws


@njit_inline
def _finish(y, xs, bias, has_bias, n):
    """``y * xs``, then ``+ bias[n]`` if there is a bias (two separately rounded ops)."""
    y = y * xs
    if has_bias:
        y = y + bias[n]
    return y


@njit
def _epilogue_one(accrow, wsrow, xs, bias, has_bias, n):
    y = FLOAT(0.0)
    for j in range(accrow.size):
        t = FLOAT(accrow[j]) * wsrow[j]
        y = y + t
    return _finish(y, xs, bias, has_bias, n)


@pnjit
def epilogue(acc, wscale, xs, bias, has_bias):
    """int32 [M, N, ng], float32 [N, ng], float32 [M], float32 [N] (or [0]) -> float32 [M, N]."""
    m_rows, n_rows, _ = acc.shape
    y = np.empty((m_rows, n_rows), FLOAT)
    for m in prange(m_rows):
        for n in range(n_rows):
            y[m, n] = _epilogue_one(acc[m, n], wscale[n], xs[m], bias, has_bias, n)
    return y


# ============================================================================ packed paths (even G)

@njit_inline
def _one_row(wa, xa, ya, kb, gb, flip, zrow, xsrow, wsrow):
    """Epilogue sum (before ``* xscale``) of one activation row against one weight row:
    groups ascending from +0.0. Groups of exactly 64, 32 or 16 bytes go four at a time
    through ``simd.groups4_*`` (one joint reduction for four groups)."""
    ng = wsrow.size
    nfull = kb // gb if (gb == 64 or gb == 32 or gb == 16) else 0
    y = FLOAT(0.0)
    j = 0
    while j + 4 <= nfull:
        o = j * gb
        if gb == 64:
            s = simd.groups4_64(wa + o, xa + o, ya + o, gb, flip)
        elif gb == 32:
            s = simd.groups4_32(wa + o, xa + o, ya + o, gb, flip)
        else:
            s = simd.groups4_16(wa + o, xa + o, ya + o, gb, flip)
        y = y + _group_term(s[0], zrow[j], xsrow[j], wsrow[j])
        y = y + _group_term(s[1], zrow[j + 1], xsrow[j + 1], wsrow[j + 1])
        y = y + _group_term(s[2], zrow[j + 2], xsrow[j + 2], wsrow[j + 2])
        y = y + _group_term(s[3], zrow[j + 3], xsrow[j + 3], wsrow[j + 3])
        j += 4
    while j < ng:
        o = j * gb
        a = simd.dots1(wa + o, xa + o, ya + o, kb, min(gb, kb - o), flip)
        y = y + _group_term(a, zrow[j], xsrow[j], wsrow[j])
        j += 1
    return y


@njit_inline
def _four_rows(wa, xa, ya, kb, gb, flip, zrow, xsum, m, wsrow):
    """:func:`_one_row` for activation rows m..m+3 against one weight row: each weight
    chunk is loaded and split into nibbles once for the four rows."""
    y0 = FLOAT(0.0)
    y1 = FLOAT(0.0)
    y2 = FLOAT(0.0)
    y3 = FLOAT(0.0)
    for j in range(wsrow.size):
        o = j * gb
        a0, a1, a2, a3 = simd.dots4(wa + o, xa + o, ya + o, kb, min(gb, kb - o), flip)
        z = zrow[j]
        ws = wsrow[j]
        y0 = y0 + _group_term(a0, z, xsum[m, j], ws)
        y1 = y1 + _group_term(a1, z, xsum[m + 1, j], ws)
        y2 = y2 + _group_term(a2, z, xsum[m + 2, j], ws)
        y3 = y3 + _group_term(a3, z, xsum[m + 3, j], ws)
    return y0, y1, y2, y3


@njit_inline
def _cell(pa, ea, oa, kb, gb, flip, zc, xsum, wscale, xs, bias, has_bias, n, m, y):
    """y[m:m+4, n] (four rows) or, when fewer than 4 rows remain, y[m, n]."""
    if m + 4 <= y.shape[0]:
        y0, y1, y2, y3 = _four_rows(pa + n * kb, ea + m * kb, oa + m * kb, kb, gb, flip,
                                    zc[n], xsum, m, wscale[n])
        y[m, n] = _finish(y0, xs[m], bias, has_bias, n)
        y[m + 1, n] = _finish(y1, xs[m + 1], bias, has_bias, n)
        y[m + 2, n] = _finish(y2, xs[m + 2], bias, has_bias, n)
        y[m + 3, n] = _finish(y3, xs[m + 3], bias, has_bias, n)
    else:
        acc = _one_row(pa + n * kb, ea + m * kb, oa + m * kb, kb, gb, flip, zc[n], xsum[m], wscale[n])
        y[m, n] = _finish(acc, xs[m], bias, has_bias, n)


@njit
def _tile_packed(xe, xo, xsum, packed, zc, wscale, xs, bias, has_bias, gb, flip, n0, n1, weights_outer, y):
    """y[:, n0:n1], cell by cell; a cell is one weight row against a block of 4 activation rows
    (or one row, for the M % 4 left over). ``weights_outer``: for each weight row, all
    activation blocks (decode); else for each activation block, all weight rows of the tile
    (tiled). One loop over cells keeps a single inlined copy of the cell kernel."""
    m_rows, kb = xe.shape
    pa, ea, oa = simd.address(packed), simd.address(xe), simd.address(xo)
    n_fours = m_rows // 4
    n_blocks = n_fours + m_rows % 4
    n_w = n1 - n0
    for c in range(n_w * n_blocks):
        if weights_outer:
            n, blk = n0 + c // n_blocks, c % n_blocks
        else:
            n, blk = n0 + c % n_w, c // n_w
        m = 4 * blk if blk < n_fours else 4 * n_fours + (blk - n_fours)
        _cell(pa, ea, oa, kb, gb, flip, zc, xsum, wscale, xs, bias, has_bias, n, m, y)


@pnjit
def matmul_packed(xe, xo, xsum, packed, zc, wscale, xs, bias, has_bias, gb, flip, tile_n, weights_outer):
    """Fused W4A8 matmul on packed weights, even G (``gb = G / 2`` bytes per group).

    xe/xo: int8 [M, ceil(K/2)] even/odd activation columns; xsum: int32 [M, ng];
    zc: uint8 [N, ng] zero points of the unsigned nibbles; flip: 0x88 (symmetric) or 0;
    tiles of ``tile_n`` weight rows run in parallel. Returns float32 [M, N].
    """
    n_rows = packed.shape[0]
    y = np.empty((xe.shape[0], n_rows), FLOAT)
    ntiles = (n_rows + tile_n - 1) // tile_n
    for t in prange(ntiles):
        n0 = t * tile_n
        _tile_packed(xe, xo, xsum, packed, zc, wscale, xs, bias, has_bias, gb, flip, n0,
                     min(n0 + tile_n, n_rows), weights_outer, y)
    return y


@njit
def _sums_rows(xe, xo, xsum, packed, zc, gb, flip, n0, n1, acc):
    kb = xe.shape[1]
    pa, ea, oa = simd.address(packed), simd.address(xe), simd.address(xo)
    for n in range(n0, n1):
        for m in range(xe.shape[0]):
            for j in range(zc.shape[1]):
                o = j * gb
                a = simd.dots1(pa + n * kb + o, ea + m * kb + o, oa + m * kb + o, kb, min(gb, kb - o), flip)
                acc[m, n, j] = np.int32(a - np.int64(zc[n, j]) * xsum[m, j])


@pnjit
def group_sums_packed(xe, xo, xsum, packed, zc, gb, flip, tile_n):
    """The integer core on packed weights, even G -> int32 [M, N, ng] (inputs as matmul_packed)."""
    n_rows = packed.shape[0]
    acc = np.empty((xe.shape[0], n_rows, zc.shape[1]), np.int32)
    ntiles = (n_rows + tile_n - 1) // tile_n
    for t in prange(ntiles):
        n0 = t * tile_n
        _sums_rows(xe, xo, xsum, packed, zc, gb, flip, n0, min(n0 + tile_n, n_rows), acc)
    return acc


@njit
def split_even_odd(qx, kb):
    """int8 [M, K] -> (xe, xo) int8 [M, kb]: columns 2i and 2i+1 (0 beyond K)."""
    m_rows, k = qx.shape
    xe = np.zeros((m_rows, kb), np.int8)
    xo = np.zeros((m_rows, kb), np.int8)
    for m in range(m_rows):
        for i in range(k // 2):
            xe[m, i] = qx[m, 2 * i]
            xo[m, i] = qx[m, 2 * i + 1]
        if k % 2:
            xe[m, kb - 1] = qx[m, k - 1]
    return xe, xo


@njit
def act_group_sums(qx, g, ng):
    """int8 [M, K] -> int32 [M, ng]: sum of qx over each group."""
    m_rows, k = qx.shape
    out = np.empty((m_rows, ng), np.int32)
    for m in range(m_rows):
        for j in range(ng):
            s = 0
            for i in range(j * g, min((j + 1) * g, k)):
                s += np.int32(qx[m, i])
            out[m, j] = np.int32(s)
    return out


def _packed_operands(qx, zero, k, g, ng, signed):
    """(xe, xo, xsum, zc, flip) for the packed kernels (even G)."""
    xe, xo = split_even_odd(qx, (k + 1) // 2)
    xsum = act_group_sums(qx, g, ng)
    if signed:   # two's complement nibble q read as q ^ 8 = q + 8 (unsigned), zero point 8
        return xe, xo, xsum, np.full((zero.shape[0], ng), INT4_SIGN_OFFSET, np.uint8), SIGN_FLIP
    return xe, xo, xsum, zero, np.uint8(0)


# ============================================================================ generic path (any G)

@njit
def dot_i8(x, w):
    """int8 [n] . int8 [n] -> int32 (exact; vectorizes to a SIMD multiply-add)."""
    acc = 0
    for i in range(x.size):
        acc += np.int32(x[i]) * np.int32(w[i])
    return np.int32(acc)


@njit
def _sub_const(seg, z):
    for i in range(seg.size):
        seg[i] = seg[i] - z


@njit
def unpack_row_minus_zero(p, zrow, k, g, signed, out):
    """Packed row uint8 [ceil(K/2)] -> int8 [K] holding ``q - z`` (z per group; none if signed)."""
    unpack_row(p, k, signed, out)
    if not signed:
        for j in range(zrow.size):
            _sub_const(out[j * g:min((j + 1) * g, k)], np.int8(zrow[j]))


@njit
def _unpack_tile(packed, zero, k, g, signed, n0, n1):
    d = np.empty((n1 - n0, k), np.int8)
    for r in range(n1 - n0):
        unpack_row_minus_zero(packed[n0 + r], zero[n0 + r], k, g, signed, d[r])
    return d


@njit
def _sums_tile(qx, packed, zero, k, g, signed, n0, n1, acc):
    d = _unpack_tile(packed, zero, k, g, signed, n0, n1)
    for m in range(qx.shape[0]):
        x = qx[m]
        for r in range(n1 - n0):
            for j in range(acc.shape[2]):
                lo, hi = j * g, min((j + 1) * g, k)
                acc[m, n0 + r, j] = dot_i8(x[lo:hi], d[r, lo:hi])


@pnjit
def group_sums_generic(qx, packed, zero, k, g, signed, tile_n):
    """int8 [M, K], uint8 [N, ceil(K/2)], uint8 [N, ng] (ignored if signed) -> int32 [M, N, ng]."""
    n_rows = packed.shape[0]
    acc = np.empty((qx.shape[0], n_rows, (k + g - 1) // g), np.int32)
    ntiles = (n_rows + tile_n - 1) // tile_n
    for t in prange(ntiles):
        n0 = t * tile_n
        _sums_tile(qx, packed, zero, k, g, signed, n0, min(n0 + tile_n, n_rows), acc)
    return acc


@njit
def _dot_epilogue(x, d, wsrow, g, xs, bias, has_bias, n):
    k = x.size
    y = FLOAT(0.0)
    for j in range(wsrow.size):
        lo, hi = j * g, min((j + 1) * g, k)
        t = FLOAT(dot_i8(x[lo:hi], d[lo:hi])) * wsrow[j]
        y = y + t
    return _finish(y, xs, bias, has_bias, n)


@njit
def _tile_generic(qx, xs, packed, wscale, zero, k, g, signed, bias, has_bias, n0, n1, y):
    d = _unpack_tile(packed, zero, k, g, signed, n0, n1)
    for m in range(qx.shape[0]):
        x = qx[m]
        for r in range(n1 - n0):
            y[m, n0 + r] = _dot_epilogue(x, d[r], wscale[n0 + r], g, xs[m], bias, has_bias, n0 + r)


@pnjit
def matmul_generic(qx, xs, packed, wscale, zero, k, g, signed, bias, has_bias, tile_n):
    """Fused W4A8 matmul for any G: tiles of ``tile_n`` weight rows unpacked to int8 in parallel."""
    n_rows = packed.shape[0]
    y = np.empty((qx.shape[0], n_rows), FLOAT)
    ntiles = (n_rows + tile_n - 1) // tile_n
    for t in prange(ntiles):
        n0 = t * tile_n
        _tile_generic(qx, xs, packed, wscale, zero, k, g, signed, bias, has_bias, n0, min(n0 + tile_n, n_rows), y)
    return y


# ============================================================================ dispatch

def choose_path(m_rows: int, g: int, decode_max_m: int | None = None) -> str:
    """``generic`` for odd G (a group can end mid-byte); else ``decode`` for
    M <= decode_max_m (default :data:`DECODE_MAX_M`); above, ``blocked`` when G is a
    multiple of 8, else ``tiled``."""
    if g % 2:
        return "generic"
    if m_rows <= (DECODE_MAX_M if decode_max_m is None else decode_max_m):
        return "decode"
    return "blocked" if blocked.supported(g) else "tiled"


def matmul(qx, xs, packed, wscale, zero, k, g, signed, bias, path=None):
    """Run a validated W4A8 matmul (C-contiguous inputs) on one of the paths.

    Args:
        qx: int8 [M, K]; xs: float32 [M]; packed: uint8 [N, ceil(K/2)];
        wscale: float32 [N, ng]; zero: uint8 [N, ng] (all zero when ``signed``);
        signed: symmetric format; bias: float32 [N] or None;
        path: None (:func:`choose_path`), "decode", "blocked", "tiled" or "generic".
    Returns:
        float32 [M, N], bit-identical whichever path runs.
    """
    path = choose_path(qx.shape[0], g) if path is None else path
    has_bias = bias is not None
    b = bias if has_bias else np.zeros(0, FLOAT)
    if path == "blocked":
        if not blocked.supported(g):
            raise ValueError(f"path: the 'blocked' matmul path needs a group size that is a multiple of 8, got {g}")
        if qx.shape[0] and packed.shape[0] and k:
            return _matmul_blocked(qx, xs, packed, wscale, zero, k, g, signed, bias)
        path = "tiled"
    if path in ("decode", "tiled"):
        if g % 2:
            raise ValueError(f"path: the {path!r} matmul path needs an even group size, got {g}")
        xe, xo, xsum, zc, flip = _packed_operands(qx, zero, k, g, wscale.shape[1], signed)
        decode = path == "decode"
        return matmul_packed(xe, xo, xsum, packed, zc, wscale, xs, b, has_bias, g // 2, flip,
                             DECODE_TILE_N if decode else TILE_N, decode)
    if path == "generic":
        return matmul_generic(qx, xs, packed, wscale, zero, k, g, signed, b, has_bias, TILE_N)
    raise ValueError(f"unknown matmul path {path!r}; expected one of {PATHS}")


def _matmul_blocked(qx, xs, packed, wscale, zero, k, g, signed, bias):
    """The ``blocked`` path: the weights re-laid out (this call only) into the prepared linear's
    VNNI blocks (:mod:`.blocked`), then its kernel on the ready INT8 activations."""
    n = packed.shape[0]
    ng = (k + g - 1) // g
    wb, zc = blocked.repack(packed, zero, k, g, signed)
    nblk = wb.shape[0]
    bb = np.zeros(nblk * blocked.LANES, FLOAT)
    if bias is not None:
        bb[:n] = bias
    wsb = blocked.block_rows(wscale, nblk)
    steps_last = (k - (ng - 1) * g + blocked.STEP_K - 1) // blocked.STEP_K
    if qx.shape[0] * n * k >= blocked.PARALLEL_MIN_MACS:
        y = blocked.matmul_q_parallel(qx, xs, wb, zc, wsb, bb, bias is not None, k, g, steps_last,
                                      blocked.panel_size(nblk))
    else:
        y = blocked.matmul_q(qx, xs, wb, zc, wsb, bb, bias is not None, k, g, steps_last)
    return y if y.shape[1] == n else np.ascontiguousarray(y[:, :n])


def group_sums(qx, packed, zero, k, g, signed, path=None):
    """The integer core, int32 [M, N, ng]: packed kernel for even G, generic kernel for
    odd G (or ``path="generic"``)."""
    ng = (k + g - 1) // g
    if g % 2 or path == "generic":
        return group_sums_generic(qx, packed, zero, k, g, signed, TILE_N)
    xe, xo, xsum, zc, flip = _packed_operands(qx, zero, k, g, ng, signed)
    return group_sums_packed(xe, xo, xsum, packed, zc, g // 2, flip, DECODE_TILE_N)
