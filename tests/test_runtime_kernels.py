"""The runtime's float kernels on their own (:mod:`fptq.runtime.attention`, :mod:`fptq.runtime.ops`).

What each test pins:

* ``exp_into``: within 1 ulp of the exact exp on [-87, 88] (measured 0.93 ulp), and the same bits
  whether a value goes through the vectorized loop or alone;
* the blocked attention: every query row gives the same bits alone (a decoded token) as inside a
  block of rows (a prefill), on one thread or several; and it is the softmax attention within 1e-6 of
  the output scale of a float64 computation (measured 3.2e-7; float32 dot products and sums over
  up to 300 keys), with GQA, a sliding window and a softcap;
* ``rotate``: the same bits as the plain statement of its order (signs, butterfly stages, block
  product summed b ascending from +0.0), here written with NumPy float32 operations, for blocks
  small (summed across groups) and large (across a group's padded outputs, eight b per pass).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

from fptq.runtime import attention as at  # noqa: E402
from fptq.runtime import ops  # noqa: E402

F32 = np.float32


def test_exp_into_within_one_ulp_and_the_same_bits_alone():
    x = np.concatenate([np.linspace(-87, 88, 400_001, dtype=F32),
                        (np.random.default_rng(0).standard_normal(10_000) * 20).astype(F32).clip(-87, 88)])
    y = x.copy()
    ops.exp_into(y, 0, y.size, np.empty(y.size, np.int32))
    want = np.exp(x.astype(np.float64))
    ulps = np.abs(y - want) / np.spacing(want.astype(F32))
    assert ulps.max() <= 1.0, f"exp_into({x[ulps.argmax()]!r}) = {y[ulps.argmax()]!r}: {ulps.max():.2f} ulp off"
    alone = x[:37].copy()
    for i in range(alone.size):                 # one value per call: the scalar path
        ops.exp_into(alone, i, i + 1, np.empty(alone.size, np.int32))
    assert np.array_equal(alone, y[:37])


def _reference(q, kt, vc, nh, nkv, hd, scaling, window, softcap):
    out = np.empty(q.shape, np.float64)
    grp = nh // nkv
    for m in range(q.shape[0]):
        t0 = 0 if window <= 0 else max(0, m - window + 1)
        for h in range(nh):
            g = h // grp
            s = (kt[g, :, t0:m + 1].T.astype(np.float64) @ q[m, h * hd:(h + 1) * hd]) * float(scaling)
            if softcap > 0:
                s = np.tanh(s / softcap) * softcap
            e = np.exp(s - s.max())
            out[m, h * hd:(h + 1) * hd] = (e / e.sum()) @ vc[g, t0:m + 1]
    return out


@pytest.mark.parametrize("m_rows,nh,nkv,hd,window,softcap", [
    (300, 9, 3, 64, 0, 0.0),      # SmolLM2's heads: three query heads per KV head
    (70, 8, 2, 32, 7, 0.0),       # four per KV head (a pass of three, then one), a sliding window
    (45, 4, 4, 16, 0, 50.0),      # no GQA, a softcap
    (33, 12, 2, 24, 5, 0.0),      # six per KV head
])
def test_attention_rows_equal_alone_and_in_blocks(m_rows, nh, nkv, hd, window, softcap):
    rng = np.random.default_rng(m_rows)
    q = rng.standard_normal((m_rows, nh * hd)).astype(F32)
    kt = rng.standard_normal((nkv, hd, m_rows + 5)).astype(F32)
    vc = rng.standard_normal((nkv, m_rows + 5, hd)).astype(F32)
    args = (nh, nkv, hd, F32(hd ** -0.5), window, F32(softcap))
    out = np.empty((m_rows, nh * hd), F32)
    at.attend(q, kt, vc, 0, *args, out)
    par = np.empty_like(out)
    at.attend_parallel(q, kt, vc, 0, *args, par, 3)
    assert np.array_equal(par, out), "attend_parallel differs from attend"
    for m in sorted({0, 1, at.ROWS - 1, at.ROWS, m_rows // 2, m_rows - 1}):
        one = np.empty((1, nh * hd), F32)
        at.attend(q[m:m + 1], kt, vc, m, *args, one)
        bad = np.flatnonzero(one[0] != out[m])
        assert bad.size == 0, f"row {m} column {bad[:1]}: alone {one[0, bad[:1]]} vs in its block {out[m, bad[:1]]}"
    want = _reference(q, kt, vc, *args)
    err = np.abs(out - want).max() / np.abs(want).max()
    assert err <= 1e-6, f"attention off the float64 softmax by {err:.2e} of the output scale"


def _rotate_plain(y, signs, rs, p2):
    """``ops.rotate``'s float32 operations in their order, as NumPy array steps (m = 1: one scale)."""
    m = rs.shape[0]
    y = y * signs
    h = 1
    while h < p2:
        v = y.reshape(-1, 2, h * m)
        y = np.concatenate([v[:, 0] + v[:, 1], v[:, 0] - v[:, 1]], axis=1).reshape(-1)
        h *= 2
    if m == 1:
        return y * rs[0, 0]
    g = y.reshape(p2, m)
    out = np.zeros((p2, m), F32)
    for b in range(m):
        out = out + g[:, b:b + 1] * rs[b][None, :]
    return out.reshape(-1)


