"""The calibration token set of a quantization run: real text, or random tokens for smoke tests.

``source="random"`` draws uniform token ids (a mechanics check for tiny models
and CI only: random tokens say nothing about a trained model's activations);
every other source is passed to :func:`fptq.data.text.calibration_samples`.
"""

from __future__ import annotations

from ..defaults import CALIB_SAMPLES, CALIB_SEQ_LEN, CALIB_SOURCE

__all__ = ["calibration_ids"]


def calibration_ids(tokenizer, source: str = CALIB_SOURCE, n_samples: int = CALIB_SAMPLES, seq_len: int = CALIB_SEQ_LEN,
                    seed: int = 0, vocab_size: int | None = None):
    """LongTensor [n_samples, seq_len] of calibration tokens."""
    import torch

    if n_samples < 1 or seq_len < 2:
        raise ValueError(f"calibration needs n_samples >= 1 and seq_len >= 2, got {n_samples} x {seq_len}")
    if source == "random":
        vocab = int(vocab_size or len(tokenizer))
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, vocab, (n_samples, seq_len), generator=g, dtype=torch.long)
    from .text import calibration_samples

    ids = calibration_samples(tokenizer, source=source, n_samples=n_samples, seq_len=seq_len, seed=seed)
    if tuple(ids.shape) != (n_samples, seq_len):
        raise RuntimeError(f"calibration_samples returned shape {tuple(ids.shape)}, expected {(n_samples, seq_len)}")
    return ids
