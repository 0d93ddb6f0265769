"""NumPy transcriptions of the two GEMM kernels, thread by thread (used by tests/test_cupy_simulation.py).

``gemm_decode.cu`` and ``gemm_prefill.cu`` cannot run here (no GPU). These
functions do what each thread of them does, statement by statement, with the
kernels' own constants (read from the .cu sources), their tile order, shared
memory layouts, stage indices, lane mappings and emulations of the
instructions they use (``__byte_perm``, ``__dp4a``, ``__vsub4``,
``mma.m16n8k32`` with the PTX ISA's fragment layout, ``cp.async`` with its
commit and ``wait_group`` semantics, ``__syncthreads``). So a wrong index, a
wrong ``wait_group`` count or a missing barrier in the transcription gives
wrong bits, and a test plants such bugs to show it (test_cupy_simulation.py).

Shared memory starts filled with random bytes, never zeros, so reading a slot
nothing wrote shows. Warps of a block run one after another between barriers
(each warp is a generator that yields at ``__syncthreads``). ``cp.async``
copies land either at issue (``landing="eager"``: a copy into a slot another
warp still reads shows) or only when the issuing thread's ``wait_group``
retires them (``landing="lazy"``: reading before the wait, or another thread's
copies without the barrier, shows); both must give the spec's bits.
"""

from __future__ import annotations

import re

import numpy as np

from fptq import spec
from fptq.backends import cupy_compile as CC
from fptq.backends import cupy_launch as L
from fptq.spec import WeightFormat

F32 = np.float32
MASK, FLIP = 0x0F0F0F0F, 0x88888888


def cu_define(module: str, name: str) -> int:
    """``#define NAME value`` of ``cuda/<module>.cu`` (the kernels' own constants, not copies)."""
    m = re.search(rf"^#define {name} (\d+)$", CC.read_source(f"{module}.cu"), re.M)
    assert m, f"{name} not defined in {module}.cu"
    return int(m.group(1))


DEC_WARPS, DEC_ROWS = cu_define("gemm_decode", "DEC_WARPS"), cu_define("gemm_decode", "DEC_ROWS")
PF_STAGES = cu_define("gemm_prefill", "PF_STAGES")


def decode_chunks(mt: int) -> int:
    """DecodeChunks<MT>::value of gemm_decode.cu (the test checks the source says the same)."""
    return 4 if mt <= 4 else 2 if mt == 8 else 1


# ---------------------------------------------------------------------------------------------
# instructions


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
    """Little-endian 32-bit word of a uint8/int8 row at byte offset ``off``."""
    b = buf.view(np.uint8)
    return int(b[off]) | int(b[off + 1]) << 8 | int(b[off + 2]) << 16 | int(b[off + 3]) << 24


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


def _shapes(qx, packed, k, g):
    m_rows, n_rows = qx.shape[0], packed.shape[0]
    return m_rows, n_rows, spec.num_groups(k, g)


# ---------------------------------------------------------------------------------------------
# gemm_decode<MT>


