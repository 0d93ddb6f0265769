"""Input checks shared by the public API: clear errors that name the tensor.

The spec's primitives assume finite float32 inputs of the documented shapes.
The public functions call these checks first, so NaN/Inf, wrong dtypes and
mismatched shapes are rejected with a ``ValueError``/``TypeError`` that names
the offending argument instead of producing garbage.
"""

from __future__ import annotations

import numpy as np

from .formats import FLOAT, MAX_GROUP_SIZE, UINT4_ASYM


def as_float32(x, name: str) -> np.ndarray:
    """Return ``x`` as a float32 ndarray; reject non-float dtypes and non-finite values."""
    a = np.asarray(x)
    if a.dtype != FLOAT:
        if a.dtype.kind not in "fiu" or a.dtype == np.bool_:
            raise TypeError(f"{name}: expected a float32 array, got dtype {a.dtype}")
        a = a.astype(FLOAT)
    check_finite(a, name)
    return a


def check_finite(a: np.ndarray, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` and the first bad index if ``a`` has NaN/Inf."""
    if a.size and not np.isfinite(a).all():
        bad = np.argwhere(~np.isfinite(a))[0]
        idx = tuple(int(i) for i in bad)
        raise ValueError(
            f"{name} contains a non-finite value ({a[idx]!r} at index {idx}); "
            "fptq rejects NaN and Inf"
        )


def check_dtype(a: np.ndarray, dtype, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != np.dtype(dtype):
        raise TypeError(f"{name}: expected dtype {np.dtype(dtype)}, got {a.dtype}")
    return a


def check_ndim(a: np.ndarray, ndim: int, name: str) -> None:
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {a.shape}")


def check_shape(a: np.ndarray, shape: tuple, name: str) -> None:
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(a.shape)}")


def check_positive_scale(s: np.ndarray, name: str) -> None:
    """Scales must be finite and > 0 (the spec never produces anything else)."""
    check_finite(s, name)
    if s.size and not (s > 0).all():
        bad = tuple(int(i) for i in np.argwhere(~(s > 0))[0])
        raise ValueError(f"{name} must be > 0, got {s[bad]!r} at index {bad}")


def check_group_size(group_size: int, k: int) -> int:
    """Validate a group size (1 <= G <= MAX_GROUP_SIZE); ``G = -1`` or ``None`` means per-channel (G = K)."""
    if group_size is None or group_size == -1:
        group_size = max(int(k), 1)
    if isinstance(group_size, bool) or int(group_size) != group_size:
        raise TypeError(f"group_size must be an integer, got {group_size!r}")
    group_size = int(group_size)
    if not 1 <= group_size <= MAX_GROUP_SIZE:
        raise ValueError(
            f"group_size must be in [1, {MAX_GROUP_SIZE}] (int32 overflow bound), got {group_size}"
        )
    return group_size


def check_k(k: int) -> int:
    if isinstance(k, bool) or int(k) != k or k < 0:
        raise ValueError(f"K must be a non-negative integer, got {k!r}")
    return int(k)


def check_zero_points(zero, shape: tuple, asymmetric: bool):
    """Zero points: uint8 of ``shape`` with values in [0, 15] for the asymmetric
    format (the overflow bound of the matmul relies on it); ``None`` for the
    symmetric one. Returns the checked array (or None)."""
    if not asymmetric:
        if zero is not None:
            raise ValueError("zero: the symmetric format has no zero point; pass None")
        return None
    if zero is None:
        raise ValueError("zero: the asymmetric format needs a zero point per group")
    zero = check_dtype(zero, np.uint8, "zero")
    check_shape(zero, shape, "zero")
    if zero.size and zero.max() > UINT4_ASYM.qmax:
        bad = tuple(int(i) for i in np.argwhere(zero > UINT4_ASYM.qmax)[0])
        raise ValueError(f"zero: zero points must be in [0, {UINT4_ASYM.qmax}], got {int(zero[bad])} at index {bad}")
    return zero
