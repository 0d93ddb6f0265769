"""How ``fptq generate``, ``fptq eval`` and ``fptq.load`` use the runtime: a :class:`Runtime` attached to
the loaded transformers model (attribute ``fptq_runtime``), used by :func:`fptq.generate.generate_text`
and :func:`fptq.eval._forward.logits_of` when present.

:func:`attach_runtime` attaches one where it can run the checkpoint the way the user asked: integer
mode on the ``numba`` backend (the runtime is that backend's kernels) and a family of
:data:`fptq.runtime.family.FAMILIES` with every decoder linear W4A8; anything else keeps the
transformers path (``--transformers`` forces it). The model itself is unchanged: ``model(...)`` and
``model.generate(...)`` still run transformers.
"""

from __future__ import annotations

import numpy as np

__all__ = ["attach_runtime", "runtime_of", "runtime_logits", "runtime_generate_text"]

ATTRIBUTE = "fptq_runtime"


def attach_runtime(model, backend: str, mode: str = "integer") -> str | None:
    """Attach a :class:`fptq.runtime.engine.Runtime` to ``model``; returns None, or why the model keeps
    the transformers path."""
    if mode != "integer" or backend != "numba":
        return f"the runtime runs integer mode on the numba backend (asked: {mode}, {backend})"
    from .engine import Runtime
    from .weights import RuntimeUnsupported

    try:
        rt = Runtime.from_model(model)
    except RuntimeUnsupported as e:
        return str(e)
    model.__dict__[ATTRIBUTE] = rt        # not a submodule: the model's modules and state dict stay as loaded
    return None


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
