"""The runtime's float pieces as Numba code: norms, the online rotation, RoPE, exp, MLP activations.

Everything here is float32 (a norm's mean of squares is summed in float64, then rounded once). The
integer work (INT8 activations, INT4 x INT8 products, the pinned epilogue) is not here: it is the
numba backend's prepared-linear kernel (:mod:`fptq.backends.numba_kernels.blocked`), called by
:mod:`fptq.runtime.forward`; the attention is :mod:`fptq.runtime.attention`.

These pieces compute the same formulas as transformers' modules but not always in the same float
order (transformers sums a norm's squares in its own vectorized order; the rotation is one Hadamard
butterfly pass here and small Sylvester block products in
:func:`fptq.reference.rotation.apply_hadamard_factors`; ``exp`` is :func:`exp_into`'s polynomial,
not torch's), so they agree within float32 rounding, not bit for bit; ``tests/test_runtime.py``
states the tolerance. Element-wise steps (RoPE, the norm's final multiplies, the gain ``1 + w``) are
the same float32 operations in the same order and so the same bits. Loops run across independent
values (groups, keys, lanes) so that LLVM vectorizes them without reassociation; only
:func:`rotate_dense` is compiled with ``fastmath={"reassoc", "contract"}``. Nothing integer is.
"""

from __future__ import annotations

import math

import numpy as np
import numba

from ..backends.numba_kernels import _jit  # noqa: F401  (its cache guard covers fptq/runtime too)
from .block_product import block_product

OPTS = dict(cache=True, nogil=True, error_model="numpy")
#: float reductions: reassociation lets LLVM vectorize (the float order differs from torch's anyway)
FAST = dict(fastmath={"reassoc", "contract"}, **OPTS)
njit = numba.njit(**OPTS)
fnjit = numba.njit(**FAST)
F32 = np.float32

ACT_SILU, ACT_GELU_TANH = 0, 1
ACTIVATIONS = {"silu": ACT_SILU, "swish": ACT_SILU, "gelu_pytorch_tanh": ACT_GELU_TANH,
               "gelu_tanh": ACT_GELU_TANH}

_LOG2E = F32(1.4426950408889634)
_ROUND = F32(12582912.0)          # 1.5 * 2**23: (x + _ROUND) - _ROUND rounds x to an integer (|x| < 2**22)
_C1 = F32(0.693359375)            # ln 2 = _C1 + _C2 (Cephes' split)
_C2 = F32(-2.12194440e-4)
_P = (F32(1.9875691500e-4), F32(1.3981999507e-3), F32(8.3334519073e-3), F32(4.1665795894e-2),
      F32(1.6666665459e-1), F32(5.0000001201e-1))


@njit
def exp_into(x, n0, n1, bits):
    """``x[t] = exp(x[t])`` for t in n0..n1-1, float32, arguments clamped to [-87, 88] (Cephes' expf:
    ``x = r ln2 + f``, ``|f| <= ln2 / 2``, a degree-7 polynomial for ``exp(f)``, times ``2**r`` built
    in the exponent bits). Pure float32 arithmetic, so the same bits vectorized or not. ``bits``:
    int32 scratch of at least n1 entries."""
    c0, c1, c2, c3, c4, c5 = _P
    for t in range(n0, n1):
        v = min(max(x[t], F32(-87.0)), F32(88.0))
        r = (v * _LOG2E + _ROUND) - _ROUND
        f = (v - r * _C1) - r * _C2
        y = ((((c0 * f + c1) * f + c2) * f + c3) * f + c4) * f + c5
        x[t] = (y * (f * f) + f) + F32(1.0)
        bits[t] = (np.int32(r) + np.int32(127)) << np.int32(23)
    scale = bits.view(np.float32)
    for t in range(n0, n1):
        x[t] = x[t] * scale[t]


@njit
def rms_norm(x, w, eps, out):
    """``out = normalized(x) * w`` (transformers' RMSNorm; ``w`` is the gain, ``1 + w`` already added
    for Gemma's norms): ``x * rsqrt(mean(x^2) + eps)``, then the gain, each a float32 operation."""
    ss = 0.0
    for i in range(x.size):
        v = np.float64(x[i])
        ss += v * v
    var = F32(ss / x.size)
    r = F32(1.0) / np.sqrt(var + eps)
    for i in range(x.size):
        out[i] = F32(x[i] * r) * w[i]


