"""Model resolution: local files only, clear errors."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from fptq.models.loading import ModelLoadError, cache_dir, load_float_model, resolve_model_dir  # noqa: E402
from fptq.testing import tiny_model, tiny_tokenizer  # noqa: E402


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="not found.*never downloads"):
        resolve_model_dir(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match="not found"):
        resolve_model_dir("HuggingFaceTB/SmolLM2-135M")  # a hub id is not a local path
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_model_dir(tmp_path / "empty")


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FPTQ_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("FPTQ_CACHE")
    assert cache_dir().name == "fptq"


def test_local_directory_loads_in_float32(tmp_path):
    d = tmp_path / "m"
    ref = tiny_model("gemma")
    ref.save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    model, tok, src = load_float_model(d, progress=False)
    assert src == d and not model.training and tok is not None
    assert all(p.dtype == torch.float32 for p in model.parameters())
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)

# The GGUF conversion of the embedded model is tested in tests/test_real_model_smoke.py.
