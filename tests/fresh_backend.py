"""A fresh backend written from docs/spec.md alone, structured like a GPU kernel (issue 25's test of the suite).

:class:`GpuStyleBackend` computes the operations a W4A8 kernel accelerates the
way a tiled GPU kernel does, in NumPy, **without calling the spec's compute
functions** (only the argument checks, ``fptq.spec.validate``, as §10 says, and
the constants of the format table):

* per-tensor and per-token INT8 quantization (§2.2, §2.3): a row's amax,
  ``max(amax / 127, 2**-126)``, one true division per element, ``rint``, clip;
* INT4 unpacking (§5): low nibble first, sign extension, the padding nibble
  of odd K ignored;
* the integer core (§6.1) walked in K tiles of :data:`TILE_K` = 64 columns
  inside each group: each tile's int8 x int4 products summed **in float32**
  (exact: at most 64 * 1920 < 2**24), converted to int32 and accumulated per
  group in int32; the asymmetric zero-point term ``z * sum(qx)`` per group;
* the pinned epilogue (§6.2), with a separate path for M >= :data:`BIG_M`
  (a kernel's big-tile path; the same math).

Every other operation is the reference's (it subclasses the NumPy backend).
The backend passes the conformance suite; ``tests/planted_gpu_bugs.py`` breaks
one hook of it at a time and ``tests/test_conformance_bites.py`` shows the suite
fails each. Select it as ``--backend fresh_backend:GpuStyleBackend`` with
``tests/`` on ``PYTHONPATH``.
"""

from __future__ import annotations

import numpy as np

from fptq.backends.numpy_backend import NumpyBackend
from fptq.spec import INT8_ACT, MIN_SCALE, WeightFormat
from fptq.spec import validate as V
from fptq.spec.arrays import NUMPY
from fptq.spec.formats import INT4_SIGN_OFFSET, NIBBLE_BITS, NIBBLE_MASK

F32 = np.float32
TILE_K = 64
BIG_M = 64


