"""Named pieces the conformance inputs are built from (pure NumPy, deterministic).

Each piece is a function ``piece(src, shape, ...)`` that returns an array of a
documented dtype and shape from a :class:`Source`. The pieces are the edges of
the spec: exact ``.5`` ties, values at the clip limit, all-zero rows/groups
(with signed zeros), amax so small that the scale underflows to ``MIN_SCALE``,
huge magnitudes, every nibble value, int8 ``-128``, int32 sums that round when
converted to float32.

Two users: :mod:`conformance.hypothesis_helpers` (Hypothesis draws which
pieces, how much of each, the sizes and a seed) and
:mod:`conformance.make_vectors` (fixed seeds, stored known-answer vectors).
:class:`Source` draws only from PCG64's raw 64-bit stream, which NumPy keeps
stable across versions, and builds floats from bit patterns and basic
arithmetic, so the same seed gives the same bytes everywhere.
"""

from __future__ import annotations

import numpy as np

from fptq import spec

F32 = np.float32
F32_MAX = float(np.finfo(np.float32).max)
MIN_SCALE = float(spec.MIN_SCALE)
ACT_QMAX = spec.INT8_ACT.qmax
SYM_QMAX = spec.INT4_SYM.qmax
#: the format table, by name (no bare 127 / 15 / 150 / 1920 below: docs/spec.md §1.1)
ACT_MIN = spec.INT8_ACT.storage_min          # -128: the int8 the matmul admits but no quantizer makes
SYM_MIN = spec.INT4_SYM.qmin                 # -8
ASYM_QMAX = spec.UINT4_ASYM.qmax             # 15
V0, V1 = spec.DEFAULT_V0, spec.DEFAULT_V1    # 15, 150
MAX_TERM = spec.formats.MAX_TERM             # 1920 = 128 * 15, the overflow bound per column (§6.3)
#: float32 exponents (not the INT8 range): the largest, and the one that encodes subnormals
EMAX = int(np.finfo(np.float32).maxexp) - 1  # 127
ESUB = int(np.finfo(np.float32).minexp) - 1  # -127
MANT_BITS = int(np.finfo(np.float32).nmant)  # 23


class Source:
    """Deterministic random numbers from ``np.random.PCG64(seed).random_raw`` only."""

    def __init__(self, seed: int):
        self._bg = np.random.PCG64(int(seed))

    def raw(self, n: int) -> np.ndarray:
        """``n`` uint64 words."""
        if n == 0:
            return np.zeros(0, np.uint64)
        return np.asarray(self._bg.random_raw(int(n)), dtype=np.uint64).reshape(int(n))

    def ints(self, lo: int, hi: int, shape=()) -> np.ndarray:
        """int64 in ``[lo, hi]`` (inclusive), ``shape``."""
        n = int(np.prod(shape, dtype=np.int64))
        r = self.raw(n) % np.uint64(hi - lo + 1)
        return (np.int64(lo) + r.astype(np.int64)).reshape(shape)

    def unit(self, shape=()) -> np.ndarray:
        """float64 in ``[0, 1)`` with 53 random bits, ``shape``."""
        n = int(np.prod(shape, dtype=np.int64))
        return ((self.raw(n) >> np.uint64(11)).astype(np.float64) * 2.0**-53).reshape(shape)

    def signs(self, shape=()) -> np.ndarray:
        """float64 +-1."""
        return np.where(self.ints(0, 1, shape) == 1, -1.0, 1.0)

    def pick(self, weights: dict[str, int], shape=()) -> np.ndarray:
        """Indices into ``list(weights)`` drawn with the given integer weights."""
        names = list(weights)
        table = np.repeat(np.arange(len(names)), [int(weights[n]) for n in names])
        if table.size == 0:
            raise ValueError("pick: all weights are zero")
        return table[self.ints(0, table.size - 1, shape)]


# ---------------------------------------------------------------------------
# scalars and magnitudes


def f32_from_parts(sign, exp, mant) -> np.ndarray:
    """float32 from sign (0/1), unbiased exponent in [-127, 127] (-127 = subnormal), 23-bit mantissa."""
    bits = (np.asarray(sign, np.uint32) << np.uint32(31)) \
        | ((np.asarray(exp, np.int64) + EMAX).astype(np.uint32) << np.uint32(MANT_BITS)) \
        | np.asarray(mant, np.uint32)
    return bits.astype(np.uint32).view(F32)


