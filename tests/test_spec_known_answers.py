"""Known answers for fptq.spec, computed by hand (each comment shows the arithmetic).

Only numbers exactly representable in float32 are used where the arithmetic
is done by hand, so every expected value below is exact, not a re-run of the
code under test.
"""

from __future__ import annotations

import numpy as np
import pytest

from fptq import spec
from fptq.spec import MAX_GROUP_SIZE, WeightFormat

F32 = np.float32
SYM, ASYM = WeightFormat.SYMMETRIC, WeightFormat.ASYMMETRIC


def f32(*v):
    return np.array(v, F32)


def assert_bits(actual, expected):
    """Same dtype, shape and float32 bit patterns (so -0.0 != +0.0)."""
    actual, expected = np.asarray(actual), np.asarray(expected, F32)
    assert actual.dtype == F32 and actual.shape == expected.shape, (actual.dtype, actual.shape, expected.shape)
    np.testing.assert_array_equal(actual.view(np.uint32), expected.view(np.uint32))


# --------------------------------------------------------------------------- §5 packing


def test_pack_int4_worked_example():
    """The docstring's example: [1, -2, 7, -8, 3] -> nibbles 1, E, 7, 8, 3 -> bytes E1 87 03."""
    q = np.array([[1, -2, 7, -8, 3]], np.int8)
    packed = spec.pack_int4(q)
    assert packed.dtype == np.uint8
    np.testing.assert_array_equal(packed, np.array([[0xE1, 0x87, 0x03]], np.uint8))
    np.testing.assert_array_equal(spec.unpack_int4(packed, 5), q)


def test_unpack_int4_ignores_padding_nibble():
    """Odd K: the high nibble of the last byte is padding; 0xF3 still unpacks to 3."""
    np.testing.assert_array_equal(spec.unpack_int4(np.array([[0xE1, 0x87, 0xF3]], np.uint8), 5),
                                  np.array([[1, -2, 7, -8, 3]], np.int8))


def test_pack_int4_unsigned():
    """Unsigned [0, 15, 8] -> bytes (15 << 4 | 0) = 0xF0, then 0x08."""
    np.testing.assert_array_equal(spec.pack_int4(np.array([[0, 15, 8]], np.int8), signed=False),
                                  np.array([[0xF0, 0x08]], np.uint8))
    np.testing.assert_array_equal(spec.unpack_int4(np.array([[0xF0, 0x08]], np.uint8), 3, signed=False),
                                  np.array([[0, 15, 8]], np.int8))


def test_pack_int4_empty_and_k1():
    assert spec.pack_int4(np.zeros((2, 0), np.int8)).shape == (2, 0)
    np.testing.assert_array_equal(spec.pack_int4(np.array([[-1]], np.int8)), np.array([[0x0F]], np.uint8))


# --------------------------------------------------------------------------- §2 activations


def test_rint_ties_to_even():
    """scale 1: 2.5 -> 2, 3.5 -> 4, -0.5 -> 0, -2.5 -> -2, 0.5 -> 0, 1.5 -> 2, -1.5 -> -2."""
    q = spec.quantize_act_per_tensor(f32(2.5, 3.5, -0.5, -2.5, 0.5, 1.5, -1.5), f32(1.0))
    assert q.dtype == np.int8
    np.testing.assert_array_equal(q, np.array([2, 4, 0, -2, 0, 2, -2], np.int8))


def test_quantize_act_per_tensor_saturates():
    """-128 clips to -127 (never -128); 127.5 rounds to 128 (even) and clips to 127; a quotient
    that overflows to inf (1e38 / 1e-30) saturates at 127."""
    q = spec.quantize_act_per_tensor(f32(-128.0, 127.5, -127.5, 1000.0), f32(1.0))
    np.testing.assert_array_equal(q, np.array([-127, 127, -127, 127], np.int8))
    with np.errstate(over="ignore"):
        q = spec.quantize_act_per_tensor(f32(1e38, -1e38), f32(1e-30))
    np.testing.assert_array_equal(q, np.array([127, -127], np.int8))


def test_act_scale_from_amax():
    """127 -> 1; 254 -> 2; 0 -> MIN_SCALE; 127 * 2**-126 -> 2**-126 exactly; 1e-37 (< 127 * 2**-126) -> MIN_SCALE."""
    s = spec.act_scale_from_amax(f32(127.0, 254.0, 0.0, 127.0 * 2.0**-126, 1e-37))
    assert_bits(s, f32(1.0, 2.0, 2.0**-126, 2.0**-126, 2.0**-126))