#: block sizes m from which :func:`rotate` sums across a group's outputs (c) instead of across groups (a)
ROW_PRODUCT_MIN = 16
#: float32 lanes the columns of a large ``rs`` are padded to (one AVX-512 vector)
PAD_LANES = 16
#: butterfly spans (values) below which :func:`rotate` runs a stage on the regrouped row (:func:`_regroup`)
SPAN_MIN = 32


@njit
def rotate(y, signs, rs, p2, tmp):
    """``y = y Q`` in place for ``Q = diag(signs) (H_p2 / sqrt(p2)) ⊗ r``: ``rs`` = ``r / sqrt(p2)``
    (float32 [m, cp], as the reference scales it; columns past m zero, :func:`padded_block`); the
    Hadamard product by butterflies on ``y`` viewed as [p2, m] (stage h: each pair of adjacent spans
    of ``h m`` values -> their sum and difference), then per group of m values ``sum_b y[a, b] rs[b, c]``,
    b ascending from +0.0 (a multiply, then an add, each rounded). ``tmp``: :func:`rotate_scratch`'s
    (float32, at least ``2 y.size + 2 PAD_LANES``). The product runs across groups
    (:func:`_product_across_groups`, m < 16) or across a group's outputs (:func:`_product_across_outputs`);
    the float operations are the same either way."""
    m, n = rs.shape[0], y.size
    for i in range(n):
        y[i] = y[i] * signs[i]
    hs = 1                  # stages h < hs have spans under SPAN_MIN: run them on y regrouped
    while hs < p2 and hs * m < SPAN_MIN:
        hs *= 2
    if 1 < hs < p2:
        t = tmp[:n]
        _regroup(y, t, p2 // hs, hs, m)
        _butterflies(t, (p2 // hs) * m, 1, hs)
        _regroup(t, y, hs, p2 // hs, m)
    else:
        hs = 1
    _butterflies(y, m, hs, p2)
    if m == 1:
        s = rs[0, 0]
        for i in range(n):
            y[i] = y[i] * s
    elif m < ROW_PRODUCT_MIN:
        _product_across_groups(y, rs, p2, tmp)
    else:
        _product_across_outputs(y, rs, p2, tmp)


@njit
def _butterflies(y, unit, h0, h1):
    """Butterfly stages h = h0, 2 h0, ... < h1 on y: each pair of adjacent spans of ``h unit`` values ->
    their sum and difference (``a + c``, ``a - c``)."""
    n, h = y.size, h0
    while h < h1:
        span = h * unit
        for i0 in range(0, n, 2 * span):
            lo, hi = y[i0:i0 + span], y[i0 + span:i0 + 2 * span]
            for e in range(span):
                a, c = lo[e], hi[e]
                lo[e] = a + c
                hi[e] = a - c
        h *= 2


@njit
def _regroup(src, dst, outer, inner, m):
    """dst viewed as [inner, outer, m] = src viewed as [outer, inner, m], its first two axes swapped.

    :func:`rotate`'s first stages pair groups ``a`` and ``a + h`` for small h, spans of ``h m`` values
    (3, 6, 12, 24 on the 1.5B's 1536 = 512 x 3: loops too short to vectorize, 5 ns per value for the
    whole rotation). With the group index split as ``a = a_hi * inner + a_lo`` and a_lo moved outermost,
    the same pairs are ``outer * h * m`` values apart: the same additions and subtractions on every
    value (so the same bits), in long vectorized runs."""
    for o in range(outer):
        for i in range(inner):
            s, d = (o * inner + i) * m, (i * outer + o) * m
            for c in range(m):
                dst[d + c] = src[s + c]


@njit
def _product_across_groups(y, rs, p2, tmp):
    """:func:`rotate`'s block product with the groups' values by column (``tmp``), so the loops run
    across the p2 groups and vectorize (small m)."""
    m, n = rs.shape[0], y.size
    cols, outs = tmp[:n], tmp[n:2 * n]
    for a in range(p2):
        for b in range(m):
            cols[b * p2 + a] = y[a * m + b]
    for c in range(m):
        oc = outs[c * p2:(c + 1) * p2]
        for a in range(p2):
            oc[a] = F32(0.0)
        for b in range(m):
            r, cb = rs[b, c], cols[b * p2:(b + 1) * p2]
            for a in range(p2):
                oc[a] = oc[a] + cb[a] * r
    for a in range(p2):
        for c in range(m):
            y[a * m + c] = outs[c * p2 + a]


@njit
def _product_across_outputs(y, rs, p2, tmp):
    """:func:`rotate`'s block product with the groups' padded outputs in registers
    (:func:`fptq.runtime.block_product.block_product`: eight groups x 16 outputs per tile, ``rs`` [m, cp]
    with cp a multiple of :data:`PAD_LANES`) into ``tmp`` [p2, cp], then the m real outputs of each group
    back into y. Each output summed b ascending from +0.0, one multiply and one add per term: the same bits
    as the plain loop; on the 1.5B's 8960 = 128 x 70 about 2.5x less one-thread time than the Numba loop
    it replaced (docs/benchmarks.md)."""
    m, cp = rs.shape
    out = tmp[:p2 * cp]
    block_product(np.int64(y.ctypes.data), np.int64(m), np.int64(rs.ctypes.data), np.int64(cp), np.int64(m),
                  np.int64(cp), np.int64(p2), np.int64(out.ctypes.data), np.int64(cp))
    for a in range(p2):
        ya, oa = y[a * m:(a + 1) * m], out[a * cp:a * cp + m]
        for c in range(m):
            ya[c] = oa[c]


@njit
def rotate_scratch(n):
    """The ``tmp`` :func:`rotate` takes for a row of n values (room for the padded outputs too)."""
    return np.empty(2 * n + 2 * PAD_LANES, F32)


def padded_block(rs: np.ndarray) -> np.ndarray:
    """``rs`` [m, m] as :func:`rotate` takes it: from m = :data:`ROW_PRODUCT_MIN` its columns zero-padded to
    a multiple of :data:`PAD_LANES` (float32, C-contiguous)."""
    m = rs.shape[0]
    cp = m if m < ROW_PRODUCT_MIN else -(-m // PAD_LANES) * PAD_LANES
    out = np.zeros((m, cp), F32)
    out[:, :m] = rs
    return out


@fnjit
def rotate_dense(y, q, tmp):
    """``y = y @ q`` in place (a rotation stored without Hadamard factors); ``tmp`` float32 [n]."""
    n = y.size
    for c in range(n):
        tmp[c] = 0.0
    for b in range(n):
        v = y[b]
        for c in range(n):
            tmp[c] += v * q[b, c]
    for c in range(n):
        y[c] = tmp[c]


@njit
def rope(x, cos, sin):
    """``x * cos + rotate_half(x) * sin`` on one head in place (transformers' ``apply_rotary_pos_emb``,
    the same float32 operations)."""
    half = x.size // 2
    for i in range(half):
        a, b = x[i], x[i + half]
        x[i] = a * cos[i] + (-b) * sin[i]
        x[i + half] = b * cos[i + half] + a * sin[i + half]


@njit
def activation(g, u, act, out, bits):
    """``out = act(g) * u``: SiLU ``g * (1 / (1 + exp(-g)))`` (:func:`exp_into`, vectorized) or GELU
    (tanh approximation); ``bits`` int32 scratch of ``g.size``."""
    if act == ACT_SILU:
        for i in range(g.size):
            out[i] = -g[i]
        exp_into(out, 0, g.size, bits)
        for i in range(g.size):
            out[i] = g[i] * (F32(1.0) / (F32(1.0) + out[i])) * u[i]
        return
    for i in range(g.size):
        x = g[i]
        a = F32(0.5) * x * (F32(1.0) + np.tanh(F32(0.7978845608028654) * (x + F32(0.044715) * x * x * x)))
        out[i] = a * u[i]


@njit
def window_start(p, window):
    """First cached position a query at position ``p`` attends to (``window`` <= 0: no window;
    transformers' sliding window keeps ``p - t < window``)."""
    return 0 if window <= 0 else max(0, p - window + 1)


def rotation_parts(q: np.ndarray, factors) -> tuple:
    """``(kind, signs, rs, p2, dense)`` for :func:`rotate` / :func:`rotate_dense` from a stored
    float32 rotation and its :func:`fptq.models.rotate.factor_tensors` (NumPy arrays) or None; kind 1
    = factored (``rs`` as :func:`padded_block` makes it), 2 = dense."""
    if factors is None:
        return 2, np.ones(q.shape[0], F32), np.ones((1, 1), F32), 1, np.ascontiguousarray(q, F32)
    signs, r = (np.ascontiguousarray(a, F32) for a in factors)
    p2 = signs.shape[0] // r.shape[0]
    rs = np.ascontiguousarray(r * (1.0 / math.sqrt(p2)), F32)   # the reference's scaled r, float32
    return 1, signs, padded_block(rs), p2, np.zeros((1, 1), F32)
