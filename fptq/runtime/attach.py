"""How ``fptq generate``, ``fptq eval`` and ``fptq.load`` use the runtime: a :class:`Runtime` attached to
the loaded transformers model (attribute ``fptq_runtime``), used by :func:`fptq.generate.generate_text`
and :func:`fptq.eval._forward.logits_of` when present.

:func:`attach_runtime` attaches one where it can run the checkpoint the way the user asked: integer
mode on the ``numba`` backend (the runtime is that backend's kernels) and a family of
:data:`fptq.runtime.family.FAMILIES` with every decoder linear W4A8; anything else keeps the
transformers path (``--transformers`` forces it). The model itself is unchanged: ``model(...)`` and
``model.generate(...)`` still run transformers.

``fptq generate`` and ``fptq eval`` run the runtime only, so they load with :func:`load_checkpoint`
(``hand_over``): the embedding and lm_head stay bfloat16 as stored (the runtime reads those bytes, no copy)
and each W4A8 linear's tensors are released as the runtime re-lays them out; that model's own forward
raises. Where the runtime cannot run the checkpoint, the model is widened back to what ``load_quantized``
returns (:func:`fptq.models.checkpoint.widen_bf16`) and runs on transformers as before.
"""

from __future__ import annotations

import numpy as np

__all__ = ["attach_runtime", "load_checkpoint", "runtime_of", "runtime_logits", "runtime_generate_text"]

ATTRIBUTE = "fptq_runtime"


def attach_runtime(model, backend: str, mode: str = "integer", hand_over: bool = False) -> str | None:
    """Attach a :class:`fptq.runtime.engine.Runtime` to ``model``; returns None, or why the model keeps
    the transformers path. ``hand_over``: the model's tensors the runtime re-lays out are released as taken
    (only after every check passed) and the model's forward then raises (the runtime runs it)."""
    if mode != "integer" or backend != "numba":
        return f"the runtime runs integer mode on the numba backend (asked: {mode}, {backend})"
    from .engine import Runtime
    from .weights import RuntimeUnsupported

    try:
        rt = Runtime.from_model(model, hand_over=hand_over)
    except RuntimeUnsupported as e:
        return str(e)
    model.__dict__[ATTRIBUTE] = rt        # not a submodule: the model's modules and state dict stay as loaded
    if hand_over:
        model.register_forward_pre_hook(_handed_over)
    return None


def _handed_over(module, args):
    raise RuntimeError("this model's W4A8 linears were handed over to fptq's runtime (model.fptq_runtime runs "
                       "it); load with fptq.load(...) for a model whose transformers forward runs")


def load_checkpoint(path, backend: str, mode: str, runtime: bool = True, hand_over: bool = False):
    """``(model, tokenizer_or_None, metadata, why_not)`` of a W4A8 checkpoint (:func:`fptq.models.checkpoint.
    load_quantized`) with the runtime attached where ``runtime`` asks and it can run it (``why_not`` None),
    else why not. ``hand_over`` (``fptq generate`` / ``fptq eval``, which run the runtime only): the model
    keeps its bfloat16 embedding and lm_head as stored and gives the runtime its linears (module docstring);
    where the runtime cannot run it, it is widened to the model ``load_quantized`` returns."""
    from ..models.checkpoint import load_quantized, widen_bf16

    keep = runtime and hand_over and mode == "integer" and backend == "numba"
    model, tok, meta = load_quantized(path, backend=backend, mode=mode, keep_bf16=keep)
    why = attach_runtime(model, backend, mode, hand_over=keep) if runtime else "the transformers path was asked"
    if why is not None and keep:
        widen_bf16(model)
    return model, tok, meta, why


def runtime_of(model):
    """The runtime attached to ``model``, or None."""
    return getattr(model, "__dict__", {}).get(ATTRIBUTE)


def runtime_logits(model, input_ids):
    """float32 logits ``[B, T, V]`` (a torch tensor) of the attached runtime, each row a new sequence;
    None when ``model`` has no runtime."""
    rt = runtime_of(model)
    if rt is None:
        return None
    import torch

    ids = input_ids.detach().cpu().numpy()
    rows = []
    for row in ids.reshape(-1, ids.shape[-1]):
        rt.reset()
        rows.append(rt.forward(row, all_logits=True))
    return torch.from_numpy(np.stack(rows).reshape(*ids.shape, -1))


def runtime_generate_text(model, tokenizer, ids, opts: dict, stream=None, seed: int = 0) -> str:
    """:func:`fptq.generate.generate_text`'s generation on the attached runtime: ``ids`` the prompt (torch
    ``[1, T]``), ``opts`` the checked options; the tokenizer's EOS stops it; text streamed to ``stream``."""
    from .sampling import generate_ids

    rt = runtime_of(model)
    new: list[int] = []
    shown = [""]

    def on_token(tok: int) -> None:
        new.append(tok)
        if stream is not None:
            text = tokenizer.decode(new, skip_special_tokens=True)
            if len(text) > len(shown[0]) and not text.endswith("\ufffd"):
                stream.write(text[len(shown[0]):])
                stream.flush()
                shown[0] = text

    eos = tokenizer.eos_token_id
    eos_ids = eos if isinstance(eos, (list, tuple)) else [eos]
    generate_ids(rt, ids[0].numpy(), int(opts["max_new_tokens"]), do_sample=bool(opts["do_sample"]),
                 temperature=opts["temperature"] or 1.0, top_k=opts["top_k"], top_p=opts["top_p"], seed=seed,
                 eos_ids=eos_ids, on_token=on_token)
    text = tokenizer.decode(new, skip_special_tokens=True)
    if stream is not None:
        stream.write(text[len(shown[0]):] + "\n")
        stream.flush()
    return text
