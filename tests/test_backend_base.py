"""fptq.backends.base: one base class, each operation checked once, the operation list from the spec.

* OPERATIONS is derived from fptq.spec (its public functions with a check in fptq.spec.validate) and
  every public operation of BackendBase has the spec function's signature;
* every operation runs exactly one check (``_check``) and then its hook, with the checked arguments;
  a backend that overrides only hooks rejects exactly what the spec rejects;
* the Protocol lists the model-facing methods, and MEMBERS is read off it;
* the one act-scale rule, and the one range-overflow error, on every CPU backend.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from fptq import spec
from fptq.backends import MEMBERS, OPERATIONS, BackendBase, get_backend
from fptq.backends import base as B
from fptq.spec import ActPolicy, WeightFormat


def test_operations_are_the_specs_checked_public_functions():
    from fptq.spec import validate

    want = {n for n in spec.__all__ if inspect.isfunction(getattr(spec, n)) and hasattr(validate, n)}
    assert set(OPERATIONS) == want and len(OPERATIONS) == 17
    assert set(B.HOOKS) == set(OPERATIONS)


@pytest.mark.parametrize("op", OPERATIONS)
def test_each_operation_has_the_spec_signature(op):
    """In the base class and in the Protocol: the spec function's parameters, names and defaults."""
    want = [(p.name, p.default) for p in inspect.signature(getattr(spec, op)).parameters.values()]
    for cls in (BackendBase, B.Backend):
        got = inspect.signature(getattr(cls, op))
        assert [(p.name, p.default) for p in list(got.parameters.values())[1:]] == want, (cls.__name__, op)


def test_members_come_from_the_protocol():
    assert set(OPERATIONS) <= set(MEMBERS)
    for m in ("name", "device", "array_type", "from_numpy", "to_numpy", "describe",
              "prepare_linear", "linear_forward", "linear_forward_finite"):
        assert m in MEMBERS
    assert not B.missing_members(BackendBase())


class Counting(BackendBase):
    """Counts checks and hook calls; the hooks are the spec defaults."""

    name = "counting"

    def __init__(self):
        self.checks, self.hooks = [], []

    def _check(self, op, *args):
        self.checks.append(op)
        return super()._check(op, *args)

    def __getattribute__(self, attr):
        if attr.endswith("_unchecked") and attr.startswith("_"):
            object.__getattribute__(self, "hooks").append(attr)
        return object.__getattribute__(self, attr)


def _calls():
    """One valid call of every operation (arguments as the spec takes them)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    qw = spec.quantize_weight(x, 4, WeightFormat.ASYMMETRIC)
    packed = spec.pack_int4(qw.q, signed=False)
    qx, xs = spec.quantize_act_per_token(x)
    acc = spec.w4a8_group_sums(qx, packed, qw.zero, 8, 4, WeightFormat.ASYMMETRIC)
    s = spec.lae_scales(np.abs(x).max(axis=0))
    return {
        "act_scale_from_amax": (np.float32(3),), "quantize_act_per_tensor": (x, np.float32(0.1)),
        "quantize_act_per_token": (x,), "dequantize_act": (qx, xs), "lae_scales": (np.abs(x).max(axis=0),),
        "lae_apply_activation": (x, s), "lae_apply_weight": (x, s), "weight_scales": (x, 4, "uint4_asym"),
        "quantize_weight_with_scales": (x, qw.scale, qw.zero, 4, "uint4_asym"),
        "quantize_weight": (x, 4, "uint4_asym"), "dequantize_weight": (qw.q, qw.scale, qw.zero, 4, "uint4_asym"),
        "pack_int4": (qw.q, False), "unpack_int4": (packed, 8, False),
        "w4a8_group_sums": (qx, packed, qw.zero, 8, 4, "uint4_asym"), "w4a8_epilogue": (acc, qw.scale, xs),
        "w4a8_matmul": (qx, xs, packed, qw.scale, qw.zero, 8, 4, "uint4_asym"),
        "select_policies": (np.array([1.0, 20.0, 200.0], np.float32),),
    }


@pytest.mark.parametrize("op", OPERATIONS)
def test_each_operation_is_checked_once_then_runs_its_hook(op):
    b = Counting()
    args = _calls()[op]
    got = getattr(b, op)(*args)
    assert b.checks == [op], b.checks
    assert f"_{op}_unchecked" in b.hooks
    want = getattr(spec, op)(*args)
    for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        if isinstance(w, np.ndarray):
            assert g.dtype == w.dtype and g.shape == w.shape and g.tobytes() == w.tobytes(), op
        else:
            assert g == w, op


@pytest.mark.parametrize("name", ["numpy", "numba", "torch"])
def test_range_overflow_and_act_scale_rules_are_the_same_everywhere(name):
    try:
        be = get_backend(name)
    except ImportError as e:
        pytest.skip(str(e))
    w = be.from_numpy(np.array([[3e38, -3e38]], np.float32))
    for call in (lambda: be.weight_scales(w, 2, "uint4_asym"), lambda: be.quantize_weight(w, 2, "uint4_asym")):
        with pytest.raises(ValueError) as e:
            call()
        assert str(e.value) == spec.weights.RANGE_OVERFLOW
    qw = spec.quantize_weight(np.ones((2, 8), np.float32), 8)
    args = (be.from_numpy(spec.pack_int4(qw.q)), be.from_numpy(qw.scale), None, None)
    with pytest.raises(ValueError, match=r"^act_scale: policy static needs a static activation scale"):
        be.prepare_linear(*args, None, 8, 8, policy=ActPolicy.STATIC)
    with pytest.raises(ValueError, match=r"^act_scale: the dynamic policy takes no static scale"):
        be.prepare_linear(*args, be.from_numpy(np.ones(1, np.float32)), 8, 8)
    with pytest.raises(ValueError, match=r"^act_scale must be > 0.*\[prepare_linear, docs/spec.md §9\]"):
        be.prepare_linear(*args, be.from_numpy(np.zeros(1, np.float32)), 8, 8, policy=ActPolicy.STATIC)


def test_linear_forward_finite_is_part_of_the_base():
    b = BackendBase()
    qw = spec.quantize_weight(np.ones((2, 8), np.float32), 8)
    ws = np.full_like(qw.scale, 3e38)
    prep = b.prepare_linear(spec.pack_int4(qw.q), ws, None, None, None, 8, 8)
    with np.errstate(all="ignore"):
        y, finite = b.linear_forward_finite(np.full((1, 8), 100.0, np.float32), prep)
    assert finite is False and not np.isfinite(y).all()
    y, finite = b.linear_forward_finite(np.zeros((1, 8), np.float32), prep)
    assert finite is True and y.tobytes() == b.linear_forward(np.zeros((1, 8), np.float32), prep).tobytes()
