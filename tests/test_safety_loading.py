"""Float models from local directories (issue 13): config.json checked before anything is built,
missing or mismatched tensors are errors (not random weights), NaN/Inf anywhere refused."""

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from fptq.models.loading import ModelLoadError, check_config_dict, load_float_model  # noqa: E402
from fptq.testing import save_tiny_model  # noqa: E402


@pytest.fixture
def model_dir(tmp_path):
    return save_tiny_model(tmp_path / "tiny", "llama")


def test_a_tensor_missing_from_the_files_is_an_error(model_dir):
    from safetensors.torch import load_file, save_file

    p = model_dir / "model.safetensors"
    sd = load_file(p)
    sd.pop("model.norm.weight")
    save_file(sd, p, metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"missing or mismatched: \['model\.norm\.weight'\]"):
        load_float_model(model_dir, progress=False)


@pytest.mark.parametrize("key,value,match", [
    ("vocab_size", 0, "'vocab_size' must be an integer >= 1"),
    ("num_hidden_layers", 2.5, "'num_hidden_layers' must be an integer >= 1"),
    ("rope_theta", -1, "'rope_theta' must be a finite number > 0"),
    ("model_type", None, "'model_type' is None"),
])
def test_bad_config_values_name_the_key_and_the_file(model_dir, key, value, match):
    p = model_dir / "config.json"
    cfg = json.loads(p.read_text())
    cfg[key] = value
    p.write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match=rf"{p}: key {match}"):
        load_float_model(model_dir, progress=False)


def test_config_must_be_an_object(tmp_path):
    with pytest.raises(ModelLoadError, match="cfg.json: not a JSON object"):
        check_config_dict([1, 2], tmp_path / "cfg.json")
