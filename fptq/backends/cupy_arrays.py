"""The array adapter of the cupy backend (the interface of :mod:`fptq.spec.arrays`).

The cupy backend checks its arguments with the spec's own rules,
``fptq.spec.validate.<operation>(CUPY_ARRAYS, ...)``, answered by this
adapter on device arrays. One wrinkle: CuPy compiles its own elementwise
kernels with ``-ftz=true`` (see :mod:`fptq.backends.cupy_compile`), so a CuPy
comparison such as ``scale > 0`` flushes a subnormal to zero first and would
reject a valid subnormal scale (the spec's pieces draw them). So a float32
argument is wrapped in :class:`Float32Bits`, whose comparisons work on the
IEEE bit patterns with integer operations (exact; -0.0 == +0.0 as IEEE says),
and a float argument of another dtype is converted to float32 on the host by
NumPy (round to nearest even, subnormals kept) rather than by a CuPy cast.
The backend unwraps checked arguments with :func:`unwrap`.

The adapter is written over an array module (``cupy``, or ``numpy`` for the
tests that run it without a GPU).
"""

from __future__ import annotations

import numpy as np

__all__ = ["Float32Bits", "DeviceArrays", "unwrap"]

_INT_MIN = np.int32(-(2**31))
_EXP_MASK = np.int32(0x7F800000)
_MAG_MASK = np.int32(0x7FFFFFFF)


def _order_key(mod, bits):
    """A signed int32 key with the order of the float32 values whose bit patterns are ``bits``
    (finite or infinite; -0.0 and +0.0 get the same key)."""
    bits = mod.where(bits == _INT_MIN, np.int32(0), bits)            # -0.0 -> +0.0
    return bits ^ ((bits >> np.int32(31)) & _MAG_MASK)                # negatives: reverse their order


def _scalar_key(c) -> np.int32:
    with np.errstate(over="ignore"):
        f = np.float32(c)
    if np.isnan(f):
        raise ValueError("cannot compare with NaN")
    b = np.array([f], np.float32).view(np.int32)
    return np.int32(_order_key(np, b)[0])


class Float32Bits:
    """A float32 device array whose comparisons with a number are exact integer operations
    on its bit patterns (no flush to zero). ``.a`` is the array itself."""

    __slots__ = ("a", "_mod")

    def __init__(self, a, mod):
        self.a = a
        self._mod = mod

    @property
    def shape(self):
        return self.a.shape

    def _key(self):
        return _order_key(self._mod, self.a.view(np.int32))

    def __gt__(self, c):
        return self._key() > _scalar_key(c)

    def __ge__(self, c):
        return self._key() >= _scalar_key(c)

    def __lt__(self, c):
        return self._key() < _scalar_key(c)

    def __le__(self, c):
        return self._key() <= _scalar_key(c)

    def isfinite(self):
        return (self.a.view(np.int32) & _EXP_MASK) != _EXP_MASK


def unwrap(a):
    """The array inside a :class:`Float32Bits` (anything else as is)."""
    return a.a if isinstance(a, Float32Bits) else a


class DeviceArrays:
    """The :mod:`fptq.spec.arrays` interface over an array module (``cupy`` on the GPU)."""

    def __init__(self, mod, name: str | None = None):
        self.mod = mod
        self.name = name or mod.__name__
        self._to_host = getattr(mod, "asnumpy", np.asarray)

    def asarray(self, x, name: str):
        """``x`` as a device array (float32 ones wrapped); a host array-like is copied to the device."""
        if isinstance(x, Float32Bits):
            return x
        if x is None:
            raise TypeError(f"{name}: expected an array, got None [docs/spec.md §9]")
        if not isinstance(x, self.mod.ndarray):
            try:
                h = np.asarray(x)
            except Exception as e:  # noqa: BLE001 - a foreign framework's error, restated with the argument
                raise TypeError(f"{name}: cannot read a {type(x).__module__}.{type(x).__qualname__} as an "
                                f"array ({type(e).__name__}); pass a {self.name} or NumPy array "
                                "[docs/spec.md §9]") from None
            if h.dtype == object:
                raise TypeError(f"{name}: cannot make a {self.name} array of {type(x).__name__} [docs/spec.md §9]")
            if not h.dtype.isnative:
                h = h.astype(h.dtype.newbyteorder("="))
            x = self.mod.asarray(h)
        return Float32Bits(x, self.mod) if x.dtype == np.float32 else x

    def dtype(self, a) -> str:
        return np.dtype(unwrap(a).dtype).name

    def shape(self, a) -> tuple:
        return tuple(int(s) for s in unwrap(a).shape)

    def to_float32(self, a):
        """Converted on the host by NumPy (CuPy's cast would flush subnormal results)."""
        with np.errstate(over="ignore"):  # beyond float32 becomes inf, rejected as non-finite
            h = self._to_host(unwrap(a)).astype(np.float32)
        return Float32Bits(self.mod.asarray(h), self.mod)

    def isfinite(self, a):
        if isinstance(a, Float32Bits):
            return a.isfinite()
        return self.mod.ones(a.shape, dtype=bool) if a.dtype.kind in "iub" else self.mod.isfinite(a)

    def first_true(self, mask) -> tuple | None:
        mask = unwrap(mask)
        if mask.size == 0 or not bool(mask.any()):
            return None
        flat = int(self.mod.argmax(mask.reshape(-1)))
        return tuple(int(i) for i in np.unravel_index(flat, mask.shape))

    def item(self, a, idx: tuple):
        return self._to_host(unwrap(a)[idx]).item()

    def min(self, a):
        return self._to_host(unwrap(a).min()).item()

    def max(self, a):
        return self._to_host(unwrap(a).max()).item()

    def device_of(self, a) -> str:
        """Where the array lives (for messages)."""
        dev = getattr(unwrap(a), "device", None)
        return f"cuda:{dev.id}" if hasattr(dev, "id") else "cpu"
