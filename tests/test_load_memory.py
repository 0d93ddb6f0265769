"""Loading a checkpoint holds its tensors once (issue 24: ``fptq generate`` on the 1.5B checkpoint peaked at
7.7 GB RSS when the model was built on the CPU in float32 and the file's tensors copied into it).

``load_quantized`` builds the model with everything the file stores on the ``meta`` device and gives it the
tensors read from the file as they are (``load_state_dict(assign=True)``); what the modules compute
themselves (rotary ``inv_freq``, Gemma's ``embed_scale``, the rotations' Hadamard factors) is computed as a
model built on the CPU computes it, bit for bit, and ties are kept."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from checkpoint_helpers import IDS, stored_logits  # noqa: E402

import fptq.models.checkpoint as ckpt  # noqa: E402
from fptq.models.checkpoint import load_quantized, save_quantized  # noqa: E402
from fptq.models.quantize import QuantConfig, quantize_model  # noqa: E402
from fptq.testing import tiny_model, tiny_tokenizer  # noqa: E402

#: rotary or learned positions, biases, Gemma's scaled embedding and (1 + w) norms, two RoPE bases (gemma3)
FAMILIES = ("llama", "qwen2", "qwen3", "gemma2", "gemma3", "opt")


def _saved(tmp_path, family, int8_embeddings=False):
    """A tiny model quantized with the default (online) rotation and saved with float32 float parts, so that
    the loaded model must equal the one in memory exactly; returns (dir, the quantized model)."""
    cfg = QuantConfig(group_size=32)
    res = quantize_model(tiny_model(family), IDS, cfg, backend="numpy", progress=False)
    d = tmp_path / f"{family}-w4a8"
    save_quantized(d, res.model, tiny_tokenizer(), res.plan, cfg, float_dtype="float32",
                   int8_embeddings=int8_embeddings)
    return d, res.model


def _spy(monkeypatch):
    """Record the data pointers of the tensors read from the file and where the model that takes them keeps
    its state-dict tensors when it is built."""
    seen = {"read": {}, "built": []}
    read, build = ckpt.read_tensors, ckpt.build_model

    def read_spy(*args, **kwargs):
        out = read(*args, **kwargs)
        seen["read"] = {k: t.data_ptr() for k, t in out.items()}
        return out

    def build_spy(*args, **kwargs):
        model = build(*args, **kwargs)
        seen["built"].append({k: t.device.type for k, t in model.state_dict().items()})
        return model

    monkeypatch.setattr(ckpt, "read_tensors", read_spy)
    monkeypatch.setattr(ckpt, "build_model", build_spy)
    return seen


@pytest.mark.parametrize("family,int8_embeddings", [("llama", False), ("gemma3", True), ("opt", False)])
def test_load_keeps_the_tensors_read_and_allocates_none_of_the_model(tmp_path, monkeypatch, family, int8_embeddings):
    d, _ = _saved(tmp_path, family, int8_embeddings)
    seen = _spy(monkeypatch)
    model, _, meta = load_quantized(d, backend="numpy")
    built = seen["built"][-1]  # the model the tensors go into (the first build is the shape check)
    on_cpu = sorted(k for k, dev in built.items() if dev != "meta")
    assert not on_cpu, f"the model was built with stored tensors allocated: {on_cpu[:4]}"
    sd = model.state_dict()
    copied = sorted(k for k, ptr in seen["read"].items() if k in sd and sd[k].data_ptr() != ptr)
    assert not copied, f"tensors copied into the model instead of taken as read: {copied[:4]}"
    for dup, kept in meta["tied"].items():  # ties made again after the tensors were put in
        assert sd[dup].data_ptr() == sd[kept].data_ptr() != 0, (dup, kept)
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])


@pytest.mark.parametrize("family", FAMILIES)
def test_loaded_model_equals_the_model_saved_bit_for_bit(tmp_path, family):
    d, saved = _saved(tmp_path, family)
    model, _, _ = load_quantized(d, backend="numpy")
    want = dict(saved.named_buffers(remove_duplicate=False))
    got = dict(model.named_buffers(remove_duplicate=False))
    assert got.keys() == want.keys()
    bad = [k for k in want if got[k].dtype != want[k].dtype or not torch.equal(got[k], want[k])]
    assert not bad, f"buffers differ from the model built on the CPU: {bad[:4]}"
    params = dict(saved.named_parameters(remove_duplicate=False))
    loaded = dict(model.named_parameters(remove_duplicate=False))
    assert loaded.keys() == params.keys() and all(torch.equal(loaded[k], params[k]) for k in params)
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, saved(IDS).logits)


@pytest.mark.parametrize("family", ["qwen2", "gemma3"])
def test_int8_rows_load_bit_for_bit(tmp_path, family):
    d, saved = _saved(tmp_path, family, int8_embeddings=True)
    model, _, meta = load_quantized(d, backend="numpy")
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if "lm_head.qweight" in meta["tied"]:
        assert head.qweight is emb.qweight and head.scale is emb.scale
    computed = {k: t for k, t in saved.named_buffers() if k not in saved.state_dict()}  # inv_freq, embed_scale...
    got = dict(model.named_buffers())
    assert computed and all(torch.equal(got[k], t) and got[k].dtype == t.dtype for k, t in computed.items())
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, stored_logits(saved, "float32", int8_embeddings=True))
