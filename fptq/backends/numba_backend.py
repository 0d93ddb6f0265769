"""The ``numba`` backend: every spec primitive as Numba-compiled code on NumPy arrays.

For CPU-only machines without a deep-learning framework. Arrays are NumPy
arrays (``from_numpy``/``to_numpy`` are the identity). A
:class:`fptq.backends.base.BackendBase`: each operation is checked once by
the base class (the spec's check of the same name over the NumPy adapter, so
it rejects exactly what the reference rejects, with the same errors), which
then calls this class's hook ``_<op>_unchecked``: the arrays made
C-contiguous and a kernel of :mod:`fptq.backends.numba_kernels`. Nothing is
re-checked inside, and results are never re-checked. Results are
bit-identical to :mod:`fptq.spec` (``lae_scales`` is allowed 2 ulp for its
log2; it computes log2 in float64 like the reference and matches it).

The W4A8 matmul works on the packed weights directly (no unpacked copy), on one
of four paths with identical bits: ``decode`` (M <= ``decode_max_m``),
``blocked`` (larger M, G a multiple of 8: the weights re-laid out per call into
the VNNI blocks of the prepared linear), ``tiled`` (larger M, other even G) and
``generic`` (odd G); see :mod:`fptq.backends.numba_kernels.matmul` and, for the
SIMD dot products they are built on, :mod:`fptq.backends.numba_kernels.simd`
and :mod:`fptq.backends.numba_kernels.blocked`.

A model's layers take the prepared path (``prepare_linear``, hook
:meth:`NumbaBackend._prepare_kernel`; :meth:`NumbaBackend.linear_forward`): the
weights are re-laid out once, and each forward is one compiled call (check of
x, quantization, matmul, epilogue).

Compilation is lazy (first call of each kernel) and cached on disk
(``cache=True``): the first process pays the compile time, later ones load it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .. import spec
from ..spec import WeightFormat
from ..spec.formats import FLOAT
from ..spec.weights import num_groups
from .base import BackendBase, BackendUnavailable

__all__ = ["NumbaBackend"]


@dataclasses.dataclass(frozen=True)
class _Blocked:
    """A layer's weights in the blocked VNNI layout (:mod:`fptq.backends.numba_kernels.blocked`)."""

    wb: np.ndarray           # uint8 [nblk, steps, 64]
    zc: np.ndarray           # uint8 [nblk, ng, 16] zero points of the unsigned nibbles
    wsb: np.ndarray          # float32 [nblk, ng, 16] weight scales
    bb: np.ndarray           # float32 [16 * nblk] bias (0 past N, or all 0)
    has_bias: bool
    act: np.float32          # the static activation scale (1 for the dynamic policy, unused)
    dynamic: bool
    steps_last: int          # 8-column steps of the last group
    n: int
    k: int


def _c(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a)


def _zeros_u8(n: int, ng: int) -> np.ndarray:
    return np.zeros((n, ng), np.uint8)


