"""Hypothesis strategies for the conformance suite, weighted towards the spec's edges.

Every strategy returns a *case*: a dict whose keys are the parameter names of
the :mod:`fptq.spec` function under test (NumPy arrays, ints, bools,
:class:`~fptq.spec.WeightFormat`), so ``spec.op(**case)`` is the expected
answer. Hypothesis draws the structure (sizes, group size, weight format,
which named pieces of :mod:`conformance.pieces` and how much of each) and a
seed; the pieces then fill the arrays with NumPy. This keeps examples fast and
makes every edge a named, deliberate choice rather than a lucky draw:

* sizes: M = 0 and 1, K = 0, 1 and odd, K not a multiple of G (ragged last
  group), G > K, per-channel G = K, G = 1, G = 128;
* floats: exact .5 ties, their neighbours, values at the clip limit and
  beyond it, +-0.0, subnormals, amax whose scale underflows to MIN_SCALE,
  scales that are powers of two down to 2**-149 (where 1 / s is inf),
  magnitudes up to FLT_MAX;
* integers: int8 -128, every nibble value, int32 sums that round when
  converted to float32, INT32_MIN;
* both weight formats; per-tensor and per-token activation scales; bias and
  no bias.

Sizes stay small (M, N <= 8, or <= 40 for the matmul; K <= 512) so that one
example costs about a millisecond in the NumPy reference. The strategies for
the inputs where fast kernels break (tile edges, long per-token rows, M >= 64
with subnormal scales, strided views) are in :mod:`conformance.hypothesis_hard`.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from fptq import spec
from fptq.spec import WeightFormat

from . import large_cases as LC
from . import pieces as P
from .pieces import F32, Source

# ---------------------------------------------------------------------------
# generic building blocks


def weighted(options: dict) -> st.SearchStrategy:
    """One key of ``options`` drawn with its integer weight (shrinks towards the first key)."""
    return st.sampled_from([k for k, w in options.items() for _ in range(int(w))])


def seeds() -> st.SearchStrategy[int]:
    """Seed of the :class:`~conformance.pieces.Source` that fills the arrays."""
    return st.integers(0, 2**32 - 1)


@st.composite
def branch(draw, *choices: tuple[int, st.SearchStrategy]):
    """Draw from one of several strategies chosen with integer weights ``(weight, strategy)``.

    (``st.one_of`` would pick uniformly and merges repeated strategies, so it cannot weight.)
    """
    which = draw(st.sampled_from([i for i, (w, _) in enumerate(choices) for _ in range(w)]))
    return draw(choices[which][1])


def sizes(edges=(1, 0), lo: int = 2, hi: int = 8) -> st.SearchStrategy[int]:
    """A dimension: uniform in [lo, hi] (4/5 of draws) or one of the ``edges`` (1/5)."""
    return branch((4, st.integers(lo, hi)), (1, st.sampled_from(edges)))


@st.composite
def mixes(draw, kinds, favour=(), allow=None) -> dict[str, int]:
    """Weights of named pieces: each kind gets 0, 1 or 3; kinds in ``favour`` get 12 or 4 (never 0)."""
    kinds = [k for k in kinds if allow is None or k in allow]
    out = {}
    for k in kinds:
        out[k] = draw(st.sampled_from([12, 4]) if k in favour else st.sampled_from([0, 1, 3]))
    if not any(out.values()):
        out[kinds[0]] = 1
    return out


def weight_formats() -> st.SearchStrategy[WeightFormat]:
    return st.sampled_from([WeightFormat.SYMMETRIC, WeightFormat.ASYMMETRIC])


def scale_kinds() -> st.SearchStrategy[str]:
    """A scale kind, weighted to ``nice`` (exact ties) and ``full`` (inexact reciprocal); ``pow2`` reaches
    the smallest subnormal (where ``1 / s`` is inf, §1.4 rule 3)."""
    return weighted({"nice": 4, "full": 4, "min": 1, "subnormal": 1, "huge": 1, "pow2": 2})


@st.composite
def group_shapes(draw, max_ng: int = 4) -> tuple[int, int]:
    """(K, group_size): ragged last groups, K multiple of G, K = 1, odd K, G > K, K = 0, per-channel (-1)."""
    g = draw(st.one_of(st.sampled_from([128, -1, 1, 2, 3]), st.integers(4, 40)))
    rel = draw(weighted({"ragged": 4, "multiple": 2, "one": 1, "odd": 1, "below_g": 1, "empty": 1}))
    if g == -1:
        return draw(st.one_of(st.sampled_from([1, 0, 2, 3, 127, 128]), st.integers(1, 300))), g
    if rel == "multiple" or (rel == "ragged" and g == 1):
        k = g * draw(st.integers(1, max_ng))
    elif rel == "ragged":
        k = g * (draw(st.integers(1, max_ng)) - 1) + draw(st.integers(1, g - 1))
    elif rel == "one":
        k = 1
    elif rel == "odd":
        k = 2 * draw(st.integers(0, (g * max_ng - 1) // 2)) + 1
    elif rel == "below_g":
        k = draw(st.integers(1, max(g - 1, 1)))
    else:
        k = 0
    return k, g


def _ng(k: int, g: int) -> int:
    return spec.num_groups(k, max(k, 1) if g == -1 else g)


# ---------------------------------------------------------------------------
# activations (spec section 2)


@st.composite
def amax_cases(draw) -> dict:
    """``{amax}``: float32 >= 0 of shape (), [n] or [m, n]."""
    shape = draw(st.tuples(sizes()) | st.tuples(sizes(), sizes()) | st.sampled_from([(), (1,), (0,)]))
    w = draw(mixes(P.AMAX_KINDS, favour=("underflow_edge",)))
    return {"amax": P.amax_values(Source(draw(seeds())), shape, w)}


ACT_TIE_FAVOUR = ("tie", "near_tie")


@st.composite
def per_tensor_cases(draw) -> dict:
    """``{x, scale}``: x of any rank (mostly [M, K]) mixing :data:`pieces.ACT_ELEMENT_KINDS`; one scale (0-d or [1])."""
    shape = draw(branch((5, st.tuples(sizes(), sizes((1, 0, 3, 5), 2, 40))), (2, st.tuples(sizes((1, 0), 2, 40))),
                        (1, st.just(())), (1, st.tuples(sizes(), sizes(), sizes()))))
    src = Source(draw(seeds()))
    scale = P.scale_of_kind(src, draw(scale_kinds()))
    w = draw(mixes(P.ACT_ELEMENT_KINDS, favour=draw(st.sampled_from([ACT_TIE_FAVOUR, ACT_TIE_FAVOUR, ("beyond", "limit")]))))
    x = P.act_tensor(src, shape, scale, w)
    return {"x": x, "scale": np.array(scale, F32).reshape(draw(st.sampled_from([(), (1,)])))}


def token_sizes() -> st.SearchStrategy[tuple[int, int]]:
    """(M, K) of a per-token activation: M, K = 0 and 1 included, K odd and up to 64."""
    return st.tuples(sizes((1, 0), 2, 8), sizes((1, 0, 3, 5), 2, 64))


@st.composite
def per_token_cases(draw) -> dict:
    """``{x}``: float32 [M, K] whose rows are :data:`pieces.TOKEN_ROW_KINDS` (ties favoured)."""
    m, k = draw(token_sizes())
    w = draw(mixes(P.TOKEN_ROW_KINDS, favour=("ties",)))
    return {"x": P.token_matrix(Source(draw(seeds())), m, k, w)}


@st.composite
def dequantize_act_cases(draw) -> dict:
    """``{q, scale}``: int8 [M, K] (-128 included) with a per-tensor (0-d/[1]) or per-token [M] scale."""
    m, k = draw(token_sizes())
    src = Source(draw(seeds()))
    q = P.int8_activations(src, (m, k), draw(mixes(("uniform", "extreme", "zero", "small"), favour=("uniform",))))
    per_token = draw(st.booleans())
    kinds = draw(mixes(P.DRAWN_SCALE_KINDS, favour=("full",)))
    if per_token and m != 1:
        scale = P.positive_scales(src, (m,), kinds)
    else:
        scale = P.positive_scales(src, (1,), kinds).reshape(draw(st.sampled_from([(), (1,)])))
    return {"q": q, "scale": scale}


# ---------------------------------------------------------------------------
# LAE (spec section 3)


@st.composite
def channel_max_cases(draw) -> dict:
    """``{channel_max}``: float32 [K] >= 0: zero and subnormal channels (s = 1), each policy band, up to FLT_MAX."""
    k = draw(sizes((1, 0, 3), 2, 64))
    w = draw(mixes(P.CHANNEL_MAX_KINDS, favour=("band",)))
    return {"channel_max": P.channel_max_values(Source(draw(seeds())), (k,), w)}


@st.composite
def lae_apply_cases(draw, operand: str) -> dict:
    """``{x, s}`` or ``{w, s}``: a float32 [M, K] operand and channel scales [K] (from lae_scales, or any positive)."""
    m, k = draw(token_sizes())
    src = Source(draw(seeds()))
    a = P.token_matrix(src, m, k, draw(mixes(P.TOKEN_ROW_KINDS, favour=("generic",))))
    if draw(st.booleans()):
        s = spec.lae_scales(P.channel_max_values(src, (k,), draw(mixes(P.CHANNEL_MAX_KINDS, favour=("band",)))))
    else:
        s = P.positive_scales(src, (k,), draw(mixes(P.DRAWN_SCALE_KINDS, favour=("full",))))
    return {operand: a, "s": s}


# ---------------------------------------------------------------------------
# weights (spec section 4)


@st.composite
def weight_cases(draw, max_ng: int = 4) -> dict:
    """``{w, group_size, fmt}``: float32 [N, K] built per group from :data:`pieces.WEIGHT_GROUP_KINDS`."""
    k, g = draw(group_shapes(max_ng=max_ng))
    n = draw(sizes((1, 0), 2, 6))
    fmt = draw(weight_formats())
    w = draw(mixes(P.WEIGHT_GROUP_KINDS, favour=("ties", "generic")))
    return {"w": P.weight_matrix(Source(draw(seeds())), n, k, g, fmt, w), "group_size": g, "fmt": fmt}


@st.composite
def weight_with_scales_cases(draw) -> dict:
    """``{w, scale, zero, group_size, fmt}``: exact ties of ``nice`` scales reaching past the range
    (:func:`pieces.tie_weights`), the format's own scales shrunk (clipping: values saturate at the
    range ends), the own scales, or arbitrary ones; zero points from the rule or arbitrary in [0, 15]."""
    case = draw(weight_cases())
    w, g, fmt = case["w"], case["group_size"], case["fmt"]
    n, k = w.shape
    ng = _ng(k, g)
    src = Source(draw(seeds()))
    how = draw(weighted({"ties": 3, "clipped": 2, "own": 1, "arbitrary": 1}))
    if how == "ties" and w.size:
        w, scale = P.tie_weights(src, n, k, max(k, 1) if g == -1 else g)
        zero = src.ints(0, 15, (n, ng)).astype(np.uint8) if fmt is WeightFormat.ASYMMETRIC else None
        return {"w": w, "scale": scale, "zero": zero, "group_size": g, "fmt": fmt}
    try:
        scale, zero = spec.weight_scales(w, g, fmt)
    except ValueError:  # an asymmetric group whose range overflows float32
        scale, zero, how = None, None, "arbitrary"
    if how == "clipped":
        factor = (0.3 + 0.7 * src.unit(scale.shape)).astype(F32)
        scale = np.maximum((scale * factor).astype(F32), spec.MIN_SCALE).astype(F32)
    elif how == "arbitrary":
        scale = P.positive_scales(src, (n, ng), draw(mixes(P.DRAWN_SCALE_KINDS, favour=("full",))))
    if fmt is WeightFormat.ASYMMETRIC and (zero is None or draw(st.booleans())):
        zero = src.ints(0, 15, (n, ng)).astype(np.uint8)
    return {"w": w, "scale": scale, "zero": zero, "group_size": g, "fmt": fmt}


@st.composite
def int4_values(draw, n: int, k: int, signed: bool) -> np.ndarray:
    """int8 [N, K] INT4 values: uniform, every value, or the two ends."""
    kind = draw(weighted({"all_values": 2, "uniform": 2, "extreme": 1}))
    return P.nibbles(Source(draw(seeds())), (n, k), signed, kind)


@st.composite
def dequantize_weight_cases(draw) -> dict:
    """``{q, scale, zero, group_size, fmt}`` with q in the format's range and arbitrary positive scales."""
    k, g = draw(group_shapes())
    n = draw(sizes((1, 0), 2, 6))
    fmt = draw(weight_formats())
    ng = _ng(k, g)
    src = Source(draw(seeds()))
    q = draw(int4_values(n, k, fmt is WeightFormat.SYMMETRIC))
    scale = P.positive_scales(src, (n, ng), draw(mixes(P.DRAWN_SCALE_KINDS, favour=("full",))))
    zero = src.ints(0, 15, (n, ng)).astype(np.uint8) if fmt is WeightFormat.ASYMMETRIC else None
    return {"q": q, "scale": scale, "zero": zero, "group_size": g, "fmt": fmt}


