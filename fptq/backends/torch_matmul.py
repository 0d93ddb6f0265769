"""The W4A8 integer core and its pinned epilogue on torch tensors (spec section 6).

How the exact result is computed fast
-------------------------------------
1. **Weights, group-major.** The packed INT4 weight uint8 [N, ceil(K/2)] is
   unpacked once into int8 ``w3`` of shape [ng, Np, Gp]: ``w3[g, n, j]`` is the
   weight of output ``n`` at column ``g*G + j``; for the asymmetric format it
   holds ``q - z[n, g]`` (an exact integer in [-15, 15]), so the zero-point
   correction ``z * sum(qx over the group)`` is folded into the product
   (``sum x*(q - z) = sum x*q - z*sum x``, both sides exact integers). The
   ragged last group, and any padding of G to Gp / N to Np that a kernel needs,
   hold zeros, which add nothing to an integer sum.
2. **Activations, group-major.** ``qx`` int8 [M, K] becomes ``x3`` int8
   [ng, Mp, Gp] (zero padded the same way): one copy of M*K bytes per call.
3. **One integer product per group.** ``acc_g = x3[g] @ w3[g]^T`` in int32:
   ``torch._int_mm`` where a start-up probe (:func:`probe_int_mm`) showed it
   exact on this device (oneDNN with the CPU's int8 dot-product
   instructions; cuBLASLt on CUDA), else the *reference path*: the same
   product in float64, exact because every partial sum is an integer of
   magnitude <= 128 * 15 * G <= 2**31 < 2**53. Either way the int32 sums are
   the spec's (integer sums do not depend on order).
4. **Epilogue per tile of rows, exactly as pinned.** ``y = +0.0``; for g
   ascending ``t = float32(acc_g)`` (a cast copy, round-to-nearest-even),
   ``t = t * wscale[:, g]``, ``y = y + t`` (three kernels: a same-dtype
   multiply is faster than the mixed int32 * float32 one, which casts into a
   temporary first); then ``y = y * xscale`` and ``y = y + bias``. Each is a
   separate elementwise kernel, so nothing is contracted into an FMA and
   nothing is reassociated; ``torch.sum``/``cumsum``/``addcmul`` are never
   used for it (they use other orders, double accumulators or FMA). Rows are
   processed in tiles of about 2 MiB of output (CPU), so the ng passes of the
   epilogue stay in cache while ``_int_mm`` still sees a large M.

``_int_mm`` shape rules: on CPU any shape (M, K, N >= 0); on CUDA
M > 16 and K, N multiples of 8, met here by zero-padding M, G and N
(:data:`CUDA_INT_MM_SHAPE`); zero rows/columns change no integer sum.

Imports torch at module level: only :mod:`fptq.backends.torch_backend`
imports this module, after checking that torch is installed.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..spec import WeightFormat, num_groups
from ..spec.formats import INT4_SIGN_OFFSET as _OFF
from ..spec.formats import NIBBLE_BITS as _BITS
from ..spec.formats import NIBBLE_MASK as _MASK

__all__ = ["IntMMShape", "CPU_INT_MM_SHAPE", "CUDA_INT_MM_SHAPE", "PreparedWeight", "prepare_weight",
           "unpack_grouped", "activation_groups", "group_sums", "scales_transposed", "matmul_prepared", "epilogue",
           "probe_int_mm"]


@dataclass(frozen=True)
class IntMMShape:
    """Shape rules of the int8 product on one device: padded sizes are
    ``Mp = max(ceil(M / mult_m) * mult_m, min_m)``, ``Gp = max(ceil(G / mult_k) * mult_k, min_k)``,
    ``Np = ceil(N / mult_n) * mult_n``; ``tile_bytes`` bounds the float32 epilogue
    tile [rows, Np] (0 = no tiling); ``batched_bytes`` bounds the int32 sums of all
    groups of a tile for the batched epilogue (see :func:`matmul_prepared`)."""

    min_m: int = 1
    mult_m: int = 1
    min_k: int = 1
    mult_k: int = 1
    mult_n: int = 1
    tile_bytes: int = 2 << 20
    batched_bytes: int = 2 << 20

    def pad_m(self, m: int) -> int:
        return max(_round_up(m, self.mult_m), self.min_m) if m else 0

    def pad_k(self, g: int) -> int:
        return max(_round_up(g, self.mult_k), self.min_k)


#: CPU (oneDNN): any shape, except that torch 2.13 returns garbage for an inner
#: dimension of 1 with N >= 2 (measured), so a group of width 1 is padded to 2.
CPU_INT_MM_SHAPE = IntMMShape(min_k=2)
#: CUDA (cuBLASLt): M > 16, K and N multiples of 8 (torch's checks in _int_mm).
CUDA_INT_MM_SHAPE = IntMMShape(min_m=24, mult_m=8, mult_k=8, mult_n=8, tile_bytes=0, batched_bytes=256 << 20)


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


@dataclass(eq=False)
class PreparedWeight:
    """A packed INT4 weight unpacked once for :func:`matmul_prepared`.

    ``w3``: int8 [ng, Np, Gp], group-major, ``q`` (symmetric) or ``q - z``
    (asymmetric), zero padded (see the module docstring); ``planes``: the
    column order inside a group (see :func:`unpack_grouped`). ``n``, ``k``,
    ``group_size``, ``ng``: the logical sizes; ``fmt``: the weight format;
    ``shape``: the :class:`IntMMShape` it was padded for. Holds about N*K bytes
    (twice the packed weight). Scales are not part of it: they are passed per
    call, and their transposed copy is cached here, keyed on the scale tensor
    object and its version counter (an in-place change invalidates it).
    """

    w3: torch.Tensor
    n: int
    k: int
    group_size: int
    ng: int
    fmt: WeightFormat
    shape: IntMMShape
    planes: bool = False
    _scale_cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        #: per-group transposed views [Gp, Np] (the NT operand of the int8 product), made once
        self.w_t = [w.t() for w in self.w3.unbind(0)]

    @property
    def device(self) -> torch.device:
        return self.w3.device

    def cached(self, key: str, t: torch.Tensor | None, build):
        """``build(t)``, memoized while ``t`` is the same live tensor with the same version."""
        if t is None:
            return build(None)
        try:
            version = t._version
        except RuntimeError:  # an inference-mode tensor has no version counter: no caching
            return build(t)
        hit = self._scale_cache.get(key)
        if hit is not None and hit[0]() is t and hit[1] == version:
            return hit[2]
        value = build(t)
        self._scale_cache[key] = (weakref.ref(t), version, value)
        return value


def _nibble_planes(p: torch.Tensor, signed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [..., B] -> (lo, hi) int8 [..., B]: the low and the high nibble of each byte.

    ``lo = b & 0xF``, ``hi = b >> 4`` (logical shift of the unsigned byte); signed
    nibbles are sign-extended as ``(v ^ 8) - 8`` (0..7 stay, 8..15 become -8..-1).
    Only byte ops that vectorize (an int8 *arithmetic* shift does not: ~15x slower).
    """
    lo = (p & _MASK).view(torch.int8)
    hi = (p >> _BITS).view(torch.int8)
    if signed:
        lo.bitwise_xor_(_OFF).sub_(_OFF)
        hi.bitwise_xor_(_OFF).sub_(_OFF)
    return lo, hi


