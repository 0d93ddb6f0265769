"""Zero-shot task accuracy by log-likelihood, the lm-evaluation-harness way.

For each choice ``(context, continuation)`` (:meth:`MCExample.pairs`):

1. Trailing whitespace of the context moves to the front of the
   continuation; ``ctx = enc(context)``, ``whole = enc(context + continuation)``,
   ``cont = whole[len(ctx):]`` (so a token merging across the boundary goes
   to the continuation), ``enc`` without special tokens.
2. The prefix is ``[BOS] + ctx`` when ``add_bos`` (default: the tokenizer has
   a BOS; the same convention as calibration and perplexity), else ``ctx``
   (an empty ``ctx`` then becomes ``[EOS]``, as lm-eval does).
3. ``full = prefix + cont``, left-truncated to ``max_length + 1`` tokens;
   the model reads ``full[:-1]``; ``ll = sum_j log softmax(logits)[cont_j]``
   over the continuation's positions (float32); ``greedy`` = every
   continuation token is the argmax.

Metrics (lm-eval's): ``acc`` = mean of ``[argmax_i ll_i == label]``;
``acc_norm`` = the same with ``ll_i / len(choice_i)``, the length in
characters of the continuation without its leading ``" "`` delimiter;
``acc_stderr = sqrt(acc (1 - acc) / (n - 1))``. LAMBADA: ``acc`` = mean of
``greedy`` on the target, ``ppl = exp(-mean_i ll_i)`` (per example, not per
token, as lm-eval's ``lambada_openai``). Every result also holds ``correct``:
one bool per example, in the task's order (what ``acc`` averages), for paired
tests between two models (:mod:`fptq.eval.paired`).

Speed: requests with the same model input (e.g. MMLU's four one-token
answers) share one forward pass; inputs are sorted by length and run in
right-padded batches of ``batch_size`` (right padding needs no attention
mask in a causal LM: real tokens never attend to later positions), at most
``max_batch_tokens`` padded tokens per batch (bounds the logits' memory:
4096 tokens x 49152 vocab x 4 bytes = 0.8 GB).
"""

from __future__ import annotations

import math
import time

from ..data.tasks import MCExample, load_task
from ..data.tokenize import bos_token_id, encode
from ._forward import logits_of, model_max_length, torch_or_error

__all__ = ["evaluate_task", "evaluate_examples", "encode_pair", "score_requests"]


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """``(ctx, cont)`` token ids of a choice (step 1 of the module docstring)."""
    n = len(context) - len(context.rstrip())
    if n:
        continuation = context[-n:] + continuation
        context = context[:-n]
    ctx = encode(tokenizer, context) if context else []
    whole = encode(tokenizer, context + continuation)
    cont = whole[len(ctx):]
    if not cont:
        raise ValueError(f"continuation {continuation!r} tokenizes to nothing after context {context[-40:]!r}")
    return ctx, cont


