"""The rules the argument checks are built from, over an array adapter (docs/spec.md §9).

Each rule asks an array adapter ``xp`` (:mod:`fptq.spec.arrays`) about one
argument and raises ``TypeError``/``ValueError`` naming the argument, the
operation and §9; :mod:`fptq.spec.validate` composes them, one check per
operation, in the order of §9.2.
"""

from __future__ import annotations

import numpy as np

from .arrays import REAL_DTYPES
from .formats import MAX_GROUP_SIZE, UINT4_ASYM, WeightFormat, weight_format_spec

__all__ = ["cite", "float_array", "int_array", "ndim", "shape", "finite", "positive", "nonnegative", "in_range",
           "integer_param", "k_param", "group_size_param", "resolve_group_size", "fmt_param", "thresholds",
           "zero_points", "zero_values", "one_scale", "optional_float"]


def cite(op: str | None) -> str:
    """The end of every message: ``" [op, docs/spec.md §9]"``."""
    return f" [{op}, docs/spec.md §9]" if op else " [docs/spec.md §9]"


# ---------------------------------------------------------------------------
# the rules, over an array adapter ``xp``


def float_array(xp, x, name: str, op: str | None = None):
    """``x`` as a float32 array: float32 as is, another real dtype converted (round to nearest);
    bool, complex and non-numeric dtypes are a TypeError. Values are not looked at (see :func:`finite`)."""
    a = xp.asarray(x, name)
    dt = xp.dtype(a)
    if dt == "float32":
        return a
    if dt not in REAL_DTYPES:
        raise TypeError(f"{name}: expected a float32 array (or another real dtype, converted to float32), "
                        f"got dtype {dt}{cite(op)}")
    return xp.to_float32(a)


def int_array(xp, x, dtype: str, name: str, op: str | None = None):
    """``x`` as an array that must already have the integer ``dtype`` (no conversion)."""
    a = xp.asarray(x, name)
    if xp.dtype(a) != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {xp.dtype(a)}{cite(op)}")
    return a


def ndim(xp, a, n: int, name: str, op: str | None = None) -> None:
    if len(xp.shape(a)) != n:
        raise ValueError(f"{name}: expected a {n}-D array, got shape {xp.shape(a)}{cite(op)}")


def shape(xp, a, want: tuple, name: str, op: str | None = None) -> None:
    if xp.shape(a) != tuple(want):
        raise ValueError(f"{name}: expected shape {tuple(want)}, got {xp.shape(a)}{cite(op)}")


def finite(xp, a, name: str, op: str | None = None) -> None:
    """ValueError naming ``name`` and the first index if ``a`` holds NaN or Inf."""
    idx = xp.first_true(~xp.isfinite(a))
    if idx is not None:
        raise ValueError(f"{name} contains a non-finite value ({xp.item(a, idx)!r} at index {idx}); "
                         f"fptq rejects NaN and Inf{cite(op)}")


def positive(xp, a, name: str, op: str | None = None) -> None:
    """Scales: finite and > 0."""
    finite(xp, a, name, op)
    idx = xp.first_true(~(a > 0))
    if idx is not None:
        raise ValueError(f"{name} must be > 0, got {xp.item(a, idx)!r} at index {idx}{cite(op)}")


def nonnegative(xp, a, name: str, op: str | None = None) -> None:
    """Maxima and ranges: finite and >= 0."""
    finite(xp, a, name, op)
    idx = xp.first_true(a < 0)
    if idx is not None:
        raise ValueError(f"{name} must be >= 0, got {xp.item(a, idx)!r} at index {idx}{cite(op)}")


def in_range(xp, a, lo: int, hi: int, name: str, what: str, op: str | None = None) -> None:
    """Integers in [lo, hi] (``what`` says whose range it is)."""
    idx = xp.first_true((a < lo) | (a > hi))
    if idx is not None:
        raise ValueError(f"{name}: {what} must be in [{lo}, {hi}], got {xp.item(a, idx)} "
                         f"at index {idx}{cite(op)}")


