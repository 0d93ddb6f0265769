"""One compiled forward for M tokens (a decoded token or a whole prompt): embedding, every decoder layer,
the final norm and the lm_head, with no Python between the layers.

The arguments are the flat arrays of :class:`fptq.runtime.weights.RuntimeWeights` (every layer's
arrays stacked on a leading layer axis) and the KV cache. Each W4A8 linear is the numba backend's
prepared-linear kernel (:func:`fptq.backends.numba_kernels.blocked.linear`, or ``linear_parallel``
for large products), called from here on the layer's slice of the stacked blocked weights: the same
compiled kernel, so the same bits as the transformers path for the same input. A linear is a tuple
``(wb, zc, wsb, bb, act, dyn, has_bias, g, steps_last, n, panel)`` (:func:`fptq.runtime.weights.stack_linears`).

Layer order (transformers' decoder layer; ``post`` norms only where the family has them)::

    h = rot(norm_attn(x));  q, k, v = W_q h, W_k h, W_v h;  q, k = rope(qk_norm(q), qk_norm(k))
    x = x + post_attn(W_o attention(q, K, V))
    h = rot(norm_mlp(x));   x = x + post_mlp(W_down rot_f(act(W_gate h) * W_up h))
"""

from __future__ import annotations

import numba
import numpy as np

from ..backends.numba_kernels import blocked
from . import attention as attn
from . import decode, ops
from .head import head_logits
from .ops import F32, OPTS, njit

#: rows from which a prefill's norms, rotations and activations run on every thread
ROWS_PARALLEL = 16


@njit
def linear(x, lin, l, threads, par_min):
    """The W4A8 linear ``lin`` of layer ``l`` on float32 x [M, K] (C-contiguous) -> (y [M, n] C-contiguous,
    bad): ``bad`` counts rows of x or y holding a NaN/Inf. Every thread from ``par_min`` multiply-adds."""
    m, k = x.shape
    if threads > 1 and m * lin[9] * k >= par_min:
        return linear_parallel(x, lin, l)
    return linear_serial(x, lin, l)


@njit
def linear_parallel(x, lin, l):
    """:func:`linear` on every thread (the blocked kernel's parallel panels)."""
    wb, zc, wsb, bb, act, dyn, hasb, g, steps_last, n, panel = lin
    y, bad, bad_out = blocked.linear_parallel(x, act[l], dyn[l], wb[l], zc[l], wsb[l], bb[l], hasb, g,
                                              steps_last, n, panel)
    return np.ascontiguousarray(y[:, :n]), bad + bad_out


@njit
def linear_serial(x, lin, l):
    """:func:`linear` on one thread (also for tests and the per-token breakdown)."""
    wb, zc, wsb, bb, act, dyn, hasb, g, steps_last, n, panel = lin
    y, bad, bad_out = blocked.linear(x, act[l], dyn[l], wb[l], zc[l], wsb[l], bb[l], hasb, g, steps_last, n)
    return np.ascontiguousarray(y[:, :n]), bad + bad_out


@njit
def norm_block(x, w, eps, rot_kind, rot, out, r0, r1):
    """``out[m] = norm(x[m])`` for rows r0..r1-1, then times the rotation when ``rot_kind`` != 0
    (1: Hadamard factors, 2: dense; ``rot`` = (signs, rs, p2, dense))."""
    signs, rs, p2, dense = rot
    tmp = ops.rotate_scratch(x.shape[1])
    for m in range(r0, r1):
        ops.rms_norm(x[m], w, eps, out[m])
        rotate_row(out[m], rot_kind, signs, rs, p2, dense, tmp)


@numba.njit(parallel=True, **OPTS)
def _norm_parallel(x, w, eps, rot_kind, rot, out, chunks):
    step = (x.shape[0] + chunks - 1) // chunks
    for c in numba.prange(chunks):
        norm_block(x, w, eps, rot_kind, rot, out, c * step, min((c + 1) * step, x.shape[0]))


@njit
def norm_rows(x, w, eps, rot_kind, rot, out, threads):
    """:func:`norm_block` of every row; rows split over the threads from :data:`ROWS_PARALLEL` rows
    (each row's result is the same either way)."""
    if threads > 1 and x.shape[0] >= ROWS_PARALLEL:
        _norm_parallel(x, w, eps, rot_kind, rot, out, threads)
    else:
        norm_block(x, w, eps, rot_kind, rot, out, 0, x.shape[0])


