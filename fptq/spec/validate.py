"""The argument checks of the public API, written once (docs/spec.md §9).

Every public operation of :mod:`fptq.spec`, and the operation of the same name
of every backend, runs the check function of the same name here first, e.g.
``validate.quantize_act_per_tensor(xp, x, scale)``, then an unchecked
implementation. ``xp`` is an array adapter (:mod:`fptq.spec.arrays`): the
spec, numpy and numba backends pass :data:`fptq.spec.arrays.NUMPY`, the torch
backend its own, so one rule is one piece of code for every framework. The
rules themselves (a float argument, an integer parameter, a positive scale...)
are in :mod:`fptq.spec.rules`; this module composes them per operation.

Each check returns the checked arguments (float arguments converted to
float32, ``group_size`` resolved to the G it means, ``k`` as an int) and
raises ``TypeError`` or ``ValueError`` naming the operation, the argument and
what was wrong, citing §9. When an input has several faults, the error is
the first failing check in this order (docs/spec.md §9.2), the same in every
operation:

1. **parameters** (``k``, ``group_size``, ``fmt``, ``v0``, ``v1``), in
   signature order: their types, then their own ranges;
2. **array types**, in signature order: each array argument is read as an
   array and its dtype checked (float arguments converted to float32; a
   zero point given or missing for the format);
3. **shapes**, in signature order (a ``group_size`` of -1 becomes K here when
   K comes from an array);
4. **values**, in signature order: non-finite floats, scales <= 0, negative
   maxima, integers outside their format's range.
"""

from __future__ import annotations

from .arrays import NUMPY
from .formats import INT4_SYM, UINT4_ASYM, weight_format_spec
from .rules import (  # noqa: F401 - the rules are part of this module's interface too
    cite, finite, float_array, fmt_param, group_size_param, in_range, int_array, integer_param, k_param, ndim,
    nonnegative, one_scale, optional_float, positive, resolve_group_size, shape, thresholds, zero_points,
    zero_values,
)

__all__ = [
    "act_scale_from_amax", "quantize_act_per_tensor", "quantize_act_per_token", "dequantize_act",
    "lae_scales", "lae_apply_activation", "lae_apply_weight",
    "weight_scales", "quantize_weight_with_scales", "quantize_weight", "dequantize_weight",
    "pack_int4", "unpack_int4", "w4a8_group_sums", "w4a8_epilogue", "w4a8_matmul", "select_policies",
    "integer_param", "group_size_param", "resolve_group_size", "thresholds",
    "packed_weight", "activation_side", "weight_scale_side", "bias_side",
    "as_float32", "check_finite", "check_ndim", "check_shape", "check_positive_scale", "check_group_size",
]


# ---------------------------------------------------------------------------
# one check per operation (docs/spec.md §2-§7); each returns the checked arguments


def act_scale_from_amax(xp, amax):
    op = "act_scale_from_amax"
    amax = float_array(xp, amax, "amax", op)
    nonnegative(xp, amax, "amax", op)
    return amax


def quantize_act_per_tensor(xp, x, scale):
    op = "quantize_act_per_tensor"
    x, scale = float_array(xp, x, "x", op), float_array(xp, scale, "scale", op)
    one_scale(xp, scale, "scale", op)
    finite(xp, x, "x", op)
    positive(xp, scale, "scale", op)
    return x, scale


def quantize_act_per_token(xp, x):
    op = "quantize_act_per_token"
    x = float_array(xp, x, "x", op)
    ndim(xp, x, 2, "x", op)
    finite(xp, x, "x", op)
    return x


def dequantize_act(xp, q, scale):
    """Returns (q, scale, per_token): per_token when ``scale`` is [M] for a q of [M, K] with M != 1."""
    op = "dequantize_act"
    q, scale = int_array(xp, q, "int8", "q", op), float_array(xp, scale, "scale", op)
    qs, ss = xp.shape(q), xp.shape(scale)
    per_token = len(ss) == 1 and ss != (1,)
    if per_token:
        ndim(xp, q, 2, "q", op)
    one_scale(xp, scale, "scale", op, rows=qs[0] if len(qs) == 2 else None)
    positive(xp, scale, "scale", op)
    return q, scale, per_token


