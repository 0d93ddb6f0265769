"""Silent-wrong and ugly cases of issue 20 on the input side: float models checked against their
config, the GGUF cache keyed by content and verified, ``default`` / ``''``, ``generate`` as strict as
``eval``, overflow inside the model reported, header fields cross-checked, bounded reads, hostile
sizes refused cheaply, raw messages replaced, status lines on stderr."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from checkpoint_helpers import rewrite  # noqa: E402

import fptq  # noqa: E402
from cli_fixtures import SMALL, ckpt, model_dir, stderr_of as _err  # noqa: E402,F401
from fptq.cli import main  # noqa: E402
from fptq.models import loading  # noqa: E402
from fptq.models.checkpoint import TENSORS_FILE, CheckpointError, load_quantized  # noqa: E402
from fptq.models.loading import ModelLoadError, load_float_model  # noqa: E402
from fptq.testing import tiny_model, tiny_tokenizer  # noqa: E402

EVAL = ["--ppl", "ptb", "--seq-len", "32", "--max-windows", "1", "--quiet"]


@pytest.fixture
def calls(monkeypatch):
    """Record quantize_model calls (and stop there)."""
    import fptq.models.quantize

    seen = []

    def stop(*a, **k):
        seen.append(1)
        raise RuntimeError("reached quantize_model")

    monkeypatch.setattr(fptq.models.quantize, "quantize_model", stop)
    return seen



def _edit_config(d: Path, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


# ---- float models: the config must use every weight ---------------------------------------------------------------
def test_num_hidden_layers_edited_down_is_an_error(model_dir, tmp_path, calls, capsys):
    d = tmp_path / "m"
    shutil.copytree(model_dir, d)
    _edit_config(d, num_hidden_layers=1)
    with pytest.raises(ModelLoadError, match="'num_hidden_layers' is 1 but the safetensors weights hold 2"):
        load_float_model(d, progress=False)
    assert main(["eval", str(d), *EVAL]) == 2
    assert main(["quantize", str(d), "--out", str(tmp_path / "o"), *SMALL]) == 2
    assert "num_hidden_layers" in _err(capsys) and calls == []


def test_a_weight_the_config_does_not_use_is_an_error(model_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    d = tmp_path / "m"
    shutil.copytree(model_dir, d)
    sd = load_file(d / "model.safetensors")
    sd["model.extra.weight"] = torch.zeros(3)
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"weights that config.json does not use: \['model\.extra\.weight'\]"):
        load_float_model(d, progress=False)


def test_a_hostile_layer_count_is_refused_before_building(model_dir, ckpt, tmp_path, monkeypatch):
    import fptq.models.checkpoint as ckpt_mod
    from transformers import AutoModelForCausalLM

    built = []
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: built.append(1))
    monkeypatch.setattr(ckpt_mod, "build_model", lambda *a, **k: built.append(1), raising=False)
    d = tmp_path / "m"
    shutil.copytree(model_dir, d)
    _edit_config(d, num_hidden_layers=20000)
    t0 = time.time()
    with pytest.raises(ModelLoadError, match="'num_hidden_layers' is 20000 but the safetensors weights hold 2"):
        load_float_model(d, progress=False)
    bad = rewrite(ckpt, tmp_path / "ck", edit_files=lambda x: _edit_config(x, num_hidden_layers=20000))
    with pytest.raises(CheckpointError, match="'num_hidden_layers' is 20000 but the checkpoint's tensors hold 2"):
        load_quantized(bad, backend="numpy")
    assert built == [] and time.time() - t0 < 30  # (seconds before the fix; milliseconds now)


def _empty_tensors_file(d: Path, n: int) -> Path:
    entries = ",".join(f'"t{i}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}' for i in range(n))
    head = ("{" + entries + "}").encode()
    head += b" " * (-len(head) % 8)
    d.mkdir()
    (d / TENSORS_FILE).write_bytes(len(head).to_bytes(8, "little") + head)
    return d


@pytest.mark.parametrize("n,match", [(1_000_000, "a header of 58888896 bytes, more than the 16777216"),
                                     (200_000, "lists 200000 tensors, more than the 65536")])
def test_a_header_with_huge_tensor_counts_is_refused_before_parsing(tmp_path, monkeypatch, n, match):
    import json as json_mod

    from fptq.io.tensorfile import TensorFile, TensorFileError

    d = _empty_tensors_file(tmp_path / "ck", n)
    monkeypatch.setattr(json_mod, "loads", lambda *a, **k: pytest.fail("the header was parsed"))
    with pytest.raises(TensorFileError, match=match):
        TensorFile(d / TENSORS_FILE)
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match=match):
        load_quantized(d, backend="numpy")


# ---- the GGUF cache ---------------------------------------------------------------------------------------------------
def test_gguf_cache_is_keyed_by_content(tmp_path):
    g = tmp_path / "m.gguf"
    g.write_bytes(b"GGUF" + bytes(1000))
    st = g.stat()
    first = loading._gguf_cache_name(g)
    g.write_bytes(b"GGUF" + bytes(999) + b"\x01")  # same size
    os.utime(g, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime
    assert loading._gguf_cache_name(g) != first


def test_cached_conversion_is_verified_on_use(model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FPTQ_CACHE", str(tmp_path / "cache"))
    g = tmp_path / "m.gguf"
    g.write_bytes(b"GGUF" + bytes(100))

    def convert(gguf, dest):  # a stand-in conversion: the tiny model, with the manifest a real one writes
        shutil.copytree(model_dir, dest)
        loading._write_manifest(Path(dest), loading.file_sha256(gguf))
        return Path(dest)

    monkeypatch.setattr(loading, "gguf_to_directory", convert)
    d = loading._cached_gguf_dir(g, progress=True)
    out = capsys.readouterr()
    assert "converting m.gguf" in out.err and out.out == ""  # status on stderr, never stdout
    assert loading._cached_gguf_dir(g, progress=True) == d and capsys.readouterr().err == ""  # once
    p = d / "model.safetensors"
    data = bytearray(p.read_bytes())
    data[-3] ^= 0x40  # an exponent bit of a weight
    p.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="model.safetensors: the cached conversion changed after it was written"):
        loading._cached_gguf_dir(g, progress=False)


# ---- 'default' and '' ---------------------------------------------------------------------------------------------------
def test_the_empty_string_names_no_model(ckpt, monkeypatch, capsys):
    import fptq.models.loading as ml

    monkeypatch.setattr(ml, "default_model_dir", lambda *a, **k: pytest.fail("reached the embedded model"))
    with pytest.raises(ValueError, match="the empty string names no model"):
        fptq.load("")
    for args in (["eval", "", "--quiet"], ["generate", "", "hi", "--quiet"],
                 ["quantize", "", "--out", "x", *SMALL]):
        assert main(args) == 2, args
        assert "the empty string names no model" in _err(capsys), args


def test_an_existing_default_path_wins_over_the_name(ckpt, tmp_path, monkeypatch, capsys):
    import fptq.models.loading as ml

    monkeypatch.setattr(ml, "default_model_dir", lambda *a, **k: pytest.fail("reached the embedded model"))
    shutil.copytree(ckpt, tmp_path / "default")
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "default", "hi", "--max-new-tokens", "3", "--backend", "numpy", "--quiet"]) == 0
    assert "'default' is the existing path ./default" in _err(capsys)
    m, _ = fptq.load("default", backend="numpy")
    assert any(type(x).__name__ == "W4A8Linear" for x in m.modules())


# ---- generate as strict as eval ----------------------------------------------------------------------------------------
def test_generate_refuses_overflowing_logits(ckpt, tmp_path, capsys):
    def huge(t):
        t["model.norm.weight"] = torch.full_like(t["model.norm.weight"], 3e38)

    bad = rewrite(ckpt, tmp_path / "huge", edit_tensors=huge)
    assert main(["eval", str(bad), *EVAL, "--backend", "numpy"]) == 2
    assert main(["generate", str(bad), "hello", "--max-new-tokens", "4", "--backend", "numpy", "--quiet"]) == 2
    captured = capsys.readouterr()
    assert "fptq generate: error: generate: the final norm's output holds NaN/Inf" in captured.err
    assert captured.out.strip() == ""  # no stream of newlines


def test_generate_enforces_the_context_length(ckpt, capsys):
    opts = ["--backend", "numpy", "--quiet"]
    assert main(["generate", str(ckpt), "hello", "--max-new-tokens", "1000", *opts]) == 2
    assert "exceed the model's context of 256 (max_position_embeddings)" in _err(capsys)
    assert main(["generate", str(ckpt), "x" * 300, "--max-new-tokens", "1", *opts]) == 2
    assert "the prompt (300 tokens) + max_new_tokens (1)" in _err(capsys)


@pytest.fixture(scope="module")
def overflow_dir(tmp_path_factory):
    """A finite model whose embeddings overflow every RMSNorm: all hidden states become 0."""
    d = tmp_path_factory.mktemp("ovf") / "tiny"
    m = tiny_model("llama")
    with torch.no_grad():
        m.model.embed_tokens.weight.mul_(1e37)
    m.save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return d


def test_an_overflow_inside_the_model_is_reported_not_a_perplexity(overflow_dir, calls, capsys):
    assert main(["eval", str(overflow_dir), *EVAL]) == 2
    assert "overflowed" in _err(capsys)


def test_an_overflow_inside_the_model_is_not_a_checkpoint(overflow_dir, tmp_path, capsys):
    # the streamed run finds it at the final norm of the last layer's outputs: refused before anything is written
    assert main(["quantize", str(overflow_dir), "--out", str(tmp_path / "o"), *SMALL]) == 2
    assert "overflowed" in _err(capsys) and not (tmp_path / "o").exists()


# ---- header fields that shape the math -----------------------------------------------------------------------------------
@pytest.mark.parametrize("key,value", [("group_size", 33), ("weight_format", "int4_sym")])
def test_quant_config_is_cross_checked_against_every_layer(ckpt, tmp_path, key, value):
    def edit(m):
        qc = json.loads(m["quant_config"])
        assert qc[key] != value
        qc[key] = value
        m["quant_config"] = json.dumps(qc, sort_keys=True)

    bad = rewrite(ckpt, tmp_path / "bad", edit_meta=edit)  # digests recomputed: a careful forger
    with pytest.raises(CheckpointError, match=f"{key} .* does not match metadata key 'quant_config'"):
        load_quantized(bad, backend="numpy")


def test_attention_bias_message_names_the_bias(ckpt, tmp_path):
    bad = rewrite(ckpt, tmp_path / "bias", edit_files=lambda d: _edit_config(d, attention_bias=True))
    with pytest.raises(CheckpointError, match=r"\(bias false\) does not match the config's 32x64 \(bias true, "
                                              r"see attention_bias"):
        load_quantized(bad, backend="numpy")


# ---- bounded reads ----------------------------------------------------------------------------------------------------------
def test_ppl_directory_with_a_link_to_dev_zero_is_refused(model_dir, tmp_path, capsys):
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("words " * 200)
    (texts / "zero.txt").symlink_to("/dev/zero")
    assert main(["eval", str(model_dir), "--ppl", str(texts), "--seq-len", "32", "--max-windows", "1",
                 "--quiet"]) == 2
    assert "zero.txt is a device; fptq reads regular files only" in _err(capsys)


def test_config_json_linked_to_dev_zero_is_refused(model_dir, ckpt, tmp_path, capsys):
    d = tmp_path / "m"
    shutil.copytree(model_dir, d)
    (d / "config.json").unlink()
    (d / "config.json").symlink_to("/dev/zero")
    assert main(["eval", str(d), *EVAL]) == 2
    assert "config.json is a device" in _err(capsys)
    c = tmp_path / "ck"
    shutil.copytree(ckpt, c)
    (c / "config.json").unlink()
    (c / "config.json").symlink_to("/dev/zero")
    assert main(["report", str(c)]) == 2
    assert "config.json is a device" in _err(capsys)


def test_a_fifo_as_config_json_does_not_hang_report(ckpt, tmp_path):
    c = tmp_path / "ck"
    shutil.copytree(ckpt, c)
    (c / "config.json").unlink()
    os.mkfifo(c / "config.json")
    p = subprocess.run([sys.executable, "-m", "fptq.cli", "report", str(c)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and "config.json is a FIFO" in p.stderr


def test_a_text_larger_than_the_limit_is_refused_before_reading(tmp_path, monkeypatch):
    from fptq.data import text
    from fptq.io import reading

    big = tmp_path / "big.txt"
    big.write_text("x" * 5000)
    monkeypatch.setattr(reading, "TEXT_LIMIT", 4096)
    with pytest.raises(ValueError, match="has 5000 bytes, more than the 4096"):
        text.load_text(str(big), "eval")


# ---- raw messages ---------------------------------------------------------------------------------------------------------
def test_backend_that_is_not_a_name_is_named(ckpt):
    """``backend=None`` is the default backend (fptq.defaults); anything else that is not a name is a clear
    ValueError, never "argument of type 'NoneType' is not iterable"."""
    fptq.load(str(ckpt), backend=None)
    for bad in (3, ""):
        for f in (lambda: fptq.load(str(ckpt), backend=bad), lambda: load_quantized(ckpt, backend=bad)):
            with pytest.raises(ValueError, match=f"backend must be a backend name .* got {bad!r}"):
                f()


@pytest.mark.parametrize("backend", ["numpy", "numba", "torch"])
def test_np_matrix_is_refused_alike_on_every_backend(backend):
    import numpy as np

    from fptq.backends import BackendUnavailable, get_backend

    try:
        be = get_backend(backend)
    except BackendUnavailable as e:
        pytest.skip(str(e))
    x = np.matrix(np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32))
    with pytest.raises(TypeError, match=r"x: an np.matrix is not accepted .* pass np.asarray\(x\)"):
        be.quantize_act_per_token(x)
    with pytest.raises(TypeError, match=r"w: an np.matrix is not accepted"):
        be.quantize_weight(x, 4, "int4_sym")