# ---------------------------------------------------------------------------
# packing (spec section 5)


@st.composite
def pack_cases(draw) -> dict:
    """``{q, signed}``: int8 [N, K] in the signed or unsigned INT4 range, K odd and 0 included."""
    n = draw(sizes((1, 0), 2, 6))
    k = draw(sizes((1, 0, 3, 5, 2), 2, 65))
    signed = draw(st.booleans())
    return {"q": draw(int4_values(n, k, signed)), "signed": signed}


@st.composite
def unpack_cases(draw) -> dict:
    """``{packed, k, signed}``: arbitrary bytes (every nibble pattern; odd K's padding nibble not zero)."""
    n = draw(sizes((1, 0), 2, 6))
    k = draw(sizes((1, 0, 3, 5, 2), 2, 65))
    src = Source(draw(seeds()))
    packed = src.ints(0, 255, (n, spec.packed_width(k))).astype(np.uint8)
    return {"packed": packed, "k": k, "signed": draw(st.booleans())}


# ---------------------------------------------------------------------------
# matmul (spec section 6)


@st.composite
def packed_weights(draw, n: int, k: int, g: int, fmt: WeightFormat) -> dict:
    """``{packed, zero}`` of an [N, K] INT4 weight (odd K: the padding nibble may hold garbage)."""
    signed = fmt is WeightFormat.SYMMETRIC
    q = draw(int4_values(n, k, signed))
    packed = spec.pack_int4(q, signed)
    src = Source(draw(seeds()))
    if k % 2 and n and draw(st.booleans()):
        packed[:, -1] |= (src.ints(1, 15, (n,)).astype(np.uint8) << np.uint8(4))
    zero = None
    if not signed:
        kind = draw(weighted({"uniform": 2, "extreme": 1}))
        zero = (src.ints(0, 15, (n, _ng(k, g))) if kind == "uniform"
                else 15 * src.ints(0, 1, (n, _ng(k, g)))).astype(np.uint8)
    return {"packed": packed, "zero": zero}