def _is_integer(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def integer_param(v, name: str, op: str | None = None) -> int:
    """A Python (or NumPy) integer that is not a bool; 5.0, 5.7, True, np.bool_ are TypeErrors."""
    if not _is_integer(v):
        raise TypeError(f"{name} must be an integer (not a bool or a float), got {v!r} "
                        f"of type {type(v).__name__}{cite(op)}")
    return int(v)


def k_param(k, op: str | None = None) -> int:
    """The logical K: an integer >= 0."""
    k = integer_param(k, "k", op)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}{cite(op)}")
    return k


def group_size_param(group_size, op: str | None = None) -> int:
    """``group_size``: -1 or None (per-channel, returned as -1), or an integer in [1, MAX_GROUP_SIZE]."""
    if group_size is None:
        return -1
    g = integer_param(group_size, "group_size", op)
    if g != -1 and not 1 <= g <= MAX_GROUP_SIZE:
        raise ValueError(f"group_size must be in [1, {MAX_GROUP_SIZE}] (int32 overflow bound, §6.3) "
                         f"or -1 for per-channel, got {g}{cite(op)}")
    return g


def resolve_group_size(g: int, k: int, op: str | None = None) -> int:
    """The G a checked ``group_size`` means for K columns: -1 -> K (1 when K = 0)."""
    if g != -1:
        return g
    g = max(int(k), 1)
    if g > MAX_GROUP_SIZE:
        raise ValueError(f"group_size: per-channel (-1) means G = K = {k}, above {MAX_GROUP_SIZE} "
                         f"(int32 overflow bound, §6.3); choose a group size{cite(op)}")
    return g


def fmt_param(fmt, op: str | None = None) -> WeightFormat:
    """The :class:`WeightFormat` (the enum or its value; unknown -> ValueError)."""
    try:
        weight_format_spec(fmt)
    except ValueError as e:
        raise ValueError(f"fmt: {e}{cite(op)}") from None
    return WeightFormat(fmt)


def thresholds(v0, v1, op: str | None = None) -> tuple[float, float]:
    """Policy thresholds as float32 values: real numbers, finite after conversion, ``0 <= v0 < v1``."""
    out = []
    for name, v in (("v0", v0), ("v1", v1)):
        if isinstance(v, bool) or type(v).__name__ == "bool_" or not isinstance(v, (int, float, np.integer,
                                                                                    np.floating)):
            raise TypeError(f"{name} must be a real number, got {v!r} of type {type(v).__name__}{cite(op)}")
        with np.errstate(over="ignore"):
            try:
                t = np.float32(v)
            except OverflowError:  # a Python int beyond float64
                t = np.float32(np.inf)
        if not np.isfinite(t):
            raise ValueError(f"{name} must be finite (as float32), got {v!r}{cite(op)}")
        out.append(t)
    if not 0 <= out[0] < out[1]:
        raise ValueError(f"v0, v1: the thresholds must satisfy 0 <= v0 < v1 (as float32), got v0={v0}, v1={v1}"
                         f"{cite(op)}")
    return out[0], out[1]


def zero_points(xp, zero, fmt: WeightFormat, op: str | None = None):
    """Phase 2 of a zero-point argument: uint8 for the asymmetric format, None for the symmetric one."""
    if fmt is not WeightFormat.ASYMMETRIC:
        if zero is not None:
            raise ValueError(f"zero: the symmetric format has no zero point; pass None{cite(op)}")
        return None
    if zero is None:
        raise ValueError(f"zero: the asymmetric format needs a zero point per group{cite(op)}")
    return int_array(xp, zero, "uint8", "zero", op)


def zero_values(xp, zero, op: str | None = None) -> None:
    if zero is not None:
        in_range(xp, zero, UINT4_ASYM.qmin, UINT4_ASYM.qmax, "zero", "zero points", op)


def one_scale(xp, s, name: str, op: str, rows: int | None = None) -> None:
    """Shape of an activation scale: one float32 (0-d or [1]), or, if ``rows`` is given, also [rows]."""
    shp = xp.shape(s)
    if shp in ((), (1,)) or (rows is not None and shp == (rows,)):
        return
    also = f" or per-token [{rows}]" if rows is not None else ""
    raise ValueError(f"{name}: expected one scale (shape () or (1,)){also}, got shape {shp}{cite(op)}")


def optional_float(xp, x, name, op):
    return None if x is None else float_array(xp, x, name, op)
