"""Strided, offset and padded inputs: NumPy arrays handed to a backend as views into larger buffers.

A kernel that takes an array's data pointer and assumes packed rows reads the
wrong memory when the caller passes a slice: a row pitch larger than the row
(``row_pitch``), a view that starts inside its buffer (``offset``), every other
column (``col_stride``), or a transposed (column-major) array
(``transposed``). :func:`backend_view` builds such a view **in the backend's
own arrays**: the buffer crosses with ``backend.from_numpy`` (onto the device,
for a GPU backend) and is sliced there with the array type's own indexing, so
the backend receives a device-resident strided view; its outputs come back
with ``to_numpy`` and are compared on the host. The bytes outside the view
hold garbage (NaN for floats, 0x55 patterns for integers): a kernel that
reads them is caught.

A backend whose arrays cannot be sliced (no ``__getitem__`` with slices, or
no ``.T``) gets contiguous arrays for that layout: :func:`backend_view` falls
back and says so through :data:`FALLBACKS`.
"""

from __future__ import annotations

import numpy as np

#: layout name -> which ranks it applies to
LAYOUTS = {"contiguous": (0, 1, 2, 3), "row_pitch": (2, 3), "offset": (1, 2, 3), "col_stride": (1, 2),
           "transposed": (2,)}
#: layouts a backend could not build (array type without slicing): name -> reason
FALLBACKS: dict[str, str] = {}
_PAD, _OFF = 3, 2


def layouts_for(ndim: int) -> list[str]:
    """The layouts that apply to an array of rank ``ndim``."""
    return [name for name, ranks in LAYOUTS.items() if ndim in ranks]


def _garbage(dtype: np.dtype, shape) -> np.ndarray:
    if dtype.kind == "f":
        return np.full(shape, np.nan, dtype)
    if dtype == np.bool_:
        return np.ones(shape, dtype)
    return np.full(shape, 0x55, dtype)


def buffer_and_index(a: np.ndarray, layout: str) -> tuple[np.ndarray, tuple, bool]:
    """(buffer, index, transpose): ``buffer[index]`` (then ``.T`` if ``transpose``) equals ``a``."""
    if layout == "contiguous" or a.ndim not in LAYOUTS.get(layout, ()):
        return np.ascontiguousarray(a), (), False
    if layout == "transposed":
        return np.ascontiguousarray(a.T), (), True
    lead, last = a.shape[:-1], a.shape[-1]
    if layout == "row_pitch":
        buf = _garbage(a.dtype, (*lead, last + _PAD))
        index = (*(slice(None) for _ in lead), slice(0, last))
    elif layout == "offset":
        buf = _garbage(a.dtype, tuple(d + 1 for d in lead) + (last + _PAD + _OFF,))
        index = (*(slice(1, None) for _ in lead), slice(_OFF, _OFF + last))
    elif layout == "col_stride":
        buf = _garbage(a.dtype, (*lead, 2 * last))
        index = (*(slice(None) for _ in lead), slice(0, 2 * last, 2))
    else:
        raise ValueError(f"unknown layout {layout!r}")
    buf[index] = a
    return buf, index, False


def numpy_view(a: np.ndarray, layout: str) -> np.ndarray:
    """``a`` as a NumPy view of ``layout`` (equal values, other strides)."""
    buf, index, transpose = buffer_and_index(a, layout)
    v = buf[index] if index else buf
    return v.T if transpose else v


def backend_view(backend, a: np.ndarray, layout: str | None):
    """``a`` in ``backend``'s arrays as a view of ``layout``: the whole buffer through ``from_numpy``,
    then sliced (and transposed) with the backend array's own indexing (see the module docstring)."""
    if not layout or layout == "contiguous" or a.ndim not in LAYOUTS.get(layout, ()):
        return backend.from_numpy(a)
    buf, index, transpose = buffer_and_index(a, layout)
    t = backend.from_numpy(buf)
    try:
        v = t[index] if index else t
        return v.T if transpose else v
    except (TypeError, AttributeError, IndexError, NotImplementedError) as e:
        FALLBACKS[layout] = f"{type(t).__name__}: {type(e).__name__}: {e}"
        return backend.from_numpy(a)
