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


# ---------------------------------------------------------------------------------------------
# The whole backend with emulated kernels: CupyBackend's host code (checks, allocations, argument
# order of every launch, flags, grids, path choice) over NumPy arrays, each kernel replaced by a
# NumPy transcription of its .cu source that reads its arguments in the kernel's order. Off the GPU
# this is the only run of the host code; the same class can run the conformance suite:
#   PYTHONPATH=tests pytest conformance --backend test_cupy_simulation:EmulatedCupyBackend


class _NumpyAsCupy:
    """The parts of the cupy module the backend uses, over NumPy (``asnumpy`` copies, as cupy's does)."""

    __name__ = "numpy-as-cupy"
    ndarray = np.ndarray
    int8, uint8, int32, float32 = np.int8, np.uint8, np.int32, np.float32

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def asnumpy(a):
        return np.array(a, copy=True)


def _rint_clip(y, lo, hi):
    with np.errstate(over="ignore", invalid="ignore"):
        return np.clip(np.rint(y), lo, hi)


def _div(a, b):
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        return (a / b).astype(F32)


def _k_act_scale(grid, block, amax, out, n):
    out.reshape(-1)[:n] = np.maximum(_div(amax.reshape(-1)[:n], F32(127)), spec.MIN_SCALE)


def _k_quant_tensor(grid, block, x, scale, q, n):
    q.reshape(-1)[:n] = _rint_clip(_div(x.reshape(-1)[:n], scale.reshape(-1)[0]), -127, 127)


def _k_quant_token(grid, block, x, q, scale, k):
    assert grid == (x.shape[0],) and block == (L.ROW_THREADS,)
    amax = np.abs(x).max(axis=1) if k else np.zeros(x.shape[0], F32)
    scale[:] = np.maximum(_div(amax, F32(127)), spec.MIN_SCALE)
    q[:] = _rint_clip(_div(x, scale[:, None]), -127, 127)


def _k_dequant_act(grid, block, q, scale, out, n, k, per_row):
    s = np.repeat(scale.reshape(-1), k)[:n] if per_row else scale.reshape(-1)[0]
    out.reshape(-1)[:n] = (q.reshape(-1)[:n].astype(F32) * s).astype(F32)


def _k_lae_scales(grid, block, m, s, n):
    m = m.reshape(-1)[:n]
    l2 = np.log2((m + F32(2)).astype(F32).astype(np.float64)).astype(F32)
    s.reshape(-1)[:n] = np.where(m < spec.MIN_SCALE, F32(1), _div(m, l2))