def matmul_rows() -> st.SearchStrategy[int]:
    """M or N of a matmul: mostly 2..4, sometimes 0/1, sometimes 5..40 (past the 16/32-wide
    tiles and the decode/prefill switch of typical kernels)."""
    return branch((6, st.integers(2, 4)), (1, st.sampled_from([1, 0])), (2, st.integers(5, 40)))


@st.composite
def group_sums_cases(draw) -> dict:
    """``{qx, packed, zero, k, group_size, fmt}``: int8 activations with -128, every nibble, ragged groups."""
    k, g = draw(group_shapes())
    m = draw(matmul_rows())
    n = draw(matmul_rows())
    fmt = draw(weight_formats())
    src = Source(draw(seeds()))
    qx = P.int8_activations(src, (m, k), draw(mixes(("uniform", "extreme", "zero", "small"), favour=("uniform",))))
    return {"qx": qx, **draw(packed_weights(n, k, g, fmt)), "k": k, "group_size": g, "fmt": fmt}


#: Scale kinds of the epilogue by regime: ``normal`` results (where an FMA or a reordered sum
#: shows), ``underflow`` (xscale chosen so that results are subnormal: flush-to-zero shows),
#: ``signed_zero`` (results of about 2**-148: many round to +-0.0, so a skipped ``+ 0.0`` bias shows),
#: ``subnormal_w`` / ``subnormal_x`` (subnormal weight or activation scales: denormals-are-zero shows),
#: ``overflow`` (huge scales: inf).
EPILOGUE_REGIMES = {
    "normal": {"w": ("full", "nice"), "x": ("full", "nice")},
    "underflow": {"w": ("full", "min"), "x": ("full", "subnormal")},
    "signed_zero": {"w": ("min", "subnormal"), "x": ("full", "subnormal")},
    "subnormal_w": {"w": ("subnormal", "pow2"), "x": ("full", "nice")},
    "subnormal_x": {"w": ("full", "nice"), "x": ("subnormal", "pow2")},
    "overflow": {"w": ("full", "huge"), "x": ("full", "huge")},
}
#: where the largest |y| lands in the regimes that choose xscale from y
_XSCALE_TARGET = {"underflow": 2.0**-130, "signed_zero": 2.0**-148}