def test_quantize_act_per_token_tiny_rows():
    """Row 0: amax 127 -> scale 1; 127 -> 127, -63.5 -> -64 (even), 0.5 -> 0, -1.5 -> -2, 2.5 -> 2.
    Row 1: all zero -> scale MIN_SCALE, q 0. Row 2: amax 254 -> scale 2; 1 / 2 = 0.5 -> 0; -3 / 2 -> -2."""
    x = f32([127.0, -63.5, 0.5, -1.5, 2.5], [0.0, -0.0, 0.0, 0.0, 0.0], [254.0, 1.0, -3.0, 0.0, 5.0])
    q, s = spec.quantize_act_per_token(x)
    np.testing.assert_array_equal(q, np.array([[127, -64, 0, -2, 2], [0, 0, 0, 0, 0], [127, 0, -2, 0, 2]], np.int8))
    assert_bits(s, f32(1.0, 2.0**-126, 2.0))


def test_quantize_act_per_token_empty():
    q, s = spec.quantize_act_per_token(np.zeros((0, 4), F32))
    assert q.shape == (0, 4) and q.dtype == np.int8 and s.shape == (0,) and s.dtype == F32
    q, s = spec.quantize_act_per_token(np.zeros((2, 0), F32))
    assert q.shape == (2, 0) and s.shape == (2,)
    assert_bits(s, f32(2.0**-126, 2.0**-126))


def test_dequantize_act():
    """-128 * 0.5 = -64; per-token scales broadcast over K."""
    assert_bits(spec.dequantize_act(np.array([[-128, 3], [1, -1]], np.int8), f32(0.5, 4.0)),
                f32([-64.0, 1.5], [4.0, -4.0]))


# --------------------------------------------------------------------------- §3 LAE


def test_lae_scales():
    """s = m / log2(2 + m): m = 0 -> 1 (idle channel); m = 2 -> 2 / 2 = 1; m = 6 -> 6 / 3 = 2;
    m = 14 -> 14 / 4 = 3.5; m = 30 -> 30 / 5 = 6; m = 1 -> 1 / log2(3), log2(3) = 1.584962500721156...;
    a subnormal m -> 1."""
    s = spec.lae_scales(f32(0.0, 2.0, 6.0, 14.0, 30.0, 1.0, 1e-40))
    assert_bits(s[[0, 1, 2, 3, 4, 6]], f32(1.0, 1.0, 2.0, 3.5, 6.0, 1.0))
    assert_bits(s[5:6], f32(1.0) / F32(1.584962500721156))


def test_lae_apply_is_exact_division_and_multiplication():
    """x / s and w * s with s = [2, 0.5]: exact here, and X' W'^T = X W^T."""
    x, w, s = f32([3.0, 1.0]), f32([1.0, 4.0], [-2.0, 0.5]), f32(2.0, 0.5)
    assert_bits(spec.lae_apply_activation(x, s), f32([1.5, 2.0]))
    assert_bits(spec.lae_apply_weight(w, s), f32([2.0, 2.0], [-4.0, 0.25]))


# --------------------------------------------------------------------------- §4 weights


def test_asymmetric_group_by_hand():
    """w = [-1.5, 0, 6, 0.25, 1.25, -0.75], one group: lo = -1.5, hi = 6, scale = 7.5 / 15 = 0.5,
    z = rint(1.5 / 0.5) = 3; w / s = [-3, 0, 12, 0.5, 2.5, -1.5] -> rint [-3, 0, 12, 0, 2, -2]
    -> + 3 = [0, 3, 15, 3, 5, 1]; dequantized (q - z) * s = [-1.5, 0, 6, 0, 1, -1]."""
    w = f32([-1.5, 0.0, 6.0, 0.25, 1.25, -0.75])
    r = spec.quantize_weight(w, -1, ASYM)
    assert_bits(r.scale, f32([0.5]))
    np.testing.assert_array_equal(r.zero, np.array([[3]], np.uint8))
    np.testing.assert_array_equal(r.q, np.array([[0, 3, 15, 3, 5, 1]], np.int8))
    assert_bits(spec.dequantize_weight(r.q, r.scale, r.zero, r.group_size, ASYM), f32([-1.5, 0, 6, 0, 1, -1]))


