"""The ``numba`` backend: every spec primitive as Numba-compiled code on NumPy arrays.

For CPU-only machines without a deep-learning framework. Arrays are NumPy
arrays (``from_numpy``/``to_numpy`` are the identity). Each operation checks
its inputs with the spec's own validators (:mod:`fptq.spec.validate`, so the
errors are the reference's: NaN/Inf named by tensor, wrong dtypes and shapes),
makes them C-contiguous, and runs a kernel of :mod:`fptq.backends.numba_kernels`.
Results are bit-identical to :mod:`fptq.spec` (``lae_scales`` is allowed 2 ulp
for its log2; it computes log2 in float64 like the reference and matches it).

The W4A8 matmul works on the packed weights directly (no unpacked copy), on one
of three paths with identical bits: ``decode`` (M <= ``decode_max_m``),
``tiled`` (larger M) and ``generic`` (odd G); see
:mod:`fptq.backends.numba_kernels.matmul` and, for the SIMD dot product it is
built on, :mod:`fptq.backends.numba_kernels.simd`.

Compilation is lazy (first call of each kernel) and cached on disk
(``cache=True``): the first process pays the compile time, later ones load it.
"""

from __future__ import annotations

import numpy as np

from .. import spec
from ..spec import WeightFormat
from ..spec.formats import FLOAT, weight_format_spec
from ..spec.matmul import check_qx
from ..spec.packing import packed_width
from ..spec.policy import policy_thresholds
from ..spec.validate import (
    as_float32, check_dtype, check_group_size, check_k, check_ndim, check_positive_scale, check_shape,
    check_zero_points,
)
from ..spec.weights import num_groups
from .base import BackendUnavailable

__all__ = ["NumbaBackend"]


def _c(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a)


def _zeros_u8(n: int, ng: int) -> np.ndarray:
    return np.zeros((n, ng), np.uint8)


