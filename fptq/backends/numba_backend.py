"""The ``numba`` backend: every spec primitive as Numba-compiled code on NumPy arrays.

For CPU-only machines without a deep-learning framework. Arrays are NumPy
arrays (``from_numpy``/``to_numpy`` are the identity). Each operation runs the
spec's own check of the same name once (:mod:`fptq.spec.validate` over the
NumPy adapter, so it rejects exactly what the reference rejects, with the same
errors), then its unchecked implementation ``_<op>_unchecked``, which makes
the arrays C-contiguous and runs a kernel of :mod:`fptq.backends.numba_kernels`.

Internal entry points for callers that checked their arguments once (a model's
forward): ``_w4a8_matmul_unchecked(qx, xscale, packed, wscale, zero, k, G, fmt,
bias)`` takes exactly what ``validate.w4a8_matmul`` returns (G resolved, ``fmt``
the enum, ``xscale`` of shape (), [1] or [M]); likewise
``_quantize_act_per_tensor_unchecked(x, scale)``,
``_quantize_act_per_token_unchecked(x)`` and ``_lae_apply_activation_unchecked(x, s)``.
Nothing is re-checked inside, and results are never re-checked.
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
from ..spec import validate as V
from ..spec.arrays import NUMPY
from ..spec.formats import FLOAT
from ..spec.weights import num_groups
from .base import BackendUnavailable, LinearPath

__all__ = ["NumbaBackend"]


def _c(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a)


def _zeros_u8(n: int, ng: int) -> np.ndarray:
    return np.zeros((n, ng), np.uint8)


class NumbaBackend(LinearPath):
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

    def act_scale_from_amax(self, amax):
        amax = V.act_scale_from_amax(NUMPY, amax)
        return self.k.activation.act_scale_from_amax(_c(amax).reshape(-1)).reshape(amax.shape)

    def quantize_act_per_tensor(self, x, scale):
        return self._quantize_act_per_tensor_unchecked(*V.quantize_act_per_tensor(NUMPY, x, scale))

    def _quantize_act_per_tensor_unchecked(self, x, scale):
        return self.k.activation.quantize_per_tensor(_c(x).reshape(-1), scale.reshape(-1)[0]).reshape(x.shape)

    def quantize_act_per_token(self, x):
        return self._quantize_act_per_token_unchecked(V.quantize_act_per_token(NUMPY, x))

    def _quantize_act_per_token_unchecked(self, x):
        return self.k.activation.quantize_per_token(_c(x))

    def dequantize_act(self, q, scale):
        q, scale, per_token = V.dequantize_act(NUMPY, q, scale)
        if per_token:
            return self.k.activation.dequantize_per_token(_c(q), _c(scale))
        out = self.k.activation.dequantize_per_tensor(_c(q).reshape(-1), scale.reshape(-1)[0])
        return out.reshape(q.shape)

    # ------------------------------------------------------------------ LAE (section 3)

    def lae_scales(self, channel_max):
        return self.k.lae.lae_scales(_c(V.lae_scales(NUMPY, channel_max)))

    def lae_apply_activation(self, x, s):
        return self._lae_apply_activation_unchecked(*V.lae_apply_activation(NUMPY, x, s))

    def _lae_apply_activation_unchecked(self, x, s):
        return self.k.lae.lae_apply_activation(_c(x), _c(s))

    def lae_apply_weight(self, w, s):
        w, s = V.lae_apply_weight(NUMPY, w, s)
        return self.k.lae.lae_apply_weight(_c(w), _c(s))

    # ------------------------------------------------------------------ weights (section 4)

    def weight_scales(self, w, group_size, fmt=WeightFormat.SYMMETRIC):
        return self._weight_scales_unchecked(*V.weight_scales(NUMPY, w, group_size, fmt))

    def _weight_scales_unchecked(self, w, g, fmt):
        g = max(min(g, w.shape[1]), 1)                 # G > K is one group of K columns
        if fmt is WeightFormat.SYMMETRIC:
            return self.k.weights.weight_scales_sym(_c(w), g), None
        scale, zero, overflow = self.k.weights.weight_scales_asym(_c(w), g)
        if overflow.any():
            raise ValueError("w: a group's range max - min overflows float32 [weight_scales, docs/spec.md §4.3]")
        return scale, zero

    def quantize_weight_with_scales(self, w, scale, zero, group_size, fmt=WeightFormat.SYMMETRIC):
        w, scale, zero, g, fmt = V.quantize_weight_with_scales(NUMPY, w, scale, zero, group_size, fmt)
        return self._quantize_weight_with_scales_unchecked(w, scale, zero, g)

    def _quantize_weight_with_scales_unchecked(self, w, scale, zero, g):
        g = max(min(g, w.shape[1]), 1)
        if zero is None:
            return self.k.weights.quantize_sym(_c(w), _c(scale), g)
        return self.k.weights.quantize_asym(_c(w), _c(scale), _c(zero), g)

    def quantize_weight(self, w, group_size, fmt=WeightFormat.SYMMETRIC):
        w, g, fmt = V.quantize_weight(NUMPY, w, group_size, fmt)
        scale, zero = self._weight_scales_unchecked(w, g, fmt)
        q = self._quantize_weight_with_scales_unchecked(w, scale, zero, g)
        return spec.QuantizedWeight(q, scale, zero, g, fmt)

    def dequantize_weight(self, q, scale, zero, group_size, fmt=WeightFormat.SYMMETRIC):
        q, scale, zero, g, fmt = V.dequantize_weight(NUMPY, q, scale, zero, group_size, fmt)
        n, k = q.shape
        g = max(min(g, k), 1)
        if zero is None:
            zero = _zeros_u8(n, num_groups(k, g))
        return self.k.weights.dequantize(_c(q), _c(scale), _c(zero), g)

    # ------------------------------------------------------------------ packing (section 5)

    def pack_int4(self, q, signed=True):
        return self.k.packing.pack_int4(_c(V.pack_int4(NUMPY, q, signed)))

    def unpack_int4(self, packed, k, signed=True):
        packed, k = V.unpack_int4(NUMPY, packed, k, signed)
        return self.k.packing.unpack_int4(_c(packed), k, bool(signed))

    # ------------------------------------------------------------------ matmul (section 6)

    @staticmethod
    def _core_args(qx, packed, zero, k, fmt, n, ng):
        """C-contiguous core arguments; zero points all 0 for the symmetric format; and ``signed``."""
        signed = fmt is WeightFormat.SYMMETRIC
        return _c(qx), _c(packed), (_zeros_u8(n, ng) if zero is None else _c(zero)), signed

    def w4a8_group_sums(self, qx, packed, zero, k, group_size, fmt=WeightFormat.SYMMETRIC):
        qx, packed, zero, k, g, fmt = V.w4a8_group_sums(NUMPY, qx, packed, zero, k, group_size, fmt)
        qx, packed, zero, signed = self._core_args(qx, packed, zero, k, fmt, packed.shape[0], num_groups(k, g))
        return self.k.matmul.group_sums(qx, packed, zero, k, g, signed)

    @staticmethod
    def _xs(xscale, m: int) -> np.ndarray:
        """An activation scale of shape (), [1] or [M] as float32 [M]."""
        xs = xscale.reshape(-1)
        return _c(xs) if xs.shape[0] == m else np.full(m, xs[0], dtype=FLOAT)

    def w4a8_epilogue(self, acc, wscale, xscale, bias=None):
        acc, wscale, xscale, bias = V.w4a8_epilogue(NUMPY, acc, wscale, xscale, bias)
        has_bias = bias is not None
        b = _c(bias) if has_bias else np.zeros(0, FLOAT)
        return self.k.matmul.epilogue(_c(acc), _c(wscale), self._xs(xscale, acc.shape[0]), b, has_bias)

    def w4a8_matmul(self, qx, xscale, packed, wscale, zero, k, group_size, fmt=WeightFormat.SYMMETRIC,
                    bias=None, path=None):
        """See :func:`fptq.spec.w4a8_matmul`. ``path``: None (choose by M and G), ``"decode"``,
        ``"tiled"`` or ``"generic"`` (see :mod:`fptq.backends.numba_kernels.matmul`); all give the same bits."""
        args = V.w4a8_matmul(NUMPY, qx, xscale, packed, wscale, zero, k, group_size, fmt, bias)
        return self._w4a8_matmul_unchecked(*args, path=path)

    def _w4a8_matmul_unchecked(self, qx, xscale, packed, wscale, zero, k, g, fmt, bias=None, path=None):
        """:meth:`w4a8_matmul` on arguments already checked by ``fptq.spec.validate.w4a8_matmul``
        (pass its return value, in order). No check is repeated here."""
        m, n, ng = qx.shape[0], packed.shape[0], num_groups(k, g)
        qx, packed, zero, signed = self._core_args(qx, packed, zero, k, fmt, n, ng)
        if path is None:
            path = self.k.matmul.choose_path(m, g, self.decode_max_m)
        return self.k.matmul.matmul(qx, self._xs(xscale, m), packed, _c(wscale), zero, k, g, signed,
                                    None if bias is None else _c(bias), path)

    # ------------------------------------------------------------------ a model's prepared linear

    def linear_forward(self, x, prepared):
        """:meth:`fptq.backends.base.LinearPath.linear_forward` with ``x`` checked once (by the
        quantizer) and the weights, checked by ``prepare_linear``, not checked again."""
        if np.ndim(x) != 2 or np.shape(x)[1] != prepared.k:
            raise ValueError(f"x: expected a float32 array [M, {prepared.k}], got shape {np.shape(x)}")
        if prepared.policy is spec.ActPolicy.DYNAMIC:
            qx, xs = self.quantize_act_per_token(x)
        else:
            qx, xs = self.quantize_act_per_tensor(x, prepared.act_scale), prepared.act_scale
        return self._w4a8_matmul_unchecked(qx, xs, prepared.packed, prepared.wscale, prepared.zero, prepared.k,
                                           prepared.group_size, prepared.fmt, prepared.bias)

    # ------------------------------------------------------------------ policy (section 7)

    def select_policies(self, v, v0=spec.DEFAULT_V0, v1=spec.DEFAULT_V1):
        v, t0, t1 = V.select_policies(NUMPY, v, v0, v1)
        return self.k.policy.select_policies(_c(v).reshape(-1), t0, t1).reshape(v.shape)