class NumbaBackend(BackendBase):
    """Numba-compiled kernels for every operation of :class:`fptq.backends.Backend`.

    Args:
        decode_max_m: largest M served by the decode matmul path (default
            :data:`~fptq.backends.numba_kernels.matmul.DECODE_MAX_M`); 0 sends
            every M to the tiled path.
    """

    name = "numba"
    device = "cpu"
    array_type = np.ndarray

    def __init__(self, decode_max_m: int | None = None):
        try:
            import numba
        except ImportError as e:
            raise BackendUnavailable("numba is not installed: pip install 'fptq[numba]'") from e
        from . import numba_kernels as kernels

        self._numba = numba
        self.k = kernels
        self.decode_max_m = kernels.matmul.DECODE_MAX_M if decode_max_m is None else int(decode_max_m)

    def from_numpy(self, a: np.ndarray) -> np.ndarray:
        return np.asarray(a)

    def to_numpy(self, t) -> np.ndarray:
        return np.asarray(t)

    def describe(self) -> str:
        try:
            layer = self._numba.threading_layer()          # known once a parallel kernel ran
        except ValueError:
            layer = self._numba.config.THREADING_LAYER
        return (f"numba {self._numba.__version__} (CPU, {self._numba.get_num_threads()} threads, "
                f"threading layer {layer}; numpy {np.__version__})")

    # ------------------------------------------------------------------ activations (section 2)

    def _act_scale_from_amax_unchecked(self, amax):
        return self.k.activation.act_scale_from_amax(_c(amax).reshape(-1)).reshape(amax.shape)

    def _quantize_act_per_tensor_unchecked(self, x, scale):
        return self.k.activation.quantize_per_tensor(_c(x).reshape(-1), scale.reshape(-1)[0]).reshape(x.shape)

    def _quantize_act_per_token_unchecked(self, x):
        return self.k.activation.quantize_per_token(_c(x))

    def _dequantize_act_unchecked(self, q, scale, per_token):
        if per_token:
            return self.k.activation.dequantize_per_token(_c(q), _c(scale))
        out = self.k.activation.dequantize_per_tensor(_c(q).reshape(-1), scale.reshape(-1)[0])
        return out.reshape(q.shape)

    # ------------------------------------------------------------------ LAE (section 3)

    def _lae_scales_unchecked(self, channel_max):
        return self.k.lae.lae_scales(_c(channel_max))

    def _lae_apply_activation_unchecked(self, x, s):
        return self.k.lae.lae_apply_activation(_c(x), _c(s))

    def _lae_apply_weight_unchecked(self, w, s):
        return self.k.lae.lae_apply_weight(_c(w), _c(s))

    # ------------------------------------------------------------------ weights (section 4)

    def _weight_scales_unchecked(self, w, g, fmt):
        g = max(min(g, w.shape[1]), 1)                 # G > K is one group of K columns
        if fmt is WeightFormat.SYMMETRIC:
            return self.k.weights.weight_scales_sym(_c(w), g), None
        return self.k.weights.weight_scales_asym(_c(w), g)   # an overflowed range: an inf scale

    def _quantize_weight_with_scales_unchecked(self, w, scale, zero, g, fmt):
        g = max(min(g, w.shape[1]), 1)
        if zero is None:
            return self.k.weights.quantize_sym(_c(w), _c(scale), g)
        return self.k.weights.quantize_asym(_c(w), _c(scale), _c(zero), g)

    def _dequantize_weight_unchecked(self, q, scale, zero, g, fmt):
        n, k = q.shape
        g = max(min(g, k), 1)
        if zero is None:
            zero = _zeros_u8(n, num_groups(k, g))
        return self.k.weights.dequantize(_c(q), _c(scale), _c(zero), g)

    # ------------------------------------------------------------------ packing (section 5)

    def _pack_int4_unchecked(self, q, signed):
        return self.k.packing.pack_int4(_c(q))

    def _unpack_int4_unchecked(self, packed, k, signed):
        return self.k.packing.unpack_int4(_c(packed), k, signed)

    # ------------------------------------------------------------------ matmul (section 6)

    @staticmethod
    def _core_args(qx, packed, zero, fmt, n, ng):
        """C-contiguous core arguments; zero points all 0 for the symmetric format; and ``signed``."""
        signed = fmt is WeightFormat.SYMMETRIC
        return _c(qx), _c(packed), (_zeros_u8(n, ng) if zero is None else _c(zero)), signed

    def _w4a8_group_sums_unchecked(self, qx, packed, zero, k, g, fmt):
        qx, packed, zero, signed = self._core_args(qx, packed, zero, fmt, packed.shape[0], num_groups(k, g))
        return self.k.matmul.group_sums(qx, packed, zero, k, g, signed)

    @staticmethod
    def _xs(xscale, m: int) -> np.ndarray:
        """An activation scale of shape (), [1] or [M] as float32 [M]."""
        xs = xscale.reshape(-1)
        return _c(xs) if xs.shape[0] == m else np.full(m, xs[0], dtype=FLOAT)

    def _w4a8_epilogue_unchecked(self, acc, wscale, xscale, bias):
        has_bias = bias is not None
        b = _c(bias) if has_bias else np.zeros(0, FLOAT)
        return self.k.matmul.epilogue(_c(acc), _c(wscale), self._xs(xscale, acc.shape[0]), b, has_bias)

    def w4a8_matmul(self, qx, xscale, packed, wscale, zero, k, group_size, fmt=WeightFormat.SYMMETRIC,
                    bias=None, path=None):
        """See :func:`fptq.spec.w4a8_matmul`. ``path``: None (choose by M and G), ``"decode"``,
        ``"tiled"`` or ``"generic"`` (see :mod:`fptq.backends.numba_kernels.matmul`); all give the same bits."""
        args = self._check("w4a8_matmul", qx, xscale, packed, wscale, zero, k, group_size, fmt, bias)
        return self._w4a8_matmul_unchecked(*args, path=path)

    def _w4a8_matmul_unchecked(self, qx, xscale, packed, wscale, zero, k, g, fmt, bias=None, path=None):
        m, n, ng = qx.shape[0], packed.shape[0], num_groups(k, g)
        qx, packed, zero, signed = self._core_args(qx, packed, zero, fmt, n, ng)
        if path is None:
            path = self.k.matmul.choose_path(m, g, self.decode_max_m)
        return self.k.matmul.matmul(qx, self._xs(xscale, m), packed, _c(wscale), zero, k, g, signed,
                                    None if bias is None else _c(bias), path)

    # ------------------------------------------------------------------ policy (section 7)

    def _select_policies_unchecked(self, v, t0, t1):
        return self.k.policy.select_policies(_c(v).reshape(-1), t0, t1).reshape(v.shape)

    # ------------------------------------------------------------------ a model's prepared linear

    def _prepare_kernel(self, prep) -> _Blocked | None:
        """When G is a multiple of 8: the weights re-laid out once in the VNNI blocks of
        :mod:`fptq.backends.numba_kernels.blocked`, with the layer's scales and bias per block."""
        if not (self.k.blocked.supported(prep.group_size) and prep.k > 0 and prep.n > 0):
            return None
        B = self.k.blocked
        k, g, n = prep.k, prep.group_size, prep.n
        ng = num_groups(k, g)
        zero = _zeros_u8(n, ng) if prep.zero is None else _c(prep.zero)
        wb, zc = B.repack(_c(prep.packed), zero, k, g, prep.fmt is WeightFormat.SYMMETRIC)
        nblk = wb.shape[0]
        bb = np.zeros(nblk * B.LANES, FLOAT)
        if prep.bias is not None:
            bb[:n] = prep.bias
        act = FLOAT(1.0) if prep.act_scale is None else FLOAT(np.asarray(prep.act_scale).reshape(-1)[0])
        steps_last = (k - (ng - 1) * g + B.STEP_K - 1) // B.STEP_K
        return _Blocked(wb, zc, B.block_rows(_c(prep.wscale), nblk), bb, prep.bias is not None, act,
                        prep.policy is spec.ActPolicy.DYNAMIC, steps_last, n, k)

    def linear_forward(self, x, prepared):
        """:meth:`fptq.backends.base.BackendBase.linear_forward`; on the blocked path (G a multiple of 8)
        one compiled call does everything: the finiteness check of ``x`` fused into the activation
        quantizer (a row with a NaN/Inf is reported, and the base class's check then raises its
        error), the INT8 codes and group sums, the integer products and the pinned epilogue; one
        thread below ``blocked.PARALLEL_MIN_MACS`` multiply-adds, every thread above."""
        if isinstance(prepared.kernel, _Blocked):
            return self.linear_forward_finite(x, prepared)[0]
        return super().linear_forward(x, prepared)

    def linear_forward_finite(self, x, prepared):
        """``(linear_forward(x, prepared), whether the output is all finite)``; on the blocked path the
        output scan is part of the same compiled call (the model's check of its outputs, for free)."""
        kb = prepared.kernel
        if not isinstance(kb, _Blocked):
            return super().linear_forward_finite(x, prepared)
        if not (isinstance(x, np.ndarray) and x.ndim == 2 and x.shape[1] == kb.k and x.dtype == FLOAT):
            x = self._check_linear_x(x, prepared)      # the base class's check: raises, or converts
        x = _c(x)
        B = self.k.blocked
        if x.shape[0] * kb.n * kb.k >= B.PARALLEL_MIN_MACS and self._numba.get_num_threads() > 1:
            y, bad, bad_out = B.linear_parallel(x, kb.act, kb.dynamic, kb.wb, kb.zc, kb.wsb, kb.bb, kb.has_bias,
                                                prepared.group_size, kb.steps_last, kb.n, B.panel_size(kb.wb.shape[0]))
        else:
            y, bad, bad_out = B.linear(x, kb.act, kb.dynamic, kb.wb, kb.zc, kb.wsb, kb.bb, kb.has_bias,
                                       prepared.group_size, kb.steps_last, kb.n)
        if bad:
            self._check_linear_x(x, prepared)          # raises the error naming x
            raise AssertionError("the blocked kernel reported a non-finite x that the check accepts")
        return (y if y.shape[1] == kb.n else _c(y[:, :kb.n])), bad_out == 0
