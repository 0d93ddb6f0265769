"""INT4 packing, two values per byte along K (spec section 5).

Layout :attr:`fptq.spec.formats.Int4Packing.K_LOW_FIRST`: a logical [N, K]
INT4 array is stored as uint8 [N, ceil(K / 2)]; along K, element 2i goes to the
low nibble (bits 0-3) and element 2i+1 to the high nibble (bits 4-7) of byte i.
A nibble holds the 4-bit two's complement pattern of a signed value
(symmetric format, [-8, 7]) or the unsigned value ([0, 15], asymmetric
format). When K is odd, the high nibble of each row's last byte is padding
and is 0.

Worked example (also a known-answer test, ``tests/test_spec_known_answers.py``)::

    signed q  = [ 1, -2,  7, -8, 3]          (K = 5, odd)
    nibbles   = [0x1, 0xE, 0x7, 0x8, 0x3]    (-2 -> 0b1110, -8 -> 0b1000)
    bytes     = [0xE1, 0x87, 0x03]           (low = 2i, high = 2i+1; last high nibble 0)
"""

from __future__ import annotations

import numpy as np

from . import validate as V
from .arrays import NUMPY
from .formats import INT4_SYM, NIBBLE_BITS, NIBBLE_MASK, Int4Packing

__all__ = ["PACKING", "packed_width", "pack_int4", "unpack_int4"]

PACKING = Int4Packing.K_LOW_FIRST
_BITS, _MASK, _VALUES = np.uint8(NIBBLE_BITS), np.uint8(NIBBLE_MASK), 1 << NIBBLE_BITS   # 4, 0x0F, 16


def packed_width(k: int) -> int:
    """Bytes per row: ``ceil(K / 2)``."""
    return (int(k) + 1) // 2


def pack_int4(q, signed: bool = True) -> np.ndarray:
    """Pack INT4 values two per byte.

    Formula: ``byte[n, i] = (q[n, 2i] & 0xF) | ((q[n, 2i+1] & 0xF) << 4)``, with
    ``q[n, K] = 0`` when K is odd.

    Args:
        q: int8 [N, K]; values in [-8, 7] if ``signed`` else in [0, 15].
        signed: which range q must be in (the packed bits do not record it).
    Returns:
        uint8 [N, ceil(K / 2)].
    Raises ValueError if a value is out of range (it would not survive 4 bits).
    """
    return _pack(V.pack_int4(NUMPY, q, signed))


def _pack(q: np.ndarray) -> np.ndarray:
    """Unchecked :func:`pack_int4` (int8 [N, K] in range)."""
    n, k = q.shape
    nib = (q.astype(np.uint8) & _MASK)
    if k % 2:
        nib = np.concatenate([nib, np.zeros((n, 1), np.uint8)], axis=1)
    return (nib[:, 0::2] | (nib[:, 1::2] << _BITS)).astype(np.uint8)


def unpack_int4(packed, k: int, signed: bool = True) -> np.ndarray:
    """Unpack bytes to INT4 values.

    Formula: ``lo = b & 0xF``, ``hi = b >> 4``; element 2i = lo, 2i+1 = hi; if
    ``signed``, a nibble v >= 8 means v - 16 (two's complement sign extension).
    The padding nibble of an odd K is ignored, whatever it holds.

    Args:
        packed: uint8 [N, ceil(K / 2)]. k: the logical K. signed: nibble interpretation.
    Returns:
        int8 [N, K], in [-8, 7] (signed) or [0, 15] (unsigned).
    """
    packed, k = V.unpack_int4(NUMPY, packed, k, signed)
    return _unpack(packed, k, bool(signed))


def _unpack(packed: np.ndarray, k: int, signed: bool) -> np.ndarray:
    """Unchecked :func:`unpack_int4`."""
    n = packed.shape[0]
    out = np.empty((n, 2 * packed.shape[1]), dtype=np.int8)
    lo = (packed & _MASK).astype(np.int8)
    hi = (packed >> _BITS).astype(np.int8)
    if signed:  # two's complement: a nibble v >= 8 means v - 16
        lo = np.where(lo > INT4_SYM.qmax, lo - _VALUES, lo).astype(np.int8)
        hi = np.where(hi > INT4_SYM.qmax, hi - _VALUES, hi).astype(np.int8)
    out[:, 0::2] = lo
    out[:, 1::2] = hi
    return out[:, :k]
