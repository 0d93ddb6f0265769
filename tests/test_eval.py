"""fptq.eval: perplexity windows, lm-eval-style multiple-choice scoring, the runner.

Models here are a tiny random LlamaForCausalLM built from a config and stub
callables with rigged logits; no accuracy claim is made on them.
"""

import json
import math
import os

import pytest

torch = pytest.importorskip("torch")

from fptq.data.tasks import MCExample  # noqa: E402
from fptq.eval.perplexity import perplexity  # noqa: E402
from fptq.eval.runner import format_table, result_row, run_eval, write_json  # noqa: E402
from fptq.eval.tasks import encode_pair, evaluate_examples, evaluate_task, score_requests  # noqa: E402

V = 259  # ByteTokenizer vocabulary


class ByteTokenizer:
    """UTF-8 bytes + 3 (0 pad, 1 BOS, 2 EOS)."""

    bos_token_id, eos_token_id = 1, 2

    def __call__(self, text, add_special_tokens=False, verbose=False):
        ids = [b + 3 for b in text.encode("utf-8")]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}


class NoBosTokenizer(ByteTokenizer):
    bos_token_id = None


class Stub:
    """A callable model: ``logits = fn(input_ids)``; counts rows it was called on."""

    def __init__(self, fn, config=None):
        self.fn, self.rows, self.calls = fn, 0, 0
        if config is not None:
            self.config = config

    def __call__(self, input_ids):
        self.rows += input_ids.shape[0]
        self.calls += 1
        return self.fn(input_ids)


def uniform(input_ids):
    return torch.zeros(*input_ids.shape, V)


def favour(token_ids, bonus=10.0):
    """Logits ``bonus`` on the given token ids, 0 elsewhere, at every position."""
    def fn(input_ids):
        out = torch.zeros(*input_ids.shape, V)
        out[..., token_ids] = bonus
        return out
    return fn


def successor(input_ids):
    """Predicts next token = current token + 1 (logit 10), 0 elsewhere."""
    out = torch.zeros(*input_ids.shape, V)
    out.scatter_(2, ((input_ids + 1) % V)[..., None], 10.0)
    return out


@pytest.fixture(scope="module")
def tiny_llama():
    pytest.importorskip("transformers")
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


# ---------------------------------------------------------------- perplexity

def test_uniform_logits_give_perplexity_equal_to_the_vocabulary_size():
    tokens = torch.randint(3, V, (1, 1000))
    r = perplexity(Stub(uniform), tokens, seq_len=64, progress=False, bos_token_id=None)
    assert r["n_windows"] == 1000 // 64 and r["n_tokens"] == (1000 // 64) * 63
    assert math.isclose(r["ppl"], V, rel_tol=1e-5) and math.isclose(r["nll"], math.log(V), rel_tol=1e-6)
    r = perplexity(Stub(uniform), tokens, seq_len=64, max_windows=3, progress=False, bos_token_id=1)
    assert r["n_windows"] == 3 and r["n_tokens"] == 3 * 64 and r["bos_token_id"] == 1


def test_bos_prefixed_windows_score_every_text_token():
    seen = []

    def fn(input_ids):
        seen.append(input_ids.clone())
        return uniform(input_ids)

    tokens = torch.arange(3, 3 + 40).unsqueeze(0)
    perplexity(Stub(fn), tokens, seq_len=16, progress=False, bos_token_id=1)
    assert [s[0].tolist() for s in seen] == [[1] + list(range(3 + 16 * i, 3 + 16 * (i + 1))) for i in range(2)]


def test_perplexity_matches_a_direct_computation_on_a_tiny_llama(tiny_llama):
    tokens = torch.randint(3, V, (1, 300), generator=torch.Generator().manual_seed(1))
    for bos in (None, 1):
        r = perplexity(tiny_llama, tokens, seq_len=100, progress=False, bos_token_id=bos)
        nll, n = 0.0, 0
        with torch.no_grad():
            for i in range(3):
                w = tokens[:, 100 * i:100 * (i + 1)]
                if bos is not None:
                    w = torch.cat([torch.tensor([[bos]]), w], 1)
                logp = torch.log_softmax(tiny_llama(w).logits[0, :-1].double(), -1)
                nll -= logp.gather(1, w[0, 1:, None]).sum().item()
                n += w.shape[1] - 1
        assert r["n_tokens"] == n
        assert math.isclose(r["ppl"], math.exp(nll / n), rel_tol=1e-5)


def test_perplexity_auto_bos_comes_from_the_model_config(tiny_llama):
    tokens = torch.randint(3, V, (1, 64))
    assert perplexity(tiny_llama, tokens, seq_len=32, progress=False)["bos_token_id"] == 1
    assert perplexity(Stub(uniform), tokens, seq_len=32, progress=False)["bos_token_id"] is None