@njit
def mlp_block(gt, up, act, rot_kind, rot, f, r0, r1):
    """``f[m] = rot_f(act(gt[m]) * up[m])`` for rows r0..r1-1 (the down projection's input)."""
    signs, rs, p2, dense = rot
    tmp = ops.rotate_scratch(f.shape[1])
    bits = np.empty(f.shape[1], np.int32)
    for m in range(r0, r1):
        ops.activation(gt[m], up[m], act, f[m], bits)
        rotate_row(f[m], rot_kind, signs, rs, p2, dense, tmp)


@numba.njit(parallel=True, **OPTS)
def _mlp_parallel(gt, up, act, rot_kind, rot, f, chunks):
    step = (f.shape[0] + chunks - 1) // chunks
    for c in numba.prange(chunks):
        mlp_block(gt, up, act, rot_kind, rot, f, c * step, min((c + 1) * step, f.shape[0]))


@njit
def mlp_rows(gt, up, act, rot_kind, rot, threads):
    """:func:`mlp_block` of every row -> f [M, intermediate] (rows split over the threads as in
    :func:`norm_rows`)."""
    f = np.empty(gt.shape, F32)
    if threads > 1 and f.shape[0] >= ROWS_PARALLEL:
        _mlp_parallel(gt, up, act, rot_kind, rot, f, threads)
    else:
        mlp_block(gt, up, act, rot_kind, rot, f, 0, f.shape[0])
    return f


@njit
def rotate_row(y, rot_kind, signs, rs, p2, dense, tmp):
    if rot_kind == 1:
        ops.rotate(y, signs, rs, p2, tmp)
    elif rot_kind == 2:
        ops.rotate_dense(y, dense, tmp)


@njit
def qk_rope(q, k, qkn, eps, has_qkn, rope_k, cos, sin, pos0, nh, nkv, hd):
    """Per row and head: the q/k norms (Qwen3, Gemma3), then RoPE at position ``pos0 + m``
    (``rope_k`` < 0: a layer without RoPE)."""
    tmp = np.empty(hd, F32)
    for m in range(q.shape[0]):
        p = pos0 + m
        for h in range(nh + nkv):
            v = q[m, h * hd:(h + 1) * hd] if h < nh else k[m, (h - nh) * hd:(h - nh + 1) * hd]
            if has_qkn:
                tmp[:] = v
                ops.rms_norm(tmp, qkn[0 if h < nh else 1], eps, v)
            if rope_k >= 0:
                ops.rope(v, cos[rope_k, p], sin[rope_k, p])


@njit
def attention(q, k, v, kt, vc, pos0, nh, nkv, hd, scaling, window, softcap, threads):
    """Store k, v at positions pos0.. of the layer's cache (keys transposed: kt [nkv, hd, T]; values
    vc [nkv, T, hd]), then attention of every query row (:mod:`fptq.runtime.attention`) -> float32
    [M, nh * hd]."""
    m_rows = q.shape[0]
    for m in range(m_rows):
        for h in range(nkv):
            for d in range(hd):
                kt[h, d, pos0 + m] = k[m, h * hd + d]
            vc[h, pos0 + m] = v[m, h * hd:(h + 1) * hd]
    out = np.empty((m_rows, nh * hd), F32)
    if threads > 1 and m_rows * (pos0 + m_rows) * nh * hd >= 1 << 20:
        attn.attend_parallel(q, kt, vc, pos0, nh, nkv, hd, scaling, window, softcap, out, threads)
    else:
        attn.attend(q, kt, vc, pos0, nh, nkv, hd, scaling, window, softcap, out)
    return out


@njit
def add_rows(x, y, post, w, eps, rot_kind, rot, threads):
    """``x += y`` (``post``: ``x += rot(norm(y))``, Gemma 2/3's post-norms)."""
    if post:
        z = np.empty_like(x)
        norm_rows(y, w, eps, rot_kind, rot, z, threads)
        x += z
    else:
        x += y


@njit
def linear_group(x, la, lb, lc, count, l, threads, par_min, split_min):
    """The first ``count`` (1 to 3) of the linears la, lb, lc of layer ``l``, all on the input x [M, K]
    -> (ya, yb, yc, bad) (unused outputs are ``ya``): in one region on every thread
    (:func:`fptq.runtime.decode.group`) at decode (M <= ``blocked.TILE_M``) from ``split_min``
    multiply-adds, in a prefill from ``par_min`` (in shares of about a panel,
    :func:`fptq.runtime.decode.prefill_parts`); else one :func:`linear` each. The same bits either way."""
    m, k = x.shape
    macs = m * k * (la[9] + (lb[9] if count > 1 else 0) + (lc[9] if count > 2 else 0))
    if threads > 1 and m <= blocked.TILE_M and macs >= split_min:
        return decode.group(x, la, lb, lc, count, l, threads)
    if threads > 1 and m > blocked.TILE_M and macs >= par_min:
        return decode.group(x, la, lb, lc, count, l, decode.prefill_parts(la, lb, lc, count))
    ya, bad = linear(x, la, l, threads, par_min)
    yb, yc = ya, ya
    if count > 1:
        yb, b = linear(x, lb, l, threads, par_min)
        bad += b
    if count > 2:
        yc, b = linear(x, lc, l, threads, par_min)
        bad += b
    return ya, yb, yc, bad


