"""The runtime's causal attention over the KV cache: blocks of query rows, one float order for every row.

Keys are cached transposed (``kt`` [nkv, hd, T]) and values by row (``vc`` [nkv, T, hd]). A work item
is one KV head and a block of query rows with the query heads that share it (GQA), so each cached key
and value is loaded once per block, not once per query row. Every query row (position ``p``, keys
``t0 .. p``, :func:`fptq.runtime.ops.window_start`) gets the same float operations in the same order
whichever block it sits in -- a token decoded alone and the same token inside a prefill give the same
bits (``tests/test_runtime.py``):

* score ``s_t = (sum_d q[d] k[t, d]) * scaling``: the sum over ``d`` ascending, one float32 multiply
  and add per term (the loops run across keys, so they vectorize without reassociation);
  ``softcap > 0``: ``s_t = tanh(s_t / cap) * cap``;
* ``e_t = exp(s_t - max_t s_t)`` by :func:`fptq.runtime.ops.exp_into` (a vectorizable float32 exp,
  within 1 ulp of the exact value); ``tot = sum_t e_t`` in 16 lanes (lane ``(t - t0) % 16``, each ascending), the lanes
  then added in order; ``w_t = e_t * (1 / tot)``;
* ``out[d] = sum_t w_t v[t, d]``, ``t`` ascending, one multiply and add per term.

transformers computes the same formulas in torch's order (its matmul's and softmax's sums), so the two
agree within float32 rounding, not bit for bit.
"""

from __future__ import annotations

import numba
import numpy as np

from .block_product import GROUPS, block_product
from .ops import F32, OPTS, exp_into, njit, window_start

#: query rows per work item (times the query heads sharing a KV head)
ROWS = 8
LANES = 16
#: keys per score chunk of :func:`_scores_rows` (the chunk's scores of an item's rows stay in L1)
KEYS = 256

@njit
def _scores(q, kt, g, grp, hd, m0, m1, lo, hi, s, qv):
    """``s[i, t - lo]`` = the dot products of item row i (row ``m0 + i // grp``, head ``g grp + i % grp``)
    with keys ``lo .. hi-1``: every row against every key of the item's range (a row's keys past its
    position or before its window are computed and not used; at most ROWS - 1 per row), 16 keys at a
    time by :func:`fptq.runtime.block_product.block_product` on the rows' query vectors gathered into
    ``qv`` [rows, hd], the last ``(hi - lo) % 16`` keys by :func:`_dots`; each score summed d ascending
    from +0.0 either way."""
    for m in range(m0, m1):
        for j in range(grp):
            h = (g * grp + j) * hd
            qv[(m - m0) * grp + j, :] = q[m, h:h + hd]
    nv, cap = (m1 - m0) * grp, kt.shape[2]
    full = (hi - lo) - (hi - lo) % LANES
    if full > 0:
        block_product(np.int64(qv.ctypes.data), np.int64(hd), np.int64(kt.ctypes.data) + (g * hd * cap + lo) * 4,
                      np.int64(cap), np.int64(hd), np.int64(full), np.int64(nv), np.int64(s.ctypes.data),
                      np.int64(s.shape[1]))
    if full < hi - lo:
        for i in range(nv):
            s[i, full:hi - lo] = F32(0.0)
            _dots(qv[i], kt, g, lo + full, s[i, full:hi - lo], hd)


@njit
def _scores_rows(q, kt, g, grp, hd, pos0, m0, m1, lo, hi, window, s):
    """:func:`_scores` for an item of fewer than ``block_product.GROUPS`` query vectors (a decoded token's
    heads of one KV head: the tile would run one vector at a time, on one sum's latency): only each row's
    own keys, chunk by chunk of :data:`KEYS` keys; three heads per pass over the keys, then one by one. (Inner loops index views from 0: Numba then drops
    its negative-index fix-up and LLVM vectorizes.)"""
    for c0 in range(lo, hi, KEYS):
        for m in range(m0, m1):
            p = pos0 + m
            a, b = max(c0, window_start(p, window)), min(c0 + KEYS, hi, p + 1)
            if b <= a:
                continue
            i0, h0 = (m - m0) * grp, g * grp
            for i in range(i0, i0 + grp):
                s[i, a - lo:b - lo] = F32(0.0)
            for j in range(0, grp - grp % 3, 3):
                h = (h0 + j) * hd
                _dots3(q[m, h:h + hd], q[m, h + hd:h + 2 * hd], q[m, h + 2 * hd:h + 3 * hd], kt, g, a,
                       s[i0 + j, a - lo:b - lo], s[i0 + j + 1, a - lo:b - lo], s[i0 + j + 2, a - lo:b - lo])
            for j in range(grp - grp % 3, grp):
                _dots(q[m, (h0 + j) * hd:], kt, g, a, s[i0 + j, a - lo:b - lo], hd)


