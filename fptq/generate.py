"""Use a model: load a W4A8 checkpoint (or a float model) as a transformers model, and generate text.

::

    import fptq
    model, tok = fptq.load("runs/smollm2-w4a8", backend="numba")   # W4A8, integer kernels
    model, tok = fptq.load()                                         # the embedded float SmolLM2
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    print(tok.decode(model.generate(ids, max_new_tokens=20)[0]))

The model is an ordinary ``transformers`` causal LM whose quantized linears are
:class:`fptq.models.qlinear.W4A8Linear`; ``.generate()`` and its options work
as usual. :func:`generate_text` adds a chat template and streaming, and is as
strict as ``fptq eval``: the prompt plus ``max_new_tokens`` must fit the model's
``max_position_embeddings``, and every forward's logits and final hidden states
are checked (:mod:`fptq.eval.health`): NaN/Inf or an overflow to zero inside the
model is an error, never a stream of plausible-looking tokens.
"""

from __future__ import annotations

import contextlib

from .defaults import GENERATION, resolve_backend

__all__ = ["load", "generate_text", "GENERATION_DEFAULTS"]

#: defaults of ``fptq generate`` (:data:`fptq.defaults.GENERATION`); sampling options named as transformers does
GENERATION_DEFAULTS = GENERATION


def load(model=None, backend: str | None = None, mode: str = "integer", progress: bool = False,
         runtime: bool = True, hand_over: bool = False, head: str = "auto"):
    """``(model, tokenizer)`` from a W4A8 checkpoint directory or a float model (dir, ``.gguf``, or None = embedded).

    Args:
        model: a checkpoint written by ``fptq quantize``, a local transformers
            model directory, a ``.gguf`` file, or None for the embedded SmolLM2-135M-Instruct.
        backend: the W4A8 backend of a checkpoint's integer matmuls (a registered
            name or ``package.module:Class``); checked before anything is loaded. None:
            :func:`fptq.defaults.default_backend` (numba, the fastest measured on CPU; torch with a
            warning where numba cannot start).
        mode: ``"integer"`` (the backend's integer kernels) or ``"fake_quant"``.
        runtime: attach fptq's compiled runtime (:mod:`fptq.runtime`) where it runs the checkpoint (integer
            mode, numba backend, a supported family): :func:`generate_text` then decodes with it; False keeps
            the transformers path only.
        hand_over: with the runtime attached, the model keeps only what the runtime does not hold (bfloat16
            embedding and lm_head shared with it; its W4A8 linears released as re-laid out): about the
            checkpoint's size in memory, and ``model(...)`` / ``model.generate`` raise
            (:func:`fptq.runtime.attach.load_checkpoint`; ``fptq generate``'s). Default False: a full model.
        head: the runtime's lm_head (:data:`fptq.runtime.attach.HEADS`): "auto" = INT8 rows with a float32
            activation for a float head, a stored INT8 head as stored; "checkpoint" = the head as stored
            (bfloat16, lossless); "int8w"; "int8".
    Raises:
        ValueError / fptq.backends.UnknownBackend / CheckpointError / ModelLoadError with a clear message.
    """
    from .backends import get_backend
    from .models.checkpoint import is_checkpoint
    from .models.loading import load_float_model, model_argument

    model = model_argument(model)  # '' refused; an existing ./default wins over the name
    if backend is not None and (not isinstance(backend, str) or not backend):
        raise ValueError(f"backend must be a backend name (a registered name or package.module:Class), got {backend!r}")
    from .runtime.attach import check_head

    check_head(head)
    if model is not None and is_checkpoint(model):
        backend = resolve_backend(backend)
        get_backend(backend)  # an unknown or unavailable backend fails here, not at the first forward
        from .runtime.attach import load_checkpoint

        m, tok, _, _ = load_checkpoint(model, backend, mode, runtime=runtime, hand_over=hand_over, head=head)
        if tok is None:
            raise ValueError(f"{model}: the checkpoint has no tokenizer files")
        return m, tok
    m, tok, _ = load_float_model(model, progress=progress)
    return m, tok