@njit
def layer(x, l, pos0, dims, eps, normw, qkn, rotk, rot_q, rot_f, window, ropek, scaling, softcap, cos, sin,
          lins, kc, vc):
    """Decoder layer ``l`` on the residual rows x [M, H] in place; returns the NaN/Inf count."""
    nh, nkv, hd, act, has_qkn, has_post, threads, par_min, split_min = dims[:9]
    lq, lk, lv, lo, lg, lu, ld = lins
    h = np.empty_like(x)
    norm_rows(x, normw[l, 0], eps, rotk[l, 0], rot_q, h, threads)
    q, k, v, bad = linear_group(h, lq, lk, lv, 3, l, threads, par_min, split_min)
    qk_rope(q, k, qkn[l], eps, has_qkn, ropek[l], cos, sin, pos0, nh, nkv, hd)
    a = attention(q, k, v, kc[l], vc[l], pos0, nh, nkv, hd, scaling[l], window[l], softcap, threads)
    o, _, _, b = linear_group(a, lo, lo, lo, 1, l, threads, par_min, split_min)
    bad += b
    add_rows(x, o, has_post, normw[l, 2], eps, rotk[l, 2], rot_q, threads)
    norm_rows(x, normw[l, 1], eps, rotk[l, 1], rot_q, h, threads)
    gt, up, _, b = linear_group(h, lg, lu, lu, 2, l, threads, par_min, split_min)
    bad += b
    f = mlp_rows(gt, up, act, rotk[l, 4], rot_f, threads)
    d, _, _, b = linear_group(f, ld, ld, ld, 1, l, threads, par_min, split_min)
    add_rows(x, d, has_post, normw[l, 3], eps, rotk[l, 3], rot_q, threads)
    return bad + b


@njit
def embed(ids, emb, embed_scale, use_scale):
    """float32 [M, H] rows of the embedding: ``emb`` = (kind, float32 [V, H], int8 [V, H], scale [V],
    bfloat16 bits uint16 [V, H]); kind 0: the float32 rows; kind 1 (INT8 rows): ``float32(q) * scale`` as
    :class:`fptq.models.int8rows.Int8Embedding`; kind 2: the bfloat16 rows widened exactly (``bits << 16``,
    the float32 values a float32 table of them holds); then times ``embed_scale`` (Gemma) when ``use_scale``."""
    kind, wf, wq, ws, wb = emb
    h = wf.shape[1] if kind == 0 else wq.shape[1] if kind == 1 else wb.shape[1]
    x = np.empty((ids.size, h), F32)
    xb = x.view(np.uint32)
    for m in range(ids.size):
        t = ids[m]
        if kind == 2:
            for i in range(h):
                xb[m, i] = np.uint32(wb[t, i]) << np.uint32(16)
        else:
            for i in range(h):
                x[m, i] = wf[t, i] if kind == 0 else F32(wq[t, i]) * ws[t]
        if use_scale:
            for i in range(h):
                x[m, i] = x[m, i] * embed_scale
    return x


@njit
def forward(ids, pos0, all_logits, dims, eps, normw, qkn, rotk, rot_q, rot_f, window, ropek, scaling,
            softcap, cos, sin, lins, kc, vc, emb, embed_scale, use_scale, final_w, head, final_cap):
    """Tokens ``ids`` at positions pos0.. through the whole model -> (logits float32 [R, V], NaN/Inf
    count); R = M with ``all_logits``, else 1 (the last token's)."""
    x = embed(ids, emb, embed_scale, use_scale)
    bad = 0
    for l in range(normw.shape[0]):
        bad += layer(x, l, pos0, dims, eps, normw, qkn, rotk, rot_q, rot_f, window, ropek, scaling, softcap,
                     cos, sin, lins, kc, vc)
    xs = x if all_logits else x[x.shape[0] - 1:]
    h = np.empty_like(xs)
    for m in range(xs.shape[0]):
        ops.rms_norm(xs[m], final_w, eps, h[m])
    return head_logits(h, head, final_cap, dims[6]), bad
