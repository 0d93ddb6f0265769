"""The runtime's float pieces as Numba code: norms, the online rotation, RoPE, attention, MLP activations.

Everything here is float32 (a norm's mean of squares is summed in float64, then rounded once). The
integer work (INT8 activations, INT4 x INT8 products, the pinned epilogue) is not here: it is the
numba backend's prepared-linear kernel (:mod:`fptq.backends.numba_kernels.blocked`), called by
:mod:`fptq.runtime.forward`.

These pieces compute the same formulas as transformers' modules but not always in the same float
order (transformers sums a norm's squares and an attention row in its own vectorized order; the
rotation is one Hadamard butterfly pass here and small Sylvester block products in
:func:`fptq.reference.rotation.apply_hadamard_factors`), so they agree within float32 rounding, not
bit for bit; ``tests/test_runtime.py`` states the tolerance. Element-wise steps (RoPE, the norm's
final multiplies, the gain ``1 + w``) are the same float32 operations in the same order and so the
same bits. Dot products and sums use ``fastmath={"reassoc", "contract"}`` so that LLVM vectorizes
them; nothing integer is compiled with it.
"""

from __future__ import annotations

import math

import numpy as np
import numba

from ..backends.numba_kernels import _jit  # noqa: F401  (its cache guard covers fptq/runtime too)

OPTS = dict(cache=True, nogil=True, error_model="numpy")
#: float reductions: reassociation lets LLVM vectorize (the float order differs from torch's anyway)
FAST = dict(fastmath={"reassoc", "contract"}, **OPTS)
njit = numba.njit(**OPTS)
fnjit = numba.njit(**FAST)
F32 = np.float32

ACT_SILU, ACT_GELU_TANH = 0, 1
ACTIVATIONS = {"silu": ACT_SILU, "swish": ACT_SILU, "gelu_pytorch_tanh": ACT_GELU_TANH,
               "gelu_tanh": ACT_GELU_TANH}


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


@njit
def rotate(y, signs, rs, p2, tmp):
    """``y = y Q`` in place for ``Q = diag(signs) (H_p2 / sqrt(p2)) ⊗ r``: ``rs`` = ``r / sqrt(p2)``
    (float32 [m, m], as the reference scales it); the Hadamard product by butterflies on ``y`` viewed
    as [p2, m]; ``tmp`` float32 [m]."""
    m = rs.shape[0]
    for i in range(y.size):
        y[i] = y[i] * signs[i]
    h = 1
    while h < p2:
        for i in range(0, p2, 2 * h):
            for j in range(i, i + h):
                for b in range(m):
                    a, c = y[j * m + b], y[(j + h) * m + b]
                    y[j * m + b] = a + c
                    y[(j + h) * m + b] = a - c
        h *= 2
    if m == 1:
        s = rs[0, 0]
        for i in range(y.size):
            y[i] = y[i] * s
        return
    for a in range(p2):
        for c in range(m):
            acc = F32(0.0)
            for b in range(m):
                acc += y[a * m + b] * rs[b, c]
            tmp[c] = acc
        for c in range(m):
            y[a * m + c] = tmp[c]


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
def activation(g, u, act, out):
    """``out = act(g) * u``: SiLU ``g * sigmoid(g)`` or GELU (tanh approximation)."""
    for i in range(g.size):
        x = g[i]
        if act == ACT_SILU:
            a = x * (F32(1.0) / (F32(1.0) + np.exp(-x)))
        else:
            a = F32(0.5) * x * (F32(1.0) + np.tanh(F32(0.7978845608028654) * (x + F32(0.044715) * x * x * x)))
        out[i] = a * u[i]


@fnjit
def _dot(a, b):
    acc = F32(0.0)
    for i in range(a.size):
        acc += a[i] * b[i]
    return acc


@fnjit
def attend_head(q, kc, vc, t0, t1, scaling, softcap, out, scores):
    """One query head q [hd] against cached keys/values t0..t1-1 (kc, vc [T, hd]): softmax of
    ``q k^T * scaling`` (``softcap > 0``: ``tanh(s / cap) * cap`` first), times v, into ``out`` [hd].
    Row slices of the cache (contiguous), so the loops over hd vectorize."""
    mx = F32(-np.inf)
    for t in range(t0, t1):
        s = _dot(q, kc[t]) * scaling
        if softcap > 0:
            s = np.tanh(s / softcap) * softcap
        scores[t] = s
        mx = max(mx, s)
    tot = F32(0.0)
    for t in range(t0, t1):
        e = np.exp(scores[t] - mx)
        scores[t] = e
        tot += e
    inv = F32(1.0) / tot
    for d in range(out.size):
        out[d] = 0.0
    for t in range(t0, t1):
        w = scores[t] * inv
        v = vc[t]
        for d in range(out.size):
            out[d] += w * v[d]


@njit
def window_start(p, window):
    """First cached position a query at position ``p`` attends to (``window`` <= 0: no window;
    transformers' sliding window keeps ``p - t < window``)."""
    return 0 if window <= 0 else max(0, p - window + 1)


@njit
def attend_rows(q, kc, vc, pos0, nh, nkv, hd, scaling, window, softcap, out):
    """Attention of every query row (q [M, nh*hd]) at positions ``pos0 + m``, on one thread."""
    grp = nh // nkv
    scores = np.empty(kc.shape[1], F32)
    for m in range(q.shape[0]):
        p = pos0 + m
        t0 = window_start(p, window)
        for h in range(nh):
            attend_head(q[m, h * hd:(h + 1) * hd], kc[h // grp], vc[h // grp], t0, p + 1, scaling, softcap,
                        out[m, h * hd:(h + 1) * hd], scores)


@numba.njit(parallel=True, **OPTS)
def attend_parallel(q, kc, vc, pos0, nh, nkv, hd, scaling, window, softcap, out):
    """:func:`attend_rows`, (row, head) pairs spread over the threads."""
    m_rows = q.shape[0]
    grp = nh // nkv
    for i in numba.prange(m_rows * nh):
        m, h = i // nh, i % nh
        p = pos0 + m
        scores = np.empty(p + 1, F32)
        attend_head(q[m, h * hd:(h + 1) * hd], kc[h // grp], vc[h // grp], window_start(p, window), p + 1,
                    scaling, softcap, out[m, h * hd:(h + 1) * hd], scores)


def rotation_parts(q: np.ndarray, factors) -> tuple:
    """``(kind, signs, rs, p2, dense)`` for :func:`rotate` / :func:`rotate_dense` from a stored
    float32 rotation and its :func:`fptq.models.rotate.factor_tensors` (NumPy arrays) or None; kind 1
    = factored, 2 = dense."""
    if factors is None:
        return 2, np.ones(q.shape[0], F32), np.ones((1, 1), F32), 1, np.ascontiguousarray(q, F32)
    signs, r = (np.ascontiguousarray(a, F32) for a in factors)
    p2 = signs.shape[0] // r.shape[0]
    rs = np.ascontiguousarray(r * (1.0 / math.sqrt(p2)), F32)   # the reference's scaled r, float32
    return 1, signs, rs, p2, np.zeros((1, 1), F32)