class NumbaBackend:
    """Numba-compiled kernels for every operation of :class:`fptq.backends.Backend`.

    Args:
        decode_max_m: largest M served by the decode matmul path (default
            :data:`~fptq.backends.numba_kernels.matmul.DECODE_MAX_M`); 0 sends
            every M to the tiled path.
    """

    name = "numba"

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

    def act_scale_from_amax(self, amax):
        amax = as_float32(amax, "amax")
        if amax.size and (amax < 0).any():
            raise ValueError("amax must be >= 0")
        return self.k.activation.act_scale_from_amax(_c(amax).reshape(-1)).reshape(amax.shape)

    def quantize_act_per_tensor(self, x, scale):
        x = as_float32(x, "x")
        scale = as_float32(scale, "scale").reshape(-1)
        if scale.shape != (1,):
            raise ValueError(f"scale: per-tensor quantization takes one scale, got shape {scale.shape}")
        check_positive_scale(scale, "scale")
        return self.k.activation.quantize_per_tensor(_c(x).reshape(-1), scale[0]).reshape(x.shape)

    def quantize_act_per_token(self, x):
        x = as_float32(x, "x")
        check_ndim(x, 2, "x")
        return self.k.activation.quantize_per_token(_c(x))

    def dequantize_act(self, q, scale):
        q = check_dtype(q, np.int8, "q")
        scale = as_float32(scale, "scale")
        check_positive_scale(scale, "scale")
        if scale.ndim == 1 and scale.shape[0] != 1:
            check_ndim(q, 2, "q")
            if scale.shape[0] != q.shape[0]:
                raise ValueError(f"scale: expected shape ({q.shape[0]},) for q of shape {q.shape}, "
                                 f"got {scale.shape}")
            return self.k.activation.dequantize_per_token(_c(q), _c(scale))
        if scale.ndim > 1:
            raise ValueError(f"scale: expected a scalar or a 1-D per-row scale, got shape {scale.shape}")
        shape = np.broadcast_shapes(q.shape, scale.shape)
        out = self.k.activation.dequantize_per_tensor(_c(q).reshape(-1), scale.reshape(-1)[0])
        return out.reshape(shape)

    # ------------------------------------------------------------------ LAE (section 3)

    def lae_scales(self, channel_max):
        m = as_float32(channel_max, "channel_max")
        check_ndim(m, 1, "channel_max")
        if m.size and (m < 0).any():
            raise ValueError("channel_max must be >= 0")
        return self.k.lae.lae_scales(_c(m))

    @staticmethod
    def _check_s(s, k: int) -> np.ndarray:
        s = as_float32(s, "s")
        check_ndim(s, 1, "s")
        if s.shape[0] != k:
            raise ValueError(f"s: expected {k} channel scales, got {s.shape[0]}")
        check_positive_scale(s, "s")
        return _c(s)

    def lae_apply_activation(self, x, s):
        x = as_float32(x, "x")
        check_ndim(x, 2, "x")
        return self.k.lae.lae_apply_activation(_c(x), self._check_s(s, x.shape[1]))

    def lae_apply_weight(self, w, s):
        w = as_float32(w, "w")
        check_ndim(w, 2, "w")
        return self.k.lae.lae_apply_weight(_c(w), self._check_s(s, w.shape[1]))

    # ------------------------------------------------------------------ weights (section 4)

    def weight_scales(self, w, group_size, fmt=WeightFormat.SYMMETRIC):
        w = as_float32(w, "w")
        check_ndim(w, 2, "w")
        weight_format_spec(fmt)
        g = check_group_size(group_size, w.shape[1])
        if WeightFormat(fmt) is WeightFormat.SYMMETRIC:
            return self.k.weights.weight_scales_sym(_c(w), g), None
        scale, zero, overflow = self.k.weights.weight_scales_asym(_c(w), g)
        if overflow.any():
            raise ValueError("w: a group's range max - min overflows float32")
        return scale, zero

    def _check_weight_scales(self, w, scale, zero, group_size, fmt):
        """The spec's checks of quantize_weight_with_scales; returns (w, scale, zero-or-None, G)."""
        w = as_float32(w, "w")
        check_ndim(w, 2, "w")
        weight_format_spec(fmt)
        n, k = w.shape
        g = check_group_size(group_size, k)
        ng = num_groups(k, g)
        scale = as_float32(scale, "scale")
        check_shape(scale, (n, ng), "scale")
        check_positive_scale(scale, "scale")
        zero = check_zero_points(zero, (n, ng), WeightFormat(fmt) is WeightFormat.ASYMMETRIC)
        return _c(w), _c(scale), zero, g

    def quantize_weight_with_scales(self, w, scale, zero, group_size, fmt=WeightFormat.SYMMETRIC):
        w, scale, zero, g = self._check_weight_scales(w, scale, zero, group_size, fmt)
        if zero is None:
            return self.k.weights.quantize_sym(w, scale, g)
        return self.k.weights.quantize_asym(w, scale, _c(zero), g)

    def quantize_weight(self, w, group_size, fmt=WeightFormat.SYMMETRIC):
        w = as_float32(w, "w")
        check_ndim(w, 2, "w")
        g = check_group_size(group_size, w.shape[1])
        scale, zero = self.weight_scales(w, g, fmt)
        q = self.quantize_weight_with_scales(w, scale, zero, g, fmt)
        return spec.QuantizedWeight(q, scale, zero, g, WeightFormat(fmt))

    def dequantize_weight(self, q, scale, zero, group_size, fmt=WeightFormat.SYMMETRIC):
        q = check_dtype(q, np.int8, "q")
        check_ndim(q, 2, "q")
        n, k = q.shape
        g = check_group_size(group_size, k)
        ng = num_groups(k, g)
        scale = as_float32(scale, "scale")
        check_shape(scale, (n, ng), "scale")
        check_positive_scale(scale, "scale")
        zero = check_zero_points(zero, (n, ng), WeightFormat(fmt) is WeightFormat.ASYMMETRIC)
        if zero is None:
            zero = _zeros_u8(n, ng)
        return self.k.weights.dequantize(_c(q), _c(scale), _c(zero), g)

    # ------------------------------------------------------------------ packing (section 5)

    def pack_int4(self, q, signed=True):
        q = check_dtype(q, np.int8, "q")
        check_ndim(q, 2, "q")
        fmt = spec.INT4_SYM if signed else spec.UINT4_ASYM
        if q.size and (q.min() < fmt.storage_min or q.max() > fmt.storage_max):
            raise ValueError(
                f"q: values must be in [{fmt.storage_min}, {fmt.storage_max}] for "
                f"{'signed' if signed else 'unsigned'} INT4, got [{q.min()}, {q.max()}]"
            )
        return self.k.packing.pack_int4(_c(q))

    def unpack_int4(self, packed, k, signed=True):
        packed = self._check_packed(packed, k)
        return self.k.packing.unpack_int4(packed, check_k(k), bool(signed))

    @staticmethod
    def _check_packed(packed, k) -> np.ndarray:
        packed = check_dtype(packed, np.uint8, "packed")
        check_ndim(packed, 2, "packed")
        k = check_k(k)
        if packed.shape[1] != packed_width(k):
            raise ValueError(f"packed: expected {packed_width(k)} bytes per row for K={k}, got {packed.shape[1]}")
        return _c(packed)

    # ------------------------------------------------------------------ matmul (section 6)

    def _check_core(self, qx, packed, zero, k, group_size, fmt):
        """The spec's checks of w4a8_group_sums (in its order); returns
        (qx, packed, zero [N, ng] (zeros if symmetric), K, G, signed)."""
        k = int(k)
        g = check_group_size(group_size, k)
        qx = _c(check_qx(qx, k))
        fmt = WeightFormat(fmt)
        packed = self._check_packed(packed, k)
        n, ng = packed.shape[0], num_groups(k, g)
        zero = check_zero_points(zero, (n, ng), fmt is WeightFormat.ASYMMETRIC)
        if zero is None:
            return qx, packed, _zeros_u8(n, ng), k, g, True
        return qx, packed, _c(zero), k, g, False

    def w4a8_group_sums(self, qx, packed, zero, k, group_size, fmt=WeightFormat.SYMMETRIC):
        qx, packed, zero, k, g, signed = self._check_core(qx, packed, zero, k, group_size, fmt)
        return self.k.matmul.group_sums(qx, packed, zero, k, g, signed)

    @staticmethod
    def _check_epilogue(m, n, ng, wscale, xscale, bias):
        """The spec's checks of w4a8_epilogue; returns (wscale, xs [M], bias or None)."""
        wscale = as_float32(wscale, "wscale")
        check_shape(wscale, (n, ng), "wscale")
        check_positive_scale(wscale, "wscale")
        xs = as_float32(xscale, "xscale").reshape(-1)
        check_positive_scale(xs, "xscale")
        if xs.shape[0] == 1:
            xs = np.full(m, xs[0], dtype=FLOAT)
        elif xs.shape[0] != m:
            raise ValueError(f"xscale: expected one scale or {m} per-token scales, got shape {xs.shape}")
        if bias is not None:
            bias = as_float32(bias, "bias")
            check_shape(bias, (n,), "bias")
            bias = _c(bias)
        return _c(wscale), _c(xs), bias

    def w4a8_epilogue(self, acc, wscale, xscale, bias=None):
        acc = check_dtype(acc, np.int32, "acc")
        check_ndim(acc, 3, "acc")
        m, n, ng = acc.shape
        wscale, xs, bias = self._check_epilogue(m, n, ng, wscale, xscale, bias)
        has_bias = bias is not None
        b = bias if has_bias else np.zeros(0, FLOAT)
        return self.k.matmul.epilogue(_c(acc), wscale, xs, b, has_bias)

    def w4a8_matmul(self, qx, xscale, packed, wscale, zero, k, group_size, fmt=WeightFormat.SYMMETRIC,
                    bias=None, path=None):
        """See :func:`fptq.spec.w4a8_matmul`. ``path``: None (choose by M and G), ``"decode"``,
        ``"tiled"`` or ``"generic"`` (see :mod:`fptq.backends.numba_kernels.matmul`); all give the same bits."""
        qx, packed, zero, k, g, signed = self._check_core(qx, packed, zero, k, group_size, fmt)
        m, n, ng = qx.shape[0], packed.shape[0], num_groups(k, g)
        wscale, xs, bias = self._check_epilogue(m, n, ng, wscale, xscale, bias)
        if path is None:
            path = self.k.matmul.choose_path(m, g, self.decode_max_m)
        return self.k.matmul.matmul(qx, xs, packed, wscale, zero, k, g, signed, bias, path)

    # ------------------------------------------------------------------ policy (section 7)

    def select_policies(self, v, v0=spec.DEFAULT_V0, v1=spec.DEFAULT_V1):
        v = as_float32(v, "v")
        if v.size and (v < 0).any():
            raise ValueError("v (activation range) must be >= 0")
        t0, t1 = policy_thresholds(v0, v1)
        return self.k.policy.select_policies(_c(v).reshape(-1), t0, t1).reshape(v.shape)
