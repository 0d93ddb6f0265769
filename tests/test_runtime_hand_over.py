"""``fptq generate`` / ``fptq eval`` hold a checkpoint's tensors once (issue 24): the model loaded with
``hand_over`` (:func:`fptq.runtime.attach.load_checkpoint`) keeps its embedding and lm_head as the stored
bfloat16, which the runtime reads in place, and gives the runtime its W4A8 linears (released as re-laid
out); the runtime's logits are the same bits as the runtime of the full model ``load_quantized`` returns.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("numba")

from checkpoint_helpers import rewrite  # noqa: E402

from fptq.models.checkpoint import load_quantized  # noqa: E402
from fptq.models.qlinear import W4A8Linear, quantized_linears  # noqa: E402
from fptq.models.rotate import INPUT_ROTATION, input_rotation_of  # noqa: E402
from fptq.runtime.attach import load_checkpoint, runtime_of  # noqa: E402
from fptq.runtime.engine import Runtime  # noqa: E402
from fptq.runtime.sampling import generate_ids  # noqa: E402

from test_runtime import IDS, _quantize  # noqa: E402  (test_runtime's tiny checkpoints, made the same way)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


def _run(rt) -> tuple:
    rt.reset()
    logits = rt.forward(IDS, all_logits=True)
    rt.reset()
    return logits, generate_ids(rt, IDS[:5], 8)


def _memory(t) -> tuple:
    """(start, end) of a tensor's or an array's bytes."""
    if isinstance(t, np.ndarray):
        start = t.__array_interface__["data"][0]
        return start, start + t.nbytes
    return t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()


def _overlaps(a, b) -> bool:
    (a0, a1), (b0, b1) = _memory(a), _memory(b)
    return a0 < b1 and b0 < a1


@pytest.mark.parametrize("family,extra", [("llama", ()), ("qwen3", ()), ("gemma3", ()),
                                          ("llama", ("--int8-embeddings",)), ("qwen2", ("--rotate", "none"))])
def test_hand_over_gives_the_same_bits_and_holds_each_tensor_once(tmp_path_factory, family, extra):
    ckpt = _quantize(tmp_path_factory, family, *extra)
    full, _, _ = load_quantized(ckpt, backend="numba")
    want_logits, want_tokens = _run(Runtime.from_model(full, threads=2))
    model, _, _, why = load_checkpoint(ckpt, "numba", "integer", hand_over=True, head="checkpoint")
    assert why is None
    rt = runtime_of(model)
    got_logits, got_tokens = _run(rt)
    assert np.array_equal(_bits(got_logits), _bits(want_logits)) and got_tokens == want_tokens
    # the linears: the model keeps none of their bytes (the runtime's blocked copy is the only one)
    lins = quantized_linears(model)
    assert lins and all(isinstance(m, W4A8Linear) for m in lins.values())
    for name, m in lins.items():
        for t in (m.qweight, m.wscale, m.wzero, m.bias):
            assert t is None or t.is_meta, f"{name} still holds its tensors beside the runtime's copy"
        q = input_rotation_of(m)
        assert q is None or q.is_meta or rt.w.rotk[0, 4] == 2, f"{name}: {INPUT_ROTATION} kept beside its factors"
    # the embedding and lm_head: the stored bfloat16, read by the runtime in place
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if "--int8-embeddings" not in extra:
        assert emb.weight.dtype == torch.bfloat16 and head.weight.dtype == torch.bfloat16
        assert int(rt.w.emb[0]) == 2 and _overlaps(rt.w.emb[4], emb.weight)
        assert _overlaps(rt.w.head[2], head.weight)
        assert not any(_overlaps(a, head.weight) for a in (rt.w.head[1], rt.w.head[3]))
    with pytest.raises(RuntimeError, match="handed over"):
        model(torch.from_numpy(IDS)[None])


@pytest.mark.parametrize("tied", [True, False])
def test_default_head_is_int8_rows_and_an_untied_float_head_is_released(tmp_path_factory, tmp_path, tied):
    """``head="auto"`` (the default of ``fptq generate`` / ``fptq eval`` / ``fptq.load``): a float lm_head runs
    as INT8 rows with a float32 activation, the same bits as ``Runtime.from_model(int8_head="weights")`` on
    the full model; with ``hand_over`` an untied head's bfloat16 is released (put on ``meta``), a head tied
    to the embedding stays (the embedding reads it)."""
    from fptq.cli import main
    from fptq.runtime.head import HEAD_INT8_FLOAT
    from fptq.testing import save_tiny_bf16_shards

    from test_runtime import QUICK

    if tied:
        ckpt = _quantize(tmp_path_factory, "llama")
    else:
        ckpt = tmp_path / "w4a8"
        assert main(["quantize", str(save_tiny_bf16_shards(tmp_path / "float")), "--out", str(ckpt), *QUICK]) == 0
    full, _, _ = load_quantized(ckpt, backend="numba")
    want_logits, want_tokens = _run(Runtime.from_model(full, threads=2, int8_head="weights"))
    model, _, _, why = load_checkpoint(ckpt, "numba", "integer", hand_over=True)
    assert why is None
    rt = runtime_of(model)
    assert int(rt.w.head[0]) == HEAD_INT8_FLOAT
    got_logits, got_tokens = _run(rt)
    assert np.array_equal(_bits(got_logits), _bits(want_logits)) and got_tokens == want_tokens
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    assert head.weight.is_meta is not tied
    assert not emb.weight.is_meta and emb.weight.dtype == torch.bfloat16


def test_full_load_keeps_a_runnable_float32_model(tmp_path_factory):
    """``fptq.load`` / ``load_quantized`` by default: float32 embedding and lm_head, linears kept (the model
    runs transformers beside the attached runtime)."""
    import fptq

    ckpt = _quantize(tmp_path_factory, "llama")
    model, _ = fptq.load(str(ckpt), backend="numba")
    assert runtime_of(model) is not None
    assert model.get_input_embeddings().weight.dtype == torch.float32
    assert not any(m.qweight.is_meta for m in quantized_linears(model).values())
    with torch.inference_mode():
        model(torch.from_numpy(IDS)[None])


def test_no_runtime_widens_back_to_the_default_model(tmp_path_factory):
    """Where the runtime cannot run the checkpoint (a family outside its table, another backend), the model
    ``hand_over`` loaded is the model ``load_quantized`` returns, tensor for tensor."""
    ckpt = _quantize(tmp_path_factory, "opt")
    want = load_quantized(ckpt, backend="numba")[0].state_dict()
    for backend, mode in (("numba", "integer"), ("numba", "fake_quant")):
        model, _, _, why = load_checkpoint(ckpt, backend, mode, hand_over=True)
        assert why is not None and runtime_of(model) is None
        got = model.state_dict()
        assert sorted(got) == sorted(want)
        for k, t in got.items():
            assert t.dtype == want[k].dtype and torch.equal(t, want[k]), k


def test_kept_bf16_values_are_checked_as_the_widened_ones(tmp_path_factory, tmp_path):
    """``keep_bf16``: a NaN/Inf in a stored bfloat16 matrix is refused as it is when widened."""
    from fptq.models.checkpoint import CheckpointError

    ckpt = _quantize(tmp_path_factory, "llama")

    def nan(t):
        t["model.embed_tokens.weight"] = t["model.embed_tokens.weight"].clone()
        t["model.embed_tokens.weight"][3, 7] = float("nan")

    bad = rewrite(ckpt, tmp_path / "bad", edit_tensors=nan)
    for keep in (False, True):
        with pytest.raises(CheckpointError, match=r"tensor model\.embed_tokens\.weight holds NaN/Inf"):
            load_quantized(bad, backend="numba", keep_bf16=keep)