def test_perplexity_errors():
    with pytest.raises(ValueError, match="no window"):
        perplexity(Stub(uniform), torch.ones(1, 10, dtype=torch.int64), seq_len=64, progress=False)
    with pytest.raises(TypeError, match="int64"):
        perplexity(Stub(uniform), torch.ones(1, 100, dtype=torch.int32), seq_len=8, progress=False)
    with pytest.raises(ValueError, match=r"shape \[1, T\]"):
        perplexity(Stub(uniform), torch.ones(2, 100, dtype=torch.int64), seq_len=8, progress=False)
    with pytest.raises(TypeError, match="expected a tensor"):
        perplexity(Stub(lambda x: "nope"), torch.ones(1, 100, dtype=torch.int64), seq_len=8, progress=False)


# ---------------------------------------------------------------- multiple choice

def test_encode_pair_moves_trailing_space_to_the_continuation():
    ctx, cont = encode_pair(ByteTokenizer(), "Answer: ", "yes")
    assert bytes(t - 3 for t in ctx) == b"Answer:" and bytes(t - 3 for t in cont) == b" yes"
    with pytest.raises(ValueError, match="tokenizes to nothing"):
        encode_pair(ByteTokenizer(), "Answer:", "")


def test_rigged_model_picks_the_favoured_answer():
    yes = [ord(c) + 3 for c in "yes"]
    exs = [MCExample("Q: is it?\nA:", [" no", " yes", " nope"], 1),
           MCExample("Q: and now?\nA:", [" yes", " no"], 0),
           MCExample("Q: but?\nA:", [" yes", " no"], 1)]
    r = evaluate_examples(Stub(favour(yes)), ByteTokenizer(), exs, progress=False)
    assert r["n"] == 3 and r["acc"] == 2 / 3 and r["acc_norm"] == 2 / 3
    assert r["correct"] == [True, True, False]  # per example, in the given order
    assert math.isclose(r["acc_stderr"], math.sqrt((2 / 3) * (1 / 3) / 2))


def test_acc_norm_divides_by_characters_without_the_delimiter():
    # uniform logits, one token per byte: ll_i = -(1 + k_i) log V for " " + k_i chars.
    # acc prefers the shortest; acc_norm = -(1 + k)/k log V prefers the longest.
    ex = MCExample("ctx", [" b", " aaaa"], 1)
    r = evaluate_examples(Stub(uniform), ByteTokenizer(), [ex], progress=False)
    assert (r["acc"], r["acc_norm"]) == (0.0, 1.0)


def test_winogrande_style_per_choice_contexts_are_scored():
    ex = MCExample("The cup is ", [" heavy.", " heavy."], 1, contexts=("The cup is a", "The cup is b"))
    b = ord("b") + 3
    # a model that gives a high score to " " only right after "b"
    def fn(input_ids):
        out = torch.zeros(*input_ids.shape, V)
        out[..., ord(" ") + 3] = 10.0 * (input_ids == b).float()
        return out
    assert evaluate_examples(Stub(fn), ByteTokenizer(), [ex], progress=False)["acc"] == 1.0


def test_lambada_accuracy_is_greedy_match_and_ppl_is_per_example():
    exs = [MCExample("abc", ["def"], 0), MCExample("abc", ["dxf"], 0)]
    r = evaluate_examples(Stub(successor), ByteTokenizer(), exs, lambada=True, progress=False)
    assert r["acc"] == 0.5 and r["n"] == 2 and r["correct"] == [True, False]
    hit = 10.0 - math.log(math.exp(10.0) + V - 1)
    miss = -math.log(math.exp(10.0) + V - 1)
    lls = [3 * hit, hit + 2 * miss]  # "dxf": d right; x wrong; f after x is wrong too
    assert math.isclose(r["ppl"], math.exp(-sum(lls) / 2), rel_tol=1e-5)


def test_bos_is_prepended_by_default_and_eos_stands_in_for_an_empty_context():
    seen = []

    def fn(input_ids):
        seen.extend(input_ids.tolist())
        return uniform(input_ids)

    evaluate_examples(Stub(fn), ByteTokenizer(), [MCExample("hi", [" x"], 0)], lambada=True, progress=False)
    assert seen[0][:3] == [1, ord("h") + 3, ord("i") + 3]
    seen.clear()
    evaluate_examples(Stub(fn), NoBosTokenizer(), [MCExample("", ["x"], 0)], lambada=True, progress=False)
    assert seen[0] == [2]


def test_choices_with_one_token_share_a_forward_pass():
    exs = [MCExample(f"question {i}\nAnswer:", [" A", " B", " C", " D"], i % 4) for i in range(5)]
    stub = Stub(uniform)
    r = evaluate_examples(stub, ByteTokenizer(), exs, batch_size=2, progress=False)
    assert stub.rows == 5 and stub.calls == 3 and r["n"] == 5


