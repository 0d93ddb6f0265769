"""Inputs where fast kernels break and random inputs do not reach (pure NumPy, deterministic).

* **Long per-token rows** (:func:`move_amax`, :func:`long_token_matrix`): K
  up to several thousand with each row's amax moved to the last column, past
  the first 128 columns, or anywhere, so a kernel that scans only a first
  tile (or one warp's columns) for the row's amax gets another scale.
* **Group sums at register edges** (:func:`register_edge_case`): exact int32
  group sums of ``w4a8_group_sums`` placed within 2**10 of every power of two
  2**p that a narrower accumulator would hold (p = 15, 16, 24..30, both
  signs), and at the admitted extremes (``2**30`` symmetric, ``1920 * 2**20 =
  2**31 - 2**27`` asymmetric, docs/spec.md §6.3), built cheaply: one
  structured activation row against a few weight rows, not a random
  2**20-wide matrix.
* **Subnormal scales** (:func:`subnormal_scales`): weight or activation scales
  that are subnormal float32, so that results are subnormal too (a kernel
  built with flush-to-zero / denormals-are-zero returns zeros there).

Used by :mod:`conformance.hypothesis_helpers`, :mod:`conformance.large_cases`
and the tests of §2 and §6.
"""

from __future__ import annotations

import numpy as np

from fptq import spec
from fptq.spec import WeightFormat

from .pieces import ESUB, F32, Source, f32_from_parts, log_uniform, token_matrix

# ---------------------------------------------------------------------------
# long per-token rows (docs/spec.md §2.3)

#: where :func:`move_amax` puts a row's amax, with Hypothesis weights
AMAX_POSITIONS = {"last": 3, "late": 3, "anywhere": 1, "first": 1}


def move_amax(src: Source, row: np.ndarray, where: str) -> np.ndarray:
    """``row`` with its largest |value| swapped to the ``last`` column, a column past the first 128
    (``late``), the ``first`` column or ``anywhere``: a kernel that scans only part of a long row for
    its amax (a first tile, a first warp's columns) gets another scale."""
    k = row.shape[0]
    if k < 2:
        return row
    if where == "last":
        pos = k - 1
    elif where == "late" and k > 129:
        pos = int(src.ints(128, k - 1))
    elif where == "first":
        pos = 0
    else:
        pos = int(src.ints(0, k - 1))
    out = row.copy()
    top = int(np.argmax(np.abs(out)))
    out[[top, pos]] = out[[pos, top]]
    return out


def long_token_matrix(src: Source, m: int, k: int, row_weights: dict[str, int], where: str) -> np.ndarray:
    """float32 [M, K] of :func:`pieces.token_row` kinds with each row's amax moved by :func:`move_amax`."""
    x = token_matrix(src, m, k, row_weights)
    for i in range(m):
        x[i] = move_amax(src, x[i], where)
    return x


# ---------------------------------------------------------------------------
# subnormal scales (docs/spec.md §1.4 rule 6)


def subnormal_scales(src: Source, shape) -> np.ndarray:
    """Positive subnormal float32 (exponent field 0, random nonzero mantissa): (0, 2**-126)."""
    mant = src.ints(1, 2**23 - 1, shape)
    return f32_from_parts(np.zeros(shape, np.int64), np.full(shape, ESUB), mant)


def small_scales(src: Source, shape) -> np.ndarray:
    """Normal float32 in [2**-22, 2**-14): the other scale of a product with a subnormal one, so that
    the results are subnormal too."""
    return log_uniform(src, shape, -22, -15, signed=False)


# ---------------------------------------------------------------------------
# group sums at register edges (docs/spec.md §6.1, §6.3)

#: the powers of two 2**p next to which group sums are placed: a 16- or 17-bit register (p = 15, 16),
#: a float32 mantissa (p = 24) and 25- to 31-bit registers (p = 24..30)
REGISTER_POWERS = (15, 16, 24, 25, 26, 27, 28, 29, 30)
#: the offsets from +-2**p: the register's last value, its first overflow, and 2**10 either side
REGISTER_OFFSETS = (-(2**10), -1, 0, 1, 2**10)
#: columns of the remainder block (qx = -127, -16, -8, -1) that put a sum on its exact target
_REMAINDER_QX = (-127, -16, -8, -1)
_BLOCK_QX = spec.INT8_ACT.storage_min  # -128 over the bulk of the row
_G_MAX = spec.MAX_GROUP_SIZE
#: the short format names of the case ids
FORMATS = {"sym": WeightFormat.SYMMETRIC, "asym": WeightFormat.ASYMMETRIC}


def _per_column(fmt: WeightFormat, positive: bool) -> int:
    """|qx * (q - z)| of one bulk column (qx = -128): symmetric q = -8 (+1024) or 7 (-896);
    asymmetric q - z = -15 (+1920) or 15 (-1920)."""
    if fmt is WeightFormat.SYMMETRIC:
        return -_BLOCK_QX * -spec.INT4_SYM.qmin if positive else -_BLOCK_QX * spec.INT4_SYM.qmax
    return -_BLOCK_QX * spec.UINT4_ASYM.qmax


