"""Input checks of the public API (``docs/spec.md §9``; :mod:`fptq.spec.validate`).

Every operation rejects NaN/Inf in a float input with ``ValueError``, and a
wrong shape, dtype, range or parameter with ``ValueError``/``TypeError``,
exactly where the spec does: the same exception class, and a message that
names the same argument as the spec's (so that, for an input with several
faults, the backend reports the fault the order of §9.2 puts first). Each case
is first checked to be rejected by the spec itself, so a wrong case is
reported as a suite bug, not a backend bug. Inputs of other real dtypes
(float64, float16, every integer dtype) are accepted and converted to float32
exactly as the spec converts them (§9.1).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fptq import spec
from fptq.spec import MAX_GROUP_SIZE, WeightFormat

from . import hypothesis_helpers as hh
from .pytest_helpers import call_backend, check_op, check_raises, clause, fail_with_reproducer

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


def named_argument(message: str) -> str:
    """The argument a validation message is about: its first word (``"scale: expected ..."`` -> scale)."""
    m = re.match(r"\s*(\w+)", message)
    return m.group(1) if m else ""


def check_rejects(backend, op: str, case: dict):
    """The spec rejects ``case``; the backend must raise the same class, naming the same argument."""
    try:
        getattr(spec, op)(**case)
    except (ValueError, TypeError) as e:
        want, name, said = type(e), named_argument(str(e)), f"{type(e).__name__}: {e}"
    else:
        raise RuntimeError(f"conformance suite bug: spec.{op} accepts a case meant to be rejected")
    kind = ValueError if issubclass(want, ValueError) else TypeError
    try:
        call_backend(backend, op, case)
    except kind as got:
        if not re.search(rf"\b{re.escape(name)}\b", str(got)):
            fail_with_reproducer(f"{op} raised {type(got).__name__}: {got}; the message must name the argument "
                                 f"{name!r}, as the spec's does ({said}) [{clause(op)}, docs/spec.md §9]",
                                 backend, op, case)
        return
    except Exception as got:  # noqa: BLE001
        fail_with_reproducer(f"{op} raised {type(got).__name__}: {got}; expected {kind.__name__} naming {name!r} "
                             f"(the spec: {said}) [{clause(op)}, docs/spec.md §9]", backend, op, case)
    fail_with_reproducer(f"{op} accepted an input the spec rejects with {said} "
                         f"[{clause(op)}, docs/spec.md §9]", backend, op, case)


@pytest.mark.parametrize("op,what,case", BAD, ids=[f"{o}-{w.replace(' ', '_')}" for o, w, _ in BAD])
def test_rejects_bad_input(backend, op, what, case):
    check_rejects(backend, op, case)


# ---------------------------------------------------------------------------
# the gaps closed by docs/spec.md §9 (each case: what a lax backend used to accept)


def _gap_cases() -> list[tuple[str, str, dict]]:
    b = base_cases()
    asym_scale, asym_zero = spec.weight_scales(b["weight_scales"]["w"], 2, WeightFormat.ASYMMETRIC)
    out = []

    def add(op, what, **kw):
        out.append((op, what, {**b[op], **kw}))

    # k (§5, §6): an integer >= 0; a float (even 5.0), a bool, a string is a TypeError
    for bad in (5.7, 5.0, True, np.bool_(True), "5", None):
        for op in ("unpack_int4", "w4a8_group_sums", "w4a8_matmul"):
            add(op, f"k={bad!r}", k=bad)
    for op in ("unpack_int4", "w4a8_group_sums", "w4a8_matmul"):
        add(op, "k=-1", k=-1)
    # group_size (§4.1, §9): an integer or -1/None; 2.0, -1.0, bools are TypeErrors
    for bad in (2.0, -1.0, True, np.bool_(True), "2", np.float32(2)):
        for op in ("weight_scales", "quantize_weight", "quantize_weight_with_scales", "dequantize_weight",
                   "w4a8_group_sums", "w4a8_matmul"):
            add(op, f"group_size={bad!r}", group_size=bad)
    add("weight_scales", "group_size=-2", group_size=-2)
    # "one float32 (0-d or [1])": nothing else is a per-tensor scale (§2.2, §2.4, §6)
    for shp in ((1, 1), (2, 1), (1, 2)):
        add("quantize_act_per_tensor", f"scale shape {shp}", scale=np.full(shp, 0.5, F32))
        add("dequantize_act", f"scale shape {shp}", scale=np.full(shp, 0.5, F32))
    for shp in ((1, 1), (1, 2), (2, 1)):
        add("w4a8_epilogue", f"xscale shape {shp}", acc=np.zeros((2, 2, 3), np.int32), xscale=np.ones(shp, F32))
    add("w4a8_matmul", "xscale shape (1, 1)", xscale=np.ones((1, 1), F32))
    add("dequantize_act", "per-token scale for a 1-D q", q=np.zeros(3, np.int8), scale=np.ones(3, F32))
    # thresholds (§7): real numbers, finite as float32, 0 <= v0 < v1
    for v0, v1 in ((0.0, np.inf), (-np.inf, 1.0), (np.nan, 1.0), (1.0, 1e39), (True, 5.0), (1.0, "5"),
                   (-1.0, 5.0), (5.0, 5.0)):
        add("select_policies", f"v0={v0!r}, v1={v1!r}", v0=v0, v1=v1)
    # complex, bool and object dtypes of a float argument (§9.1)
    for op, arg in FLOAT_ARGS:
        for dt in (np.complex64, np.complex128, np.bool_):
            add(op, f"{dt.__name__} {arg}", **{arg: b[op][arg].astype(dt)})
    add("quantize_act_per_token", "x is None", x=None)
    # dequantize_weight checks the range of q, as pack_int4 does (§4.4)
    for v in (8, -9, -128, 127):
        q = b["dequantize_weight"]["q"].copy()
        q[1, 2] = v
        add("dequantize_weight", f"int4_sym q={v}", q=q)
    for v in (-1, 16, 100):
        q = np.abs(b["dequantize_weight"]["q"]).astype(np.int8)
        q[0, 4] = v
        add("dequantize_weight", f"uint4_asym q={v}", q=q, scale=asym_scale, zero=asym_zero, fmt="uint4_asym")
    return out


GAPS = _gap_cases()


@pytest.mark.parametrize("op,what,case", GAPS, ids=[f"{o}-{w.replace(' ', '_')}" for o, w, _ in GAPS])
def test_rejects_what_the_spec_text_rejects(backend, op, what, case):
    check_rejects(backend, op, case)


# ---------------------------------------------------------------------------
# several faults at once: the first in the order of docs/spec.md §9.2 is the one reported


def _order_cases() -> list[tuple[str, str, dict]]:
    b = base_cases()
    nan_w = b["weight_scales"]["w"].copy()
    nan_w[0, 0] = np.nan

    def with_(op, **kw):
        return {**b[op], **kw}

    return [
        # 1. parameters before arrays
        ("weight_scales", "group_size 2.5 and complex w", with_("weight_scales", group_size=2.5,
                                                                 w=nan_w.astype(np.complex64))),
        ("quantize_weight", "group_size 0 and NaN w", with_("quantize_weight", group_size=0, w=nan_w)),
        ("weight_scales", "unknown fmt and 1-D w", with_("weight_scales", fmt="int3", w=np.ones(4, F32))),
        ("w4a8_matmul", "k 5.5 and int32 qx", with_("w4a8_matmul", k=5.5, qx=np.zeros((1, 5), np.int32))),
        ("select_policies", "v0 > v1 and NaN v", with_("select_policies", v0=2.0, v1=1.0,
                                                       v=np.array([np.nan], F32))),
        # 2. array types before shapes and values
        ("quantize_weight_with_scales", "NaN w and bool scale",
         with_("quantize_weight_with_scales", w=nan_w, scale=b["quantize_weight_with_scales"]["scale"] > 0)),
        ("quantize_weight_with_scales", "1-D w and complex scale",
         with_("quantize_weight_with_scales", w=np.ones(5, F32),
               scale=b["quantize_weight_with_scales"]["scale"].astype(np.complex64))),
        ("w4a8_epilogue", "2-D acc and complex bias",
         with_("w4a8_epilogue", acc=np.zeros((2, 3), np.int32), bias=np.ones(2, np.complex64))),
        ("quantize_weight_with_scales", "zero given for the symmetric format and 1-D w",
         with_("quantize_weight_with_scales", w=np.ones(5, F32), zero=np.zeros((2, 3), np.uint8))),
        # 3. shapes before values
        ("quantize_weight_with_scales", "NaN w and wrong scale shape",
         with_("quantize_weight_with_scales", w=nan_w, scale=np.ones((2, 2), F32))),
        ("w4a8_matmul", "xscale 0 and wrong packed width",
         with_("w4a8_matmul", xscale=np.array(0.0, F32), packed=np.zeros((2, 2), np.uint8))),
        ("dequantize_weight", "q out of range and wrong scale shape",
         with_("dequantize_weight", q=np.full((2, 5), 9, np.int8), scale=np.ones((2, 2), F32))),
        ("w4a8_epilogue", "2-D acc and NaN wscale",
         with_("w4a8_epilogue", acc=np.zeros((2, 3), np.int32), wscale=np.full((2, 3), np.nan, F32))),
        # 4. values in signature order
        ("dequantize_weight", "q out of range and scale negative",
         with_("dequantize_weight", q=np.full((2, 5), 9, np.int8), scale=-b["dequantize_weight"]["scale"])),
        ("w4a8_matmul", "xscale NaN and wscale 0",
         with_("w4a8_matmul", xscale=np.array(np.nan, F32), wscale=np.zeros((2, 3), F32))),
        ("lae_apply_activation", "NaN x and s 0",
         with_("lae_apply_activation", x=np.full((2, 5), np.nan, F32), s=np.zeros(5, F32))),
    ]


ORDER = _order_cases()


@pytest.mark.parametrize("op,what,case", ORDER, ids=[f"{o}-{w.split(' and ')[0].replace(' ', '_')}-{i}"
                                                     for i, (o, w, _) in enumerate(ORDER)])
def test_reports_the_first_fault_in_the_order_of_section_9(backend, op, what, case):
    check_rejects(backend, op, case)


# ---------------------------------------------------------------------------
# other real dtypes are converted to float32, then computed exactly like float32 input (§9.1)

#: every real dtype a float argument may have besides float32
OTHER_REAL = (np.float64, np.float16, np.int8, np.int16, np.int32, np.int64,
              np.uint8, np.uint16, np.uint32, np.uint64)
#: float arguments that must be > 0 (their converted values are made positive)
_POSITIVE = {"scale", "s", "wscale", "xscale", "amax", "channel_max", "v"}


def _as_dtype(arg: str, a: np.ndarray, dt) -> np.ndarray:
    if np.dtype(dt).kind == "f":
        return (a.astype(np.float64) * (1 + 2.0**-30)).astype(dt)  # float64: bits float32 must round away
    v = np.rint(np.abs(a) * 3) + (1 if arg in _POSITIVE else 0)
    if np.dtype(dt).kind == "i" and arg not in _POSITIVE:
        v = v * np.where(np.arange(v.size).reshape(v.shape) % 2 == 0, 1, -1)
    return np.clip(v, 0 if np.dtype(dt).kind == "u" else -100, 100).astype(dt)


@pytest.mark.parametrize("dt", OTHER_REAL, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("op,arg", FLOAT_ARGS, ids=[f"{o}-{a}" for o, a in FLOAT_ARGS])
def test_converts_other_real_dtypes(backend, op, arg, dt):
    case = base_cases()[op]
    case[arg] = _as_dtype(arg, case[arg], dt)
    check_op(backend, op, case, max_ulp=spec.LAE_SCALE_ULP_TOLERANCE if op == "lae_scales" else 0)


@given(case=hh.per_token_cases(), dt=st.sampled_from([np.float64, np.float16, np.int32, np.uint16]))
def test_converts_other_real_dtypes_per_token(backend, case, dt):
    """float64 with bits below float32's ulp (rounded to nearest even by the conversion), float16, integers."""
    x = case["x"].astype(np.float64)
    with np.errstate(all="ignore"):
        if dt is np.float64:
            x = x + x * 2.0**-25 * np.sign(np.sin(np.arange(x.size))).reshape(x.shape)
        else:
            x = np.clip(np.nan_to_num(x), np.finfo(np.float16).min, np.finfo(np.float16).max)
            if np.dtype(dt).kind in "iu":
                x = np.clip(np.rint(x), 0 if np.dtype(dt).kind == "u" else -2**31, 2**15)
        check_op(backend, "quantize_act_per_token", {"x": x.astype(dt)})