def test_symmetric_ragged_groups_by_hand():
    """K = 5, G = 2: groups [0, 2), [2, 4), [4, 5). amax 7, 3.5, 0 -> scales 1, 0.5, MIN_SCALE;
    w / s = [7, -3.5 | 5, 7 | 0] -> rint [7, -4 | 5, 7 | 0]."""
    w = f32([7.0, -3.5, 2.5, 3.5, 0.0])
    r = spec.quantize_weight(w, 2)
    assert r.zero is None and r.group_size == 2 and r.fmt is SYM
    assert_bits(r.scale, f32([1.0, 0.5, 2.0**-126]))
    np.testing.assert_array_equal(r.q, np.array([[7, -4, 5, 7, 0]], np.int8))


def test_symmetric_clipping_uses_minus_8():
    """A given (clipped) scale of 1: -7.5 -> rint -8 (even) stays -8; -9 clips to -8; 7.5 -> 8 clips to 7."""
    q = spec.quantize_weight_with_scales(f32([-7.5, -9.0, 7.5, 6.5]), f32([1.0]), None, 4)
    np.testing.assert_array_equal(q, np.array([[-8, -8, 7, 6]], np.int8))


def test_group_size_above_k_and_per_channel():
    """G = 128 > K = 3 is one group, identical to per-channel (G = -1)."""
    w = f32([1.0, -2.0, 0.5], [0.0, 0.0, 0.0])
    a, b = spec.quantize_weight(w, 128), spec.quantize_weight(w, -1)
    assert a.scale.shape == (2, 1) and b.group_size == 3
    np.testing.assert_array_equal(a.q, b.q)
    assert_bits(a.scale, b.scale)


def test_k576_g128_ragged_last_group():
    """K = 576, G = 128: 5 groups, the last one 64 wide (columns 512..575). A 7 in column 575 makes
    only the last group's scale 1; the same weight zero-padded to 640 quantizes identically."""
    assert spec.num_groups(576, 128) == 5
    assert spec.group_bounds(576, 128)[-1] == (512, 576)
    w = np.zeros((2, 576), F32)
    w[:, 575] = 7.0
    w[0, 0] = 14.0
    r = spec.quantize_weight(w, 128)
    assert_bits(r.scale, f32([2.0] + [2.0**-126] * 3 + [1.0], [2.0**-126] * 4 + [1.0]))
    padded = spec.quantize_weight(np.concatenate([w, np.zeros((2, 64), F32)], axis=1), 128)
    np.testing.assert_array_equal(padded.q[:, :576], r.q)
    assert_bits(padded.scale, r.scale)


def test_max_group_size():
    """G = 2**20 is admitted (the int32 bound); 2**20 + 1 and 0 are rejected."""
    s, _ = spec.weight_scales(f32([7.0, 0.0, 0.0]), MAX_GROUP_SIZE)
    assert_bits(s, f32([1.0]))
    for bad in (MAX_GROUP_SIZE + 1, 0, -2):
        with pytest.raises(ValueError, match="group_size"):
            spec.weight_scales(f32([7.0]), bad)


# --------------------------------------------------------------------------- §6 matmul


def test_group_sums_by_hand():
    """qx = [-128, 127, 1], q = [-8, 7, -1], G = 2: group 0 = 1024 + 889 = 1913, group 1 = -1.
    Asymmetric q = [0, 15, 3], z = [8, 2]: group 0 = -128 * -8 + 127 * 7 = 1913, group 1 = 1 * (3 - 2) = 1."""
    qx = np.array([[-128, 127, 1]], np.int8)
    acc = spec.w4a8_group_sums(qx, spec.pack_int4(np.array([[-8, 7, -1]], np.int8)), None, 3, 2)
    assert acc.dtype == np.int32
    np.testing.assert_array_equal(acc, np.array([[[1913, -1]]], np.int32))
    packed = spec.pack_int4(np.array([[0, 15, 3]], np.int8), signed=False)
    acc = spec.w4a8_group_sums(qx, packed, np.array([[8, 2]], np.uint8), 3, 2, ASYM)
    np.testing.assert_array_equal(acc, np.array([[[1913, 1]]], np.int32))


