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

__all__ = ["HEADS", "attach_runtime", "check_head", "head_kind_of", "load_checkpoint", "resolve_head", "runtime_of",
           "runtime_logits", "runtime_generate_text"]

ATTRIBUTE = "fptq_runtime"

#: ``--head`` / ``head=`` -> what the runtime computes the lm_head with (``Runtime.from_model``'s
#: ``int8_head``; "auto" is resolved per checkpoint by :func:`resolve_head`)
HEADS = {
    "auto": "int8w for a float lm_head, the checkpoint's own INT8 rows (integer kernels) where it stores them",
    "checkpoint": "the lm_head as stored: bfloat16 computed in float32 (lossless), or the stored INT8 rows",
    "int8w": "INT8 rows per output (made at load from a float head), the activation kept float32",
    "int8": "INT8 rows per output and the activation quantized per token: integer kernels",
}
_INT8_HEAD = {"checkpoint": None, "int8w": "weights", "int8": True}


def check_head(head) -> str:
    """``head`` if it names one of :data:`HEADS`, else a ValueError naming the choices (written once: the
    CLI's ``--head``, ``fptq.load(head=)`` and :func:`load_checkpoint` check here)."""
    if head not in HEADS:
        raise ValueError(f"head: expected one of {', '.join(HEADS)}, got {head!r}")
    return head


def resolve_head(model, head: str = "auto"):
    """``Runtime.from_model``'s ``int8_head`` for the choice ``head`` on ``model``. "auto" (the default of
    ``fptq generate``, ``fptq eval`` and ``fptq.load``): a float lm_head is served as INT8 rows with a float32
    activation (one byte per weight read per token instead of two; measured 16 x 512 PTB / Wiki against the
    bfloat16 head: SmolLM2 -0.17% / +0.23%, Gemma-3-270M +0.56% / +0.22%, Qwen2.5-Coder-1.5B -0.005% /
    -0.03%, docs/benchmarks.md),
    a checkpoint that stores INT8 rows (``--int8-embeddings``) runs them as stored."""
    from ..models.int8rows import Int8LMHead

    check_head(head)
    if head == "auto":
        return None if isinstance(model.get_output_embeddings(), Int8LMHead) else "weights"
    return _INT8_HEAD[head]


def attach_runtime(model, backend: str, mode: str = "integer", hand_over: bool = False,
                   head: str = "auto") -> str | None:
    """Attach a :class:`fptq.runtime.engine.Runtime` to ``model``; returns None, or why the model keeps
    the transformers path. ``hand_over``: the model's tensors the runtime re-lays out are released as taken
    (only after every check passed) and the model's forward then raises (the runtime runs it). ``head``:
    one of :data:`HEADS`."""
    if mode != "integer" or backend != "numba":
        return f"the runtime runs integer mode on the numba backend (asked: {mode}, {backend})"
    from .engine import Runtime
    from .weights import RuntimeUnsupported

    try:
        rt = Runtime.from_model(model, hand_over=hand_over, int8_head=resolve_head(model, head))
    except RuntimeUnsupported as e:
        return str(e)
    model.__dict__[ATTRIBUTE] = rt        # not a submodule: the model's modules and state dict stay as loaded
    if hand_over:
        model.register_forward_pre_hook(_handed_over)
    return None


def _handed_over(module, args):
    raise RuntimeError("this model's W4A8 linears were handed over to fptq's runtime (model.fptq_runtime runs "
                       "it); load with fptq.load(...) for a model whose transformers forward runs")


def load_checkpoint(path, backend: str, mode: str, runtime: bool = True, hand_over: bool = False,
                    head: str = "auto"):
    """``(model, tokenizer_or_None, metadata, why_not)`` of a W4A8 checkpoint (:func:`fptq.models.checkpoint.
    load_quantized`) with the runtime attached where ``runtime`` asks and it can run it (``why_not`` None),
    else why not. ``hand_over`` (``fptq generate`` / ``fptq eval``, which run the runtime only): the model
    keeps its bfloat16 embedding and lm_head as stored and gives the runtime its linears (module docstring);
    where the runtime cannot run it, it is widened to the model ``load_quantized`` returns. ``head``: one
    of :data:`HEADS` (checked before anything is read)."""
    from ..models.checkpoint import load_quantized, widen_bf16

    check_head(head)
    keep = runtime and hand_over and mode == "integer" and backend == "numba"
    model, tok, meta = load_quantized(path, backend=backend, mode=mode, keep_bf16=keep)
    why = (attach_runtime(model, backend, mode, hand_over=keep, head=head) if runtime
           else "the transformers path was asked")
    if why is not None and keep:
        widen_bf16(model)
    return model, tok, meta, why


def head_kind_of(model) -> str | None:
    """What the attached runtime computes the lm_head with: "bfloat16", "float32" (as stored), "int8w" (INT8
    rows, float32 activation) or "int8" (integer kernels); None without a runtime (eval's ``model_kind``)."""
    from .head import HEAD_KIND_NAMES

    rt = runtime_of(model)
    return None if rt is None else HEAD_KIND_NAMES[int(rt.w.head[0])]


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
