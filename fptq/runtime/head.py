"""The lm_head of the runtime: logits of the final normed rows, four ways (``head[0]``, the kind).

* ``HEAD_F32`` (0): a float32 ``[V, H]`` matrix, float32 dot products.
* ``HEAD_BF16`` (1): the same matrix held as bfloat16 bit patterns (uint16), half the bytes read per
  token. Used only when every float32 value of the head is a bfloat16 value (a checkpoint's default
  ``float_dtype``), so the products are the same as with ``HEAD_F32``: lossless.
* ``HEAD_INT8`` (2): INT8 rows (``--int8-embeddings``, or :class:`fptq.runtime.Runtime`'s
  ``int8_head``) by integer kernels: the row ``x`` quantized per token to INT8 by the spec's rule
  (``scale = max(amax / 127, 2**-126)``, ``rint`` half to even, clip to +-127), then per vocabulary
  row ``v`` the exact int32 sum ``acc = sum_h qx[h] q[v, h]`` and ``logit = float32(acc) * scale[v]
  * xscale`` (the spec's epilogue order for one group). This quantizes the activation, which the
  transformers path (:class:`fptq.models.int8rows.Int8LMHead`, float32 ``x`` times the dequantized
  rows) does not: its logits differ from the reference's by the INT8 rounding of ``x``.
* ``HEAD_INT8_FLOAT`` (3): the same INT8 rows, ``x`` kept float32: ``sum_h x[h] (float32(q[v, h]) *
  scale[v])``, the reference's formula (float order aside).

Vocabulary rows run in parallel chunks (one chunk per thread); each chunk's work is a separate
function so that LLVM vectorizes its inner loops (``fptq/backends/numba_kernels/_jit.py``).
"""

from __future__ import annotations

import numba
import numpy as np

from ..backends.numba_kernels import activation
from ..backends.numba_kernels.blocked import bits_as_float
from .ops import F32, OPTS, fnjit, njit

HEAD_F32, HEAD_BF16, HEAD_INT8, HEAD_INT8_FLOAT = 0, 1, 2, 3
#: kind -> its name in reports (``fptq eval``'s ``model_kind``)
HEAD_KIND_NAMES = {HEAD_F32: "float32", HEAD_BF16: "bfloat16", HEAD_INT8: "int8", HEAD_INT8_FLOAT: "int8w"}


@fnjit
def _rows_f32(x, w, v0, v1, out):
    for v in range(v0, v1):
        acc = F32(0.0)
        for i in range(x.size):
            acc += x[i] * w[v, i]
        out[v] = acc


@fnjit
def _rows_bf16(x, w, v0, v1, out):
    """Each row's bfloat16 bits widened (``bits << 16``, exact) inside the dot product's one loop (a
    separate widening pass into a buffer ran at half the speed: 20 vs 44 GB/s from cache, one thread;
    the same sums, bit for bit, on the 1.5B model's shape)."""
    for v in range(v0, v1):
        row = w[v]
        acc = F32(0.0)
        for i in range(x.size):
            acc += x[i] * bits_as_float(np.uint32(row[i]) << np.uint32(16))
        out[v] = acc


@njit
def _rows_int8(qx, xs, w, ws, v0, v1, out):
    for v in range(v0, v1):
        acc = np.int32(0)
        row = w[v]
        for i in range(qx.size):   # |product| <= 127 * 127 fits int16; the int32 sum is exact for H < 2**17
            acc = np.int32(acc + np.int32(np.int16(qx[i]) * np.int16(row[i])))
        out[v] = F32(acc) * ws[v] * xs


@fnjit
def _rows_int8_float(x, w, ws, v0, v1, out):
    """``logit[v] = sum_h x[h] (float32(q[v, h]) * scale[v])``, float32 sums, h ascending (the scale inside the
    loop: LLVM vectorizes this form better than one multiply after the sum, measured 6.42 vs 9.47 ms)."""
    for v in range(v0, v1):
        acc = F32(0.0)
        row = w[v]
        s = ws[v]
        for i in range(x.size):
            acc += x[i] * (F32(row[i]) * s)
        out[v] = acc


@njit
def _chunk(x, qx, xs, head, v0, v1, out):
    kind, wf, wb, wq, ws = head
    if kind == HEAD_F32:
        _rows_f32(x, wf, v0, v1, out)
    elif kind == HEAD_BF16:
        _rows_bf16(x, wb, v0, v1, out)
    elif kind == HEAD_INT8:
        _rows_int8(qx, xs, wq, ws, v0, v1, out)
    else:
        _rows_int8_float(x, wq, ws, v0, v1, out)


@njit
def quantize_token(x):
    """The spec's per-token INT8 of one float32 row -> (int8 codes, float32 scale)."""
    amax = F32(0.0)
    for i in range(x.size):
        amax = max(amax, abs(x[i]))
    s = activation.scale_from_amax(amax)
    q = np.empty(x.size, np.int8)
    for i in range(x.size):
        q[i] = activation.quantize_one(x[i], s)
    return q, s


@numba.njit(parallel=True, **OPTS)
def _row_logits(x, head, out, chunks):
    qx, xs = quantize_token(x)
    vocab = out.size
    step = (vocab + chunks - 1) // chunks
    for c in numba.prange(chunks):
        _chunk(x, qx, xs, head, c * step, min((c + 1) * step, vocab), out)


@njit
def head_logits(h, head, final_cap, threads):
    """Logits float32 [R, V] of the final normed rows h [R, H] (``final_cap`` > 0: Gemma-2's
    ``tanh(logit / cap) * cap``)."""
    kind, wf, wb, wq, ws = head
    vocab = ws.shape[0]
    out = np.empty((h.shape[0], vocab), F32)
    for m in range(h.shape[0]):
        _row_logits(h[m], head, out[m], max(threads, 1))
        if final_cap > 0:
            for v in range(vocab):
                out[m, v] = np.tanh(out[m, v] / final_cap) * final_cap
    return out
