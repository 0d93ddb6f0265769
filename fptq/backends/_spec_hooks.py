"""The default unchecked hooks of :class:`fptq.backends.base.BackendBase`: the spec itself.

Each ``_<op>_unchecked`` takes what ``fptq.spec.validate.<op>`` returned and
computes with the spec's own unchecked implementation (``fptq.spec.<section>._*``)
on NumPy copies of the backend's arrays (``to_numpy`` in, ``from_numpy`` out;
NumPy arrays pass through untouched). A backend overrides the hooks it
accelerates; the rest stay correct (and slow).
"""

from __future__ import annotations

import numpy as np

from ..spec import activation as A
from ..spec import lae as LAE
from ..spec import matmul as MM
from ..spec import packing as P
from ..spec import policy as POL
from ..spec import weights as W

__all__ = ["SpecHooks"]


class SpecHooks:
    """Mixin: every ``_<op>_unchecked`` hook computed by the NumPy spec (see the module docstring)."""

    def _n(self, a):
        """A backend array (or None) as a NumPy array for the spec."""
        return a if a is None or isinstance(a, np.ndarray) else self.to_numpy(a)

    def _b(self, a):
        """A NumPy result (or None) as the backend's array."""
        return None if a is None else self.from_numpy(a)

    def _act_scale_from_amax_unchecked(self, amax):
        return self._b(A._scale_from_amax(self._n(amax)))

    def _quantize_act_per_tensor_unchecked(self, x, scale):
        return self._b(A._quantize(self._n(x), self._n(scale).reshape(-1)[0]))

    def _quantize_act_per_token_unchecked(self, x):
        q, s = A._per_token(self._n(x))
        return self._b(q), self._b(s)

    def _dequantize_act_unchecked(self, q, scale, per_token):
        return self._b(A._dequantize(self._n(q), self._n(scale), per_token))

    def _lae_scales_unchecked(self, channel_max):
        return self._b(LAE._lae_scales(self._n(channel_max)))

    def _lae_apply_activation_unchecked(self, x, s):
        return self._b(LAE._apply_activation(self._n(x), self._n(s)))

    def _lae_apply_weight_unchecked(self, w, s):
        return self._b(LAE._apply_weight(self._n(w), self._n(s)))

    def _weight_scales_unchecked(self, w, g, fmt):
        scale, zero = W._weight_scales(self._n(w), g, fmt)
        return self._b(scale), self._b(zero)

    def _quantize_weight_with_scales_unchecked(self, w, scale, zero, g, fmt):
        return self._b(W._quantize_with_scales(self._n(w), self._n(scale), self._n(zero), g, fmt))

    def _dequantize_weight_unchecked(self, q, scale, zero, g, fmt):
        return self._b(W._dequantize(self._n(q), self._n(scale), self._n(zero), g))

    def _pack_int4_unchecked(self, q, signed):
        return self._b(P._pack(self._n(q)))

    def _unpack_int4_unchecked(self, packed, k, signed):
        return self._b(P._unpack(self._n(packed), k, signed))

    def _w4a8_group_sums_unchecked(self, qx, packed, zero, k, g, fmt):
        return self._b(MM._group_sums(self._n(qx), self._n(packed), self._n(zero), k, g, fmt))

    def _w4a8_epilogue_unchecked(self, acc, wscale, xscale, bias):
        return self._b(MM._epilogue(self._n(acc), self._n(wscale), self._n(xscale), self._n(bias)))

    def _w4a8_matmul_unchecked(self, qx, xscale, packed, wscale, zero, k, g, fmt, bias=None):
        acc = MM._group_sums(self._n(qx), self._n(packed), self._n(zero), k, g, fmt)
        return self._b(MM._epilogue(acc, self._n(wscale), self._n(xscale), self._n(bias)))

    def _select_policies_unchecked(self, v, t0, t1):
        return self._b(POL._select(self._n(v), t0, t1))