class GpuStyleBackend(NumpyBackend):
    """The W4A8 kernels as a tiled GPU kernel computes them (see the module docstring)."""

    name = "gpu-style"

    def describe(self) -> str:
        return f"{type(self).__name__}: a NumPy backend written from docs/spec.md, structured like a GPU kernel"

    # ------------------------------------------------------------------ hooks a planted bug may break

    def _host(self, a):
        """The kernel's view of an input array (a pointer and its strides)."""
        return a

    def _divide(self, x, s):
        """``fl(x / s)`` (§1.4 rule 3)."""
        return (x / s).astype(F32)

    def _row_amax(self, x):
        """Per-row amax of [M, K] (0 for K = 0)."""
        return np.abs(x).max(axis=1, initial=F32(0)).astype(F32)

    def _per_token_q(self, x, scale, amax):
        return self._quantize(self._divide(x, scale[:, None]))

    def _nibbles(self, packed, k: int, signed: bool):
        """§5: element 2i in the low nibble, 2i+1 in the high one; the odd-K padding nibble dropped."""
        lo, hi = packed & NIBBLE_MASK, packed >> NIBBLE_BITS
        q = np.stack([lo, hi], axis=2).reshape(packed.shape[0], 2 * packed.shape[1])[:, :k].astype(np.int64)
        return np.where(q >= INT4_SIGN_OFFSET, q - 2 * INT4_SIGN_OFFSET, q) if signed else q

    def _tile_sums(self, x, q):
        """[t, M, N] int32: each K tile's products summed in float32 (exact), then converted."""
        return np.matmul(x.astype(F32).transpose(1, 0, 2), q.astype(F32).transpose(1, 2, 0)).astype(np.int32)

    def _accumulate(self, tiles):
        """The group's int32 accumulator: the sum of its tiles (and the register it is held in)."""
        return tiles.sum(axis=0, dtype=np.int32)

    def _xsum(self, x_group):
        """``sum(qx)`` over a group's columns, per row, in int32."""
        return x_group.sum(axis=1, dtype=np.int32)

    def _correction(self, x, zero, lo, hi, g, gi):
        """The asymmetric term ``z[n, g] * sum(qx over the group's columns)``: [M, N] int32."""
        return zero[None, :, gi].astype(np.int32) * self._xsum(x[:, lo:hi])[:, None]

    def _to_float(self, acc):
        """int32 -> float32, round half to even (§1.4 rule 7)."""
        return acc.astype(F32)

    def _group_step(self, y, t, ws, gi, ng, big):
        """One group of the epilogue: ``y + fl(t * ws)``, two roundings (§1.4 rule 4)."""
        return (y + (t * ws).astype(F32)).astype(F32)

    def _finish(self, y, xs, bias, big):
        """``fl(y * xscale)`` then ``fl(y + bias)``."""
        y = (y * xs[:, None]).astype(F32)
        return y if bias is None else (y + bias[None, :]).astype(F32)

    # ------------------------------------------------------------------ the kernels

    @staticmethod
    def _quantize(y):
        return np.clip(np.rint(y), INT8_ACT.qmin, INT8_ACT.qmax).astype(np.int8)

    def quantize_act_per_tensor(self, x, scale):
        x, scale = V.quantize_act_per_tensor(NUMPY, x, scale)
        with np.errstate(all="ignore"):
            return self._quantize(self._divide(self._host(x), scale.reshape(-1)[0]))

    def quantize_act_per_token(self, x):
        x = self._host(V.quantize_act_per_token(NUMPY, x))
        amax = self._row_amax(x)
        scale = np.maximum((amax / F32(INT8_ACT.scale_divisor)).astype(F32), F32(MIN_SCALE)).astype(F32)
        with np.errstate(all="ignore"):
            return self._per_token_q(x, scale, amax), scale

    def unpack_int4(self, packed, k, signed=True):
        packed, k = V.unpack_int4(NUMPY, packed, k, signed)
        return self._nibbles(self._host(packed), k, bool(signed)).astype(np.int8)

    def _sums(self, qx, packed, zero, k: int, g: int, fmt: WeightFormat):
        """int32 [M, N, ng]: per group, K tiles of 64 inside it, exact float32 tile products."""
        qx, packed = self._host(qx), self._host(packed)
        q = self._nibbles(packed, k, fmt is WeightFormat.SYMMETRIC)
        m, n, ng = qx.shape[0], q.shape[0], -(-k // g)
        acc = np.zeros((m, n, ng), np.int32)
        x = qx.astype(np.int64)
        for gi in range(ng):
            lo, hi = gi * g, min((gi + 1) * g, k)
            t = -(-(hi - lo) // TILE_K)
            pad = t * TILE_K - (hi - lo)
            xt = np.pad(x[:, lo:hi], ((0, 0), (0, pad))).reshape(m, t, TILE_K)
            qt = np.pad(q[:, lo:hi], ((0, 0), (0, pad))).reshape(n, t, TILE_K)
            acc[:, :, gi] = self._accumulate(self._tile_sums(xt, qt)) if m and n else 0
            if zero is not None and m and n:
                acc[:, :, gi] -= self._correction(x, zero, lo, hi, g, gi)
        return acc

    def _epilogue(self, acc, wscale, xscale, bias):
        m, n, ng = acc.shape
        xs = xscale.reshape(-1)
        xs = np.full(m, xs[0], F32) if xs.shape[0] != m else xs
        big = m >= BIG_M
        y = np.zeros((m, n), F32)
        with np.errstate(all="ignore"):
            for gi in range(ng):
                y = self._group_step(y, self._to_float(acc[:, :, gi]), wscale[None, :, gi], gi, ng, big)
            return self._finish(y, xs, bias, big)

    def w4a8_group_sums(self, qx, packed, zero, k, group_size, fmt=WeightFormat.SYMMETRIC):
        qx, packed, zero, k, g, fmt = V.w4a8_group_sums(NUMPY, qx, packed, zero, k, group_size, fmt)
        return self._sums(qx, packed, zero, k, g, fmt)

    def w4a8_epilogue(self, acc, wscale, xscale, bias=None):
        acc, wscale, xscale, bias = V.w4a8_epilogue(NUMPY, acc, wscale, xscale, bias)
        return self._epilogue(self._host(acc), self._host(wscale), xscale, bias)

    def w4a8_matmul(self, qx, xscale, packed, wscale, zero, k, group_size, fmt=WeightFormat.SYMMETRIC, bias=None):
        qx, xscale, packed, wscale, zero, k, g, fmt, bias = V.w4a8_matmul(
            NUMPY, qx, xscale, packed, wscale, zero, k, group_size, fmt, bias)
        return self._epilogue(self._sums(qx, packed, zero, k, g, fmt), self._host(wscale), xscale, bias)