def _unpack_nibbles(p: torch.Tensor, signed: bool) -> torch.Tensor:
    """uint8 [..., B] -> int8 [..., B, 2]: (low nibble, high nibble) of each byte, interleaved."""
    return torch.stack(_nibble_planes(p, signed), dim=-1)


def unpack_grouped(packed: torch.Tensor, zero: torch.Tensor | None, k: int, group_size: int,
                   fmt: WeightFormat, shape: IntMMShape) -> tuple[torch.Tensor, bool]:
    """Unpack a checked packed weight into the group-major int8 ``w3`` [ng, Np, Gp] (module docstring).

    Args: packed uint8 [N, ceil(K/2)]; zero uint8 [N, ng] in [0, 15] (asymmetric) or None.
    Returns: (w3, planes). ``planes`` (even G): inside each group the columns are
    stored as their two nibble planes, the G/2 even columns (low nibbles) then
    the G/2 odd ones (high nibbles), so unpacking is a few byte ops with no
    interleaving; :func:`activation_groups` permutes the activation the same
    way, and an integer sum does not depend on the order of its terms.
    Otherwise (odd G) the natural column order.
    """
    n = packed.shape[0]
    g = group_size
    ng = num_groups(k, g)
    signed = fmt is WeightFormat.SYMMETRIC
    gp, np_ = shape.pad_k(g), _round_up(n, shape.mult_n)
    planes = g % 2 == 0
    if ng == 0 or n == 0:
        return torch.zeros((ng, np_, gp), dtype=torch.int8, device=packed.device), planes
    r = k - (ng - 1) * g  # width of the last group (ragged when r < g)
    if planes:
        # written in place into w3 (fresh multi-MB temporaries cost page faults on every call)
        h = g // 2
        w3 = torch.empty((ng, np_, gp), dtype=torch.int8, device=packed.device)
        if np_ > n or gp > g:
            w3[:, n:].zero_()
            w3[:, :, g:].zero_()
        p = packed if ng * h == packed.shape[1] else F.pad(packed, (0, ng * h - packed.shape[1]))
        p3 = p.view(n, ng, h).transpose(0, 1)  # bytes, group-major [ng, N, G/2] (a strided view)
        lo, hi = w3[:, :n, :h], w3[:, :n, h:g]
        torch.bitwise_and(p3, _MASK, out=lo.view(torch.uint8))
        torch.bitwise_right_shift(p3, _BITS, out=hi.view(torch.uint8))
        if signed:  # (v ^ 8) - 8: sign extension of a nibble with byte ops that vectorize
            lo.bitwise_xor_(_OFF).sub_(_OFF)
            hi.bitwise_xor_(_OFF).sub_(_OFF)
        tail = [slice((r + 1) // 2, h), slice(h + r // 2, g)]  # columns >= K of the last group
    else:
        w3 = torch.zeros((ng, np_, gp), dtype=torch.int8, device=packed.device)
        w = _unpack_nibbles(packed, signed).view(n, 2 * packed.shape[1])[:, :k]
        w3[:, :n, :g] = F.pad(w, (0, ng * g - k)).view(n, ng, g).transpose(0, 1)
        tail = [slice(r, g)]
    if not signed:
        w3[:, :n, :g] -= zero.t().to(torch.int8).unsqueeze(-1)
    for cols in tail:  # the padding nibble of an odd K, the ragged tail: zero (also after "- z")
        w3[ng - 1, :, cols] = 0
    return w3, planes


def prepare_weight(packed, zero, k: int, group_size: int, fmt: WeightFormat, shape: IntMMShape) -> PreparedWeight:
    """Build a :class:`PreparedWeight` from checked arguments (see :func:`unpack_grouped`).

    A G above K is one group of K columns, prepared as G = K: the same sums, and
    memory O(N K) instead of O(N G) (G may be 2**20).
    """
    group_size = max(min(group_size, k), 1)
    w3, planes = unpack_grouped(packed, zero, k, group_size, fmt, shape)
    return PreparedWeight(w3, packed.shape[0], k, group_size, num_groups(k, group_size), fmt, shape, planes)


def activation_groups(qx: torch.Tensor, prep: PreparedWeight) -> torch.Tensor:
    """qx int8 [M, K] -> x3 int8 [ng, Mp, Gp] in the weight's column order, zero padded (one copy)."""
    m, k = qx.shape
    g, ng = prep.group_size, prep.ng
    gp = prep.w3.shape[2]
    mp = prep.shape.pad_m(m)
    x = qx if ng * g == k else F.pad(qx, (0, ng * g - k))
    if prep.planes:  # [M, ng, G/2, 2] -> [ng, M, 2, G/2]: even columns, then odd ones
        x = x.view(m, ng, g // 2, 2).permute(1, 0, 3, 2).reshape(ng, m, g)
    else:
        x = x.view(m, ng, g).transpose(0, 1)
    if mp == m and gp == g:
        return x.contiguous()
    x3 = torch.zeros((ng, mp, gp), dtype=torch.int8, device=qx.device)
    x3[:, :m, :g] = x
    return x3


def _product(x: torch.Tensor, wt: torch.Tensor, out: torch.Tensor, use_int_mm: bool) -> None:
    """``out = x @ wt`` exactly in int32 (x int8 [R, Gp], wt int8 [Gp, Np] (a transposed view), out int32 [R, Np])."""
    if use_int_mm:
        torch._int_mm(x, wt, out=out)
    else:  # reference path: float64 holds every partial sum exactly (<= 2**31 < 2**53)
        out.copy_(torch.mm(x.to(torch.float64), wt.to(torch.float64)))


def _tile_rows(prep: PreparedWeight, mp: int) -> int:
    """Rows per epilogue tile: [rows, Np] float32 within ``tile_bytes`` (at least 16 rows)."""
    tb = prep.shape.tile_bytes
    if not tb:
        return max(mp, 1)
    rows = max(16, tb // (4 * max(prep.w3.shape[1], 1)) // 16 * 16)
    return min(rows, max(mp, 1))


def group_sums(qx: torch.Tensor, prep: PreparedWeight, use_int_mm: bool) -> torch.Tensor:
    """The exact int32 group sums, [M, N, ng] (``fptq.spec.w4a8_group_sums``)."""
    m = qx.shape[0]
    x3 = activation_groups(qx, prep)
    mp, np_ = x3.shape[1], prep.w3.shape[1]
    acc = torch.empty((prep.ng, mp, np_), dtype=torch.int32, device=qx.device)
    if m and prep.n:
        for g, (xg, wt) in enumerate(zip(x3.unbind(0), prep.w_t)):
            _product(xg, wt, acc[g], use_int_mm)
    else:
        acc.zero_()
    return acc[:, :m, :prep.n].permute(1, 2, 0).contiguous()


def _pad_to(t: torch.Tensor, size: int, value: float) -> torch.Tensor:
    return t if t.shape[-1] == size else F.pad(t, (0, size - t.shape[-1]), value=value)


def scales_transposed(wscale: torch.Tensor, prep: PreparedWeight) -> torch.Tensor:
    """wscale float32 [N, ng] -> [ng, Np] contiguous, padded with 1.0 (padding rows of y are dropped)."""
    return _pad_to(wscale.t(), prep.w3.shape[1], 1.0).contiguous()


def matmul_prepared(qx: torch.Tensor, xscale: torch.Tensor, prep: PreparedWeight, ws_t: torch.Tensor,
                    bias: torch.Tensor | None, use_int_mm: bool) -> torch.Tensor:
    """W4A8 linear with the pinned epilogue, from checked arguments.

    Args:
        qx: int8 [M, K]. xscale: float32 [M] (a per-tensor scale already broadcast).
        prep: the weight. ws_t: float32 [ng, Np] from :func:`scales_transposed`.
        bias: float32 [N] or None.
    Returns:
        float32 [M, N], bit-identical to ``fptq.spec.w4a8_matmul``.

    Per tile of rows, either *fused* (per group: product, ``t = acc * ws``,
    ``y += t``; three kernels per group, the tile stays in cache) or, when the
    int32 sums of all groups of the tile fit in ``batched_bytes``, *batched*
    (all products, then one multiply for all groups, then the ng adds): fewer
    kernel launches for small M. Both perform the same float32 operations on
    each element in the same order.
    """
    m, n, ng = qx.shape[0], prep.n, prep.ng
    x3 = activation_groups(qx, prep)
    mp, np_ = x3.shape[1], prep.w3.shape[1]
    dev = qx.device
    y = torch.empty((mp, np_), dtype=torch.float32, device=dev)
    xs = _pad_to(xscale, mp, 1.0)
    b = None if bias is None else _pad_to(bias, np_, 0.0)
    rows = _tile_rows(prep, mp)
    batched = ng * rows * np_ * 4 <= prep.shape.batched_bytes
    acc = torch.empty(((ng,) if batched else ()) + (rows, np_), dtype=torch.int32, device=dev)
    t = torch.empty_like(acc, dtype=torch.float32)
    ws_b = ws_t[:, None, :]
    for r0 in range(0, mp, rows):
        r1 = min(mp, r0 + rows)
        nr = r1 - r0
        yt = y[r0:r1]
        yt.zero_()                                        # y = +0.0
        if n and m and ng:
            xg = x3[:, r0:r1].unbind(0)
            if batched:
                at, tt = acc[:, :nr], t[:, :nr]
                for g in range(ng):
                    _product(xg[g], prep.w_t[g], at[g], use_int_mm)
                tt.copy_(at)                              # float32(acc): exact or round-half-even
                tt.mul_(ws_b)                             # * wscale, rounded (all groups at once)
                for g in range(ng):                       # ascending group order
                    yt.add_(tt[g])                        # y + t, rounded
            else:
                at, tt = acc[:nr], t[:nr]
                for g in range(ng):                       # ascending group order
                    _product(xg[g], prep.w_t[g], at, use_int_mm)
                    tt.copy_(at)                          # float32(acc): exact or round-half-even
                    tt.mul_(ws_t[g])                      # * wscale, rounded
                    yt.add_(tt)                           # y + t, rounded
        yt.mul_(xs[r0:r1, None])                          # * xscale, rounded
        if b is not None:
            yt.add_(b)                                    # + bias, rounded
    if mp != m or np_ != n:
        y = y[:m, :n].contiguous()
    return y


def epilogue(acc: torch.Tensor, wscale: torch.Tensor, xscale: torch.Tensor,
             bias: torch.Tensor | None) -> torch.Tensor:
    """The pinned epilogue on checked arguments (``fptq.spec.w4a8_epilogue``).

    acc int32 [M, N, ng]; wscale float32 [N, ng]; xscale float32 [M]; bias float32 [N] or None.
    ``t = acc * wscale`` is computed for all groups at once (elementwise, so the
    same bits), then added to ``y`` one group at a time in ascending order.
    """
    m, n, ng = acc.shape
    t = torch.mul(acc, wscale).permute(2, 0, 1).contiguous()  # float32 [ng, M, N]
    y = torch.zeros((m, n), dtype=torch.float32, device=acc.device)
    for g in range(ng):
        y.add_(t[g])
    y.mul_(xscale[:, None])
    if bias is not None:
        y.add_(bias)
    return y


def probe_int_mm(device: torch.device, shape: IntMMShape) -> str | None:
    """Check ``torch._int_mm`` against the float64 reference path on this device.

    Runs the product of :func:`group_sums` both ways on edge inputs (int8
    extremes -128/127 against weights -15/15, a ragged last group, small
    M, N, G from 1 up, a group of 2**14 columns whose sums exceed 2**24, so
    that a float accumulator would be caught). Returns None when every int32 agrees,
    else the reason (an exception or the first mismatch).
    """
    gen = torch.Generator().manual_seed(1234)
    cases = []
    for m, n, k in ((m, n, k) for m in (1, 2, 17) for n in (1, 2, 3, 8) for k in (1, 2, 3, 5, 8, 9, 16, 31)):
        cases.append((torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen),
                      torch.randint(-15, 16, (n, k), dtype=torch.int8, generator=gen), k))
    for m, n, k, g in ((1, 8, 256, 128), (5, 24, 200, 64), (40, 16, 96, 32), (3, 8, 1 << 14, 1 << 14)):
        x = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen)
        w = torch.randint(-15, 16, (n, k), dtype=torch.int8, generator=gen)
        cases.append((x, w, g))
        cases.append((torch.full((m, k), -128, dtype=torch.int8), torch.full((n, k), -15, dtype=torch.int8), g))
        cases.append((torch.full((m, k), 127, dtype=torch.int8), torch.full((n, k), 15, dtype=torch.int8), g))
        cases.append((torch.full((m, k), -128, dtype=torch.int8), torch.full((n, k), 15, dtype=torch.int8), g))
    try:
        for x, w, g in cases:
            ng = num_groups(w.shape[1], g)
            gp, np_ = shape.pad_k(g), _round_up(w.shape[0], shape.mult_n)
            w3 = torch.zeros((ng, np_, gp), dtype=torch.int8)
            w3[:, :w.shape[0], :g] = F.pad(w, (0, ng * g - w.shape[1])).view(w.shape[0], ng, g).transpose(0, 1)
            prep = PreparedWeight(w3.to(device), w.shape[0], w.shape[1], g, ng, WeightFormat.SYMMETRIC, shape)
            fast = group_sums(x.to(device), prep, use_int_mm=True)
            ref = group_sums(x.to(device), prep, use_int_mm=False)
            if not torch.equal(fast, ref):
                idx = tuple(int(i) for i in (fast != ref).nonzero()[0])
                return (f"torch._int_mm disagrees with the exact float64 product on {device} "
                        f"(M={x.shape[0]}, N={w.shape[0]}, K={w.shape[1]}, G={g}): "
                        f"{int(fast[idx])} != {int(ref[idx])} at {idx}")
    except (RuntimeError, NotImplementedError, AttributeError) as e:
        return f"torch._int_mm is unusable on {device}: {type(e).__name__}: {str(e).splitlines()[0]}"
    return None
