"""The one table of integer formats, layouts and numeric constants (spec section 1).

Every bit width, integer range, scale divisor and packing layout of fptq's Python
code (the spec, the reference, the backends' Python side, the conformance suite)
is read from this table. Compiled kernel sources (the numba kernels, the CUDA
source) may spell some of them as literals (15, the nibble masks, the sign
offset 8); what ties those to the table is the conformance suite, which every
backend passes bit for bit, not this module. The table is checked for internal
consistency when this module is imported, so a typo cannot survive an import.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

__all__ = [
    "IntFormat",
    "INT8_ACT",
    "INT4_SYM",
    "UINT4_ASYM",
    "WeightFormat",
    "Int4Packing",
    "ActPolicy",
    "MIN_SCALE",
    "MAX_GROUP_SIZE",
    "DEFAULT_GROUP_SIZE",
    "DEFAULT_V0",
    "DEFAULT_V1",
    "FLOAT",
    "weight_format_spec",
    "POLICY_CODES",
    "NIBBLE_BITS",
    "NIBBLE_MASK",
    "INT4_SIGN_OFFSET",
    "MAX_TERM",
    "check_table",
]

#: The one floating-point type of the spec. Every float op is float32, IEEE 754
#: round-to-nearest-even, each op rounded separately (no FMA contraction).
FLOAT = np.float32


@dataclass(frozen=True)
class IntFormat:
    """An integer quantization format.

    Attributes:
        name: short stable identifier (also written into checkpoints).
        bits: storage bit width.
        signed: two's complement (True) or unsigned (False).
        qmin, qmax: the range quantized values are clipped to.
        scale_divisor: ``scale = amax / scale_divisor`` for symmetric formats;
            ``scale = (max - min) / scale_divisor`` for the asymmetric one.
    """

    name: str
    bits: int
    signed: bool
    qmin: int
    qmax: int
    scale_divisor: int

    @property
    def storage_min(self) -> int:
        """Smallest value the bit width can hold (may lie outside [qmin, qmax])."""
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def storage_max(self) -> int:
        """Largest value the bit width can hold."""
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1


#: INT8 activations: symmetric, [-127, 127] (-128 is never produced), scale = amax / 127.
INT8_ACT = IntFormat("int8_sym", bits=8, signed=True, qmin=-127, qmax=127, scale_divisor=127)
#: INT4 symmetric weights: signed nibbles in [-8, 7], scale = amax / 7.
INT4_SYM = IntFormat("int4_sym", bits=4, signed=True, qmin=-8, qmax=7, scale_divisor=7)
#: INT4 asymmetric weights: unsigned nibbles in [0, 15] with an integer zero point
#: per group, scale = (max - min) / 15 (GPTQ/AWQ style).
UINT4_ASYM = IntFormat("uint4_asym", bits=4, signed=False, qmin=0, qmax=15, scale_divisor=15)


class WeightFormat(str, enum.Enum):
    """The two INT4 weight formats.

    ``SYMMETRIC``: signed two's complement nibbles, q in [-8, 7], no zero point,
    dequantized value ``q * scale``. The default.

    ``ASYMMETRIC``: unsigned nibbles, q in [0, 15], an integer zero point z in
    [0, 15] per group, dequantized value ``(q - z) * scale``.
    """

    SYMMETRIC = "int4_sym"
    ASYMMETRIC = "uint4_asym"


def weight_format_spec(fmt: WeightFormat | str) -> IntFormat:
    """The :class:`IntFormat` row of a weight format (accepts the enum or its value)."""
    try:
        fmt = WeightFormat(fmt)
    except ValueError:
        raise ValueError(
            f"unknown weight format {fmt!r}; expected one of {[f.value for f in WeightFormat]}"
        ) from None
    return INT4_SYM if fmt is WeightFormat.SYMMETRIC else UINT4_ASYM


class Int4Packing(str, enum.Enum):
    """How INT4 values are stored two per byte.

    ``K_LOW_FIRST``: a weight of logical shape [N, K] (nn.Linear's [out, in])
    is stored as uint8 [N, ceil(K / 2)]. Along K, element 2i goes to the low
    nibble (bits 0-3) and element 2i+1 to the high nibble (bits 4-7) of byte i.
    Each nibble holds the value's 4-bit two's complement (symmetric format) or
    unsigned (asymmetric format) pattern. When K is odd the high nibble of the
    last byte of each row is padding and is 0b0000.
    """

    K_LOW_FIRST = "int4_k_low_first"


class ActPolicy(str, enum.Enum):
    """The layerwise activation policy of FPTQ, chosen from the input range v.

    ``STATIC``: v < v0 -> per-tensor static INT8 (one offline scale).
    ``LAE_STATIC``: v0 <= v < v1 -> logarithmic activation equalization, then
    per-tensor static INT8.
    ``DYNAMIC``: v >= v1 -> per-token dynamic INT8 (one scale per row at run time).
    """

    STATIC = "static"
    LAE_STATIC = "lae_static"
    DYNAMIC = "dynamic"


#: Integer codes of the policies in arrays (``select_policies`` returns these; spec §7).
POLICY_CODES = {ActPolicy.STATIC: 0, ActPolicy.LAE_STATIC: 1, ActPolicy.DYNAMIC: 2}

#: Bits of one packed INT4 value (spec §5).
NIBBLE_BITS = INT4_SYM.bits
#: ``0x0F``: the low nibble of a byte.
NIBBLE_MASK = (1 << NIBBLE_BITS) - 1
#: 8: a signed nibble q with its sign bit flipped (``q ^ 8``) reads, unsigned, as ``q + 8``:
#: symmetric weights become unsigned ones with zero point 8 (used by fused kernels).
INT4_SIGN_OFFSET = -INT4_SYM.storage_min
#: 1920 = 128 * 15: the largest |int8 x (q - z)| term of a group sum (spec §6.3).
MAX_TERM = -INT8_ACT.storage_min * (UINT4_ASYM.qmax - UINT4_ASYM.qmin)

#: Smallest scale the spec ever produces: the smallest normal float32, 2**-126.
#: Any computed scale below it (an all-zero row or group, or an amax so small
#: that amax / qmax would be subnormal or underflow to zero) is replaced by it.
MIN_SCALE = np.float32(2.0**-126)

#: Largest admitted group size. Proof (docs/spec.md, "Overflow"): with
#: |qx| <= 128 and |q - z| <= 15, every int32 term of a group sum is bounded by
#: 128 * 15 * G = 1920 G <= 1920 * 2**20 = 2_013_265_920 < 2**31 - 1.
MAX_GROUP_SIZE = 1 << 20

DEFAULT_GROUP_SIZE = 128
DEFAULT_V0 = 15.0
DEFAULT_V1 = 150.0


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise RuntimeError(f"fptq.spec.formats: the format table is inconsistent: {what}")


def check_table(int8: IntFormat = INT8_ACT, int4: IntFormat = INT4_SYM, uint4: IntFormat = UINT4_ASYM,
                max_group_size: int = MAX_GROUP_SIZE) -> None:
    """Check the table for internal consistency (run at import; a real check, not an ``assert``).

    Raises RuntimeError naming the broken rule. The arguments exist so that a test can
    hand it a broken row; by default it checks the table above.
    """
    for f in (int8, int4, uint4):
        _require(f.storage_min <= f.qmin < f.qmax <= f.storage_max, f"{f.name}: qmin/qmax outside the bit width")
        _require(0 < f.scale_divisor <= f.qmax - f.qmin, f"{f.name}: scale divisor outside the range")
    _require(int8.scale_divisor == int8.qmax == -int8.qmin, f"{int8.name}: symmetric scale divisor != qmax")
    _require(int4.scale_divisor == int4.qmax and int4.qmin == int4.storage_min,
             f"{int4.name}: scale divisor != qmax or qmin != storage_min")
    _require(uint4.scale_divisor == uint4.qmax - uint4.qmin, f"{uint4.name}: scale divisor != range")
    _require(int4.bits == uint4.bits == NIBBLE_BITS and int8.bits == 8, "bit widths (INT4 nibbles, INT8 bytes)")
    _require(-int4.storage_min == INT4_SIGN_OFFSET and NIBBLE_MASK == (1 << int4.bits) - 1, "nibble constants")
    # overflow bound of the integer matmul (spec §6.3)
    max_x = -int8.storage_min
    max_w = max(int4.storage_max - int4.storage_min, uint4.qmax - uint4.qmin)
    _require(max_x * max_w <= MAX_TERM and max_x * max_w * max_group_size <= 2**31 - 1,
             f"1920 * G <= 2**31 - 1 for G = {max_group_size} (int32 overflow bound)")
    _require(float(MIN_SCALE) == 2.0**-126 and np.finfo(np.float32).tiny == MIN_SCALE, "MIN_SCALE != 2**-126")
    _require(0 < DEFAULT_V0 < DEFAULT_V1, "default thresholds")
    _require(sorted(POLICY_CODES.values()) == list(range(len(ActPolicy))), "policy codes")


check_table()
