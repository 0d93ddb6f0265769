"""Greedy decoding and sampling on top of :class:`fptq.runtime.engine.Runtime`.

The sampling options are transformers' (``temperature``, then ``top_k``, then ``top_p``, applied to
the last token's logits in that order, as its logits processors do); the random draws come from a
NumPy generator seeded with ``seed``, so a seeded run repeats itself but does not draw the tokens
torch's sampler would. Greedy decoding takes the first maximum (``argmax``), as transformers does.
"""

from __future__ import annotations

import numpy as np

__all__ = ["pick_token", "generate_ids"]


def _filter(logits: np.ndarray, temperature: float, top_k: int | None, top_p: float | None) -> np.ndarray:
    """float64 logits after temperature, top-k and top-p (removed entries set to -inf)."""
    z = logits.astype(np.float64) / max(float(temperature or 1.0), 1e-6)
    if top_k and 0 < top_k < z.size:
        kth = np.partition(z, -top_k)[-top_k]
        z = np.where(z < kth, -np.inf, z)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-z, kind="stable")
        p = np.exp(z[order] - z[order[0]])
        p /= p.sum()
        cum = np.cumsum(p)
        drop = cum - p > top_p          # keep the smallest prefix whose mass reaches top_p (at least one)
        z[order[drop]] = -np.inf
    return z


def pick_token(logits: np.ndarray, do_sample: bool, rng: np.random.Generator | None = None,
               temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> int:
    """The next token from one row of logits: ``argmax`` (greedy), or a draw from the filtered softmax."""
    if not do_sample:
        return int(np.argmax(logits))
    z = _filter(np.asarray(logits), temperature, top_k, top_p)
    p = np.exp(z - z.max())
    p /= p.sum()
    return int((rng or np.random.default_rng()).choice(p.size, p=p))


def generate_ids(runtime, prompt_ids, max_new_tokens: int, *, do_sample: bool = False, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int = 0, eos_ids=(),
                 on_token=None) -> list[int]:
    """Generate up to ``max_new_tokens`` after ``prompt_ids`` (a new sequence: the runtime is reset);
    stops after a token of ``eos_ids``. ``on_token(id)`` is called for each new token. Returns the new ids."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: expected >= 1, got {max_new_tokens}")
    rng = np.random.default_rng(seed)
    eos = {int(e) for e in eos_ids if e is not None}
    runtime.reset()
    logits = runtime.forward(np.asarray(prompt_ids, np.int64).reshape(-1))[-1]
    out = []
    for i in range(max_new_tokens):
        tok = pick_token(logits, do_sample, rng, temperature, top_k, top_p)
        out.append(tok)
        if on_token is not None:
            on_token(tok)
        if tok in eos or i == max_new_tokens - 1:
            break
        logits = runtime.forward(np.array([tok], np.int64))[-1]
    return out