def reachable(target: int, fmt: WeightFormat) -> bool:
    """Whether :func:`_weight_row` can hit ``target`` exactly within one group of at most 2**20 columns."""
    per = _per_column(fmt, target >= 0)
    return abs(target) // per + len(_REMAINDER_QX) <= _G_MAX


def _weight_row(target: int, fmt: WeightFormat, width: int) -> tuple[np.ndarray, int]:
    """(q int8 [4 + width], z) such that the structured activation row (remainder block, then
    ``width`` columns of -128) times ``q - z`` sums to ``target`` exactly."""
    positive = target >= 0
    per = _per_column(fmt, positive)
    a, r = divmod(abs(target), per)
    i = r % 127
    digits = np.array([r // 127, i // 16, (i % 16) // 8, i % 8], np.int64)  # 127 j + 16 i1 + 8 i2 + i0 = r
    # each remainder column adds qx * (q - z) with qx < 0: (q - z) = -digits adds +r, +digits adds -r
    mult_rem = -digits if positive else digits
    mult_bulk = -(per // -_BLOCK_QX) if positive else per // -_BLOCK_QX  # q - z of a bulk column
    if fmt is WeightFormat.SYMMETRIC:
        z = 0
    else:
        z = spec.UINT4_ASYM.qmax if positive else 0
    q = np.full(len(_REMAINDER_QX) + width, z, np.int64)
    q[:len(_REMAINDER_QX)] = z + mult_rem
    q[len(_REMAINDER_QX):len(_REMAINDER_QX) + a] = z + mult_bulk
    return q.astype(np.int8), z


def register_targets(p: int, fmt: WeightFormat) -> list[int]:
    """The sums placed next to +-2**p that ``fmt`` can reach."""
    out = []
    for sign in (1, -1):
        for d in REGISTER_OFFSETS:
            t = sign * (2**p + d)
            if reachable(t, fmt):
                out.append(t)
    return out


def register_edge_case(p: int | str, fmt: WeightFormat, per_channel: bool = True) -> dict:
    """``w4a8_group_sums`` arguments whose sums (row 0) are exactly :func:`register_targets` (p an int), or
    the admitted extremes (``p = "max"``: every column qx = -128 against q = -8 / 7 (symmetric) or
    q - z = -15 / 15 (asymmetric), K = G = 2**20). Row 1 is row 0 with -127 for -128 (sums just beside).
    One group: ``group_size`` -1 (G = K) or 2**20 (G > K)."""
    fmt = FORMATS.get(fmt) or WeightFormat(fmt)
    if p == "max":
        width = _G_MAX
        qx0 = np.full(width, _BLOCK_QX, np.int64)
        extremes = ([spec.INT4_SYM.qmin, spec.INT4_SYM.qmax] if fmt is WeightFormat.SYMMETRIC
                    else [(0, spec.UINT4_ASYM.qmax), (spec.UINT4_ASYM.qmax, 0)])
        if fmt is WeightFormat.SYMMETRIC:
            rows, zs = [np.full(width, v, np.int8) for v in extremes], [0, 0]
        else:
            rows, zs = [np.full(width, q, np.int8) for q, _ in extremes], [z for _, z in extremes]
    else:
        targets = register_targets(int(p), fmt)
        width = max(abs(t) // _per_column(fmt, t >= 0) for t in targets)
        qx0 = np.concatenate([np.array(_REMAINDER_QX, np.int64), np.full(width, _BLOCK_QX, np.int64)])
        built = [_weight_row(t, fmt, width) for t in targets]
        rows, zs = [q for q, _ in built], [z for _, z in built]
    k = qx0.shape[0]
    qx = np.stack([qx0, np.where(qx0 == _BLOCK_QX, _BLOCK_QX + 1, qx0)]).astype(np.int8)
    q = np.stack(rows)
    signed = fmt is WeightFormat.SYMMETRIC
    zero = None if signed else np.array(zs, np.uint8).reshape(-1, 1)
    return {"qx": qx, "packed": spec.pack_int4(q, signed), "zero": zero, "k": k,
            "group_size": -1 if per_channel else _G_MAX, "fmt": fmt}


def register_edge_ids() -> list[tuple[int | str, str]]:
    """(p, format name) of every register-edge case: each power a format reaches (the symmetric format
    reaches at most 2**30 - 3073 with the remainder block, so 2**30 only as its extreme), and the extremes."""
    return [(p, f) for p in (*REGISTER_POWERS, "max") for f in FORMATS
            if p == "max" or register_targets(p, FORMATS[f])]


def register_edge_matmul(case: dict, per_token: bool) -> dict:
    """The ``w4a8_matmul`` arguments of a register-edge case: similar-magnitude weight scales, a
    per-token or per-tensor activation scale, no bias (int32 -> float32 rounds past 2**24, §1.4 rule 7)."""
    src = Source(int(case["k"]) * 31 + per_token)
    n = case["packed"].shape[0]
    xs = log_uniform(src, (2,) if per_token else (), -12, -4, signed=False)
    return {"qx": case["qx"], "xscale": np.asarray(xs, F32), "packed": case["packed"],
            "wscale": log_uniform(src, (n, 1), -12, -4, signed=False), "zero": case["zero"], "k": case["k"],
            "group_size": case["group_size"], "fmt": case["fmt"], "bias": None}