def _prompt_ids(tokenizer, prompt: str, chat: bool):
    if not chat:
        return tokenizer(prompt, return_tensors="pt").input_ids
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("--chat: this tokenizer has no chat template (use a plain prompt)")
    out = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    return out["input_ids"]


def generate_text(model, tokenizer, prompt: str, *, chat: bool = False, stream=None, seed: int = 0,
                  **options) -> str:
    """Generate a continuation of ``prompt`` and return it (without the prompt).

    Args:
        chat: wrap the prompt in the tokenizer's chat template as one user turn.
        stream: a text file (e.g. ``sys.stdout``) that receives tokens as they are produced, or None.
        seed: the torch seed for sampling (greedy decoding ignores it).
        options: ``max_new_tokens``, ``do_sample``, ``temperature``, ``top_k``, ``top_p``
            (transformers' names; defaults :data:`GENERATION_DEFAULTS`).
    """
    import torch

    unknown = set(options) - set(GENERATION_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown generation option(s) {sorted(unknown)}; known: {sorted(GENERATION_DEFAULTS)}")
    opts = {**GENERATION_DEFAULTS, **options}
    if opts["max_new_tokens"] < 1:
        raise ValueError(f"max_new_tokens: expected >= 1, got {opts['max_new_tokens']}")
    gen = {"max_new_tokens": int(opts["max_new_tokens"]), "do_sample": bool(opts["do_sample"])}
    # greedy ignores the model's generation_config sampling defaults (None overrides them)
    for k in ("temperature", "top_k", "top_p"):
        gen[k] = opts[k] if gen["do_sample"] else None
    if type(seed) is not int or seed < 0:
        raise ValueError(f"seed: expected an integer >= 0, got {seed!r}")
    ids = _prompt_ids(tokenizer, prompt, chat)
    _check_context(model, ids.shape[1], gen["max_new_tokens"])
    from .runtime.attach import runtime_generate_text, runtime_of

    if runtime_of(model) is not None:  # fptq's compiled runtime, attached by load()
        return runtime_generate_text(model, tokenizer, ids, opts, stream, seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    streamer = None if stream is None else _file_streamer(tokenizer, stream)
    torch.manual_seed(seed)
    with torch.no_grad(), _checked_forwards(model):
        out = model.generate(ids, attention_mask=torch.ones_like(ids), pad_token_id=pad, streamer=streamer, **gen)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def _check_context(model, n_prompt: int, max_new_tokens: int) -> None:
    """The prompt and the tokens to generate fit the model's positions (``max_position_embeddings``)."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and n_prompt + max_new_tokens > limit:
        raise ValueError(f"the prompt ({n_prompt} tokens) + max_new_tokens ({max_new_tokens}) = "
                         f"{n_prompt + max_new_tokens} tokens exceed the model's context of {limit} "
                         "(max_position_embeddings): shorten the prompt or lower --max-new-tokens")


@contextlib.contextmanager
def _checked_forwards(model):
    """Every forward inside checks its final norm's output and its logits (:mod:`fptq.eval.health`)."""
    from .eval.health import check_logits, overflow_guard

    def hook(module, args, out):
        logits = getattr(out, "logits", out)
        if logits is not None:
            check_logits(logits[:, -1:], "generate")

    handle = model.register_forward_hook(hook)
    try:
        with overflow_guard(model, "generate"):
            yield
    finally:
        handle.remove()


def _file_streamer(tokenizer, file):
    """transformers' TextStreamer, writing the generated text (not the prompt) to ``file`` as it comes."""
    from transformers import TextStreamer

    class FileStreamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False):
            file.write(text + ("\n" if stream_end else ""))
            file.flush()

    return FileStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
