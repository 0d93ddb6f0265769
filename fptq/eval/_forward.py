"""Calling a model for logits: any HF causal LM, or a plain callable.

``model(input_ids)`` may return an object with ``.logits`` (transformers
models, including ones whose ``nn.Linear`` modules were replaced by quantized
modules) or a tensor ``[B, T, V]``. Whether a model overflowed inside is
checked by :mod:`fptq.eval.health` (the final norm's output, hooked by
:func:`~fptq.eval.health.overflow_guard` in ``run_eval``). Inputs go to the device of the model's
first parameter (CPU for a parameterless callable); logits come back as
float32.
"""

from __future__ import annotations

__all__ = ["logits_of", "model_device", "model_max_length", "model_bos_token_id", "torch_or_error"]


def torch_or_error():
    try:
        import torch
    except ImportError as e:
        raise ImportError("fptq.eval needs PyTorch (pip install torch)") from e
    return torch


def model_device(model):
    torch = torch_or_error()
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")


def model_max_length(model) -> int | None:
    """``model.config.max_position_embeddings`` if the model has one, else None."""
    n = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 0 else None


def model_bos_token_id(model) -> int | None:
    """``model.config.bos_token_id`` if it is a single int, else None."""
    b = getattr(getattr(model, "config", None), "bos_token_id", None)
    return b if isinstance(b, int) and not isinstance(b, bool) else None


def logits_of(model, input_ids, where: str | None = None):
    """float32 logits ``[B, T, V]`` of ``model`` for int64 ``input_ids`` ``[B, T]`` (no grad); with ``where``
    (what to name in the error) also checked (:func:`fptq.eval.health.check_logits`: finite, not equal
    across the vocabulary)."""
    torch = torch_or_error()
    from ..runtime.attach import runtime_logits

    out = runtime_logits(model, input_ids)  # fptq's compiled runtime where one is attached, else the model
    if out is None:
        out = model(input_ids.to(model_device(model)))
    logits = getattr(out, "logits", out)
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"model returned {type(out).__name__}; expected a tensor or an object with .logits")
    if logits.ndim != 3 or tuple(logits.shape[:2]) != tuple(input_ids.shape):
        raise ValueError(f"model returned logits of shape {tuple(logits.shape)} for input_ids "
                         f"{tuple(input_ids.shape)}; expected [B, T, vocab]")
    if where is not None:
        from .health import check_logits

        check_logits(logits, where)
    return logits.float()
