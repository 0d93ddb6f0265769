"""A NumPy simulation of the index math of the two GEMM kernels, checked against the spec.

``gemm_decode.cu`` and ``gemm_prefill.cu`` cannot run here (no GPU). This file
transcribes what each thread of them does, with the same constants from
:mod:`fptq.backends.cupy_launch` and emulations of the instructions they use
(``__byte_perm``, ``__dp4a``, ``__vsub4``, ``mma.m16n8k32`` with the PTX ISA's
fragment layout), and checks the result against ``fptq.spec.w4a8_matmul`` bit
for bit: the even/odd split of activations against the low/high nibbles, the
sign flip and the zero-point correction, the k-slot permutation shared by the
A and B fragments, the output fragment mapping, ragged last groups, rows and
columns past the tile edges, and the group order of the float epilogue.
"""

from __future__ import annotations

import numpy as np
import pytest

from fptq import spec
from fptq.backends import cupy_launch as L
from fptq.spec import WeightFormat

F32 = np.float32
MASK, FLIP = 0x0F0F0F0F, 0x88888888


def byte_perm(a: int, b: int, sel: int) -> int:
    src = [(a >> (8 * i)) & 0xFF for i in range(4)] + [(b >> (8 * i)) & 0xFF for i in range(4)]
    return sum(src[(sel >> (4 * i)) & 7] << (8 * i) for i in range(4))


def s8(word: int) -> list[int]:
    return [((word >> (8 * i)) & 0xFF) - 256 * (((word >> (8 * i)) & 0xFF) >= 128) for i in range(4)]


def dp4a(a: int, b: int, c: int) -> int:
    return c + sum(x * y for x, y in zip(s8(a), s8(b)))


def vsub4(a: int, b: int) -> int:
    return sum(((((a >> (8 * i)) & 0xFF) - ((b >> (8 * i)) & 0xFF)) & 0xFF) << (8 * i) for i in range(4))


def word(buf: np.ndarray, off: int) -> int:
    """Little-endian 32-bit word of a uint8/int8 buffer at byte offset ``off``."""
    return int(np.frombuffer(buf.tobytes()[off:off + 4], dtype="<u4")[0])


def f32_epilogue_step(y, acc, ws):
    return F32(y + F32(F32(acc) * ws))