def subnormal_xscale(y: np.ndarray, per_token: bool, shape, target: float = 2.0**-130) -> np.ndarray:
    """An xscale that maps the largest |y| (per row, or overall) to about ``target`` (2**-130: every
    nonzero result of the epilogue is then subnormal; 2**-148: most round to +-0.0)."""
    with np.errstate(all="ignore"):
        a = np.abs(y.astype(np.float64))
        amax = a.max(axis=1, initial=0.0) if per_token else np.full(1, a.max(initial=0.0))
        xs = np.where((amax > 0) & np.isfinite(amax), target / np.where(amax > 0, amax, 1.0), 1.0)
    return np.clip(xs, 2.0**-149, float(np.finfo(np.float32).max)).astype(F32).reshape(shape)


#: the regime weights of the small Hypothesis cases, and of the big-tile ones (subnormals favoured)
REGIME_WEIGHTS = {"normal": 8, "underflow": 4, "signed_zero": 2, "subnormal_w": 1, "subnormal_x": 1, "overflow": 2}
BIG_TILE_REGIME_WEIGHTS = {"normal": 3, "underflow": 2, "signed_zero": 1, "subnormal_w": 2, "subnormal_x": 2,
                           "overflow": 1}


def regimes(weights: dict | None = None) -> st.SearchStrategy[str]:
    return weighted(weights or REGIME_WEIGHTS)


