"""Cheap checks that a forward pass computed something: a model that overflows inside must be an
error, never a plausible number.

Two symptoms, checked on every forward that produces a result (perplexity, tasks, ``generate``,
the float model before ``quantize`` calibrates it):

* the **final norm's output** (the hidden states the lm_head reads) holds NaN/Inf, or a token's row
  is all zeros: an RMSNorm whose sum of squares overflowed multiplies by ``1/sqrt(inf) = 0``, so every
  hidden state becomes 0 and the logits become equal: perplexity = vocabulary size, exit 0;
* the **logits** hold NaN/Inf, or a token's logits are all equal (the same overflow seen from the
  outside, for models whose final norm is not found).

Both cost one reduction over a tensor the forward already made.
"""

from __future__ import annotations

import contextlib

__all__ = ["ActivationOverflow", "check_logits", "check_hidden", "final_norm_of", "overflow_guard",
           "check_forward"]


class ActivationOverflow(ArithmeticError):
    """A forward pass overflowed (NaN/Inf, or hidden states collapsed to zero): its result is unusable."""


def check_logits(logits, where: str = "the model") -> None:
    """Refuse logits ``[..., V]`` that hold NaN/Inf or that are equal across the vocabulary for a token."""
    import torch

    x = logits.detach()
    if not bool(torch.isfinite(x).all()):
        raise ActivationOverflow(f"{where}: the logits hold NaN/Inf (the model overflowed); no result is reported")
    if x.shape[-1] > 1 and x.numel():
        flat = x.reshape(-1, x.shape[-1])
        same = flat.amax(dim=-1) == flat.amin(dim=-1)
        if bool(same.any()):
            tok = int(same.nonzero()[0, 0])
            raise ActivationOverflow(f"{where}: the logits of token {tok} are all equal ({float(flat[tok, 0]):.4g}): "
                                     "the activations overflowed to zero or infinity inside the model")


def check_hidden(h, where: str = "the model") -> None:
    """Refuse a final norm's output ``[..., H]`` that holds NaN/Inf or a token row of zeros."""
    import torch

    x = h.detach()
    if not bool(torch.isfinite(x).all()):
        raise ActivationOverflow(f"{where}: the final norm's output holds NaN/Inf (an activation overflowed "
                                 "inside the model)")
    if x.numel() and x.shape[-1]:
        zero = (x.reshape(-1, x.shape[-1]) == 0).all(dim=-1)
        if bool(zero.any()):
            raise ActivationOverflow(f"{where}: the final norm's output is all zeros for token "
                                     f"{int(zero.nonzero()[0, 0])}: an activation overflowed inside the model "
                                     "(e.g. a norm's sum of squares reached infinity)")


def final_norm_of(model):
    """The module that normalizes the last hidden states (``norm`` / ``final_layer_norm`` of the
    decoder), or None."""
    import torch

    get = getattr(model, "get_decoder", None)
    try:
        dec = get() if callable(get) else None
    except Exception:  # a model that cannot say
        dec = None
    for owner in (dec, getattr(model, "model", None)):
        for attr in ("norm", "final_layer_norm"):
            m = getattr(owner, attr, None)
            if isinstance(m, torch.nn.Module):
                return m
    return None


@contextlib.contextmanager
def overflow_guard(model, where: str = "the model"):
    """Inside the block every forward of ``model`` checks its final norm's output (:func:`check_hidden`);
    the error is raised out of the forward. Nothing is hooked when the model has no recognisable final norm."""
    norm = final_norm_of(model)
    handle = None
    if norm is not None:
        handle = norm.register_forward_hook(lambda mod, args, out: check_hidden(
            out[0] if isinstance(out, tuple) else out, where))
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


def check_forward(model, input_ids, where: str = "the model") -> None:
    """One guarded forward of ``input_ids`` (e.g. the first calibration sample): the final norm's output
    and the logits checked. Raises ActivationOverflow."""
    import torch

    from ._forward import logits_of

    with torch.inference_mode(), overflow_guard(model, where):
        logits_of(model, input_ids, where=where)