def _lae_s(xp, s, k, op):
    ndim(xp, s, 1, "s", op)
    if xp.shape(s)[0] != k:
        raise ValueError(f"s: expected {k} channel scales, got {xp.shape(s)[0]}{cite(op)}")


def lae_scales(xp, channel_max):
    op = "lae_scales"
    m = float_array(xp, channel_max, "channel_max", op)
    ndim(xp, m, 1, "channel_max", op)
    nonnegative(xp, m, "channel_max", op)
    return m


def _lae_apply(xp, a, s, name, op):
    a, s = float_array(xp, a, name, op), float_array(xp, s, "s", op)
    ndim(xp, a, 2, name, op)
    _lae_s(xp, s, xp.shape(a)[1], op)
    finite(xp, a, name, op)
    positive(xp, s, "s", op)
    return a, s


def lae_apply_activation(xp, x, s):
    return _lae_apply(xp, x, s, "x", "lae_apply_activation")


def lae_apply_weight(xp, w, s):
    return _lae_apply(xp, w, s, "w", "lae_apply_weight")


def _ng(k: int, g: int) -> int:
    return -(-k // g)


def _group_param_shapes(xp, scale, zero, n: int, k: int, g: int, op: str) -> None:
    """Per-(row, group) scale, and zero points if any, must be [N, ceil(K / G)]."""
    shape(xp, scale, (n, _ng(k, g)), "scale", op)
    if zero is not None:
        shape(xp, zero, (n, _ng(k, g)), "zero", op)


def _float_weight(xp, w, group_size, fmt, op):
    """The checks of an operation on one float32 weight [N, K] and its grouping; returns (w, G, fmt)."""
    g, fmt = group_size_param(group_size, op), fmt_param(fmt, op)
    w = float_array(xp, w, "w", op)
    ndim(xp, w, 2, "w", op)
    g = resolve_group_size(g, xp.shape(w)[1], op)
    finite(xp, w, "w", op)
    return w, g, fmt


def weight_scales(xp, w, group_size, fmt):
    """Returns (w, G, fmt)."""
    return _float_weight(xp, w, group_size, fmt, "weight_scales")


def quantize_weight(xp, w, group_size, fmt):
    """Returns (w, G, fmt)."""
    return _float_weight(xp, w, group_size, fmt, "quantize_weight")


def quantize_weight_with_scales(xp, w, scale, zero, group_size, fmt):
    """Returns (w, scale, zero-or-None, G, fmt)."""
    op = "quantize_weight_with_scales"
    g, fmt = group_size_param(group_size, op), fmt_param(fmt, op)
    w, scale = float_array(xp, w, "w", op), float_array(xp, scale, "scale", op)
    zero = zero_points(xp, zero, fmt, op)
    ndim(xp, w, 2, "w", op)
    n, k = xp.shape(w)
    g = resolve_group_size(g, k, op)
    _group_param_shapes(xp, scale, zero, n, k, g, op)
    finite(xp, w, "w", op)
    positive(xp, scale, "scale", op)
    zero_values(xp, zero, op)
    return w, scale, zero, g, fmt


def dequantize_weight(xp, q, scale, zero, group_size, fmt):
    """Returns (q, scale, zero-or-None, G, fmt); q must lie in the format's range."""
    op = "dequantize_weight"
    g, fmt = group_size_param(group_size, op), fmt_param(fmt, op)
    q, scale = int_array(xp, q, "int8", "q", op), float_array(xp, scale, "scale", op)
    zero = zero_points(xp, zero, fmt, op)
    ndim(xp, q, 2, "q", op)
    n, k = xp.shape(q)
    g = resolve_group_size(g, k, op)
    _group_param_shapes(xp, scale, zero, n, k, g, op)
    f = weight_format_spec(fmt)
    in_range(xp, q, f.qmin, f.qmax, "q", f"{f.name} weights", op)
    positive(xp, scale, "scale", op)
    zero_values(xp, zero, op)
    return q, scale, zero, g, fmt


def pack_int4(xp, q, signed):
    op = "pack_int4"
    q = int_array(xp, q, "int8", "q", op)
    ndim(xp, q, 2, "q", op)
    f = INT4_SYM if signed else UINT4_ASYM
    in_range(xp, q, f.storage_min, f.storage_max, "q", f"{'signed' if signed else 'unsigned'} INT4 values", op)
    return q


def _packed(xp, packed, k, op):
    ndim(xp, packed, 2, "packed", op)
    want = (k + 1) // 2
    if xp.shape(packed)[1] != want:
        raise ValueError(f"packed: expected {want} bytes per row for K={k}, got {xp.shape(packed)[1]}{cite(op)}")


def unpack_int4(xp, packed, k, signed):
    """Returns (packed, k)."""
    op = "unpack_int4"
    k = k_param(k, op)
    packed = int_array(xp, packed, "uint8", "packed", op)
    _packed(xp, packed, k, op)
    return packed, k


def _core(xp, qx, packed, zero, k, group_size, fmt, op):
    """Phases 1-2 of the integer core's arguments; returns (qx, packed, zero, k, G, fmt)."""
    k, g, fmt = k_param(k, op), group_size_param(group_size, op), fmt_param(fmt, op)
    g = resolve_group_size(g, k, op)
    qx = int_array(xp, qx, "int8", "qx", op)
    packed = int_array(xp, packed, "uint8", "packed", op)
    zero = zero_points(xp, zero, fmt, op)
    return qx, packed, zero, k, g, fmt


def _qx_shape(xp, qx, k, op):
    ndim(xp, qx, 2, "qx", op)
    if xp.shape(qx)[1] != k:
        raise ValueError(f"qx: expected K={k} columns to match the weight, got shape {xp.shape(qx)}{cite(op)}")


def w4a8_group_sums(xp, qx, packed, zero, k, group_size, fmt):
    """Returns (qx, packed, zero-or-None, k, G, fmt)."""
    op = "w4a8_group_sums"
    qx, packed, zero, k, g, fmt = _core(xp, qx, packed, zero, k, group_size, fmt, op)
    _qx_shape(xp, qx, k, op)
    _packed(xp, packed, k, op)
    if zero is not None:
        shape(xp, zero, (xp.shape(packed)[0], _ng(k, g)), "zero", op)
    zero_values(xp, zero, op)
    return qx, packed, zero, k, g, fmt


def w4a8_epilogue(xp, acc, wscale, xscale, bias):
    """Returns (acc, wscale, xscale, bias-or-None); xscale is () / [1] / [M]."""
    op = "w4a8_epilogue"
    acc = int_array(xp, acc, "int32", "acc", op)
    wscale, xscale = float_array(xp, wscale, "wscale", op), float_array(xp, xscale, "xscale", op)
    bias = optional_float(xp, bias, "bias", op)
    ndim(xp, acc, 3, "acc", op)
    m, n, ng = xp.shape(acc)
    shape(xp, wscale, (n, ng), "wscale", op)
    one_scale(xp, xscale, "xscale", op, rows=m)
    if bias is not None:
        shape(xp, bias, (n,), "bias", op)
    positive(xp, wscale, "wscale", op)
    positive(xp, xscale, "xscale", op)
    if bias is not None:
        finite(xp, bias, "bias", op)
    return acc, wscale, xscale, bias


def w4a8_matmul(xp, qx, xscale, packed, wscale, zero, k, group_size, fmt, bias):
    """Returns (qx, xscale, packed, wscale, zero-or-None, k, G, fmt, bias-or-None)."""
    op = "w4a8_matmul"
    k, g, fmt = k_param(k, op), group_size_param(group_size, op), fmt_param(fmt, op)
    g = resolve_group_size(g, k, op)
    qx = int_array(xp, qx, "int8", "qx", op)
    xscale = float_array(xp, xscale, "xscale", op)
    packed = int_array(xp, packed, "uint8", "packed", op)
    wscale = float_array(xp, wscale, "wscale", op)
    zero = zero_points(xp, zero, fmt, op)
    bias = optional_float(xp, bias, "bias", op)
    _qx_shape(xp, qx, k, op)
    one_scale(xp, xscale, "xscale", op, rows=xp.shape(qx)[0])
    _packed(xp, packed, k, op)
    n, ng = xp.shape(packed)[0], _ng(k, g)
    shape(xp, wscale, (n, ng), "wscale", op)
    if zero is not None:
        shape(xp, zero, (n, ng), "zero", op)
    if bias is not None:
        shape(xp, bias, (n,), "bias", op)
    positive(xp, xscale, "xscale", op)
    positive(xp, wscale, "wscale", op)
    zero_values(xp, zero, op)
    if bias is not None:
        finite(xp, bias, "bias", op)
    return qx, xscale, packed, wscale, zero, k, g, fmt, bias


def packed_weight(xp, packed, zero, k, group_size, fmt, op: str):
    """The weight side of :func:`w4a8_matmul` alone (a backend preparing a weight once):
    returns (packed, zero-or-None, k, G, fmt)."""
    k, g, fmt = k_param(k, op), group_size_param(group_size, op), fmt_param(fmt, op)
    g = resolve_group_size(g, k, op)
    packed = int_array(xp, packed, "uint8", "packed", op)
    zero = zero_points(xp, zero, fmt, op)
    _packed(xp, packed, k, op)
    if zero is not None:
        shape(xp, zero, (xp.shape(packed)[0], _ng(k, g)), "zero", op)
    zero_values(xp, zero, op)
    return packed, zero, k, g, fmt


def activation_side(xp, qx, xscale, k: int, op: str):
    """The activation side of :func:`w4a8_matmul` against a prepared weight of K columns: (qx, xscale)."""
    qx, xscale = int_array(xp, qx, "int8", "qx", op), float_array(xp, xscale, "xscale", op)
    _qx_shape(xp, qx, k, op)
    one_scale(xp, xscale, "xscale", op, rows=xp.shape(qx)[0])
    positive(xp, xscale, "xscale", op)
    return qx, xscale


def weight_scale_side(xp, wscale, n: int, ng: int, op: str):
    """``wscale`` of :func:`w4a8_matmul` against a prepared weight: float32 [N, ng] > 0."""
    wscale = float_array(xp, wscale, "wscale", op)
    shape(xp, wscale, (n, ng), "wscale", op)
    positive(xp, wscale, "wscale", op)
    return wscale


def bias_side(xp, bias, n: int, op: str):
    """``bias`` of :func:`w4a8_matmul` against a prepared weight: None or finite float32 [N]."""
    bias = optional_float(xp, bias, "bias", op)
    if bias is not None:
        shape(xp, bias, (n,), "bias", op)
        finite(xp, bias, "bias", op)
    return bias


def select_policies(xp, v, v0, v1):
    """Returns (v, t0, t1): the ranges and the float32 thresholds."""
    op = "select_policies"
    t0, t1 = thresholds(v0, v1, op)
    v = float_array(xp, v, "v", op)
    nonnegative(xp, v, "v", op)
    return v, t0, t1


# ---------------------------------------------------------------------------
# NumPy conveniences (fptq.reference and the model pipeline check their own arrays with these)


def as_float32(x, name: str):
    """``x`` as a finite float32 ndarray (other real dtypes converted; see :func:`float_array`)."""
    a = float_array(NUMPY, x, name)
    finite(NUMPY, a, name)
    return a


def check_finite(a, name: str) -> None:
    finite(NUMPY, NUMPY.asarray(a, name), name)


def check_ndim(a, n: int, name: str) -> None:
    ndim(NUMPY, NUMPY.asarray(a, name), n, name)


def check_shape(a, want: tuple, name: str) -> None:
    shape(NUMPY, NUMPY.asarray(a, name), want, name)


def check_positive_scale(s, name: str) -> None:
    positive(NUMPY, NUMPY.asarray(s, name), name)


def check_group_size(group_size, k: int) -> int:
    """The G of ``group_size`` for K columns (-1/None -> K), checked as :func:`group_size_param`."""
    return resolve_group_size(group_size_param(group_size), k)
