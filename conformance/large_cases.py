"""Fixed tile-edge cases of the W4A8 matmul, sized for tiled (GPU) kernels, and their exact answers, fast.

Tiled kernels break where a tile ends: the last partial tile in M or N, the
last K iteration, split-K partial sums, a ragged last group deep inside K,
int32 sums past 2**24. :func:`all_cases` lists deterministic cases over

* every M in :data:`M_SIZES` (decode sizes 1 and 2, the edges of 16..256-row
  tiles, prefill sizes 1024 and 4096);
* N and K at multiples of 16/32/64/128/256 and one either side
  (:data:`EDGES`), K up to 11009 (LLaMA's 11008 and a ragged last group:
  11007 with G = 128 leaves 127 columns, 11008 with G = 1024 leaves 768);
* both weight formats, per-tensor and per-token activation scales, bias and
  no bias (:data:`VARIANTS`, cycled so that every M meets several);
* ``saturating`` cases whose int32 group sums exceed 2**24 with odd
  increments (a kernel that accumulates int8 x int4 products in float32 is
  wrong there);
* five products with M x N x K >= 2**32 (up to 5.8e9 multiply-adds);
* ``subnormal_w`` / ``subnormal_x`` cases: subnormal weight or activation
  scales with subnormal results, at M = 1 to 4096 on both sides of the 64- and
  128-row tiles (a kernel whose big-tile path is built with flush-to-zero
  returns zeros there).

Each case has an ``id`` (``M129-N257-K576-G128-asym-per_token-bias``), from
which :func:`build` makes the same arrays everywhere (a seed derived from the
id, :class:`conformance.pieces.Source`). ``case.ci`` marks the reduced set
run by default (``--fptq-profile ci``/``thorough``): every case of at most
:data:`CI_MACS` multiply-adds plus the saturating ones; ``--fptq-profile large``
runs them all.

The answers: the spec's integer core computes int8 x int4 products in int64
NumPy, about 1 GMAC/s, far too slow for 2**32 products. :func:`exact_group_sums`
gets the same int32 from BLAS: per group, a float matmul of integers whose
every partial sum is an integer of magnitude <= 1920 * G (docs/spec.md §6.3),
so float32 (G <= 8192, 1920 * G < 2**24) or float64 (any admitted G,
< 2**31 < 2**53) represents every partial sum exactly, whatever the order or
FMA. :func:`expected` uses it above :data:`SPEC_MACS` multiply-adds (the spec's own
integer core below); the float epilogue is always the spec's :func:`fptq.spec.w4a8_epilogue`.
``test_large.py::test_exact_group_sums_is_the_spec`` checks the fast path
against the spec on this machine before it is trusted.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from fptq import spec
from fptq.spec import WeightFormat

from . import hard_cases as H
from . import pieces as P
from .pieces import Source

#: M: decode (1, 2), both sides of 16/64/128/256-row tiles, prefill (1024, 4096)
M_SIZES = (1, 2, 15, 16, 17, 63, 64, 65, 127, 128, 129, 255, 256, 257, 1024, 4096)
TILES = (16, 32, 64, 128, 256)
#: N and K: every tile multiple and one either side
EDGES = tuple(sorted({t + d for t in TILES for d in (-1, 0, 1)}))
#: (weight format, activation-scale granularity, bias)
VARIANTS = tuple((fmt, gran, bias) for fmt in ("sym", "asym") for gran in ("per_tensor", "per_token")
                 for bias in (False, True))
#: cases up to this many multiply-adds are in the reduced (ci) set
CI_MACS = 2**27
#: largest group size whose partial sums (<= 1920 G) float32 holds exactly
F32_EXACT_G = 8192

_FMT = {"sym": WeightFormat.SYMMETRIC, "asym": WeightFormat.ASYMMETRIC}


@dataclass(frozen=True)
class LargeCase:
    """One fixed matmul case: sizes, group size (-1 = per-channel), variant and content kind."""

    m: int
    n: int
    k: int
    g: int
    fmt: str = "sym"
    granularity: str = "per_token"
    bias: bool = False
    content: str = "random"  # or "saturating"
    scales: str = "similar"  # or "subnormal_w" / "subnormal_x" (subnormal weight / activation scales)

    @property
    def id(self) -> str:
        tail = "" if self.content == "random" else f"-{self.content}"
        tail += "" if self.scales == "similar" else f"-{self.scales}"
        return (f"M{self.m}-N{self.n}-K{self.k}-G{self.g}-{self.fmt}-{self.granularity}-"
                f"{'bias' if self.bias else 'nobias'}{tail}")

    @property
    def macs(self) -> int:
        return self.m * self.n * self.k

    @property
    def ci(self) -> bool:
        """In the reduced set (every profile) rather than only in ``--fptq-profile large``."""
        return self.macs <= CI_MACS or self.content == "saturating"


def _variant(i: int) -> dict:
    fmt, gran, bias = VARIANTS[i % len(VARIANTS)]
    return {"fmt": fmt, "granularity": gran, "bias": bias}


def all_cases() -> list[LargeCase]:
    """Every fixed case, in a fixed order (see the module docstring for what they cover)."""
    cases = []
    # every M against N and K at the tile edges, 3 each, cycling edges, group sizes and variants
    for i, m in enumerate(M_SIZES):
        for r in range(3):
            j = 3 * i + r
            cases.append(LargeCase(m, EDGES[j % len(EDGES)], EDGES[(j + 7) % len(EDGES)],
                                   (32, 64, 128)[(i + r) % 3], **_variant(j)))
    # deep K: LLaMA-7B's 4096 / 11008 and one either side, ragged last groups deep inside K
    deep = [(4095, 128), (4096, 128), (4097, 128), (11007, 128), (11008, 128), (11009, 128),
            (11008, 1024), (11008, -1), (4097, 64), (11007, 32)]
    for i, (k, g) in enumerate(deep):
        m = (1, 17, 64, 129, 2)[i % 5]
        n = (257, 33, 129, 4096, 65)[i % 5]
        cases.append(LargeCase(m, n, k, g, **_variant(i + 3)))
    # int32 group sums past 2**24 (odd increments): float32 accumulation of the products is wrong there
    cases += [LargeCase(2, 3, 11008, -1, "asym", "per_token", False, "saturating"),
              LargeCase(17, 33, 11007, -1, "asym", "per_tensor", True, "saturating"),
              LargeCase(3, 5, 24001, -1, "sym", "per_token", True, "saturating"),
              LargeCase(16, 17, 30000, 25000, "sym", "per_tensor", False, "saturating")]
    # subnormal scales and subnormal results on every tile size (no bias: it would swamp them)
    sub = [(1, 257, 11008, 128), (17, 255, 4096, 64), (64, 129, 256, 64), (65, 33, 576, 128), (128, 17, 1024, 128),
           (129, 65, 257, 32), (257, 16, 4097, 128), (1024, 33, 1025, 128), (4096, 17, 256, 128),
           (4096, 4097, 256, 128)]
    for i, (m, n, k, g) in enumerate(sub):
        v = _variant(2 * i)
        cases.append(LargeCase(m, n, k, g, v["fmt"], v["granularity"], False,
                               scales=("subnormal_w", "subnormal_x")[i % 2]))
    # M x N x K >= 2**32
    cases += [LargeCase(4096, 4097, 256, 128, "sym", "per_token", True),
              LargeCase(1024, 4096, 1025, 128, "asym", "per_tensor", False),
              LargeCase(257, 4097, 4096, 64, "sym", "per_tensor", True),
              LargeCase(4096, 1025, 1024, 128, "asym", "per_token", False)]
    return cases


def case_by_id(case_id: str) -> LargeCase:
    for c in all_cases():
        if c.id == case_id:
            return c
    raise KeyError(f"no large case {case_id!r}")


# ---------------------------------------------------------------------------
# the arrays


def _saturating(src: Source, m: int, n: int, k: int, g: int, asym: bool):
    """qx, q, z whose group sums pass 2**24: large same-sign products (sign per row), odd values included."""
    row_sign = np.where(src.ints(0, 1, (m, 1)) == 1, -1, 1)
    if asym:
        qx = src.ints(110, 127, (m, k)) * row_sign
        q = src.ints(13, 15, (n, k))
        z = src.ints(0, 1, (n, spec.num_groups(k, g)))
    else:
        qx = src.ints(120, 127, (m, k)) * row_sign
        q = 7 - (src.ints(0, 7, (n, k)) == 0)  # mostly 7, some 6
        z = None
    return qx.astype(np.int8), q.astype(np.int8), None if z is None else z.astype(np.uint8)


def _scales(src: Source, m: int, n: int, ng: int, granularity: str, scales: str):
    """(xscale, wscale): of similar magnitude (``similar``), or subnormal weight scales with small
    activation scales (``subnormal_w``), or normal weight scales with subnormal activation scales
    (``subnormal_x``): the results are then mostly subnormal."""
    xshape = (m,) if granularity == "per_token" else (1,)
    if scales == "subnormal_w":
        xs, ws = H.small_scales(src, xshape), H.subnormal_scales(src, (n, ng))
    elif scales == "subnormal_x":
        xs, ws = H.subnormal_scales(src, xshape), H.small_scales(src, (n, ng))
    else:
        xs, ws = P.similar_scales(src, xshape), P.similar_scales(src, (n, ng))
    return (xs if granularity == "per_token" else xs.reshape(())), ws


def make_case(src: Source, m: int, n: int, k: int, group_size: int, fmt: str = "sym",
              granularity: str = "per_token", bias: bool = False, content: str = "random",
              scales: str = "similar") -> dict:
    """``w4a8_matmul`` arguments: int8 activations (-128 included) and uniform nibbles (``random``) or
    large same-sign products (``saturating``), weight scales of similar magnitude (where the order of
    the epilogue's sum shows) or subnormal scales (``scales``, :func:`_scales`), zero points in
    [0, 15], a per-tensor or per-token scale, a bias or None."""
    g = k if group_size == -1 else group_size
    ng = spec.num_groups(k, max(g, 1))
    asym = fmt == "asym"
    if content == "saturating":
        qx, q, zero = _saturating(src, m, n, k, g, asym)
    else:
        qx = P.int8_activations(src, (m, k), {"uniform": 3, "extreme": 1})
        q = P.nibbles(src, (n, k), not asym, "uniform")
        zero = src.ints(0, 15, (n, ng)).astype(np.uint8) if asym else None
    xscale, wscale = _scales(src, m, n, ng, granularity, scales)
    return {"qx": qx, "xscale": xscale, "packed": spec.pack_int4(q, not asym),
            "wscale": wscale, "zero": zero, "k": k, "group_size": group_size,
            "fmt": _FMT[fmt], "bias": P.log_uniform(src, (n,), -4, 4) if bias else None}


def build(case: LargeCase) -> dict:
    """The ``w4a8_matmul`` arguments of ``case`` (deterministic: the seed is a CRC of its id)."""
    return make_case(Source(zlib.crc32(case.id.encode())), case.m, case.n, case.k, case.g, case.fmt,
                     case.granularity, case.bias, case.content, case.scales)


def group_sums_args(case: dict) -> dict:
    """The ``w4a8_group_sums`` arguments within a matmul case."""
    return {key: case[key] for key in ("qx", "packed", "zero", "k", "group_size", "fmt")}


def rebuild_code(case: LargeCase, op: str = "w4a8_matmul") -> str:
    """Python code that defines ``case`` (the arguments of ``op``) for a reproducer."""
    pick = "" if op == "w4a8_matmul" else "case = lc.group_sums_args(case)\n"
    return (f"from fptq.conformance import large_cases as lc  # a checkout: from conformance import ...\n"
            f"case = lc.build(lc.case_by_id({case.id!r}))\n{pick}").rstrip("\n")


# ---------------------------------------------------------------------------
# the exact answers, fast


def exact_group_sums(qx, packed, zero, k: int, group_size: int, fmt=WeightFormat.SYMMETRIC) -> np.ndarray:
    """``spec.w4a8_group_sums`` for admitted inputs, through BLAS (exact: see the module docstring).

    One batched matmul over groups: K zero-padded to ng * G (a padded column adds 0, §4.1), the
    asymmetric zero point folded into the weight (q - z, |q - z| <= 15, §6.1's first form).
    """
    k = int(k)
    g = k if group_size == -1 else int(group_size)
    fmt = WeightFormat(fmt)
    m, n = qx.shape[0], packed.shape[0]
    g = max(g, 1)
    ng = spec.num_groups(k, g)
    if m == 0 or n == 0 or ng == 0:
        return np.zeros((m, n, ng), np.int32)
    ftype = np.float32 if g <= F32_EXACT_G else np.float64
    q = spec.unpack_int4(packed, k, signed=fmt is WeightFormat.SYMMETRIC).astype(ftype)
    if fmt is WeightFormat.ASYMMETRIC:
        q -= np.repeat(np.asarray(zero, ftype), g, axis=1)[:, :k]
    pad = ng * g - k
    x = np.pad(np.asarray(qx, ftype), ((0, 0), (0, pad))).reshape(m, ng, g).transpose(1, 0, 2)
    w = np.pad(q, ((0, 0), (0, pad))).reshape(n, ng, g).transpose(1, 2, 0)
    acc = np.matmul(x, w)  # [ng, M, N]
    return np.ascontiguousarray(acc.transpose(1, 2, 0)).astype(np.int32)


#: below this many multiply-adds the spec itself answers (it is fast enough there)
SPEC_MACS = 2**24


def expected(case: dict) -> tuple[np.ndarray, np.ndarray]:
    """``(spec.w4a8_group_sums, spec.w4a8_matmul)`` of a matmul case: the spec's integer core for small
    cases, the exact BLAS path above :data:`SPEC_MACS`; then the spec's pinned epilogue."""
    args = group_sums_args(case)
    m, n, k = case["qx"].shape[0], case["packed"].shape[0], case["k"]
    acc = spec.w4a8_group_sums(**args) if m * n * k <= SPEC_MACS else exact_group_sums(**args)
    with np.errstate(all="ignore"):
        return acc, spec.w4a8_epilogue(acc, case["wscale"], case["xscale"], case["bias"])


#: group sums are checked on their own only below this many int32 outputs (the matmul always)
GROUP_SUMS_LIMIT = 2**25


def check_group_sums_too(case: dict) -> bool:
    m, n = case["qx"].shape[0], case["packed"].shape[0]
    k, g = case["k"], case["group_size"]
    return m * n * spec.num_groups(k, k if g == -1 else g) <= GROUP_SUMS_LIMIT


__all__ = ["LargeCase", "all_cases", "case_by_id", "make_case", "build", "exact_group_sums", "expected",
           "group_sums_args", "rebuild_code", "M_SIZES", "EDGES", "VARIANTS", "CI_MACS"]