def log_uniform(src: Source, shape, lo_exp: int, hi_exp: int, signed: bool = True) -> np.ndarray:
    """float32 with exponent uniform in [lo_exp, hi_exp] and a full random mantissa.

    ``lo_exp = -127`` admits subnormals. Magnitudes lie in ``[2**lo_exp, 2**(hi_exp + 1))``.
    """
    sign = src.ints(0, 1, shape) if signed else np.zeros(shape, np.int64)
    return f32_from_parts(sign, src.ints(lo_exp, hi_exp, shape), src.ints(0, 2**23 - 1, shape))


def nice_scale(src: Source, lo_exp: int = -24, hi_exp: int = 8) -> F32:
    """``c * 2**e`` with c odd in [1, 255]: (k + 0.5) * scale is then exact, so ties are real ties."""
    c = 2 * int(src.ints(0, 255 // 2)) + 1
    return F32(np.ldexp(float(c), int(src.ints(lo_exp, hi_exp))))


def full_scale(src: Source, lo_exp: int = -20, hi_exp: int = 6) -> F32:
    """A positive float32 with a full random mantissa (its reciprocal is inexact)."""
    return F32(log_uniform(src, (), lo_exp, hi_exp, signed=False))


SCALE_KINDS = ("nice", "full", "min", "subnormal", "huge")
#: the kinds the Hypothesis strategies draw (the stored vectors keep :data:`SCALE_KINDS`, so they do not drift)
DRAWN_SCALE_KINDS = (*SCALE_KINDS, "pow2")
#: the exponent of the smallest subnormal float32 (2**-149)
SMALLEST_SUBNORMAL_EXP = ESUB - MANT_BITS + 1


def pow2_scale(src: Source) -> F32:
    """``2**e``: half the draws subnormal (e in [-149, -127], where ``1 / s`` overflows to inf from
    e = -128 down, so ``x * (1 / s)`` is wrong there while it is exact above, docs/spec.md §1.4 rule 3),
    the rest e in [-126, 30]."""
    lo, hi = (SMALLEST_SUBNORMAL_EXP, ESUB) if src.ints(0, 1) else (ESUB + 1, 30)
    return F32(np.ldexp(1.0, int(src.ints(lo, hi))))


def scale_of_kind(src: Source, kind: str) -> F32:
    """A positive finite float32 scale: ``nice``, ``full``, ``min`` (MIN_SCALE), ``subnormal``, ``huge``
    or ``pow2`` (a power of two down to the smallest subnormal, :func:`pow2_scale`)."""
    if kind == "nice":
        return nice_scale(src)
    if kind == "full":
        return full_scale(src)
    if kind == "min":
        return F32(MIN_SCALE)
    if kind == "subnormal":
        return F32(f32_from_parts(0, ESUB, int(src.ints(1, 2**MANT_BITS - 1))))
    if kind == "huge":
        return F32(log_uniform(src, (), 90, 120, signed=False))
    if kind == "pow2":
        return pow2_scale(src)
    raise ValueError(f"unknown scale kind {kind!r}")


def _to_f32(a64: np.ndarray) -> np.ndarray:
    """float64 -> float32 (one rounding), magnitudes clipped to the largest finite float32."""
    return np.clip(a64, -F32_MAX, F32_MAX).astype(F32)


def _step_ulp(src: Source, a: np.ndarray, up: bool = True) -> np.ndarray:
    """Each element of ``a`` unchanged, or moved one ulp down (or up, if ``up``), at random."""
    step = src.ints(-1 if up else 0, 1, a.shape)
    with np.errstate(over="ignore"):
        upv = np.nextafter(a, F32(np.inf)).astype(F32)
        downv = np.nextafter(a, F32(-np.inf)).astype(F32)
    if up:
        return np.where(step > 0, upv, np.where(step < 0, downv, a)).astype(F32)
    return np.where(step > 0, downv, a).astype(F32)


def signed_zeros(src: Source, shape) -> np.ndarray:
    """+0.0 and -0.0 at random."""
    return np.where(src.ints(0, 1, shape) == 1, F32(-0.0), F32(0.0)).astype(F32)


# ---------------------------------------------------------------------------
# activations (spec section 2)

#: Element kinds of an activation relative to a quantization scale s.
ACT_ELEMENT_KINDS = ("tie", "near_tie", "in_range", "limit", "beyond", "zero", "huge", "tiny")


def act_elements(src: Source, shape, scale: float, kind: str) -> np.ndarray:
    """float32 activation values of one kind relative to ``scale``.

    tie: ``(k + 0.5) * s``, k in [-128, 127] (exact ties when s is ``nice``);
    near_tie: one ulp either side of a tie; in_range: uniform in +-127.5 s;
    limit: +-127 s, +-127.5 s and their neighbours; beyond: +-(128..1000) s
    (saturates); zero: +-0.0; huge: |x| in [2**100, 2**128) (x / s may
    overflow to inf); tiny: subnormal and near-subnormal values.
    """
    s = float(scale)
    if kind == "tie":
        return _to_f32((src.ints(ACT_MIN, ACT_QMAX, shape) + 0.5) * s)
    if kind == "near_tie":
        t = _to_f32((src.ints(ACT_MIN, ACT_QMAX, shape) + 0.5) * s)
        return np.nextafter(t, np.where(src.ints(0, 1, shape) == 1, F32(np.inf), F32(-np.inf))).astype(F32)
    if kind == "in_range":
        return _to_f32((2.0 * src.unit(shape) - 1.0) * (ACT_QMAX + 0.5) * s)
    if kind == "limit":
        base = _to_f32(src.signs(shape) * np.where(src.ints(0, 1, shape) == 1, ACT_QMAX + 0.5, float(ACT_QMAX)) * s)
        return _step_ulp(src, base)
    if kind == "beyond":
        return _to_f32(src.signs(shape) * ((ACT_QMAX + 1.0) + 872.0 * src.unit(shape)) * s)
    if kind == "zero":
        return signed_zeros(src, shape)
    if kind == "huge":
        return log_uniform(src, shape, 100, EMAX)
    if kind == "tiny":
        return log_uniform(src, shape, ESUB, -120)
    raise ValueError(f"unknown activation element kind {kind!r}")


def mixture(src: Source, shape, weights: dict[str, int], make) -> np.ndarray:
    """Element-wise mixture: each element of ``shape`` comes from ``make(kind)`` for a kind drawn by weight."""
    which = src.pick(weights, shape)
    out = np.zeros(shape, F32)
    for i, kind in enumerate(weights):
        if weights[kind] and (which == i).any():
            vals = make(kind)
            out = np.where(which == i, vals, out).astype(F32)
    return out


def act_tensor(src: Source, shape, scale: float, weights: dict[str, int]) -> np.ndarray:
    """float32 activation of ``shape`` mixing :data:`ACT_ELEMENT_KINDS` by ``weights``."""
    return mixture(src, shape, weights, lambda kind: act_elements(src, shape, scale, kind))


#: Row kinds of a per-token activation.
TOKEN_ROW_KINDS = ("ties", "generic", "zeros", "tiny", "underflow_edge", "huge", "max_float", "single")


def token_row(src: Source, k: int, kind: str) -> np.ndarray:
    """One float32 row [K] of a per-token activation, of a named kind.

    ties: row amax = 127 s exactly for a ``nice`` s, so scale = s and the
    other elements are exact ties (k + 0.5) s (|k + 0.5| < 127) or their
    neighbours; generic: full-mantissa values, amax spread over 2**-10..2**20;
    zeros: +-0.0 only (scale MIN_SCALE); tiny: amax < 127 * 2**-126 (the scale
    underflows to MIN_SCALE); underflow_edge: amax at 127 * 2**-126 or one
    ulp either side, ties of MIN_SCALE; huge: amax in 2**100..2**127;
    max_float: contains +-FLT_MAX; single: one nonzero element.
    """
    if k == 0:
        return np.zeros(0, F32)
    shape = (k,)
    if kind in ("ties", "underflow_edge"):
        s = nice_scale(src) if kind == "ties" else F32(MIN_SCALE)
        amax = F32(float(ACT_QMAX) * float(s))
        if kind == "underflow_edge":
            amax = F32(_step_ulp(src, np.array(amax, F32)))
        w = {"tie": 6, "near_tie": 2, "in_range": 2, "zero": 1}
        row = np.clip(act_tensor(src, shape, s, w), -amax, amax).astype(F32)
        row[int(src.ints(0, k - 1))] = amax * F32(src.signs())
        return row
    if kind == "generic":
        amax = float(log_uniform(src, (), -10, 20, signed=False))
        return _to_f32((2.0 * src.unit(shape) - 1.0) * amax)
    if kind == "zeros":
        return signed_zeros(src, shape)
    if kind == "tiny":
        return log_uniform(src, shape, ESUB, -124)
    if kind == "huge":
        return log_uniform(src, shape, 100, EMAX)
    if kind == "max_float":
        row = _to_f32((2.0 * src.unit(shape) - 1.0) * F32_MAX)
        row[int(src.ints(0, k - 1))] = F32(F32_MAX) * F32(src.signs())
        return row
    if kind == "single":
        row = signed_zeros(src, shape)
        row[int(src.ints(0, k - 1))] = log_uniform(src, (), -20, 20)
        return row
    raise ValueError(f"unknown token row kind {kind!r}")


def token_matrix(src: Source, m: int, k: int, row_weights: dict[str, int]) -> np.ndarray:
    """float32 [M, K] whose rows are :func:`token_row` of kinds drawn by ``row_weights``."""
    kinds = list(row_weights)
    which = src.pick(row_weights, (m,))
    out = np.zeros((m, k), F32)
    for i in range(m):
        out[i] = token_row(src, k, kinds[int(which[i])])
    return out


AMAX_KINDS = ("zero", "tiny", "underflow_edge", "generic", "max_float", "nice")


def amax_values(src: Source, shape, weights: dict[str, int]) -> np.ndarray:
    """Non-negative float32 amax values: 0, tiny (scale underflow), 127 * 2**-126 +- 1 ulp, generic, FLT_MAX, 127 * nice."""
    def make(kind):
        if kind == "zero":
            return np.zeros(shape, F32)
        if kind == "tiny":
            return log_uniform(src, shape, ESUB, -120, signed=False)
        if kind == "underflow_edge":
            return _step_ulp(src, np.full(shape, F32(ACT_QMAX * MIN_SCALE)))
        if kind == "generic":
            return log_uniform(src, shape, -30, 30, signed=False)
        if kind == "max_float":
            return _step_ulp(src, np.full(shape, F32(F32_MAX)), up=False)
        if kind == "nice":
            return _to_f32(float(ACT_QMAX) * np.array([float(nice_scale(src)) for _ in range(int(np.prod(shape)))]).reshape(shape))
        raise ValueError(kind)
    return np.abs(mixture(src, shape, weights, make)).astype(F32)


# ---------------------------------------------------------------------------
# LAE (spec section 3)

CHANNEL_MAX_KINDS = ("zero", "tiny", "min", "small", "band", "large", "huge")


def channel_max_values(src: Source, shape, weights: dict[str, int]) -> np.ndarray:
    """Non-negative float32 channel maxima: 0, subnormal (s = 1), MIN_SCALE, (0, 15), [15, 150), [150, 4096), up to FLT_MAX."""
    def make(kind):
        if kind == "zero":
            return np.zeros(shape, F32)
        if kind == "tiny":
            return log_uniform(src, shape, ESUB, ESUB, signed=False)
        if kind == "min":
            return np.full(shape, F32(MIN_SCALE))
        if kind == "small":
            return _to_f32(V0 * src.unit(shape))
        if kind == "band":
            return _to_f32(V0 + (V1 - V0) * src.unit(shape))
        if kind == "large":
            return _to_f32(V1 + (4096.0 - V1) * src.unit(shape))
        if kind == "huge":
            return log_uniform(src, shape, 20, EMAX, signed=False)
        raise ValueError(kind)
    return mixture(src, shape, weights, make)


#: The region where the pinned float32 ``t = fl(2 + m)`` of §3.2 rounds away bits of m:
#: there a backend that adds in higher precision (or uses log1p) lands up to 4 ulp from
#: the reference once its log2 is 1 ulp off, while one that pins the add stays within 2.
LAE_ADD_ROUNDING_REGION = (1e-7, 2.0)


def lae_add_rounding_maxima(src: Source, shape) -> np.ndarray:
    """float32 channel maxima log-uniform in :data:`LAE_ADD_ROUNDING_REGION` (docs/spec.md §3.3)."""
    lo, hi = (np.log(v) for v in LAE_ADD_ROUNDING_REGION)
    return np.minimum(np.exp(lo + (hi - lo) * src.unit(shape)).astype(F32),
                      np.nextafter(F32(hi), F32(0))).astype(F32)


# ---------------------------------------------------------------------------
# weights (spec section 4)

WEIGHT_GROUP_KINDS = ("generic", "ties", "zero", "tiny", "positive", "negative", "constant", "huge")


def weight_group(src: Source, n_cols: int, kind: str, fmt: spec.WeightFormat) -> np.ndarray:
    """float32 values of one (row, group) of a weight, of a named kind.

    ties: exact .5 ties of a ``nice`` scale s that the format's own scale rule
    reproduces (symmetric: +-7 s present; asymmetric: lo = -a s, hi = (15 - a) s);
    generic: full-mantissa values; zero: +-0.0; tiny: amax below 7 * 2**-126;
    positive/negative: one-signed groups (asymmetric zero point 0 or 15);
    constant: one repeated value; huge: magnitudes near FLT_MAX (an asymmetric
    group may then overflow ``max - min``, which the spec rejects).
    """
    shape = (n_cols,)
    if kind == "generic":
        amax = float(log_uniform(src, (), -12, 8, signed=False))
        return _to_f32((2.0 * src.unit(shape) - 1.0) * amax)
    if kind == "ties":
        s = float(nice_scale(src, -20, 4))
        if spec.WeightFormat(fmt) is spec.WeightFormat.SYMMETRIC:
            vals = _to_f32((src.ints(-SYM_QMAX, SYM_QMAX - 1, shape) + 0.5) * s)
            ends = (-SYM_QMAX * s, SYM_QMAX * s)
        else:
            a = int(src.ints(0, ASYM_QMAX))
            vals = (_to_f32((src.ints(-a, ASYM_QMAX - 1 - a, shape) + 0.5) * s) if a < ASYM_QMAX
                    else _to_f32(-(src.ints(0, ASYM_QMAX - 1, shape) + 0.5) * s))
            ends = (-a * s, (ASYM_QMAX - a) * s)
        pos = src.ints(0, n_cols - 1, (2,))
        vals[int(pos[0])] = F32(ends[0]) if src.ints(0, 1) else F32(ends[1])
        vals[int(pos[1])] = F32(ends[1]) if vals[int(pos[0])] == F32(ends[0]) else F32(ends[0])
        return vals
    if kind == "zero":
        return signed_zeros(src, shape)
    if kind == "tiny":
        return log_uniform(src, shape, ESUB, -125)
    if kind in ("positive", "negative"):
        v = np.abs(log_uniform(src, shape, -8, 4))
        return (v if kind == "positive" else -v).astype(F32)
    if kind == "constant":
        return np.full(shape, log_uniform(src, (), -8, 4), F32)
    if kind == "huge":
        return log_uniform(src, shape, 120, EMAX)
    raise ValueError(f"unknown weight group kind {kind!r}")


def tie_weights(src: Source, n: int, k: int, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(w float32 [N, K], scale float32 [N, ng]) with w / scale an exact integer or .5 tie in
    [-12, 11.5]: a ``nice`` scale per group, so rounding ties and saturation at both ends of
    either INT4 range (with any zero point) all occur."""
    ng = spec.num_groups(k, group_size)
    scale = np.array([nice_scale(src, -20, 4) for _ in range(n * ng)], F32).reshape(n, ng)
    half = np.where(src.ints(0, 3, (n, k)) > 0, 0.5, 0.0)
    cols = np.repeat(scale, group_size, axis=1)[:, :k].astype(np.float64)
    return _to_f32((src.ints(-12, 11, (n, k)) + half) * cols), scale


def weight_matrix(src: Source, n: int, k: int, group_size: int, fmt, weights: dict[str, int]) -> np.ndarray:
    """float32 [N, K] built group by group (ragged last group included) from :func:`weight_group` kinds."""
    g = k if group_size == -1 else group_size
    out = np.zeros((n, k), F32)
    kinds = list(weights)
    for r in range(n):
        for lo, hi in spec.group_bounds(k, max(g, 1)):
            out[r, lo:hi] = weight_group(src, hi - lo, kinds[int(src.pick(weights))], fmt)
    return out


# ---------------------------------------------------------------------------
# integers (spec sections 5 and 6)


def int8_activations(src: Source, shape, weights: dict[str, int]) -> np.ndarray:
    """int8 values: ``uniform`` over all 256 (-128 included), ``extreme`` in {-128, -127, 127}, ``zero``, ``small`` in [-2, 2]."""
    def make(kind):
        if kind == "uniform":
            return src.ints(ACT_MIN, ACT_QMAX, shape)
        if kind == "extreme":
            return np.array([ACT_MIN, -ACT_QMAX, ACT_QMAX])[src.ints(0, 2, shape)]
        if kind == "zero":
            return np.zeros(shape, np.int64)
        if kind == "small":
            return src.ints(-2, 2, shape)
        raise ValueError(kind)
    which = src.pick(weights, shape)
    out = np.zeros(shape, np.int64)
    for i, kind in enumerate(weights):
        if weights[kind]:
            out = np.where(which == i, make(kind), out)
    return out.astype(np.int8)


def nibbles(src: Source, shape, signed: bool, kind: str) -> np.ndarray:
    """int8 INT4 values: ``uniform`` over the 16 values, ``all_values`` (every value, shuffled, tiled), ``extreme`` (the two ends)."""
    lo = SYM_MIN if signed else 0
    if kind == "uniform":
        return src.ints(lo, lo + ASYM_QMAX, shape).astype(np.int8)
    if kind == "all_values":
        n = int(np.prod(shape, dtype=np.int64))
        perm = np.argsort(src.unit((16,)), kind="stable")
        return (lo + np.resize(perm, n)).reshape(shape).astype(np.int8)
    if kind == "extreme":
        return np.where(src.ints(0, 1, shape) == 1, lo, lo + ASYM_QMAX).astype(np.int8)
    raise ValueError(f"unknown nibble kind {kind!r}")


def int32_sums(src: Source, shape, kind: str, group_size: int = 128) -> np.ndarray:
    """int32 group sums: ``realistic`` (|acc| <= 1920 G), ``small``, ``wide`` (the whole int32 range,
    INT32_MIN included), ``rounding`` (above 2**24, where int32 -> float32 rounds, ties included)."""
    if kind == "realistic":
        bound = min(MAX_TERM * group_size, 2**31 - 1)
        return src.ints(-bound, bound, shape).astype(np.int32)
    if kind == "small":
        return src.ints(-1000, 1000, shape).astype(np.int32)
    if kind == "wide":
        v = src.ints(-(2**31), 2**31 - 1, shape)
        edge = np.array([-(2**31), 2**31 - 1, -(2**31) + 1])[src.ints(0, 2, shape)]
        return np.where(src.ints(0, 7, shape) == 0, edge, v).astype(np.int32)
    if kind == "rounding":
        e = src.ints(24, 30, shape)
        base = np.left_shift(np.int64(1), e)
        low = np.where(src.ints(0, 1, shape) == 1, np.left_shift(np.int64(1), e - 24), src.ints(0, 255, shape))
        odd = src.ints(0, 2**23 - 1, shape) * np.left_shift(np.int64(1), e - 23)
        v = np.minimum(base + odd + low, 2**31 - 1)
        return (v * np.where(src.ints(0, 1, shape) == 1, -1, 1)).astype(np.int32)
    raise ValueError(f"unknown int32 kind {kind!r}")


def positive_scales(src: Source, shape, weights: dict[str, int]) -> np.ndarray:
    """Positive finite float32 scales of :data:`SCALE_KINDS` drawn element-wise by ``weights``."""
    n = int(np.prod(shape, dtype=np.int64))
    kinds = list(weights)
    which = src.pick(weights, (n,))
    return np.array([scale_of_kind(src, kinds[int(i)]) for i in which], F32).reshape(shape)


def similar_scales(src: Source, shape, spread: int = 3) -> np.ndarray:
    """Positive float32 with full mantissas and exponents within ``spread`` of a common base in [-16, 2]."""
    base = int(src.ints(-16, 2))
    return f32_from_parts(np.zeros(shape, np.int64), base + src.ints(0, spread, shape),
                          src.ints(0, 2**23 - 1, shape))


# ---------------------------------------------------------------------------
# policy (spec section 7)


def policy_ranges(src: Source, shape, v0: float, v1: float, weights: dict[str, int]) -> np.ndarray:
    """float32 ranges v >= 0: ``boundary`` (float32(v0), float32(v1) and one ulp either side), ``zero``, ``generic``, ``huge``."""
    t = np.array([v0, v1], np.float64).astype(F32)

    def make(kind):
        if kind == "boundary":
            return _step_ulp(src, t[src.ints(0, 1, shape)])
        if kind == "zero":
            return np.zeros(shape, F32)
        if kind == "generic":
            return _to_f32(src.unit(shape) * 2.0 * float(t[1]))
        if kind == "huge":
            return log_uniform(src, shape, 20, EMAX, signed=False)
        raise ValueError(kind)
    return np.abs(mixture(src, shape, weights, make)).astype(F32)
