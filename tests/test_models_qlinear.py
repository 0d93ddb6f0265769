"""W4A8Linear on the Backend protocol's prepared-linear path: every backend alike, weights checked once.

* the integer forward is bit-identical on numpy, numba, torch and a third-party backend that only
  subclasses ``BackendBase`` (so it gets ``prepare_linear``/``linear_forward`` for free), and
  equal to fptq.reference's QuantizedLinear on the same weights;
* a model's forward does not re-check the weights: the spec's matmul check runs once, in
  ``prepare_linear``, however many forwards follow (numba, torch);
* bad weights are refused by ``prepare_linear`` naming the argument.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fptq import reference as ref  # noqa: E402
from fptq import spec  # noqa: E402
from fptq.backends import BackendBase, get_backend  # noqa: E402
from fptq.backends.base import PreparedLinear  # noqa: E402
from fptq.models.qlinear import W4A8Linear  # noqa: E402
from fptq.spec import ActPolicy  # noqa: E402


class ThirdParty(BackendBase):
    """A minimal third-party backend: NumPy arrays, every op from the spec, nothing model-specific."""

    name = "third-party"
    calls = 0

    def from_numpy(self, a):
        return np.array(a)

    def to_numpy(self, t):
        return np.asarray(t)

    def _w4a8_matmul_unchecked(self, *args, **kwargs):
        type(self).calls += 1
        return super()._w4a8_matmul_unchecked(*args, **kwargs)


def _layer(policy, fmt="int4_sym", bias=True, seed=0, n=24, k=70, g=32):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n, k)) / 8).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32) if bias else None
    x = (rng.standard_normal((5, k)) * rng.choice([1, 30], k)).astype(np.float32)
    plan = ref.with_policy("l", np.abs(x).max(axis=0), policy)
    ql = ref.quantize_linear(w, b, plan, g, fmt)
    qw = spec.quantize_weight(w, g, fmt)
    mod = W4A8Linear.from_quantized(qw, None if b is None else torch.from_numpy(b), policy,
                                    None if plan.act_scale is None else float(plan.act_scale))
    return mod, ql, x


BACKENDS = ["numpy", "numba", "torch", f"{__name__}:ThirdParty"]


@pytest.mark.parametrize("policy", [ActPolicy.DYNAMIC, ActPolicy.STATIC])
@pytest.mark.parametrize("fmt", ["int4_sym", "uint4_asym"])
def test_every_backend_gives_the_reference_bits(policy, fmt):
    mod, ql, x = _layer(policy, fmt, bias=fmt == "int4_sym")
    want = ql.forward(x)
    for name in BACKENDS:
        try:
            get_backend(name)
        except ImportError as e:  # BackendUnavailable
            pytest.skip(str(e))
        mod.set_mode("integer", name)
        with torch.no_grad():
            got = mod(torch.from_numpy(x)).numpy()
            got3 = mod(torch.from_numpy(x).reshape(1, *x.shape)).numpy()
        assert got.tobytes() == want.tobytes(), f"backend {name}"
        assert got3.shape == (1, *want.shape) and got3.tobytes() == want.tobytes(), f"backend {name}, 3-D x"


def test_a_third_party_backend_gets_the_prepared_path_for_free():
    mod, ql, x = _layer(ActPolicy.STATIC)
    mod.set_mode("integer", f"{__name__}:ThirdParty")
    ThirdParty.calls = 0
    with torch.no_grad():
        for _ in range(3):
            mod(torch.from_numpy(x))
    # no matmul in prepare_linear, then the matmul's hook once per forward (the default path)
    assert ThirdParty.calls == 3
    assert isinstance(mod._on_backend.prepared, PreparedLinear)


@pytest.mark.parametrize("name", ["numba", "torch"])
def test_fast_backends_check_the_weights_once(name, monkeypatch):
    try:
        get_backend(name)
    except ImportError as e:
        pytest.skip(str(e))
    from fptq.spec import validate

    calls = []
    for check in ("w4a8_matmul", "packed_weight", "weight_scale_side", "bias_side"):
        def counting(*args, _real=getattr(validate, check), _name=check, **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)
        monkeypatch.setattr(validate, check, counting)
    mod, ql, x = _layer(ActPolicy.DYNAMIC)
    mod.set_mode("integer", name)
    with torch.no_grad():
        for _ in range(4):
            y = mod(torch.from_numpy(x))
    assert sorted(calls) == ["bias_side", "packed_weight", "weight_scale_side"], \
        f"{name}: the weight checks ran {calls} for 4 forwards"
    assert y.numpy().tobytes() == ql.forward(x).tobytes()


@pytest.mark.parametrize("name", ["numpy", "numba", "torch"])
def test_prepare_linear_refuses_bad_weights_naming_the_argument(name):
    try:
        be = get_backend(name)
    except ImportError as e:
        pytest.skip(str(e))
    qw = spec.quantize_weight(np.ones((4, 8), np.float32), 8)
    packed = spec.pack_int4(qw.q)
    bad = qw.scale.copy()
    bad[1, 0] = 0.0
    with pytest.raises(ValueError, match="wscale"):
        be.prepare_linear(be.from_numpy(packed), be.from_numpy(bad), None, None, None, 8, 8)
    with pytest.raises(ValueError, match="act_scale"):
        be.prepare_linear(be.from_numpy(packed), be.from_numpy(qw.scale), None, None, None, 8, 8,
                          policy=ActPolicy.STATIC)
    prep = be.prepare_linear(be.from_numpy(packed), be.from_numpy(qw.scale), None, None, None, 8, 8)
    with pytest.raises(ValueError, match=r"x"):
        be.linear_forward(be.from_numpy(np.ones((2, 6), np.float32)), prep)


@pytest.mark.parametrize("name", ["numpy", "numba", "torch"])
def test_a_loaded_layer_names_itself_for_bad_input_and_overflowing_output(name):
    """With ``origin`` set (as load_quantized does), a NaN in x and an output that overflows float32 are
    errors naming the layer, on every backend: numba reports its output's finiteness from the kernel
    (``linear_forward_finite``), the others are checked by W4A8Linear."""
    try:
        get_backend(name)
    except ImportError as e:
        pytest.skip(str(e))
    mod, _, x = _layer(ActPolicy.DYNAMIC)
    mod.set_mode("integer", name)
    mod.origin = "layer l of ckpt"
    bad = x.copy()
    bad[1, 3] = np.nan
    with torch.no_grad():
        assert torch.isfinite(mod(torch.from_numpy(x))).all()
        with pytest.raises(ValueError, match=r"^layer l of ckpt: x"):
            mod(torch.from_numpy(bad))
        mod.wscale.fill_(3e38)
        mod.release_cache()
        with pytest.raises(ArithmeticError, match="layer l of ckpt: the output holds NaN/Inf"), \
                np.errstate(all="ignore"):
            mod(torch.from_numpy(x * 1000))
