"""INT4 packing kernels (spec section 5): two nibbles per byte along K,
element 2i in the low nibble, 2i+1 in the high nibble; an odd K's padding
nibble is written as 0 and ignored when reading.

Also the nibble constants every numba kernel uses, read from the formats table
(:mod:`fptq.spec.formats`) at import (numba freezes module globals into the
compiled code as constants), and the one sign-extension rule of fptq's kernels,
``q = (u ^ 8) - 8`` for the unsigned pattern u of a signed nibble (the same in
``fptq/backends/cuda/common.cu``, ``fptq_sext4``).
"""

from __future__ import annotations

import numpy as np

from ...spec.formats import INT4_SIGN_OFFSET, NIBBLE_BITS, NIBBLE_MASK
from ._jit import njit, pnjit, prange

#: 0x0F: the low nibble of a byte.
NIBBLE = np.uint8(NIBBLE_MASK)
#: 4: the shift to the high nibble.
SHIFT = NIBBLE_BITS
#: 8: a signed nibble's sign bit; ``u ^ 8`` maps the pattern of q in [-8, 7] to q + 8 in [0, 15].
SIGN = INT4_SIGN_OFFSET
#: 0x88: XOR that flips the sign bit of both nibbles of a byte (two's complement q -> unsigned q + 8).
SIGN_FLIP = np.uint8(INT4_SIGN_OFFSET | (INT4_SIGN_OFFSET << NIBBLE_BITS))
#: 0xF0: the high nibble of a byte.
HIGH_NIBBLE = np.uint8(NIBBLE_MASK << NIBBLE_BITS)


@njit
def _pack_row(q, out):
    k = q.size
    half = k // 2
    for i in range(half):
        out[i] = np.uint8((q[2 * i] & NIBBLE) | ((q[2 * i + 1] & NIBBLE) << SHIFT))
    if k % 2:
        out[half] = np.uint8(q[k - 1] & NIBBLE)


@pnjit
def pack_int4(q):
    """int8 [N, K] (values already range-checked) -> uint8 [N, ceil(K/2)]."""
    n, k = q.shape
    out = np.empty((n, (k + 1) // 2), np.uint8)
    for r in prange(n):
        _pack_row(q[r], out[r])
    return out


@njit
def sign_extend(u):
    """The value of a signed nibble whose 4-bit pattern is ``u`` in [0, 15]: ``(u ^ 8) - 8``."""
    return np.int8((u ^ SIGN) - SIGN)


@njit
def nibble_value(v, signed):
    """A nibble 0..15 as its INT4 value: :func:`sign_extend` if signed, else ``v``."""
    return sign_extend(v) if signed else np.int8(v)


@njit
def unpack_row(p, k, signed, out):
    """One packed row uint8 [ceil(K/2)] -> int8 [K] (``out``), as :func:`unpack_int4`."""
    half = k // 2
    for i in range(half):
        b = p[i]
        out[2 * i] = nibble_value(b & NIBBLE, signed)
        out[2 * i + 1] = nibble_value(b >> SHIFT, signed)
    if k % 2:
        out[k - 1] = nibble_value(p[half] & NIBBLE, signed)


@pnjit
def unpack_int4(packed, k, signed):
    """uint8 [N, ceil(K/2)] -> int8 [N, K]; signed: two's complement nibbles, else 0..15."""
    n = packed.shape[0]
    out = np.empty((n, k), np.int8)
    for r in prange(n):
        unpack_row(packed[r], k, signed, out[r])
    return out
