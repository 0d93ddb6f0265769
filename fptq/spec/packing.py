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

from .formats import INT4_SYM, UINT4_ASYM, Int4Packing
from .validate import check_dtype, check_k, check_ndim

__all__ = ["PACKING", "packed_width", "pack_int4", "unpack_int4"]

PACKING = Int4Packing.K_LOW_FIRST


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
    q = check_dtype(q, np.int8, "q")
    check_ndim(q, 2, "q")
    fmt = INT4_SYM if signed else UINT4_ASYM
    if q.size and (q.min() < fmt.storage_min or q.max() > fmt.storage_max):
        raise ValueError(
            f"q: values must be in [{fmt.storage_min}, {fmt.storage_max}] for "
            f"{'signed' if signed else 'unsigned'} INT4, got [{q.min()}, {q.max()}]"
        )
    n, k = q.shape
    nib = (q.astype(np.uint8) & np.uint8(0x0F))
    if k % 2:
        nib = np.concatenate([nib, np.zeros((n, 1), np.uint8)], axis=1)
    return (nib[:, 0::2] | (nib[:, 1::2] << np.uint8(4))).astype(np.uint8)


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
    packed = check_dtype(packed, np.uint8, "packed")
    check_ndim(packed, 2, "packed")
    k = check_k(k)
    if packed.shape[1] != packed_width(k):
        raise ValueError(f"packed: expected {packed_width(k)} bytes per row for K={k}, got {packed.shape[1]}")
    n = packed.shape[0]
    out = np.empty((n, 2 * packed.shape[1]), dtype=np.int8)
    lo = (packed & np.uint8(0x0F)).astype(np.int8)
    hi = (packed >> np.uint8(4)).astype(np.int8)
    if signed:
        lo = np.where(lo >= 8, lo - 16, lo).astype(np.int8)
        hi = np.where(hi >= 8, hi - 16, hi).astype(np.int8)
    out[:, 0::2] = lo
    out[:, 1::2] = hi
    return out[:, :k]