@njit
def _dots3(qa, qb, qc, kt, g, a, sa, sb, sc):
    """:func:`_dots` of three query heads against the same keys, four d at a time (each score the
    same operations in the same order)."""
    n, hd = sa.size, qa.size
    full = hd - hd % 4
    for d in range(0, full, 4):
        k0, k1, k2, k3 = kt[g, d, a:a + n], kt[g, d + 1, a:a + n], kt[g, d + 2, a:a + n], kt[g, d + 3, a:a + n]
        a0, a1, a2, a3 = qa[d], qa[d + 1], qa[d + 2], qa[d + 3]
        b0, b1, b2, b3 = qb[d], qb[d + 1], qb[d + 2], qb[d + 3]
        c0, c1, c2, c3 = qc[d], qc[d + 1], qc[d + 2], qc[d + 3]
        for u in range(n):
            x0, x1, x2, x3 = k0[u], k1[u], k2[u], k3[u]
            sa[u] = (((sa[u] + a0 * x0) + a1 * x1) + a2 * x2) + a3 * x3
            sb[u] = (((sb[u] + b0 * x0) + b1 * x1) + b2 * x2) + b3 * x3
            sc[u] = (((sc[u] + c0 * x0) + c1 * x1) + c2 * x2) + c3 * x3
    for d in range(full, hd):
        kd = kt[g, d, a:a + n]
        for u in range(n):
            sa[u] = sa[u] + qa[d] * kd[u]
            sb[u] = sb[u] + qb[d] * kd[u]
            sc[u] = sc[u] + qc[d] * kd[u]


@njit
def _dots(qh, kt, g, a, sv, hd):
    """``sv[u] += sum_d qh[d] kt[g, d, a + u]``, d ascending, one float32 multiply and add per term; eight
    d at a time (the same operations, one load and store of ``sv`` per eight terms)."""
    full = hd - hd % 8
    n = sv.size
    for d in range(0, full, 8):
        k0, k1, k2, k3 = kt[g, d, a:a + n], kt[g, d + 1, a:a + n], kt[g, d + 2, a:a + n], kt[g, d + 3, a:a + n]
        k4, k5, k6, k7 = kt[g, d + 4, a:a + n], kt[g, d + 5, a:a + n], kt[g, d + 6, a:a + n], kt[g, d + 7, a:a + n]
        q0, q1, q2, q3, q4, q5, q6, q7 = qh[d], qh[d + 1], qh[d + 2], qh[d + 3], qh[d + 4], qh[d + 5], qh[d + 6], qh[d + 7]
        for u in range(n):
            acc = sv[u] + q0 * k0[u]
            acc = acc + q1 * k1[u]
            acc = acc + q2 * k2[u]
            acc = acc + q3 * k3[u]
            acc = acc + q4 * k4[u]
            acc = acc + q5 * k5[u]
            acc = acc + q6 * k6[u]
            sv[u] = acc + q7 * k7[u]
    for d in range(full, hd):
        kd = kt[g, d, a:a + n]
        for u in range(n):
            sv[u] = sv[u] + qh[d] * kd[u]


@njit
def _lane_max(row, n, lanes):
    """max of row[:n] (n >= 1) in 16 lanes (exact, so the same value in any order)."""
    lanes[:] = row[0]
    full = n - n % LANES
    for b in range(0, full, LANES):
        for j in range(LANES):
            lanes[j] = max(lanes[j], row[b + j])
    mx = lanes[0]
    for j in range(full, n):
        mx = max(mx, row[j])
    for j in range(LANES):
        mx = max(mx, lanes[j])
    return mx


@njit
def _softmax_row(row, n, scaling, softcap, bits, lanes):
    """``row[:n]``: scores -> softmax weights (see the module docstring)."""
    for t in range(n):
        row[t] = row[t] * scaling
    if softcap > 0:
        for t in range(n):
            row[t] = np.tanh(row[t] / softcap) * softcap
    mx = _lane_max(row, n, lanes)
    for t in range(n):
        row[t] = row[t] - mx
    exp_into(row, 0, n, bits)
    lanes[:] = 0.0
    full = n - n % LANES
    for b in range(0, full, LANES):
        for j in range(LANES):
            lanes[j] = lanes[j] + row[b + j]
    for j in range(n - full):
        lanes[j] = lanes[j] + row[full + j]
    tot = F32(0.0)
    for j in range(LANES):
        tot = tot + lanes[j]
    inv = F32(1.0) / tot
    for t in range(n):
        row[t] = row[t] * inv


