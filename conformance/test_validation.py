"""Input checks of the public API (``docs/spec.md``, "Errors"; :mod:`fptq.spec.validate`).

Every operation rejects NaN/Inf in a float input with ``ValueError``, and a
wrong shape, dtype, range or parameter with ``ValueError``/``TypeError``,
exactly where the spec does. Each case is first checked to be rejected by the
spec itself, so a wrong case is reported as a suite bug, not a backend bug.
"""

from __future__ import annotations

import numpy as np
import pytest

from fptq import spec
from fptq.spec import MAX_GROUP_SIZE, WeightFormat

from .pytest_helpers import check_raises

F32 = np.float32
SYM, ASYM = WeightFormat.SYMMETRIC, WeightFormat.ASYMMETRIC


def _x(m=2, k=5):
    return (np.arange(m * k, dtype=F32).reshape(m, k) - F32(3.25)) * F32(0.5)


def _q4(n=2, k=5, signed=True):
    v = (np.arange(n * k) % 16) - (8 if signed else 0)
    return v.astype(np.int8).reshape(n, k)


def base_cases() -> dict[str, dict]:
    """One valid case per operation (K = 5, G = 2: three groups, the last one ragged)."""
    w = _x()
    scale, _ = spec.weight_scales(w, 2)
    packed = spec.pack_int4(_q4())
    return {
        "act_scale_from_amax": {"amax": np.array([1.0, 2.0], F32)},
        "quantize_act_per_tensor": {"x": _x(), "scale": np.array(0.5, F32)},
        "quantize_act_per_token": {"x": _x()},
        "dequantize_act": {"q": _q4(), "scale": np.array([0.5, 0.25], F32)},
        "lae_scales": {"channel_max": np.array([1.0, 20.0, 300.0, 0.0, 5.0], F32)},
        "lae_apply_activation": {"x": _x(), "s": np.array([1.0, 2.0, 3.0, 4.0, 5.0], F32)},
        "lae_apply_weight": {"w": _x(), "s": np.array([1.0, 2.0, 3.0, 4.0, 5.0], F32)},
        "weight_scales": {"w": w, "group_size": 2, "fmt": SYM},
        "quantize_weight_with_scales": {"w": w, "scale": scale, "zero": None, "group_size": 2, "fmt": SYM},
        "quantize_weight": {"w": w, "group_size": 2, "fmt": SYM},
        "dequantize_weight": {"q": _q4(), "scale": scale, "zero": None, "group_size": 2, "fmt": SYM},
        "pack_int4": {"q": _q4(), "signed": True},
        "unpack_int4": {"packed": packed, "k": 5, "signed": True},
        "w4a8_group_sums": {"qx": _q4(1, 5), "packed": packed, "zero": None, "k": 5, "group_size": 2, "fmt": SYM},
        "w4a8_epilogue": {"acc": np.arange(6, dtype=np.int32).reshape(1, 2, 3), "wscale": scale,
                          "xscale": np.array(0.5, F32), "bias": np.array([1.0, -1.0], F32)},
        "w4a8_matmul": {"qx": _q4(1, 5), "xscale": np.array(0.5, F32), "packed": packed, "wscale": scale,
                        "zero": None, "k": 5, "group_size": 2, "fmt": SYM, "bias": np.array([1.0, -1.0], F32)},
        "select_policies": {"v": np.array([1.0, 20.0, 300.0], F32), "v0": 15.0, "v1": 150.0},
    }


#: (op, float argument) pairs: every float input of every operation
FLOAT_ARGS = [(op, arg) for op, case in base_cases().items() for arg, v in case.items()
              if isinstance(v, np.ndarray) and v.dtype == F32]


def test_base_cases_are_valid(backend):
    """The spec and the backend accept every base case (else the rejections below prove nothing)."""
    from .pytest_helpers import check_op
    for op, case in base_cases().items():
        check_op(backend, op, case)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("op,arg", FLOAT_ARGS, ids=[f"{o}-{a}" for o, a in FLOAT_ARGS])
def test_rejects_non_finite(backend, op, arg, bad):
    case = base_cases()[op]
    a = case[arg].copy()
    a.reshape(-1)[-1] = bad
    case[arg] = a
    check_raises(backend, op, case, kinds=(ValueError,))


