"""A decoded token's W4A8 linears on every thread (two on the 2-core machine): one parallel region per
group of linears that share an input (q, k, v; o; gate, up; down), the group's weight blocks dealt to the
threads in equal shares.

Per group, the input row is quantized once on the calling thread (:func:`fptq.backends.numba_kernels.
blocked.quantize_input`: the bytes each linear's own call would make; a linear whose activation rule
differs from the first one's gets its own), then each thread runs the blocked kernel
(:func:`fptq.backends.numba_kernels.blocked.blocks_into`) over its share of the group's blocks, counted
across the group's linears (q, k and v in one list: on two threads the 1.5B model's 96 + 16 + 16 blocks
split 64 | 64, not q | k + v). Every output lane is one weight row's own 16-lane block, computed by the same tile
from the same inputs, so the outputs are the bits of :func:`fptq.runtime.forward.linear_serial`.

Why: at decode (M = 1) a linear reads each weight byte once; one thread reads DRAM at about half
the rate two do (measured 27.6 vs 53.6 GB/s on the 2-core machine), and the blocked kernel's
parallel path (``linear_parallel``) wakes the thread pool once per linear and splits in panels sized
for prefill. :func:`group` is used from :data:`SPLIT_MIN_MACS` multiply-adds per group (below it a
thread wake-up costs about what the second thread saves).

A prefill (M > ``blocked.TILE_M`` rows) runs its groups here too (:func:`prefill_parts`): the input
quantized once per group, in parallel row chunks, instead of once per linear (q, k and v quantized the
same 512 x 1536 input three times), and the group's blocks dealt in shares of about one panel
(``blocked.panel_size``), so k and v (16 blocks each on the 1.5B model) no longer run as products of
their own too small for two threads (35-48% of the int8 roof in session 19).
"""

from __future__ import annotations

import numba
import numpy as np

from ..backends.numba_kernels import blocked
from .ops import F32, OPTS, njit

__all__ = ["SPLIT_MIN_MACS", "NEVER", "group", "prefill_parts"]

#: multiply-adds (M * N * K, summed over a group's linears) from which a decoded token's group runs on
#: two threads: every group of Qwen2.5-1.5B (the smallest, o, 2.4M) and none of SmolLM2-135M (its
#: largest, gate + up, 1.8M: measured 1.40x llama.cpp on one thread)
SPLIT_MIN_MACS = 1 << 21
#: a ``split_min`` that no group reaches
NEVER = 1 << 62


@njit
def _quantized(x, lin, l):
    wb, zc, wsb, bb, act, dyn, hasb, g, steps_last, n, panel = lin
    if x.shape[0] > blocked.TILE_M:
        return blocked.quantize_input_parallel(x, act[l], dyn[l], wb[l], zc[l], g)
    return blocked.quantize_input(x, act[l], dyn[l], wb[l], zc[l], g)


@njit
def prefill_parts(la, lb, lc, count):
    """The shares a prefill's group is dealt in: about one panel (the first linear's, ``la[10]``) of
    blocks each, counted over the group's linears."""
    total = la[0].shape[1] + (lb[0].shape[1] if count > 1 else 0) + (lc[0].shape[1] if count > 2 else 0)
    return max(1, (total + la[10] - 1) // la[10])


@njit
def _same_rule(la, lb, l) -> bool:
    return la[4][l] == lb[4][l] and la[5][l] == lb[5][l]


@njit
def _part(qin, lin, l, y, off, c0, c1):
    """Linear ``lin``'s blocks in the group's block range c0..c1 (its own blocks start at ``off``)."""
    wb, zc, wsb, bb, act, dyn, hasb, g, steps_last, n, panel = lin
    nblk = wb.shape[1]
    b0, b1 = max(c0 - off, 0), min(c1 - off, nblk)
    if b1 > b0:
        xq, xs, xsum, _ = qin
        blocked.blocks_into(xq, xs, xsum, wb[l], zc[l], wsb[l], bb[l], hasb, g, steps_last, b0, b1, y)


@numba.njit(parallel=True, **OPTS)
def _region(qa, qb, qc, la, lb, lc, count, l, ya, yb, yc, parts):
    na, nb = la[0].shape[1], lb[0].shape[1]
    total = na + (nb if count > 1 else 0) + (lc[0].shape[1] if count > 2 else 0)
    for i in numba.prange(parts):
        c0, c1 = i * total // parts, (i + 1) * total // parts
        _part(qa, la, l, ya, 0, c0, c1)
        if count > 1:
            _part(qb, lb, l, yb, na, c0, c1)
        if count > 2:
            _part(qc, lc, l, yc, na + nb, c0, c1)


@njit
def _out(m, lin):
    return np.empty((m, lin[0].shape[1] * blocked.LANES), F32)


@njit
def _trim(y, n):
    return y if y.shape[1] == n else np.ascontiguousarray(y[:, :n])


@njit
def group(x, la, lb, lc, count, l, parts):
    """The first ``count`` (1 to 3) of the linears la, lb, lc of layer ``l`` on float32 x [M, K], their
    blocks dealt in ``parts`` equal shares to the threads -> (ya, yb, yc, bad): float32 [M, n] each (unused ones are ``ya``), ``bad`` counting rows of
    x or of an output holding a NaN/Inf (as the serial calls would, summed)."""
    qa = _quantized(x, la, l)
    qb = qa if count < 2 or _same_rule(la, lb, l) else _quantized(x, lb, l)
    qc = qa if count < 3 or _same_rule(la, lc, l) else _quantized(x, lc, l)
    m = x.shape[0]
    ya = _out(m, la)
    yb = _out(m, lb) if count > 1 else ya
    yc = _out(m, lc) if count > 2 else ya
    bad = qa[3] + (qb[3] if count > 1 else 0) + (qc[3] if count > 2 else 0)
    if bad:
        return _trim(ya, la[9]), _trim(yb, lb[9]), _trim(yc, lc[9]), bad
    _region(qa, qb, qc, la, lb, lc, count, l, ya, yb, yc, max(parts, 1))
    bad += blocked.nonfinite_rows(ya, la[9])
    if count > 1:
        bad += blocked.nonfinite_rows(yb, lb[9])
    if count > 2:
        bad += blocked.nonfinite_rows(yc, lc[9])
    return _trim(ya, la[9]), _trim(yb, lb[9]), _trim(yc, lc[9]), bad