def _batches(inputs: list[tuple], batch_size: int, max_batch_tokens: int) -> list[list[tuple]]:
    """Consecutive groups of the length-sorted ``inputs``: at most ``batch_size`` rows and
    ``rows * longest <= max_batch_tokens`` (always at least one row), which bounds the
    float32 logits of a batch to ``max_batch_tokens * vocab * 4`` bytes."""
    out, i = [], 0
    while i < len(inputs):
        rows = max(1, min(batch_size, max_batch_tokens // len(inputs[i])))
        out.append(inputs[i:i + rows])
        i += rows
    return out


def score_requests(model, requests, batch_size: int = 16, max_length: int | None = None,
                   progress: bool = True, max_batch_tokens: int = 4096) -> list[tuple[float, bool]]:
    """``(ll, greedy)`` of each ``(prefix ids, continuation ids)`` request (step 3)."""
    torch = torch_or_error()
    for name, v in (("batch_size", batch_size), ("max_batch_tokens", max_batch_tokens)):
        if int(v) != v or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    fulls, inputs = [], {}
    for prefix, cont in requests:
        if not prefix or not cont:
            raise ValueError("every request needs a non-empty prefix and continuation")
        full = list(prefix) + list(cont)
        if max_length is not None:
            if len(cont) > max_length:
                raise ValueError(f"continuation of {len(cont)} tokens exceeds max_length={max_length}")
            full = full[-(max_length + 1):]
        fulls.append((full, len(cont)))
        inputs.setdefault(tuple(full[:-1]), None)
    inputs = sorted(inputs, key=len, reverse=True)  # longest first: memory peaks at once
    try:
        from tqdm.auto import tqdm
    except ImportError:
        def tqdm(it, **_):
            return it
    logprobs = {}  # model input -> log-softmax of its last rows, as many as its longest continuation
    needed = {}
    for full, c in fulls:
        needed.setdefault(tuple(full[:-1]), set()).add(c)
    with torch.inference_mode():
        for batch in tqdm(_batches(inputs, batch_size, max_batch_tokens), desc="tasks", disable=not progress,
                          leave=False):
            width = len(batch[0])
            ids = torch.zeros((len(batch), width), dtype=torch.int64)
            for r, inp in enumerate(batch):
                ids[r, :len(inp)] = torch.tensor(inp, dtype=torch.int64)
            logits = logits_of(model, ids)
            for r, inp in enumerate(batch):
                L, c = len(inp), max(needed[inp])
                logprobs[inp] = torch.log_softmax(logits[r, L - c:L], dim=-1).cpu()
    out = []
    for full, c in fulls:
        lp = logprobs[tuple(full[:-1])]
        lp = lp[lp.shape[0] - c:]
        target = torch.tensor(full[-c:], dtype=torch.int64)
        ll = float(lp.gather(1, target[:, None]).sum(dtype=torch.float64))
        greedy = bool((lp.argmax(dim=-1) == target).all())
        out.append((ll, greedy))
    return out


def _prefix(tokenizer, ctx: list[int], add_bos: bool) -> list[int]:
    if add_bos:
        return [bos_token_id(tokenizer)] + ctx
    if ctx:
        return ctx
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError("empty context and the tokenizer has neither BOS nor EOS to stand in for it")
    return [int(eos)]


def _stderr(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else float("nan")


def evaluate_examples(model, tokenizer, examples: list[MCExample], lambada: bool = False, batch_size: int = 16,
                      add_bos: bool | None = None, progress: bool = True, max_batch_tokens: int = 4096) -> dict:
    """Score ``examples`` (see the module docstring); ``lambada`` selects the LAMBADA metrics."""
    if not examples:
        raise ValueError("no examples to evaluate")
    if add_bos is None:
        add_bos = bos_token_id(tokenizer) is not None
    elif add_bos and bos_token_id(tokenizer) is None:
        raise ValueError("add_bos=True but the tokenizer has no bos_token_id")
    t0 = time.time()
    requests, spans = [], []
    for ex in examples:
        start = len(requests)
        for context, continuation in ex.pairs():
            ctx, cont = encode_pair(tokenizer, context, continuation)
            requests.append((_prefix(tokenizer, ctx, add_bos), cont))
        spans.append((start, len(requests)))
    scores = score_requests(model, requests, batch_size=batch_size, max_length=model_max_length(model),
                            progress=progress, max_batch_tokens=max_batch_tokens)
    n = len(examples)
    if lambada:
        lls = [scores[s][0] for s, _ in spans]
        correct = [bool(scores[s][1]) for s, _ in spans]
        acc = sum(correct) / n
        return {"acc": acc, "acc_stderr": _stderr(acc, n), "ppl": math.exp(-sum(lls) / n), "n": n,
                "correct": correct, "seconds": time.time() - t0}
    correct, hits_norm = [], 0
    for ex, (s, e) in zip(examples, spans):
        lls = [scores[i][0] for i in range(s, e)]
        lens = [max(len(c[1:] if c.startswith(" ") else c), 1) for c in ex.continuations]
        correct.append(_argmax(lls) == ex.label)
        hits_norm += _argmax([ll / k for ll, k in zip(lls, lens)]) == ex.label
    acc, acc_norm = sum(correct) / n, hits_norm / n
    return {"acc": acc, "acc_norm": acc_norm, "acc_stderr": _stderr(acc, n), "n": n, "correct": correct,
            "seconds": time.time() - t0}


def _argmax(xs: list[float]) -> int:
    """Index of the first maximum (numpy's tie rule, as lm-eval)."""
    return max(range(len(xs)), key=lambda i: (xs[i], -i))


def evaluate_task(model, tokenizer, name: str, limit: int | None = None, batch_size: int = 16,
                  add_bos: bool | None = None, progress: bool = True, max_batch_tokens: int = 4096) -> dict:
    """Zero-shot accuracy of ``model`` on task ``name`` (:data:`fptq.data.tasks.TASKS`).

    Returns:
        multiple choice: ``dict(acc, acc_norm, acc_stderr, n, correct, seconds)``;
        ``"lambada"``: ``dict(acc, acc_stderr, ppl, n, correct, seconds)``; ``correct`` is
        the per-example outcome (a list of ``n`` bools) that ``acc`` averages.
    """
    examples = load_task(name, limit=limit)
    return evaluate_examples(model, tokenizer, examples, lambada=(name == "lambada"), batch_size=batch_size,
                             add_bos=add_bos, progress=progress, max_batch_tokens=max_batch_tokens)