def test_epilogue_by_hand():
    """((3 * 0.5) + (-5 * 0.25) + (7 * 2)) * 0.125 + 1 = 14.25 * 0.125 + 1 = 2.78125 (all exact)."""
    y = spec.w4a8_epilogue(np.array([[[3, -5, 7]]], np.int32), f32([0.5, 0.25, 2.0]), f32(0.125), f32(1.0))
    assert_bits(y, f32([2.78125]))
    assert_bits(spec.w4a8_epilogue(np.array([[[3, -5, 7]]], np.int32), f32([0.5, 0.25, 2.0]), f32(0.125)),
                f32([1.78125]))


def test_epilogue_group_order_is_ascending():
    """acc = [2**24, 1, 1], wscale 1: 2**24 + 1 rounds (tie) to 2**24, twice -> 16777216.
    Descending order would give 1 + 1 + 2**24 = 16777218."""
    y = spec.w4a8_epilogue(np.array([[[2**24, 1, 1]]], np.int32), f32([1.0, 1.0, 1.0]), f32(1.0))
    assert_bits(y, f32([16777216.0]))


def test_epilogue_has_no_fma():
    """acc = [-3, 3], wscale = [1, 1 + 2**-23]: t = 3 * (1 + 2**-23) = 3 + 1.5 ulp(3) rounds (tie to even)
    to 3 + 2**-21; y = -3 + t = 2**-21. A fused y + 3 * w would give 3 * 2**-23 instead."""
    y = spec.w4a8_epilogue(np.array([[[-3, 3]]], np.int32), f32([1.0, 1.0 + 2.0**-23]), f32(1.0))
    assert_bits(y, f32([2.0**-21]))


def test_epilogue_int32_to_float32_rounds_half_even():
    """2**24 + 1 -> 2**24 (tie, even); 2**24 + 3 -> 2**24 + 4 (tie, even)."""
    y = spec.w4a8_epilogue(np.array([[[2**24 + 1]], [[2**24 + 3]]], np.int32), f32([1.0]), f32(1.0))
    assert_bits(y, f32([16777216.0], [16777220.0]))


def test_epilogue_keeps_subnormals_and_signed_zero():
    """-1 * 2**-126 * 0.5 = -2**-127 (subnormal, kept); 0 * s + bias -0.0 = +0.0 + -0.0 = +0.0."""
    y = spec.w4a8_epilogue(np.array([[[-1], [0]]], np.int32), f32([2.0**-126], [1.0]), f32(0.5))
    assert_bits(y, f32([-(2.0**-127), 0.0]))
    y = spec.w4a8_epilogue(np.array([[[0]]], np.int32), f32([1.0]), f32(1.0), f32(-0.0))
    assert_bits(y, f32([0.0]))


def test_matmul_per_token_with_bias():
    """qx = [[2, -1], [4, 0]], q = [[1, 3]], G = 2: acc = [-1, 4]; scale 0.5; xscale [1, 0.25]; bias 10:
    row 0: -1 * 0.5 * 1 + 10 = 9.5; row 1: 4 * 0.5 * 0.25 + 10 = 10.5."""
    y = spec.w4a8_matmul(np.array([[2, -1], [4, 0]], np.int8), f32(1.0, 0.25),
                         spec.pack_int4(np.array([[1, 3]], np.int8)), f32([0.5]), None, 2, 2, bias=f32(10.0))
    assert_bits(y, f32([9.5], [10.5]))


# --------------------------------------------------------------------------- §7 policy


def test_policy_boundaries():
    """v < 15 static; 15 <= v < 150 LAE; v >= 150 dynamic (exact float32 comparisons)."""
    v = np.array([0.0, np.nextafter(F32(15), F32(0)), 15.0, np.nextafter(F32(150), F32(0)), 150.0, 1e30], F32)
    np.testing.assert_array_equal(spec.select_policies(v), np.array([0, 0, 1, 1, 2, 2], np.uint8))
    assert spec.select_policy(15.0) is spec.ActPolicy.LAE_STATIC
    assert spec.select_policy(150.0) is spec.ActPolicy.DYNAMIC
    assert spec.select_policy(14.9) is spec.ActPolicy.STATIC


def test_policy_thresholds_compared_in_float32():
    """v0 = 15.2 (float64) becomes float32 15.19999980926...; v = float32(15.2) is then not below it -> LAE
    (a float64 comparison, 15.1999998 < 15.2, would wrongly say static)."""
    np.testing.assert_array_equal(spec.select_policies(f32(15.2), v0=15.2, v1=150.0), np.array([1], np.uint8))
    with pytest.raises(ValueError, match="v0 < v1"):
        spec.select_policies(f32(1.0), v0=150.0, v1=15.0)


