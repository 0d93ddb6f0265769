"""``fptq generate`` and ``fptq.load`` on a tiny model and its W4A8 checkpoint."""

from __future__ import annotations

import io

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import fptq  # noqa: E402
from fptq.cli import main  # noqa: E402
from fptq.generate import generate_text  # noqa: E402
from fptq.testing import save_tiny_model  # noqa: E402

CPU_BACKENDS = ["numpy", "numba", "torch"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", "llama")


@pytest.fixture(scope="module")
def ckpt(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "w4a8"
    assert main(["quantize", str(model_dir), "--out", str(out), "--calib", "random", "--samples", "4",
                 "--seq-len", "32", "--group-size", "32", "--quiet"]) == 0
    return out


def _cli(capsys, *args) -> str:
    assert main(["generate", *args, "--quiet"]) == 0
    return capsys.readouterr().out


def test_greedy_is_deterministic_and_identical_across_cpu_backends(ckpt, capsys):
    outs = {b: _cli(capsys, str(ckpt), "hello world", "--max-new-tokens", "12", "--backend", b)
            for b in CPU_BACKENDS}
    again = _cli(capsys, str(ckpt), "hello world", "--max-new-tokens", "12", "--backend", "torch")
    assert outs["torch"] == again
    assert outs["numpy"] == outs["numba"] == outs["torch"]
    assert len(outs["torch"].strip()) > 0


def test_load_returns_a_model_generate_works_with(ckpt, model_dir):
    model, tok = fptq.load(str(ckpt), backend="numpy")
    ids = tok("abc", return_tensors="pt").input_ids
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                         pad_token_id=tok.pad_token_id)
    assert out.shape == (1, ids.shape[1] + 5)
    fmodel, ftok = fptq.load(str(model_dir))
    assert type(fmodel).__name__ == type(model).__name__
    text = generate_text(fmodel, ftok, "abc", max_new_tokens=5)
    assert isinstance(text, str)


def test_streaming_writes_what_is_returned(ckpt):
    model, tok = fptq.load(str(ckpt), backend="torch")
    buf = io.StringIO()
    text = generate_text(model, tok, "hello", max_new_tokens=8, stream=buf)
    assert buf.getvalue().rstrip("\n") == text


def test_sampling_is_seeded(ckpt):
    """Sampling happens (other seeds give other texts, none of them the greedy one) and is seeded (one
    seed, one text): with sampling ignored every text would be the greedy one."""
    model, tok = fptq.load(str(ckpt), backend="torch")

    def sample(seed):
        return generate_text(model, tok, "hello", max_new_tokens=10, do_sample=True, temperature=1.5, seed=seed)

    greedy = generate_text(model, tok, "hello", max_new_tokens=10)
    texts = {seed: sample(seed) for seed in (3, 4, 5)}
    assert sample(3) == texts[3]
    assert len(set(texts.values())) == 3, texts
    assert greedy not in texts.values(), (greedy, texts)


def test_errors_are_clear(ckpt, capsys):
    assert main(["generate", str(ckpt), "hi", "--backend", "nosuch"]) == 2
    assert "nosuch" in capsys.readouterr().err
    assert main(["generate", str(ckpt), "hi", "--chat", "--backend", "numpy"]) == 2
    assert "chat template" in capsys.readouterr().err
    assert main(["generate", str(ckpt), "   ", "--backend", "numpy"]) == 2
    assert "empty prompt" in capsys.readouterr().err
    model, tok = fptq.load(str(ckpt), backend="numpy")
    with pytest.raises(TypeError, match="unknown generation option"):
        generate_text(model, tok, "x", beams=2)