def sim_decode(qx, xscale, packed, wscale, zero, k, g, fmt, bias, seed=0):
    """gemm_decode<MT> over its grid: per block the shared tr[warp][v][33] and wst[warp][c][r][lane]."""
    m_rows, n_rows, ng = _shapes(qx, packed, k, g)
    mt = L.decode_mt(m_rows)
    v_count, ch = DEC_ROWS * mt, decode_chunks(mt)
    asym = fmt is WeightFormat.ASYMMETRIC
    flip = 0 if asym else FLIP
    kb = k >> 1
    per_token, has_bias = xscale.size > 1, bias is not None
    rng = np.random.default_rng(seed)
    out = np.full((m_rows, n_rows), np.nan, F32)
    (blocks,), (threads,) = L.decode_grid(n_rows)
    assert threads == DEC_WARPS * 32
    for block in range(blocks):
        tr = rng.standard_normal((DEC_WARPS, v_count, 33)).astype(F32)          # shared, unwritten = noise
        wst = rng.integers(0, 256, (DEC_WARPS, ch, DEC_ROWS, 32, 16), dtype=np.uint8)
        for warp in range(DEC_WARPS):
            n0 = (block * DEC_WARPS + warp) * DEC_ROWS
            y0, y1 = [F32(0)] * 32, [F32(0)] * 32
            for gbase in range(0, ng, 32):
                for lane in range(32):
                    gi = gbase + lane
                    if gi < ng:
                        _decode_group(qx, packed, wscale, zero, tr, wst, warp, lane, n0, gi, mt, ch, m_rows,
                                      n_rows, k, kb, g, ng, asym, flip)
                # __syncwarp
                cnt = min(32, ng - gbase)
                for lane in range(32):
                    if lane < v_count:
                        for i in range(cnt):
                            y0[lane] = F32(y0[lane] + tr[warp, lane, i])
                    if lane + 32 < v_count:
                        for i in range(cnt):
                            y1[lane] = F32(y1[lane] + tr[warp, lane + 32, i])
                # __syncwarp
            for lane in range(32):
                for h in range(2):
                    v = lane + 32 * h
                    if v < v_count:
                        r, m = v // mt, v % mt
                        n = n0 + r
                        if m < m_rows and n < n_rows:
                            y = F32((y1 if h else y0)[lane] * xscale.reshape(-1)[m if per_token else 0])
                            out[m, n] = F32(y + bias[n]) if has_bias else y
    return out


def _decode_group(qx, packed, wscale, zero, tr, wst, warp, lane, n0, gi, mt, ch, m_rows, n_rows, k, kb, g, ng,
                  asym, flip):
    """One lane's group gi: batches of ch chunks, copies into its own wst slots, then the dp4a sums."""
    dot = [[0] * mt for _ in range(DEC_ROWS)]
    xsum = [0] * mt
    e0 = gi * g
    e1 = min(e0 + g, k)
    for e in range(e0, e1, 32 * ch):
        for c in range(ch):
            ec = min(e + 32 * c, e1 - 32)
            for r in range(DEC_ROWS):
                row = min(n0 + r, n_rows - 1)
                wst[warp, c, r, lane] = packed[row, (ec >> 1):(ec >> 1) + 16]      # cp.async, then wait_group 0
        for c in range(ch):
            ec = min(e + 32 * c, e1 - 32)
            keep = 0xFFFFFFFF if e + 32 * c < e1 else 0
            for m in range(mt):
                xrow = qx[min(m, m_rows - 1)]
                xw = [word(xrow, ec + 4 * j) & keep for j in range(8)]
                for i in range(4):
                    ev, od = byte_perm(xw[2 * i], xw[2 * i + 1], 0x6420), byte_perm(xw[2 * i], xw[2 * i + 1], 0x7531)
                    xsum[m] = dp4a(ev, 0x01010101, dp4a(od, 0x01010101, xsum[m]))
                    for r in range(DEC_ROWS):
                        wi = word(wst[warp, c, r, lane], 4 * i) ^ flip
                        dot[r][m] = dp4a(ev, wi & MASK, dot[r][m])
                        dot[r][m] = dp4a(od, (wi >> 4) & MASK, dot[r][m])
    for r in range(DEC_ROWS):
        n = min(n0 + r, n_rows - 1)
        c_ = int(zero[n, gi]) if asym else 8
        ws = wscale[n, gi]
        for m in range(mt):
            tr[warp, r * mt + m, lane] = F32(F32(dot[r][m] - c_ * xsum[m]) * ws)


# ---------------------------------------------------------------------------------------------
# gemm_prefill<WM, WN, MT, NT>


class CpAsync:
    """cp.async per thread: copies go into the thread's open group, ``commit`` closes it, ``wait(n)`` lands
    all but the n most recent groups. ``eager`` lands each copy at issue instead (both are legal timings)."""

    def __init__(self, eager: bool):
        self.eager, self.open, self.pending = eager, {}, {}

    def copy(self, tid, dst, idx, data):
        if self.eager:
            dst[idx] = data
        else:
            self.open.setdefault(tid, []).append((dst, idx, data.copy()))

    def commit(self, tid):
        self.pending.setdefault(tid, []).append(self.open.pop(tid, []))

    def wait(self, tid, n):
        groups = self.pending.setdefault(tid, [])
        while len(groups) > n:
            for dst, idx, data in groups.pop(0):
                dst[idx] = data


