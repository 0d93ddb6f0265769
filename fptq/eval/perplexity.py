"""Perplexity over non-overlapping windows of a token stream.

Windows: the stream ``t[0..T)`` is cut into ``n = T // seq_len`` windows
``w_i = t[i*seq_len : (i+1)*seq_len]`` (the tail is dropped; ``max_windows``
keeps the first ones). Two conventions, chosen by ``bos_token_id``:

* **BOS-prefixed** (``bos_token_id`` an int): the model reads
  ``[BOS] + w_i`` (``seq_len + 1`` tokens) and every one of the ``seq_len``
  text tokens is scored. Real inference sees BOS first, and calibration
  windows start with it (:func:`fptq.data.text.calibration_samples`).
  ``"auto"`` (the default) uses ``model.config.bos_token_id`` when the model
  has one; this is the convention of the design brief's SmolLM2 baseline
  (66.65 on PTB test, 8 x 512).
* **GPTQ** (``bos_token_id=None``, or ``"auto"`` with no config BOS): the
  model reads ``w_i`` and tokens ``1..seq_len-1`` are scored (the first
  token of each window has no context), as in GPTQ / FPTQ's ``eval_ppl``.

``nll = sum over scored tokens of -log softmax(logits)[target] / n_tokens``
(float32 log-softmax per window, accumulated in float64);
``ppl = exp(nll)``.
"""

from __future__ import annotations

import math

from ..defaults import EVAL_SEQ_LEN
from ._forward import logits_of, model_bos_token_id, torch_or_error

__all__ = ["perplexity"]


def _windows(tokens, seq_len: int, max_windows: int | None):
    torch = torch_or_error()
    if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.int64:
        raise TypeError("tokens must be a torch.int64 tensor [1, T]")
    if tokens.ndim != 2 or tokens.shape[0] != 1:
        raise ValueError(f"tokens must have shape [1, T], got {tuple(tokens.shape)}")
    if int(seq_len) != seq_len or seq_len < 2:
        raise ValueError(f"seq_len must be an integer >= 2, got {seq_len!r}")
    n = tokens.shape[1] // seq_len
    if max_windows is not None:
        if int(max_windows) != max_windows or max_windows < 1:
            raise ValueError(f"max_windows must be a positive integer or None, got {max_windows!r}")
        n = min(n, int(max_windows))
    if n == 0:
        raise ValueError(f"{tokens.shape[1]} tokens make no window of seq_len={seq_len}")
    return n


def perplexity(model, tokens, seq_len: int = EVAL_SEQ_LEN, max_windows: int | None = None, progress: bool = True,
               bos_token_id: int | None | str = "auto") -> dict:
    """Perplexity of ``model`` on ``tokens`` (see the module docstring for the windows).

    Args:
        model: a causal LM, ``model(input_ids [1, L]) -> .logits [1, L, V]`` (or the tensor).
        tokens: torch.int64 ``[1, T]``, e.g. from :func:`fptq.data.text.eval_tokens`.
        seq_len: text tokens per window.
        max_windows: evaluate only the first windows.
        progress: show a tqdm bar.
        bos_token_id: int (BOS-prefixed windows), None (GPTQ windows) or ``"auto"``.
    Returns:
        ``dict(ppl, nll, n_tokens, n_windows, seq_len, bos_token_id)``.
    """
    torch = torch_or_error()
    n = _windows(tokens, seq_len, max_windows)
    if bos_token_id == "auto":
        bos_token_id = model_bos_token_id(model)
    elif bos_token_id is not None and (isinstance(bos_token_id, bool) or not isinstance(bos_token_id, int)):
        raise ValueError(f"bos_token_id must be an int, None or 'auto', got {bos_token_id!r}")
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional: no bar
        def tqdm(it, **_):
            return it

    nll_sum, n_tokens = 0.0, 0
    with torch.inference_mode():
        for i in tqdm(range(n), desc=f"ppl {seq_len}", disable=not progress, leave=False):
            w = tokens[:, i * seq_len:(i + 1) * seq_len]
            if bos_token_id is not None:
                w = torch.cat([torch.full((1, 1), bos_token_id, dtype=torch.int64), w], dim=1)
            logits = logits_of(model, w)[0, :-1]
            target = w[0, 1:].to(logits.device)
            nll = torch.nn.functional.cross_entropy(logits, target, reduction="sum")
            nll_sum += float(nll)
            n_tokens += target.numel()
    mean = nll_sum / n_tokens
    return {"ppl": math.exp(mean), "nll": mean, "n_tokens": n_tokens, "n_windows": n, "seq_len": int(seq_len),
            "bos_token_id": bos_token_id}