@pytest.mark.parametrize("p2,m", [(64, 9), (512, 3), (8, 1), (1, 5), (16, 12),
                                  (128, 70), (4, 16), (2, 17), (8, 33), (1, 24), (1, 70)])   # m >= 16: across outputs
def test_rotate_is_its_plain_order_bit_for_bit(p2, m):
    rng = np.random.default_rng(p2 * m)
    n = p2 * m
    signs = np.where(rng.random(n) < 0.5, -1, 1).astype(F32)
    rs = (rng.standard_normal((m, m)) / np.sqrt(p2 * m)).astype(F32)
    y = rng.standard_normal(n).astype(F32)
    got = y.copy()
    ops.rotate(got, signs, ops.padded_block(rs), np.int64(p2), ops.rotate_scratch(n))
    want = _rotate_plain(y, signs, rs, p2)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, f"rotate p2={p2} m={m}: element {bad[0]} = {got[bad[0]]!r}, plain order {want[bad[0]]!r}"


def test_three_heads_per_pass_equal_one_head_at_a_time():
    """The passes of three query heads (``_dots3``, ``_weighted_sum3``) do each head's operations in
    the one-head order (``_dots``, ``_weighted_sum``): the same bits."""
    rng = np.random.default_rng(5)
    m_rows, hd = 50, 40
    q = rng.standard_normal((m_rows, 3 * hd)).astype(F32)
    kt = rng.standard_normal((1, hd, m_rows)).astype(F32)
    vc = rng.standard_normal((1, m_rows, hd)).astype(F32)
    three = np.empty((m_rows, 3 * hd), F32)
    at.attend(q, kt, vc, 0, 3, 1, hd, F32(0.2), 0, F32(0.0), three)
    for h in range(3):
        one = np.empty((m_rows, hd), F32)
        at.attend(np.ascontiguousarray(q[:, h * hd:(h + 1) * hd]), kt, vc, 0, 1, 1, hd, F32(0.2), 0, F32(0.0), one)
        assert np.array_equal(one, three[:, h * hd:(h + 1) * hd]), f"head {h}: three-head pass differs"


@pytest.mark.parametrize("n", [8960, 1025, 1024, 3])
def test_silu_activation_is_its_formula_bit_for_bit(n):
    """``ops.activation`` (SiLU): the same bits as its formula in NumPy float32 operations (``-g``,
    :func:`exp_into` over every value, then ``(g * (1 / (1 + e))) * u``), so a change of its loops (blocks,
    fusion) that changes a value is caught (a blocked version that skipped a block's last exp failed it)."""
    rng = np.random.default_rng(n)
    g, u = (rng.standard_normal(n) * 4).astype(F32), rng.standard_normal(n).astype(F32)
    e = -g
    ops.exp_into(e, 0, n, np.empty(n, np.int32))
    want = (g * (F32(1.0) / (F32(1.0) + e))) * u
    got = np.empty(n, F32)
    ops.activation(g, u, ops.ACT_SILU, got, np.empty(n, np.int32))
    bad = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
    assert bad.size == 0, f"activation n={n}: element {bad[0]} = {got[bad[0]]!r}, one pass {want[bad[0]]!r}"