class PrefillBlock:
    """One block of gemm_prefill: its shared memory (noise-filled) and its cp.async state."""

    def __init__(self, a, tile, bx, by, rng, landing):
        self.a, self.t = a, tile
        self.m0, self.n0 = by * tile.bm, bx * tile.bn
        self.threads = tile.wm * tile.wn * 32
        self.sa = rng.integers(0, 256, (PF_STAGES, tile.bm, 32), dtype=np.uint8)
        self.sb = rng.integers(0, 256, (PF_STAGES, tile.bn, 16), dtype=np.uint8)
        self.cp = CpAsync(landing == "eager")

    def load_stage(self, warp, step, st):
        """Every lane of ``warp``: its A and B copies of ``step`` into stage ``st``, then commit."""
        a, t, threads = self.a, self.t, self.threads
        a_iters, b_iters = -(-t.bm * 2 // threads), -(-t.bn // threads)
        for lane in range(32):
            tid = warp * 32 + lane
            if step < a["steps"]:
                for it in range(a_iters):
                    idx = tid + it * threads
                    if idx < t.bm * 2:
                        row, half = idx >> 1, idx & 1
                        m = self.m0 + row
                        src = a["qx"][m, step * 32 + half * 16:step * 32 + half * 16 + 16].view(np.uint8) \
                            if m < a["m_rows"] else np.zeros(16, np.uint8)
                        self.cp.copy(tid, self.sa, (st, row, slice(half * 16, half * 16 + 16)), src)
                for it in range(b_iters):
                    idx = tid + it * threads
                    if idx < t.bn:
                        n = self.n0 + idx
                        src = a["packed"][n, step * 16:step * 16 + 16] if n < a["n_rows"] else np.zeros(16, np.uint8)
                        self.cp.copy(tid, self.sb, (st, idx), src)
            self.cp.commit(tid)

    def load_meta(self, wn, lane, grp):
        a, t = self.a, self.t
        gid, tig = lane >> 2, lane & 3
        md = {"zc": [], "ws0": [], "ws1": []}
        for nt in range(t.nt):
            nb = self.n0 + wn * t.nt * 8 + nt * 8
            nz = min(nb + gid, a["n_rows"] - 1)
            md["zc"].append((int(a["zero"][nz, grp]) if a["asym"] else 8) * 0x01010101)
            md["ws0"].append(a["wscale"][min(nb + tig * 2, a["n_rows"] - 1), grp])
            md["ws1"].append(a["wscale"][min(nb + tig * 2 + 1, a["n_rows"] - 1), grp])
        return md


def _fold(t, acc, y, cur):
    for nt in range(t.nt):
        for mt in range(t.mt):
            for lane in range(32):
                for i in range(4):
                    ws = cur[lane]["ws1"][nt] if i & 1 else cur[lane]["ws0"][nt]
                    y[mt][nt][lane][i] = F32(y[mt][nt][lane][i] + F32(F32(acc[mt][nt][lane][i]) * ws))
                    acc[mt][nt][lane][i] = 0


def prefill_warp(blk, warp, out):
    """One warp of gemm_prefill, line by line; yields at each __syncthreads."""
    a, t, cp = blk.a, blk.t, blk.cp
    wm, wn = warp // t.wn, warp % t.wn
    acc = [[[[0] * 4 for _ in range(32)] for _ in range(t.nt)] for _ in range(t.mt)]
    y = [[[[F32(0)] * 4 for _ in range(32)] for _ in range(t.nt)] for _ in range(t.mt)]
    for s in range(PF_STAGES - 1):
        blk.load_stage(warp, s, s)
    nxt = [blk.load_meta(wn, lane, 0) for lane in range(32)]
    cur = None
    grp, kin, st = -1, 0, 0
    for step in range(a["steps"]):
        for lane in range(32):
            cp.wait(warp * 32 + lane, PF_STAGES - 2)
        yield  # __syncthreads
        blk.load_stage(warp, step + PF_STAGES - 1, PF_STAGES - 1 if st == 0 else st - 1)
        first = kin == 0
        bw = [[word(blk.sb[st, wn * t.nt * 8 + nt * 8 + (lane >> 2)], (lane & 3) * 4) ^ a["flip"]
               for nt in range(t.nt)] for lane in range(32)]
        ax = []
        for mt in range(t.mt):
            ax.append([])
            for lane in range(32):
                gid, tig = lane >> 2, lane & 3
                r = wm * t.mt * 16 + mt * 16 + gid
                x0 = (word(blk.sa[st, r], tig * 8), word(blk.sa[st, r], tig * 8 + 4))
                x1 = (word(blk.sa[st, r + 8], tig * 8), word(blk.sa[st, r + 8], tig * 8 + 4))
                ax[mt].append((byte_perm(*x0, 0x6420), byte_perm(*x1, 0x6420),
                               byte_perm(*x0, 0x7531), byte_perm(*x1, 0x7531)))
        if first:
            if grp >= 0:
                _fold(t, acc, y, cur)
            grp += 1
            cur = nxt
            nxt = [blk.load_meta(wn, lane, min(grp + 1, a["ng"] - 1)) for lane in range(32)]
        bf = [[(vsub4(bw[lane][nt] & MASK, cur[lane]["zc"][nt]), vsub4((bw[lane][nt] >> 4) & MASK,
                                                                      cur[lane]["zc"][nt]))
               for nt in range(t.nt)] for lane in range(32)]
        for mt in range(t.mt):
            for nt in range(t.nt):
                mma(ax[mt], [bf[lane][nt] for lane in range(32)], acc[mt][nt])
        kin = 0 if kin + 1 == a["spg"] else kin + 1
        st = 0 if st + 1 == PF_STAGES else st + 1
    for lane in range(32):
        cp.wait(warp * 32 + lane, 0)
    if grp >= 0:
        _fold(t, acc, y, cur)
    _prefill_store(blk, wm, wn, y, out)


def _prefill_store(blk, wm, wn, y, out):
    a, t = blk.a, blk.t
    for mt in range(t.mt):
        for nt in range(t.nt):
            for lane in range(32):
                for i in range(4):
                    m = blk.m0 + wm * t.mt * 16 + mt * 16 + (lane >> 2) + (8 if i >= 2 else 0)
                    n = blk.n0 + wn * t.nt * 8 + nt * 8 + (lane & 3) * 2 + (i & 1)
                    if m < a["m_rows"] and n < a["n_rows"]:
                        v = F32(y[mt][nt][lane][i] * a["xscale"][m if a["per_token"] else 0])
                        out[m, n] = F32(v + a["bias"][n]) if a["bias"] is not None else v


def sim_prefill(qx, xscale, packed, wscale, zero, k, g, fmt, bias, tile, landing="lazy", seed=0):
    """gemm_prefill over its grid; the warps of a block run in order between barriers."""
    m_rows, n_rows, ng = _shapes(qx, packed, k, g)
    asym = fmt is WeightFormat.ASYMMETRIC
    a = dict(qx=qx, packed=packed, wscale=wscale, zero=zero, xscale=xscale.reshape(-1), bias=bias, asym=asym,
             flip=0 if asym else FLIP, m_rows=m_rows, n_rows=n_rows, ng=ng, steps=k >> 5, spg=g >> 5,
             per_token=xscale.size > 1)
    rng = np.random.default_rng(seed)
    out = np.full((m_rows, n_rows), np.nan, F32)
    (gx, gy), (threads,) = L.prefill_grid(m_rows, n_rows, tile)
    assert threads == tile.threads
    for by in range(gy):
        for bx in range(gx):
            blk = PrefillBlock(a, tile, bx, by, rng, landing)
            warps = [prefill_warp(blk, w, out) for w in range(tile.wm * tile.wn)]
            while warps:  # one barrier interval: every warp up to its next __syncthreads, in order
                for w in list(warps):
                    try:
                        next(w)
                    except StopIteration:
                        warps.remove(w)
    return out
