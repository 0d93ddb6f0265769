"""Tokenizer access shared by the data loaders and the evaluators.

fptq accepts any tokenizer that behaves like a Hugging Face tokenizer:
``tokenizer(text, add_special_tokens=False)["input_ids"]`` gives a list of
ints and ``tokenizer.bos_token_id`` is an int or None. Special tokens are
never added implicitly: where a BOS is wanted, the caller puts it there
explicitly (see :func:`bos_token_id`).
"""

from __future__ import annotations

import warnings

__all__ = ["encode", "bos_token_id", "resolve_add_bos"]


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens (no BOS/EOS), as a list of ints.

    Long texts are tokenized in one call (Rust fast tokenizers take a few
    seconds for 5 MB); the "sequence longer than the model maximum" warning
    is silenced because the ids are cut into windows afterwards.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = tokenizer(text, add_special_tokens=False, verbose=False)
        except TypeError:  # a tokenizer-like callable without the ``verbose`` keyword
            out = tokenizer(text, add_special_tokens=False)
    ids = out["input_ids"] if not isinstance(out, list) else out
    if ids and isinstance(ids[0], list):
        raise ValueError("tokenizer returned a batch for a single text")
    return list(ids)


def bos_token_id(tokenizer) -> int | None:
    """The tokenizer's BOS id, or None if it has none."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return None if bos is None else int(bos)


def resolve_add_bos(tokenizer, add_bos: bool | None) -> tuple[bool, int | None]:
    """``(add_bos, bos id)``: ``add_bos=None`` means "if the tokenizer has a BOS".

    Raises ValueError for ``add_bos=True`` with a tokenizer that has no BOS."""
    bos = bos_token_id(tokenizer)
    if add_bos is None:
        add_bos = bos is not None
    if add_bos and bos is None:
        raise ValueError("add_bos=True but the tokenizer has no bos_token_id")
    return bool(add_bos), bos