@njit
def _weighted_sum(w, vc, g, t0, o):
    """``o[d] = sum_j w[j] vc[g, t0 + j, d]``, j ascending, one float32 multiply and add per term,
    from ``o = +0.0``; eight j at a time (the same operations, one load and store of ``o`` per eight)."""
    n, hd = w.size, o.size
    for d in range(hd):
        o[d] = F32(0.0)
    full = n - n % 8
    for j in range(0, full, 8):
        t = t0 + j
        w0, w1, w2, w3, w4, w5, w6, w7 = w[j], w[j + 1], w[j + 2], w[j + 3], w[j + 4], w[j + 5], w[j + 6], w[j + 7]
        for d in range(hd):
            acc = o[d] + w0 * vc[g, t, d]
            acc = acc + w1 * vc[g, t + 1, d]
            acc = acc + w2 * vc[g, t + 2, d]
            acc = acc + w3 * vc[g, t + 3, d]
            acc = acc + w4 * vc[g, t + 4, d]
            acc = acc + w5 * vc[g, t + 5, d]
            acc = acc + w6 * vc[g, t + 6, d]
            o[d] = acc + w7 * vc[g, t + 7, d]
    for j in range(full, n):
        for d in range(hd):
            o[d] = o[d] + w[j] * vc[g, t0 + j, d]


@njit
def _weighted_sum3(wa, wb, wc, vc, g, t0, oa, ob, oc):
    """:func:`_weighted_sum` of three query heads sharing KV head ``g`` (same keys), in one pass over
    the values (each output the same operations in the same order)."""
    n, hd = wa.size, oa.size
    for d in range(hd):
        oa[d], ob[d], oc[d] = F32(0.0), F32(0.0), F32(0.0)
    full = n - n % 4
    for j in range(0, full, 4):
        t = t0 + j
        a0, a1, a2, a3 = wa[j], wa[j + 1], wa[j + 2], wa[j + 3]
        b0, b1, b2, b3 = wb[j], wb[j + 1], wb[j + 2], wb[j + 3]
        c0, c1, c2, c3 = wc[j], wc[j + 1], wc[j + 2], wc[j + 3]
        for d in range(hd):
            v0, v1, v2, v3 = vc[g, t, d], vc[g, t + 1, d], vc[g, t + 2, d], vc[g, t + 3, d]
            oa[d] = (((oa[d] + a0 * v0) + a1 * v1) + a2 * v2) + a3 * v3
            ob[d] = (((ob[d] + b0 * v0) + b1 * v1) + b2 * v2) + b3 * v3
            oc[d] = (((oc[d] + c0 * v0) + c1 * v1) + c2 * v2) + c3 * v3
    for j in range(full, n):
        for d in range(hd):
            v = vc[g, t0 + j, d]
            oa[d] = oa[d] + wa[j] * v
            ob[d] = ob[d] + wb[j] * v
            oc[d] = oc[d] + wc[j] * v


@njit
def attend_item(q, kt, vc, pos0, m0, m1, g, grp, hd, scaling, window, softcap, out, s, bits, lanes, qv):
    """Query rows m0..m1-1 with the ``grp`` query heads of KV head ``g`` -> their ``out`` columns."""
    lo, hi = window_start(pos0 + m0, window), pos0 + m1
    tiled = (m1 - m0) * grp >= GROUPS          # enough query vectors for block_product's register tile
    if tiled:
        _scores(q, kt, g, grp, hd, m0, m1, lo, hi, s, qv)
    else:
        _scores_rows(q, kt, g, grp, hd, pos0, m0, m1, lo, hi, window, s)
    for m in range(m0, m1):
        p = pos0 + m
        t0 = window_start(p, window)
        for i in range((m - m0) * grp, (m - m0 + 1) * grp):
            _softmax_row(s[i, t0 - lo:p + 1 - lo], p + 1 - t0, scaling, softcap, bits, lanes)
    if tiled and hd % LANES == 0:
        _weighted_sums_block(vc, pos0, m0, m1, g, grp, hd, window, lo, hi, out, s, qv)
        return
    for m in range(m0, m1):
        p = pos0 + m
        t0 = window_start(p, window)
        i0, h0 = (m - m0) * grp, g * grp
        for j in range(0, grp - grp % 3, 3):    # three heads per pass over the values, then one by one
            h = h0 + j
            _weighted_sum3(s[i0 + j, t0 - lo:p + 1 - lo], s[i0 + j + 1, t0 - lo:p + 1 - lo],
                           s[i0 + j + 2, t0 - lo:p + 1 - lo], vc, g, t0, out[m, h * hd:(h + 1) * hd],
                           out[m, (h + 1) * hd:(h + 2) * hd], out[m, (h + 2) * hd:(h + 3) * hd])
        for j in range(grp - grp % 3, grp):
            h = h0 + j
            _weighted_sum(s[i0 + j, t0 - lo:p + 1 - lo], vc, g, t0, out[m, h * hd:(h + 1) * hd])