@st.composite
def wscales(draw, src: Source, shape, regime: str = "normal") -> np.ndarray:
    """Weight scales [N, ng]: in the ``normal`` regime mostly of similar magnitude (as real group
    scales are, so that no term swamps the others and rounding differences show), else mixed kinds."""
    if regime == "normal" and draw(weighted({"similar": 3, "mixed": 1})) == "similar":
        return P.similar_scales(src, shape)
    kinds = EPILOGUE_REGIMES[regime]["w"]
    return P.positive_scales(src, shape, draw(mixes(kinds, favour=kinds[:1])))


@st.composite
def xscales(draw, src: Source, m: int, granularity: str | None = None, regime: str = "normal") -> np.ndarray:
    """An activation scale: per-tensor (0-d or [1]) or per-token [M] (``granularity`` forces one)."""
    kinds = draw(mixes(EPILOGUE_REGIMES[regime]["x"], favour=EPILOGUE_REGIMES[regime]["x"][:1]))
    per_token = draw(st.booleans()) if granularity is None else granularity == "per_token"
    if per_token:
        return P.positive_scales(src, (m,), kinds)
    return P.positive_scales(src, (1,), kinds).reshape(draw(st.sampled_from([(), (1,)])))


@st.composite
def biases(draw, src: Source, n: int, y_without_bias=None, present: bool | None = None, regime: str = "normal"):
    """None, or float32 [N]: +-0.0, full-mantissa values, or ``-y`` (the sum then is exactly 0).
    ``present`` forces a bias (True) or none (False); the ``signed_zero`` regime favours +-0.0
    (-0.0 + +0.0 is +0.0: a kernel that skips a zero bias keeps -0.0)."""
    options = {"none": 2, "generic": 2, "zero": 1, "cancel": 1}
    if present is not None:
        options = {"none": 1} if not present else {"generic": 2, "zero": 1, "cancel": 1}
    if regime == "signed_zero" and present is not False:
        options = {"zero": 4, "none": 1} if present is None else {"zero": 1}
    kind = draw(weighted(options))
    if kind == "none":
        return None
    if kind == "zero":
        return P.signed_zeros(src, (n,))
    if kind == "cancel" and y_without_bias is not None and y_without_bias.shape[0] \
            and np.isfinite(y_without_bias[0]).all():
        return (-y_without_bias[0]).astype(F32)
    return P.log_uniform(src, (n,), -10, 10)


def group_counts() -> st.SearchStrategy[int]:
    """ng: 3..12 (5/6 of draws: a reordered reduction needs three terms to show), else 0, 1 or 2."""
    return branch((5, st.integers(3, 12)), (1, st.sampled_from([2, 1, 0])))


def _fit_xscale(xscale, regime: str, y1_of) -> np.ndarray:
    """In the ``underflow`` / ``signed_zero`` regimes, the xscale that puts the results there
    (``y1_of()``: the epilogue with xscale 1); else ``xscale`` itself."""
    if regime not in _XSCALE_TARGET:
        return xscale
    with np.errstate(all="ignore"):
        y1 = y1_of()
    if not y1.shape[0]:
        return xscale
    per_token = xscale.ndim == 1 and xscale.shape[0] == y1.shape[0] and y1.shape[0] > 1
    return subnormal_xscale(y1, per_token, xscale.shape, _XSCALE_TARGET[regime])


