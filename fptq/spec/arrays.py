"""The array adapter the argument checks are written over (docs/spec.md §9).

:mod:`fptq.spec.validate` states every rule of the public API once, as
questions about an array: its dtype name, its shape, where it is not finite,
its smallest and largest value. An *array adapter* answers them for one
framework, in the spirit of einops' one-small-class-per-framework backends:

=====================  ========================================================
``name``               the framework (``"numpy"``, ``"torch"``)
``asarray(x, name)``   ``x`` as this framework's array; anything it cannot hold
                       (None, a foreign tensor it cannot read) is a ``TypeError``
                       naming the argument
``dtype(a)``           the dtype's canonical name: ``"float32"``, ``"int8"``,
                       ``"bfloat16"``, ``"bool"``, ``"complex64"``, ...
``shape(a)``           a tuple of Python ints
``to_float32(a)``      a real array converted to float32 (round to nearest even)
``isfinite(a)``        a boolean array
``first_true(mask)``   the index tuple of the first True element, or None
``item(a, idx)``       one element as a Python number (for messages)
``min(a)``, ``max(a)`` Python numbers (``a`` non-empty)
``device_of(a)``       where the array lives (for messages)
=====================  ========================================================

Comparisons (``a > 0``) and ``~mask`` are the framework's own operators.
:class:`NumpyArrays` is the spec's adapter (the numpy and numba backends use
it); the torch backend has its own in :mod:`fptq.backends.torch_arrays`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["FLOAT_DTYPES", "INT_DTYPES", "REAL_DTYPES", "NumpyArrays", "NUMPY"]

#: Floating dtypes a float argument may have (converted to float32 when not float32).
FLOAT_DTYPES = frozenset({"float16", "bfloat16", "float32", "float64"})
#: Integer dtypes (a float argument of one is converted to float32; integer arguments need their exact dtype).
INT_DTYPES = frozenset({"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"})
#: The real dtypes: everything a float argument admits. bool, complex, object, str... are TypeErrors.
REAL_DTYPES = FLOAT_DTYPES | INT_DTYPES


class NumpyArrays:
    """The array adapter of NumPy (see the module docstring)."""

    name = "numpy"

    def asarray(self, x, name: str) -> np.ndarray:
        """``x`` as a native-byte-order ndarray; None, an ``np.matrix`` or an unreadable foreign array is a
        TypeError."""
        if isinstance(x, np.matrix):  # always 2-D, '*' is a matrix product: refused alike on every backend
            raise TypeError(f"{name}: an np.matrix is not accepted (it stays 2-D under indexing and its '*' is a "
                            f"matrix product); pass np.asarray({name}) [docs/spec.md §9]")
        if isinstance(x, np.ndarray):
            a = x
        elif x is None:
            raise TypeError(f"{name}: expected an array, got None [docs/spec.md §9]")
        else:
            try:
                a = np.asarray(x)
            except Exception as e:  # noqa: BLE001 - a foreign framework's error, restated with the argument
                kind = f"{type(x).__module__}.{type(x).__qualname__}"
                raise TypeError(f"{name}: cannot read a {kind} as a NumPy array ({type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''}); pass a NumPy array "
                                "(a torch tensor: t.detach().cpu().float().numpy()) [docs/spec.md §9]") from None
        if not a.dtype.isnative:
            a = a.astype(a.dtype.newbyteorder("="))
        return a

    def dtype(self, a: np.ndarray) -> str:
        return a.dtype.name

    def shape(self, a: np.ndarray) -> tuple:
        return tuple(int(s) for s in a.shape)

    def to_float32(self, a: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):  # float64 beyond float32 becomes inf, rejected as non-finite
            return a.astype(np.float32)

    def isfinite(self, a: np.ndarray) -> np.ndarray:
        return np.isfinite(a)

    def first_true(self, mask) -> tuple | None:
        mask = np.asarray(mask)
        if not mask.any():
            return None
        return tuple(int(i) for i in np.argwhere(mask)[0])

    def item(self, a: np.ndarray, idx: tuple):
        return a[idx].item()

    def min(self, a: np.ndarray):
        return a.min().item()

    def max(self, a: np.ndarray):
        return a.max().item()

    def device_of(self, a) -> str:
        return "cpu"


#: The one NumPy adapter instance.
NUMPY = NumpyArrays()