def sim_decode(qx, xscale, packed, wscale, zero, k, g, fmt, bias):
    """gemm_decode<MT>: warps of DECODE_ROWS rows, lane = group, ordered adds per 32-group round."""
    m_rows, n_rows = qx.shape[0], packed.shape[0]
    ng = spec.num_groups(k, g)
    mt = L.decode_mt(m_rows)
    asym = fmt is WeightFormat.ASYMMETRIC
    flip = 0 if asym else FLIP
    xs = np.broadcast_to(xscale.reshape(-1), (m_rows,)) if xscale.size == 1 else xscale
    out = np.full((m_rows, n_rows), np.nan, F32)
    qxb, pb = qx.view(np.uint8), packed
    for n0 in range(0, n_rows, L.DECODE_ROWS):  # one warp
        y = np.zeros((L.DECODE_ROWS, mt), F32)
        for gbase in range(0, ng, 32):
            t = {}
            for lane in range(32):
                gi = gbase + lane
                if gi >= ng:
                    continue
                dot = np.zeros((L.DECODE_ROWS, mt), np.int64)
                xsum = np.zeros(mt, np.int64)
                for e in range(gi * g, min(gi * g + g, k), 32):
                    w = [[word(pb[n0 + r], e // 2 + 4 * i) if n0 + r < n_rows else 0 for i in range(4)]
                         for r in range(L.DECODE_ROWS)]
                    for m in range(min(mt, m_rows)):
                        xw = [word(qxb[m], e + 4 * j) for j in range(8)]
                        for i in range(4):
                            ev, od = byte_perm(xw[2 * i], xw[2 * i + 1], 0x6420), byte_perm(xw[2 * i], xw[2 * i + 1], 0x7531)
                            xsum[m] = dp4a(ev, 0x01010101, dp4a(od, 0x01010101, xsum[m]))
                            for r in range(L.DECODE_ROWS):
                                wi = w[r][i] ^ flip
                                dot[r, m] = dp4a(od, (wi >> 4) & MASK, dp4a(ev, wi & MASK, dot[r, m]))
                for r in range(L.DECODE_ROWS):
                    n = min(n0 + r, n_rows - 1)
                    c = int(zero[n, gi]) if asym else 8
                    for m in range(mt):
                        t[(r, m, lane)] = F32(F32(int(dot[r, m] - c * xsum[m])) * wscale[n, gi])
            for r in range(L.DECODE_ROWS):
                for m in range(mt):
                    for lane in range(min(32, ng - gbase)):  # ascending group order
                        y[r, m] = F32(y[r, m] + t[(r, m, lane)])
        for r in range(L.DECODE_ROWS):
            for m in range(min(mt, m_rows)):
                if n0 + r < n_rows:
                    v = F32(y[r, m] * xs[m])
                    out[m, n0 + r] = F32(v + bias[n0 + r]) if bias is not None else v
    return out


def mma(a, b, c):
    """mma.m16n8k32 .s8 for a warp: a[lane] = 4 words, b[lane] = 2 words, c[lane] = 4 ints (PTX layout)."""
    A, B = np.zeros((16, 32), np.int64), np.zeros((32, 8), np.int64)
    for lane in range(32):
        gid, tig = lane >> 2, lane & 3
        for i, v in enumerate(s8(a[lane][0])):
            A[gid, tig * 4 + i] = v
        for i, v in enumerate(s8(a[lane][1])):
            A[gid + 8, tig * 4 + i] = v
        for i, v in enumerate(s8(a[lane][2])):
            A[gid, 16 + tig * 4 + i] = v
        for i, v in enumerate(s8(a[lane][3])):
            A[gid + 8, 16 + tig * 4 + i] = v
        for i, v in enumerate(s8(b[lane][0])):
            B[tig * 4 + i, gid] = v
        for i, v in enumerate(s8(b[lane][1])):
            B[16 + tig * 4 + i, gid] = v
    D = A @ B
    for lane in range(32):
        gid, tig = lane >> 2, lane & 3
        c[lane] = [c[lane][0] + D[gid, tig * 2], c[lane][1] + D[gid, tig * 2 + 1],
                   c[lane][2] + D[gid + 8, tig * 2], c[lane][3] + D[gid + 8, tig * 2 + 1]]


def sim_prefill(qx, xscale, packed, wscale, zero, k, g, fmt, bias, tile):
    m_rows, n_rows = qx.shape[0], packed.shape[0]
    ng = spec.num_groups(k, g)
    asym = fmt is WeightFormat.ASYMMETRIC
    flip = 0 if asym else FLIP
    xs = np.broadcast_to(xscale.reshape(-1), (m_rows,)) if xscale.size == 1 else xscale
    out = np.full((m_rows, n_rows), np.nan, F32)
    steps, spg = k // 32, g // 32
    (gx, gy), _ = L.prefill_grid(m_rows, n_rows, tile)
    for by in range(gy):
        for bx in range(gx):
            m0, n0 = by * tile.bm, bx * tile.bn
            for warp in range(tile.wm * tile.wn):
                wm, wn = warp // tile.wn, warp % tile.wn
                acc = {(mt, nt): [[0] * 4 for _ in range(32)] for mt in range(tile.mt) for nt in range(tile.nt)}
                y = {(mt, nt): [[F32(0)] * 4 for _ in range(32)] for mt in range(tile.mt) for nt in range(tile.nt)}
                zc = {}
                for step in range(steps):
                    grp = step // spg
                    # the stage in shared memory: zero-filled rows past M / columns past N
                    sa = np.zeros((tile.bm, 32), np.uint8)
                    rows = qx[m0:m0 + tile.bm, step * 32:step * 32 + 32].view(np.uint8)
                    sa[:rows.shape[0]] = rows
                    sb = np.zeros((tile.bn, 16), np.uint8)
                    cols = packed[n0:n0 + tile.bn, step * 16:step * 16 + 16]
                    sb[:cols.shape[0]] = cols
                    if step % spg == 0:
                        for nt in range(tile.nt):
                            for lane in range(32):
                                n = min(n0 + wn * tile.nt * 8 + nt * 8 + (lane >> 2), n_rows - 1)
                                zc[(nt, lane)] = (int(zero[n, grp]) if asym else 8) * 0x01010101
                    bf = {}
                    for nt in range(tile.nt):
                        for lane in range(32):
                            gid, tig = lane >> 2, lane & 3
                            w = word(sb[wn * tile.nt * 8 + nt * 8 + gid], tig * 4) ^ flip
                            bf[(nt, lane)] = (vsub4(w & MASK, zc[(nt, lane)]), vsub4((w >> 4) & MASK, zc[(nt, lane)]))
                    for mt in range(tile.mt):
                        a = []
                        for lane in range(32):
                            gid, tig = lane >> 2, lane & 3
                            r = wm * tile.mt * 16 + mt * 16 + gid
                            x0 = (word(sa[r], tig * 8), word(sa[r], tig * 8 + 4))
                            x1 = (word(sa[r + 8], tig * 8), word(sa[r + 8], tig * 8 + 4))
                            a.append((byte_perm(*x0, 0x6420), byte_perm(*x1, 0x6420),
                                      byte_perm(*x0, 0x7531), byte_perm(*x1, 0x7531)))
                        for nt in range(tile.nt):
                            mma(a, [bf[(nt, lane)] for lane in range(32)], acc[(mt, nt)])
                    if (step + 1) % spg == 0 or step + 1 == steps:
                        for nt in range(tile.nt):
                            for lane in range(32):
                                n = n0 + wn * tile.nt * 8 + nt * 8 + (lane & 3) * 2
                                ws = (wscale[min(n, n_rows - 1), grp], wscale[min(n + 1, n_rows - 1), grp])
                                for mt in range(tile.mt):
                                    for i in range(4):
                                        y[(mt, nt)][lane][i] = f32_epilogue_step(y[(mt, nt)][lane][i],
                                                                                 acc[(mt, nt)][lane][i], ws[i & 1])
                                        acc[(mt, nt)][lane][i] = 0
                for (mt, nt), ys in y.items():
                    for lane in range(32):
                        for i in range(4):
                            m = m0 + wm * tile.mt * 16 + mt * 16 + (lane >> 2) + (8 if i >= 2 else 0)
                            n = n0 + wn * tile.nt * 8 + nt * 8 + (lane & 3) * 2 + (i & 1)
                            if m < m_rows and n < n_rows:
                                v = F32(ys[lane][i] * xs[m])
                                out[m, n] = F32(v + bias[n]) if bias is not None else v
    return out


def _case(seed, m, n, k, g, fmt, per_token, with_bias):
    rng = np.random.default_rng(seed)
    signed = fmt is WeightFormat.SYMMETRIC
    q = rng.integers(-8, 8, (n, k), dtype=np.int8) if signed else rng.integers(0, 16, (n, k), dtype=np.int8)
    ng = spec.num_groups(k, g)
    qx = rng.integers(-128, 128, (m, k), dtype=np.int8)
    qx[0, :3] = -128
    return dict(qx=qx, xscale=rng.uniform(0.01, 1, m if per_token else 1).astype(F32),
                packed=spec.pack_int4(q, signed),
                wscale=(rng.uniform(0.5, 2, (n, ng)) * 2.0 ** rng.integers(-10, 3, (n, ng))).astype(F32),
                zero=None if signed else rng.integers(0, 16, (n, ng), dtype=np.uint8), k=k, group_size=g, fmt=fmt,
                bias=rng.standard_normal(n).astype(F32) if with_bias else None)


def _check(got, case):
    want = spec.w4a8_matmul(**case)
    assert not np.isnan(got).any(), "an output element was not written"
    bad = got.view(np.uint32) != want.view(np.uint32)
    assert not bad.any(), f"first difference at {tuple(np.argwhere(bad)[0])}: {got[bad][0]} vs {want[bad][0]}"


@pytest.mark.parametrize("fmt", [WeightFormat.SYMMETRIC, WeightFormat.ASYMMETRIC], ids=["sym", "asym"])
@pytest.mark.parametrize("m,n,k,g", [(1, 5, 64, 32), (3, 6, 96, 64), (16, 4, 64, 64), (2, 9, 32 * 35, 32)])
def test_decode_index_math(m, n, k, g, fmt):
    """Ragged last group (96 = 64 + 32), MT > M (3 -> 4), N not a multiple of the rows per warp,
    more than 32 groups (two rounds of the ordered sum)."""
    case = _case([m, n, k, g], m, n, k, g, fmt, per_token=m > 1, with_bias=n % 2 == 1)
    c = {key: v for key, v in case.items() if key != "group_size"}
    _check(sim_decode(**c, g=g), case)


@pytest.mark.parametrize("fmt", [WeightFormat.SYMMETRIC, WeightFormat.ASYMMETRIC], ids=["sym", "asym"])
def test_prefill_index_math(fmt):
    """The 64 x 64 tile over M = 70, N = 66 (a second tile row and column, mostly padding),
    K = 96, G = 64 (a ragged last group, a zero point change mid-tile)."""
    m, n, k, g = 70, 66, 96, 64
    case = _case([m, n, k, g, 1], m, n, k, g, fmt, per_token=True, with_bias=True)
    c = {key: v for key, v in case.items() if key != "group_size"}
    _check(sim_prefill(**c, g=g, tile=L.PREFILL_TILES[-1]), case)


def test_prefill_big_tile_small_problem():
    m, n, k, g = 17, 9, 64, 32
    case = _case([5], m, n, k, g, WeightFormat.SYMMETRIC, per_token=False, with_bias=False)
    c = {key: v for key, v in case.items() if key != "group_size"}
    _check(sim_prefill(**c, g=g, tile=L.PREFILL_TILES[0]), case)


def test_simulation_catches_a_wrong_fragment_permutation():
    """The check has teeth: pairing slot tig*4+i of A with the odd columns instead of the even ones
    (swapping the two byte selectors of the A fragments) gives wrong sums."""
    global byte_perm
    m, n, k, g = 16, 8, 64, 64
    case = _case([9], m, n, k, g, WeightFormat.SYMMETRIC, per_token=False, with_bias=False)
    c = {key: v for key, v in case.items() if key != "group_size"}
    good = byte_perm
    swap = {0x6420: 0x7531, 0x7531: 0x6420}
    byte_perm = lambda a, b, sel: good(a, b, swap[sel])  # noqa: E731
    try:
        with pytest.raises(AssertionError):
            _check(sim_prefill(**c, g=g, tile=L.PREFILL_TILES[-1]), case)
    finally:
        byte_perm = good