@st.composite
def epilogue_cases(draw, granularity: str | None = None, with_bias: bool | None = None, rows=None,
                   regime_weights: dict | None = None) -> dict:
    """``{acc, wscale, xscale, bias}``: ng >= 3 favoured (so that a reordered reduction shows),
    full-mantissa scales (so that an FMA shows), int32 sums that round to float32, results
    that underflow to subnormals or +-0.0, subnormal scales, results that overflow to inf in a
    minority of examples. ``rows``: a strategy for M (default 0..4)."""
    m = draw(rows if rows is not None else sizes((1, 0), 2, 4))
    n = draw(sizes((1,), 2, 6))
    ng = draw(group_counts())
    src = Source(draw(seeds()))
    kind = draw(weighted({"realistic": 4, "rounding": 2, "small": 1, "wide": 1}))
    acc = P.int32_sums(src, (m, n, ng), kind, group_size=draw(st.sampled_from([128, 32, 2048])))
    regime = draw(regimes(regime_weights))
    wscale = draw(wscales(src, (n, ng), regime))
    xscale = _fit_xscale(draw(xscales(src, m, granularity, regime)), regime,
                         lambda: spec.w4a8_epilogue(acc, wscale, np.ones(m, F32)))
    with np.errstate(all="ignore"):
        y = spec.w4a8_epilogue(acc, wscale, xscale)
    return {"acc": acc, "wscale": wscale, "xscale": xscale, "bias": draw(biases(src, n, y, with_bias, regime))}


@st.composite
def matmul_cases(draw, granularity: str | None = None, with_bias: bool | None = None, sums=None,
                 regime_weights: dict | None = None) -> dict:
    """The whole W4A8 linear: ``{qx, xscale, packed, wscale, zero, k, group_size, fmt, bias}``
    (``sums``: the strategy of its integer part, default :func:`group_sums_cases`)."""
    case = draw(sums if sums is not None else group_sums_cases())
    m, n = case["qx"].shape[0], case["packed"].shape[0]
    src = Source(draw(seeds()))
    regime = draw(regimes(regime_weights))
    case["wscale"] = draw(wscales(src, (n, _ng(case["k"], case["group_size"])), regime))
    case["xscale"] = _fit_xscale(
        draw(xscales(src, m, granularity, regime)), regime,
        lambda: spec.w4a8_epilogue(spec.w4a8_group_sums(**LC.group_sums_args(case)), case["wscale"],
                                   np.ones(m, F32)))
    case["bias"] = draw(biases(src, n, present=with_bias, regime=regime))
    return case


# ---------------------------------------------------------------------------
# policy (spec section 7)


@st.composite
def thresholds(draw) -> tuple[float, float]:
    """(v0, v1): the defaults, or float64 thresholds that float32 rounds (up or down), 0 included."""
    if draw(st.booleans()):
        return spec.DEFAULT_V0, spec.DEFAULT_V1
    v0 = draw(st.sampled_from([0.0, 15.3, 0.1]) | st.floats(0, 100, allow_nan=False))
    v1 = v0 + draw(st.sampled_from([1e-5, 0.7]) | st.floats(1e-3, 1000, allow_nan=False))
    if not np.float32(v0) < np.float32(v1):
        v1 = float(np.nextafter(np.float32(v0), np.float32(np.inf))) * 2 + 1
    return float(v0), float(v1)


@st.composite
def policy_cases(draw) -> dict:
    """``{v, v0, v1}``: ranges at the thresholds and one ulp either side, 0, generic, huge."""
    v0, v1 = draw(thresholds())
    shape = draw(st.tuples(sizes((1, 0), 2, 40)) | st.just(()) | st.tuples(sizes(), sizes()))
    w = draw(mixes(("boundary", "zero", "generic", "huge"), favour=("boundary",)))
    return {"v": P.policy_ranges(Source(draw(seeds())), shape, v0, v1, w), "v0": v0, "v1": v1}


# ---------------------------------------------------------------------------
# LAE: the region where the pinned float32 add of §3.2 rounds (docs/spec.md §3.3)


@st.composite
def lae_add_rounding_cases(draw) -> dict:
    """``{channel_max}``: float32 [K] in [1e-7, 2), where ``fl(2 + m)`` drops bits of m."""
    k = draw(sizes((1,), 16, 256))
    return {"channel_max": P.lae_add_rounding_maxima(Source(draw(seeds())), (k,))}
