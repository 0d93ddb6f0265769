"""GPTQ (fptq.reference.gptq) on synthetic layers: exact corner cases and the error it removes."""

from __future__ import annotations

import numpy as np
import pytest

from fptq import spec
from fptq.reference.gptq import HessianAccumulator, equalized_hessian, gptq_quantize, hessian_clip_scale
from fptq.spec import WeightFormat
from fptq.spec.formats import weight_format_spec

FORMATS = [WeightFormat.SYMMETRIC, WeightFormat.ASYMMETRIC]


def _layer(seed: int, n: int = 48, k: int = 200, rows: int = 1024):
    """Correlated inputs (a few latent directions plus noise, uneven channel scales) and a weight."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((rows, 12))
    x = z @ rng.standard_normal((12, k)) + 0.3 * rng.standard_normal((rows, k))
    x *= rng.uniform(0.2, 3.0, size=k)
    w = rng.standard_normal((n, k)).astype(np.float32)
    return x.astype(np.float32), w


def _hessian(x):
    acc = HessianAccumulator(x.shape[1])
    for chunk in np.array_split(x, 3):
        acc.add_batch(chunk)
    return acc.H


def _output_error(x, w, qw: spec.QuantizedWeight) -> float:
    wq = spec.dequantize_weight(qw.q, qw.scale, qw.zero, qw.group_size, qw.fmt)
    x64 = x.astype(np.float64)
    return float(np.linalg.norm(x64 @ (w - wq).T.astype(np.float64)) / np.linalg.norm(x64 @ w.T.astype(np.float64)))


def test_hessian_accumulates_in_any_batching():
    x, _ = _layer(0)
    one = HessianAccumulator(x.shape[1])
    one.add_batch(x)
    assert one.n == x.shape[0]
    np.testing.assert_allclose(_hessian(x), one.H, rtol=1e-12, atol=1e-9)
    with pytest.raises(ValueError, match="last dimension"):
        one.add_batch(x[:, :5])
    with pytest.raises(ValueError, match="no calibration rows"):
        HessianAccumulator(4).H


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("group_size", [64, 128, -1])
def test_diagonal_hessian_is_round_to_nearest(fmt, group_size):
    """With uncorrelated inputs there is no error to feed forward: GPTQ == the spec's RTN, code for code."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((16, 200)).astype(np.float32)
    H = np.diag(rng.uniform(0.5, 2.0, size=200))
    got = gptq_quantize(w, H, group_size, fmt)
    want = spec.quantize_weight(w, group_size, fmt)
    assert np.array_equal(got.q, want.q)
    assert np.array_equal(got.scale, want.scale)
    assert (got.zero is None) == (want.zero is None)
    if want.zero is not None:
        assert np.array_equal(got.zero, want.zero)
    assert got.group_size == want.group_size and got.fmt is want.fmt


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_output_error_below_rtn(fmt, act_order):
    """On correlated inputs GPTQ's output error is well below RTN's, on every seed."""
    for seed in range(3):
        x, w = _layer(seed)
        H = _hessian(x)
        g = gptq_quantize(w, H, 64, fmt, act_order=act_order)
        r = spec.quantize_weight(w, 64, fmt)
        e_g, e_r = _output_error(x, w, g), _output_error(x, w, r)
        assert e_g < 0.5 * e_r, (seed, e_g, e_r)


@pytest.mark.parametrize("fmt", FORMATS)
def test_codes_are_the_spec_format(fmt):
    x, w = _layer(3, k=130)  # ragged last group: 130 = 2 * 64 + 2
    qw = gptq_quantize(w, _hessian(x), 64, fmt, act_order=True, block_size=32)
    f = weight_format_spec(fmt)
    assert qw.q.dtype == np.int8 and qw.q.shape == w.shape
    assert qw.q.min() >= f.qmin and qw.q.max() <= f.qmax
    assert qw.scale.shape == (w.shape[0], 3) and qw.scale.dtype == np.float32
    # act-order keeps static groups: the scales are the RTN scales of the original weight
    want_scale, want_zero = spec.weight_scales(w, 64, fmt)
    assert np.array_equal(qw.scale, want_scale)
    if want_zero is not None:
        assert np.array_equal(qw.zero, want_zero)
    packed = spec.pack_int4(qw.q, signed=fmt is WeightFormat.SYMMETRIC)
    assert np.array_equal(spec.unpack_int4(packed, w.shape[1], signed=fmt is WeightFormat.SYMMETRIC), qw.q)