@pytest.mark.parametrize("fmt", ["int4_sym", "uint4_asym"])
def test_weight_ops_memory_is_o_n_k_for_any_group_size(fmt):
    """A 256 x 8 weight with G = 2**20 (one group of 8): every weight op stays in O(N K) memory.

    Before the fix the reference padded each row to G: 2 GiB and seconds per call.
    """
    import tracemalloc

    w = (np.arange(256 * 8, dtype=np.float32).reshape(256, 8) - np.float32(1000)) / np.float32(7)
    g = MAX_GROUP_SIZE
    r = spec.quantize_weight(w, 8, fmt)
    calls = [lambda: spec.weight_scales(w, g, fmt), lambda: spec.quantize_weight(w, g, fmt),
             lambda: spec.quantize_weight_with_scales(w, r.scale, r.zero, g, fmt),
             lambda: spec.dequantize_weight(r.q, r.scale, r.zero, g, fmt),
             lambda: spec.w4a8_group_sums(np.ones((2, 8), np.int8), spec.pack_int4(r.q, fmt == "int4_sym"),
                                          r.zero, 8, g, fmt)]
    for call in calls:
        tracemalloc.start()
        try:
            call()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 1 << 20, f"peak {peak} bytes for a 256 x 8 weight"
    # and the same bits as the group size that means the same groups (G = K)
    q = spec.quantize_weight(w, g, fmt)
    assert np.array_equal(q.q, r.q) and q.scale.tobytes() == r.scale.tobytes() and q.group_size == g


def test_format_table_check_is_a_real_check(tmp_path):
    """The table's consistency check raises (RuntimeError), also under ``python -O`` (no asserts)."""
    import subprocess
    import sys

    from fptq.spec.formats import IntFormat, check_table

    check_table()
    with pytest.raises(RuntimeError, match="int8_sym"):
        check_table(int8=IntFormat("int8_sym", bits=8, signed=True, qmin=-127, qmax=127, scale_divisor=127.5))
    with pytest.raises(RuntimeError, match="overflow"):
        check_table(max_group_size=1 << 21)
    code = ("from fptq.spec.formats import IntFormat, check_table\n"
            "try:\n    check_table(uint4=IntFormat('uint4_asym', 4, False, 0, 16, 16))\n"
            "except RuntimeError as e:\n    print('raised', e)\n")
    out = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("raised"), out.stdout + out.stderr


def test_group_sums_overflow_is_a_real_check():
    """The int32 bound of §6.3 is re-checked with a raise, not an assert (here broken on purpose
    through the unchecked core: zero points of 255 are outside [0, 15])."""
    from fptq.spec.matmul import _group_sums

    k = g = 1 << 20
    qx = np.full((1, k), -128, np.int8)
    packed = np.zeros((1, spec.packed_width(k)), np.uint8)
    with pytest.raises(ArithmeticError, match="overflow"):
        _group_sums(qx, packed, np.full((1, 1), 255, np.uint8), k, g, WeightFormat.ASYMMETRIC)


def test_policy_codes_and_nibble_constants_come_from_the_table():
    from fptq.spec import formats

    assert spec.POLICY_CODES is formats.POLICY_CODES
    assert [formats.POLICY_CODES[p] for p in spec.ActPolicy] == [0, 1, 2]
    assert (formats.NIBBLE_BITS, formats.NIBBLE_MASK, formats.INT4_SIGN_OFFSET, formats.MAX_TERM) == (4, 0xF, 8, 1920)
    v = np.array([0.0, spec.DEFAULT_V0, spec.DEFAULT_V1], np.float32)
    assert spec.select_policies(v).tolist() == [formats.POLICY_CODES[p] for p in spec.ActPolicy]


def test_lae_log2_rounds_correctly_in_two_binades():
    """docs/spec.md §3.3: float64 log2(t) is more than 1 float64 ulp from every float32 rounding midpoint for every
    float32 t in [2, 4) and [2**127, FLT_MAX] (tests/check_log2_rounding.py checks all 127 binades), so the
    reference's float32(log2_float64(t)) is the correctly rounded log2 there."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from check_log2_rounding import midpoint_margin

    for e in (1, 127):
        m64, t, _ = midpoint_margin(e)
        assert m64 > 1, (e, m64, t)
