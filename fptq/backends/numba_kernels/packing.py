"""INT4 packing kernels (spec section 5): two nibbles per byte along K,
element 2i in the low nibble, 2i+1 in the high nibble; an odd K's padding
nibble is written as 0 and ignored when reading."""

from __future__ import annotations

import numpy as np

from ._jit import njit, pnjit, prange


@njit
def _pack_row(q, out):
    k = q.size
    half = k // 2
    for i in range(half):
        out[i] = np.uint8((q[2 * i] & 0x0F) | ((q[2 * i + 1] & 0x0F) << 4))
    if k % 2:
        out[half] = np.uint8(q[k - 1] & 0x0F)


@pnjit
def pack_int4(q):
    """int8 [N, K] (values already range-checked) -> uint8 [N, ceil(K/2)]."""
    n, k = q.shape
    out = np.empty((n, (k + 1) // 2), np.uint8)
    for r in prange(n):
        _pack_row(q[r], out[r])
    return out


@njit
def nibble_value(v, signed):
    """A nibble 0..15 as its INT4 value: ``v - 16`` if signed and ``v >= 8``."""
    return np.int8(v - 16) if (signed and v >= 8) else np.int8(v)


@njit
def _unpack_row(p, k, signed, out):
    half = k // 2
    for i in range(half):
        b = p[i]
        out[2 * i] = nibble_value(b & 0x0F, signed)
        out[2 * i + 1] = nibble_value(b >> 4, signed)
    if k % 2:
        out[k - 1] = nibble_value(p[half] & 0x0F, signed)


@pnjit
def unpack_int4(packed, k, signed):
    """uint8 [N, ceil(K/2)] -> int8 [N, K]; signed: two's complement nibbles, else 0..15."""
    n = packed.shape[0]
    out = np.empty((n, k), np.int8)
    for r in prange(n):
        _unpack_row(packed[r], k, signed, out[r])
    return out