def test_batches_respect_the_token_budget():
    widths = []

    def fn(input_ids):
        widths.append(tuple(input_ids.shape))
        return uniform(input_ids)

    exs = [MCExample("y" * n, [" z"], 0) for n in (90, 60, 50, 40, 10, 5, 3)]
    evaluate_examples(Stub(fn), ByteTokenizer(), exs, lambada=True, batch_size=4, max_batch_tokens=128,
                      progress=False)
    # inputs are BOS + context + " " (the last token, "z", is only a target): lengths 92, 62, 52, ...
    assert widths == [(1, 92), (2, 62), (3, 42), (1, 5)]


def test_batching_and_padding_do_not_change_scores(tiny_llama):
    rng = torch.Generator().manual_seed(2)
    reqs = [(torch.randint(3, V, (int(n),), generator=rng).tolist(), torch.randint(3, V, (int(c),), generator=rng).tolist())
            for n, c in zip(torch.randint(1, 30, (9,), generator=rng), torch.randint(1, 6, (9,), generator=rng))]
    one = score_requests(tiny_llama, reqs, batch_size=1, progress=False)
    many = score_requests(tiny_llama, reqs, batch_size=4, progress=False)
    for (a, ga), (b, gb) in zip(one, many):
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-5) and ga == gb


def test_inputs_longer_than_the_model_are_left_truncated():
    class Cfg:
        max_position_embeddings = 8

    seen = []

    def fn(input_ids):
        seen.append(input_ids.shape[1])
        return uniform(input_ids)

    r = evaluate_examples(Stub(fn, Cfg()), ByteTokenizer(), [MCExample("x" * 50, [" yz"], 0)], lambada=True,
                          progress=False)
    assert seen == [8] and math.isclose(r["ppl"], V ** 3, rel_tol=1e-4)


def test_evaluate_task_errors():
    with pytest.raises(ValueError, match="known tasks"):
        evaluate_task(Stub(uniform), ByteTokenizer(), "squad")
    with pytest.raises(ValueError, match="no examples"):
        evaluate_examples(Stub(uniform), ByteTokenizer(), [])
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_examples(Stub(uniform), ByteTokenizer(), [MCExample("a", [" b"], 0)], batch_size=0)


# ---------------------------------------------------------------- runner

def test_run_eval_on_a_text_file(tmp_path, tiny_llama):
    f = tmp_path / "eval.txt"
    f.write_text("the quick brown fox jumps over the lazy dog. " * 20, encoding="utf-8")
    res = run_eval(tiny_llama, ByteTokenizer(), ppl=[str(f)], seq_len=64, max_windows=2)
    r = res["perplexity"][str(f)]
    assert r["n_windows"] == 2 and r["n_tokens"] == 128 and r["bos_token_id"] == 1 and r["ppl"] > 1
    assert res["tasks"] == {} and res["settings"]["seq_len"] == 64
    row = result_row(res, method="float")
    assert list(row) == ["method", f"{f}_ppl"] and row[f"{f}_ppl"] == r["ppl"]


def test_run_eval_rejects_unknown_tasks_before_any_work():
    stub = Stub(uniform)
    with pytest.raises(ValueError, match="unknown tasks"):
        run_eval(stub, ByteTokenizer(), ppl=["ptb"], tasks=["piqa", "nope"])
    assert stub.calls == 0


def test_format_table():
    rows = [{"method": "float", "ptb_ppl": 66.6527, "piqa_acc": 0.6312},
            {"method": "w4a8", "ptb_ppl": 70.1, "wiki_ppl": 20.0}]
    assert format_table(rows).splitlines() == [
        "| method | ptb_ppl | piqa_acc | wiki_ppl |",
        "|---|---|---|---|",
        "| float | 66.65 | 63.1 | - |",
        "| w4a8 | 70.10 | - | 20.00 |",
    ]
    res = {"perplexity": {"ptb": {"ppl": 10.0}}, "tasks": {"lambada": {"acc": 0.5, "ppl": 20.0}}}
    assert format_table(res).splitlines()[2] == "| 10.00 | 50.0 | 20.00 |"
    with pytest.raises(ValueError, match="no rows"):
        format_table([])


def test_write_json_is_atomic(tmp_path):
    import numpy as np

    path = tmp_path / "out" / "r.json"
    write_json(path, {"ppl": np.float32(1.5), "n": np.int64(3), "t": torch.tensor([1, 2])})
    assert json.loads(path.read_text()) == {"ppl": 1.5, "n": 3, "t": [1, 2]}
    with pytest.raises(TypeError, match="object"):
        write_json(path, {"bad": object()})
    assert json.loads(path.read_text())["n"] == 3  # the old file survives a failed write
    assert os.listdir(path.parent) == ["r.json"]  # and no temporary file is left behind