@njit
def _weighted_sums_block(vc, pos0, m0, m1, g, grp, hd, window, lo, hi, out, s, ov):
    """Every item row's weighted sum over the item's keys lo..hi-1 in one
    :func:`fptq.runtime.block_product.block_product` (hd a multiple of 16), into ``ov`` [rows, hd], then
    the rows' ``out`` columns. A row's weights outside its own keys ``t0 .. p`` are set to +0.0 first:
    its sum starts at +0.0 and stays +0.0 through the leading terms (``0 * v`` is +-0.0 for a finite v,
    and ``+0.0 + -0.0`` is +0.0), then takes :func:`_weighted_sum`'s terms in its order, and a trailing
    ``+-0.0`` leaves it unchanged (a sum started at +0.0 is never -0.0): the bits of the row alone.
    (A non-finite cached value inside the item's range would spread to its other rows; the forward then
    stops on the NaN/Inf anyway.)"""
    for m in range(m0, m1):
        p = pos0 + m
        t0 = window_start(p, window)
        for i in range((m - m0) * grp, (m - m0 + 1) * grp):
            s[i, :t0 - lo] = F32(0.0)
            s[i, p + 1 - lo:hi - lo] = F32(0.0)
    nv, cap = (m1 - m0) * grp, vc.shape[1]
    block_product(np.int64(s.ctypes.data), np.int64(s.shape[1]), np.int64(vc.ctypes.data) + (g * cap + lo) * hd * 4,
                  np.int64(hd), np.int64(hi - lo), np.int64(hd), np.int64(nv), np.int64(ov.ctypes.data), np.int64(hd))
    for m in range(m0, m1):
        for j in range(grp):
            h = g * grp + j
            out[m, h * hd:(h + 1) * hd] = ov[(m - m0) * grp + j]


@njit
def _dense(a) -> bool:
    """Whether the float32 3-D array ``a`` is C-contiguous (the block product walks it by address)."""
    return a.strides[2] == 4 and a.strides[1] == 4 * a.shape[2] and a.strides[0] == 4 * a.shape[1] * a.shape[2]


@njit
def _items(q, kt, vc, pos0, nh, nkv, hd, scaling, window, softcap, out, first, step):
    """Work items first, first + step, ... (item j: KV head ``j % nkv``, row block ``j // nkv``)."""
    grp = nh // nkv
    m_rows = q.shape[0]
    if not _dense(kt):
        raise ValueError("attention: the transposed keys must be a C-contiguous float32 [nkv, hd, T] array")
    if not _dense(vc):
        raise ValueError("attention: the cached values must be a C-contiguous float32 [nkv, T, hd] array")
    n_items = nkv * ((m_rows + ROWS - 1) // ROWS)
    s = np.empty((ROWS * grp, pos0 + m_rows), F32)
    bits = np.empty(pos0 + m_rows, np.int32)
    lanes = np.empty(LANES, F32)
    qv = np.empty((ROWS * grp, hd), F32)
    for j in range(first, n_items, step):
        g, m0 = j % nkv, (j // nkv) * ROWS
        attend_item(q, kt, vc, pos0, m0, min(m0 + ROWS, m_rows), g, grp, hd, scaling, window, softcap, out,
                    s, bits, lanes, qv)


@njit
def attend(q, kt, vc, pos0, nh, nkv, hd, scaling, window, softcap, out):
    """Attention of every query row (q [M, nh*hd], positions ``pos0 + m``) on one thread into out."""
    _items(q, kt, vc, pos0, nh, nkv, hd, scaling, window, softcap, out, 0, 1)


@numba.njit(parallel=True, **OPTS)
def attend_parallel(q, kt, vc, pos0, nh, nkv, hd, scaling, window, softcap, out, threads):
    """:func:`attend` with the work items dealt round-robin to ``threads`` threads (blocks later in a
    causal prompt cost more; dealing them in turn balances the threads)."""
    for i in numba.prange(threads):
        _items(q, kt, vc, pos0, nh, nkv, hd, scaling, window, softcap, out, i, threads)