def _k_lae_act(grid, block, x, s, out, n, k):
    out.reshape(-1)[:n] = _div(x.reshape(-1)[:n], np.tile(s, n // k))


def _k_lae_w(grid, block, w, s, out, n, k):
    out.reshape(-1)[:n] = (w.reshape(-1)[:n] * np.tile(s, n // k)).astype(F32)


def _groups(a, k, g, ng, fill=0):
    pad = ng * g - k
    return np.pad(a, ((0, 0), (0, pad)), constant_values=fill).reshape(a.shape[0], ng, g)


def _k_weight_scales(grid, block, w, scale, zero, n_rows, k, g, ng, asym):
    assert grid[0] * block[0] // 32 >= n_rows * ng
    wg = _groups(w, k, g, ng)
    if not asym:
        scale[:] = np.maximum(_div(np.abs(wg).max(axis=2), F32(7)), spec.MIN_SCALE)
        return
    lo, hi = np.minimum(wg.min(axis=2), F32(0)), np.maximum(wg.max(axis=2), F32(0))
    with np.errstate(over="ignore"):
        span = (hi - lo).astype(F32)
    s = np.maximum(_div(span, F32(15)), spec.MIN_SCALE)
    scale[:] = np.where(np.isinf(span), span, s)
    zero[:] = np.where(np.isinf(span), 0, _rint_clip(_div(-lo, s), 0, 15))


def _per_col(a, k, g):
    return np.repeat(a, g, axis=1)[:, :k]


def _k_quant_w(grid, block, w, scale, zero, q, n_rows, k, g, ng, asym):
    y = np.rint(_div(w, _per_col(scale, k, g)))
    if asym:
        q[:] = _rint_clip((y + _per_col(zero, k, g).astype(F32)).astype(F32), 0, 15)
    else:
        q[:] = _rint_clip(y, -8, 7)


def _k_dequant_w(grid, block, q, scale, zero, out, n_rows, k, g, ng, asym):
    z = _per_col(zero, k, g).astype(np.int32) if asym else 0
    out[:] = ((q.astype(np.int32) - z).astype(F32) * _per_col(scale, k, g)).astype(F32)


def _k_pack(grid, block, q, packed, n_rows, k):
    nib = q.view(np.uint8) & 0xF
    if k % 2:
        nib = np.pad(nib, ((0, 0), (0, 1)))
    packed[:] = nib[:, 0::2] | (nib[:, 1::2] << 4)


def _k_unpack(grid, block, packed, q, n_rows, k, signed):
    q[:] = spec.unpack_int4(packed, k, bool(signed))


def _k_group_sums(grid, block, qx, packed, zero, acc, m_rows, n_rows, k, g, ng, asym):
    acc[:] = spec.w4a8_group_sums(qx, packed, zero if asym else None, k, g,
                                  WeightFormat.ASYMMETRIC if asym else WeightFormat.SYMMETRIC)


def _k_epilogue(grid, block, acc, wscale, xscale, bias, out, m_rows, n_rows, ng, per_token, has_bias):
    xs = xscale.reshape(-1)[:m_rows] if per_token else xscale.reshape(-1)[:1]
    out[:] = spec.w4a8_epilogue(acc, wscale, xs, bias[:n_rows] if has_bias else None)


def _k_policies(grid, block, v, code, n, t0, t1):
    v = v.reshape(-1)[:n]
    code.reshape(-1)[:n] = np.where(v < t0, 0, np.where(v < t1, 1, 2))


def _gemm_args(qx, xscale, packed, wscale, zero, bias, out, m, n, k, g, ng, asym, per_token, has_bias):
    assert qx.shape == (m, k) and packed.shape == (n, k // 2) and wscale.shape == (n, ng) and out.shape == (m, n)
    fmt = WeightFormat.ASYMMETRIC if asym else WeightFormat.SYMMETRIC
    return dict(qx=qx, xscale=xscale if per_token else xscale.reshape(-1)[:1], packed=packed, wscale=wscale,
                zero=zero if asym else None, k=k, g=g, fmt=fmt, bias=bias[:n] if has_bias else None)


def _k_decode(mt):
    def run(grid, block, *args):
        a = _gemm_args(*args)
        m, n = args[7], args[8]
        assert L.decode_mt(m) == mt and (grid, block) == L.decode_grid(n)
        args[6][:] = sim_decode(**a)
    return run


def _k_prefill(tile):
    def run(grid, block, *args):
        a = _gemm_args(*args)
        m, n = args[7], args[8]
        assert (grid, block) == L.prefill_grid(m, n, tile)
        args[6][:] = sim_prefill(**a, tile=tile)
    return run


_EMULATED = {
    "act_scale_from_amax": _k_act_scale, "quantize_act_per_tensor": _k_quant_tensor,
    "quantize_act_per_token": _k_quant_token, "dequantize_act": _k_dequant_act,
    "lae_scales": _k_lae_scales, "lae_apply_activation": _k_lae_act, "lae_apply_weight": _k_lae_w,
    "weight_scales": _k_weight_scales, "quantize_weight_with_scales": _k_quant_w,
    "dequantize_weight": _k_dequant_w, "pack_int4": _k_pack, "unpack_int4": _k_unpack,
    "w4a8_group_sums": _k_group_sums, "w4a8_epilogue": _k_epilogue, "select_policies": _k_policies,
    **{L.decode_kernel_name(mt): _k_decode(mt) for mt in L.DECODE_MT},
    **{L.prefill_kernel_name(t): _k_prefill(t) for t in L.PREFILL_TILES},
}


def _emulated_class():
    from fptq.backends.cupy_arrays import DeviceArrays
    from fptq.backends.cupy_backend import CupyBackend

    class EmulatedCupyBackend(CupyBackend):
        """CupyBackend's host code over NumPy, every kernel an emulation (see above)."""

        name = "cupy-emulated"

        def __init__(self, force_path=None):  # no CuPy, no GPU: set what CupyBackend.__init__ would
            self.cp = _NumpyAsCupy()
            self.force_path, self.arch, self.sm_count = force_path, "90", L.SM_COUNT_DEFAULT
            self.xp = DeviceArrays(self.cp, "numpy-as-cupy")
            self._functions, self._compiled = {}, {}
            self._dummy = np.zeros(16, np.uint8)
            self.last_path = None
            self.launches = []

        def describe(self):
            return "cupy backend host code over NumPy, kernels emulated (tests/test_cupy_simulation.py)"

        @staticmethod
        def _ptr(a):
            return a.ctypes.data

        def _fn(self, module, kernel):
            assert kernel in CC.MODULES[module], (module, kernel)

            def launch(grid, block, args):
                assert all(isinstance(v, int) and v > 0 for v in grid + block), (kernel, grid, block)
                self.launches.append(kernel)
                _EMULATED[kernel](grid, block, *(a.item() if isinstance(a, np.generic) else a for a in args))
            return launch

    return EmulatedCupyBackend


from fptq.backends import cupy_compile as CC  # noqa: E402

EmulatedCupyBackend = _emulated_class()


def _bits_equal(got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    assert got.tobytes() == want.tobytes()


def _compare(b, op, **kw):
    want = getattr(spec, op)(**kw)
    got = getattr(b, op)(**{k: b.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()})
    if isinstance(want, tuple):
        for g_, w_ in zip(got, want):
            if w_ is None or isinstance(w_, (int, WeightFormat)):
                assert g_ == w_
            else:
                _bits_equal(b.to_numpy(g_), w_)
    else:
        _bits_equal(b.to_numpy(got), want)


def test_emulated_backend_every_operation():
    """Every operation through the backend's host code, against the spec, including empty and 0-d inputs."""
    b = EmulatedCupyBackend()
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((5, 7)) * 3).astype(F32)
    x[0, 0] = 1e-45
    for amax in (np.array([0.0, 1e-40, 5.0], F32), np.array(3.0, F32), np.zeros(0, F32)):
        _compare(b, "act_scale_from_amax", amax=amax)
    for xx in (x, np.zeros((0, 3), F32), np.zeros((2, 0), F32)):
        _compare(b, "quantize_act_per_tensor", x=xx, scale=np.array(0.02, F32))
        _compare(b, "quantize_act_per_token", x=xx)
    q = rng.integers(-127, 128, (5, 7), dtype=np.int8)
    _compare(b, "dequantize_act", q=q, scale=np.array([0.5], F32))
    _compare(b, "dequantize_act", q=q, scale=rng.uniform(0.1, 1, 5).astype(F32))
    _compare(b, "dequantize_act", q=q[:1], scale=np.array([0.25], F32))
    _compare(b, "lae_scales", channel_max=np.array([0.0, 1e-45, 1.0, 150.0, 3e38], F32))
    s = rng.uniform(0.5, 4, 7).astype(F32)
    _compare(b, "lae_apply_activation", x=x, s=s)
    _compare(b, "lae_apply_weight", w=x, s=s)
    for fmt in (WeightFormat.SYMMETRIC, WeightFormat.ASYMMETRIC):
        for g in (2, 3, -1, 100):
            _compare(b, "weight_scales", w=x, group_size=g, fmt=fmt)
            _compare(b, "quantize_weight", w=x, group_size=g, fmt=fmt)
            sc, z = spec.weight_scales(x, g, fmt)
            _compare(b, "quantize_weight_with_scales", w=x, scale=sc, zero=z, group_size=g, fmt=fmt)
            qw = spec.quantize_weight_with_scales(x, sc, z, g, fmt)
            _compare(b, "dequantize_weight", q=qw, scale=sc, zero=z, group_size=g, fmt=fmt)
    with pytest.raises(ValueError, match="overflows"):
        b.weight_scales(np.array([[3e38, -3e38]], F32), 2, WeightFormat.ASYMMETRIC)
    for signed in (True, False):
        q4 = rng.integers(-8, 8, (3, 7), dtype=np.int8) if signed else rng.integers(0, 16, (3, 7), dtype=np.int8)
        _compare(b, "pack_int4", q=q4, signed=signed)
        _compare(b, "unpack_int4", packed=spec.pack_int4(q4, signed), k=7, signed=signed)
    _compare(b, "select_policies", v=np.array([0.0, 14.99, 15.0, 149.0, 150.0, 1e30], F32), v0=15.0, v1=150.0)
    acc = rng.integers(-2**20, 2**20, (3, 4, 2), dtype=np.int32)
    ws = rng.uniform(0.1, 1, (4, 2)).astype(F32)
    _compare(b, "w4a8_epilogue", acc=acc, wscale=ws, xscale=np.array(0.5, F32), bias=None)
    _compare(b, "w4a8_epilogue", acc=acc, wscale=ws, xscale=rng.uniform(0.1, 1, 3).astype(F32),
             bias=rng.standard_normal(4).astype(F32))
    assert set(b.launches) >= {k for k in _EMULATED if "gemm" not in k and k != "w4a8_group_sums"}


@pytest.mark.parametrize("force,m,n,k,g", [
    (None, 3, 9, 64, 32), (None, 20, 9, 64, 64), (None, 2, 5, 99, 33), ("generic", 3, 9, 64, 32),
    ("prefill", 2, 9, 96, 64), ("decode", 16, 3, 64, 32), (None, 0, 4, 64, 32), (None, 4, 0, 64, 32),
])
@pytest.mark.parametrize("fmt", [WeightFormat.SYMMETRIC, WeightFormat.ASYMMETRIC], ids=["sym", "asym"])
def test_emulated_backend_matmul_paths(force, m, n, k, g, fmt):
    b = EmulatedCupyBackend(force_path=force)
    case = _case([m, n, k, g, 2], max(m, 1), max(n, 1), k, g, fmt, per_token=m > 1, with_bias=True)
    case = dict(case, qx=case["qx"][:m], xscale=case["xscale"][:m] if m > 1 else case["xscale"],
                packed=case["packed"][:n], wscale=case["wscale"][:n],
                zero=None if case["zero"] is None else case["zero"][:n], bias=case["bias"][:n])
    _compare(b, "w4a8_matmul", **case)
    want = force or ("generic" if k % 32 or g % 32 or not m or not n else "decode" if m <= 16 else "prefill")
    assert b.last_path == want
    _compare(b, "w4a8_group_sums", qx=case["qx"], packed=case["packed"], zero=case["zero"], k=k, group_size=g,
             fmt=fmt)