def _bad_input_cases() -> list[tuple[str, str, dict]]:
    b = base_cases()
    asym_w = b["weight_scales"]["w"]
    asym_scale, asym_zero = spec.weight_scales(asym_w, 2, ASYM)

    def with_(op, **kw):
        return {**b[op], **kw}

    return [
        ("quantize_act_per_tensor", "two scales", with_("quantize_act_per_tensor", scale=np.array([0.5, 1.0], F32))),
        ("quantize_act_per_tensor", "zero scale", with_("quantize_act_per_tensor", scale=np.array(0.0, F32))),
        ("quantize_act_per_token", "1-D x", {"x": np.ones(3, F32)}),
        ("quantize_act_per_token", "3-D x", {"x": np.ones((2, 2, 2), F32)}),
        ("act_scale_from_amax", "negative amax", {"amax": np.array([1.0, -1.0], F32)}),
        ("dequantize_act", "scale length", with_("dequantize_act", scale=np.array([1.0, 2.0, 3.0], F32))),
        ("dequantize_act", "float q", with_("dequantize_act", q=_x())),
        ("lae_scales", "2-D channel_max", {"channel_max": np.ones((2, 2), F32)}),
        ("lae_scales", "negative channel_max", {"channel_max": np.array([1.0, -2.0], F32)}),
        ("lae_apply_activation", "s length", with_("lae_apply_activation", s=np.ones(6, F32))),
        ("lae_apply_activation", "s not positive", with_("lae_apply_activation", s=np.zeros(5, F32))),
        ("lae_apply_weight", "1-D w", with_("lae_apply_weight", w=np.ones(5, F32))),
        ("weight_scales", "1-D w", with_("weight_scales", w=np.ones(5, F32))),
        ("weight_scales", "group_size 0", with_("weight_scales", group_size=0)),
        ("weight_scales", "group_size above MAX_GROUP_SIZE", with_("weight_scales", group_size=MAX_GROUP_SIZE + 1)),
        ("weight_scales", "group_size 2.5", with_("weight_scales", group_size=2.5)),
        ("weight_scales", "unknown format", with_("weight_scales", fmt="int3")),
        ("weight_scales", "asymmetric range overflows", with_("weight_scales", fmt=ASYM,
                                                               w=np.array([[3e38, -3e38]], F32))),
        ("quantize_weight_with_scales", "scale shape", with_("quantize_weight_with_scales",
                                                             scale=np.ones((2, 2), F32))),
        ("quantize_weight_with_scales", "symmetric with a zero point",
         with_("quantize_weight_with_scales", zero=np.zeros((2, 3), np.uint8))),
        ("quantize_weight_with_scales", "asymmetric without a zero point",
         with_("quantize_weight_with_scales", fmt=ASYM, scale=asym_scale, zero=None)),
        ("quantize_weight_with_scales", "zero point 16",
         with_("quantize_weight_with_scales", fmt=ASYM, scale=asym_scale, zero=np.full((2, 3), 16, np.uint8))),
        ("quantize_weight", "group_size 0", with_("quantize_weight", group_size=0)),
        ("dequantize_weight", "scale shape", with_("dequantize_weight", scale=np.ones((2, 2), F32))),
        ("pack_int4", "1-D q", {"q": np.zeros(4, np.int8), "signed": True}),
        ("pack_int4", "int32 q", {"q": _q4().astype(np.int32), "signed": True}),
        ("pack_int4", "8 is not signed INT4", {"q": np.array([[8, 0]], np.int8), "signed": True}),
        ("pack_int4", "-1 is not unsigned INT4", {"q": np.array([[-1, 0]], np.int8), "signed": False}),
        ("unpack_int4", "width for K", with_("unpack_int4", k=7)),
        ("unpack_int4", "int8 bytes", with_("unpack_int4", packed=b["unpack_int4"]["packed"].view(np.int8))),
        ("w4a8_group_sums", "qx K", with_("w4a8_group_sums", qx=_q4(1, 4))),
        ("w4a8_group_sums", "symmetric with a zero point",
         with_("w4a8_group_sums", zero=np.zeros((2, 3), np.uint8))),
        ("w4a8_group_sums", "zero shape", with_("w4a8_group_sums", fmt=ASYM, zero=np.zeros((2, 2), np.uint8))),
        ("w4a8_epilogue", "wscale shape", with_("w4a8_epilogue", wscale=np.ones((2, 2), F32))),
        ("w4a8_epilogue", "xscale length", with_("w4a8_epilogue", xscale=np.ones(2, F32))),
        ("w4a8_epilogue", "bias length", with_("w4a8_epilogue", bias=np.ones(3, F32))),
        ("w4a8_epilogue", "2-D acc", with_("w4a8_epilogue", acc=np.zeros((2, 3), np.int32))),
        ("w4a8_epilogue", "int64 acc", with_("w4a8_epilogue", acc=np.zeros((1, 2, 3), np.int64))),
        ("w4a8_epilogue", "wscale not positive", with_("w4a8_epilogue", wscale=np.zeros((2, 3), F32))),
        ("w4a8_matmul", "packed width", with_("w4a8_matmul", packed=np.zeros((2, 2), np.uint8))),
        ("w4a8_matmul", "wscale shape", with_("w4a8_matmul", wscale=np.ones((2, 2), F32))),
        ("w4a8_matmul", "bias length", with_("w4a8_matmul", bias=np.ones(3, F32))),
        ("select_policies", "v0 >= v1", with_("select_policies", v0=150.0, v1=15.0)),
        ("select_policies", "negative v", with_("select_policies", v=np.array([-1.0], F32))),
    ]


BAD = _bad_input_cases()


@pytest.mark.parametrize("op,what,case", BAD, ids=[f"{o}-{w.replace(' ', '_')}" for o, w, _ in BAD])
def test_rejects_bad_input(backend, op, what, case):
    check_raises(backend, op, case)