@pytest.mark.parametrize("fmt", FORMATS)
def test_clip_search_scales_are_the_weighted_best_of_the_grid(fmt):
    """``clip=True``: each group's scale is the clipping candidate with the smallest diag(H)-weighted
    rounding error, never worse than RTN's (p = 1 is a candidate); with act-order (static groups) the
    scales are exactly those of the original weights; the codes stay the spec's format."""
    x, w = _layer(5, k=130)
    H = _hessian(x)
    hd = np.diag(H).astype(np.float32)
    qw = gptq_quantize(w, H, 64, fmt, act_order=True, clip=True)
    fn = hessian_clip_scale(fmt, H)
    rtn_scale, rtn_zero = spec.weight_scales(w, 64, fmt)
    clipped = 0
    for gi, (a, b) in enumerate(spec.group_bounds(130, 64)):
        sc, z = fn(w[:, a:b], a, b)
        assert np.array_equal(qw.scale[:, gi], sc) and (z is None or np.array_equal(qw.zero[:, gi], z))

        def err(scale, zero):
            s2, z2 = scale[:, None], None if zero is None else zero[:, None]
            q = spec.quantize_weight_with_scales(w[:, a:b], s2, z2, -1, fmt)
            d = spec.dequantize_weight(q, s2, z2, -1, fmt)
            return (((w[:, a:b] - d) ** 2) * hd[a:b]).sum(axis=1)

        e_clip = err(sc, z)
        e_rtn = err(rtn_scale[:, gi], None if rtn_zero is None else rtn_zero[:, gi])
        assert (e_clip <= e_rtn * (1 + 1e-6)).all()
        clipped += int((sc < rtn_scale[:, gi]).sum())
    assert clipped > 0  # the search did clip some rows
    f = weight_format_spec(fmt)
    assert qw.q.min() >= f.qmin and qw.q.max() <= f.qmax
    e_clip = _output_error(x, w, gptq_quantize(w, H, 64, fmt, clip=True))
    e_plain = _output_error(x, w, gptq_quantize(w, H, 64, fmt))
    assert e_clip < 1.2 * e_plain, (e_clip, e_plain)


def test_block_size_does_not_change_the_result_materially():
    x, w = _layer(4)
    H = _hessian(x)
    a = gptq_quantize(w, H, 64, block_size=128)
    b = gptq_quantize(w, H, 64, block_size=16)
    # lazy batch updates only reorder float64 sums: at most a handful of codes may flip at a tie
    assert np.mean(a.q != b.q) < 1e-3


def test_dead_channels_and_bad_arguments():
    x, w = _layer(5, k=64)
    x[:, 7] = 0.0
    qw = gptq_quantize(w, _hessian(x), 32)
    assert np.all(qw.q[:, 7] == 0)  # a channel calibration never saw is zeroed, as in GPTQ
    with pytest.raises(ValueError, match="H: expected"):
        gptq_quantize(w, np.eye(3), 32)
    with pytest.raises(ValueError, match="damp"):
        gptq_quantize(w, np.eye(64), 32, damp=0.0)
    with pytest.raises(ValueError, match="non-finite"):
        gptq_quantize(np.full_like(w, np.nan), np.eye(64), 32)


def test_equalized_hessian_is_the_hessian_of_the_folded_weights():
    """GPTQ on W * s with H(x / s) sees the same layer as on W with H(x): (x/s)(W s)^T = x W^T."""
    x, _ = _layer(6, k=32)
    s = np.random.default_rng(0).uniform(0.5, 4.0, 32)
    h = equalized_hessian(x, s)
    np.testing.assert_allclose(h, _hessian(x) / np.outer(s, s), rtol=1e-10)
    np.testing.assert_allclose(equalized_hessian(x), _hessian(x), rtol=1e-12)


@pytest.mark.parametrize("k", [1, 2, 37, 200])
def test_inverse_cholesky_is_the_upper_factor_of_the_dampened_inverse_in_place(k):
    """U upper triangular, positive diagonal, U^T U (H + lam I) = I; computed in the handed buffer (no copy)."""
    from fptq.reference.gptq import _inverse_cholesky

    rng = np.random.default_rng(k)
    x = rng.standard_normal((k + 5, k))
    H = x.T @ x / len(x)
    Hd = H + 0.01 * np.mean(np.diag(H)) * np.eye(k)
    buf = H.copy()
    U = _inverse_cholesky([buf], 0.01)
    assert np.shares_memory(U, buf) and U.flags.c_contiguous
    assert np.array_equal(U, np.triu(U)) and (np.diag(U) > 0).all()
    np.testing.assert_allclose(U.T @ U @ Hd, np.eye(k), atol=1e-9 * k)
    ref = np.linalg.cholesky(np.linalg.inv(Hd)).T   # the same factor computed another way
    np.testing.assert_allclose(U, ref, rtol=1e-8, atol=1e-10)


def test_inverse_cholesky_refuses_an_indefinite_matrix():
    from fptq.reference.gptq import _inverse_cholesky

    H = np.diag([1.0, -50.0, 1.0])
    with pytest.raises(np.linalg.LinAlgError, match="not positive definite"):
        _inverse_cholesky([H], 0.01)
