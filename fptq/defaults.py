"""Run-time defaults of fptq, in one place: what runs when a caller names nothing.

Read by the CLI (its flags' defaults), ``fptq compare`` (:class:`fptq.compare.CompareSettings`),
``fptq eval`` (:func:`fptq.eval.runner.run_eval`, :func:`fptq.eval.perplexity.perplexity`),
``fptq generate`` and :func:`fptq.load` (:mod:`fptq.generate`), the calibration readers
(:mod:`fptq.data`) and :mod:`fptq.models` (``QuantConfig``'s calibration fields, the calibration
batch size, the backend of a loaded checkpoint). Change a default here and every one of them follows.

The lists of what *exists* stay with their owners and are read from there, never typed out:
weight formats :class:`fptq.spec.WeightFormat`, linear groups
:data:`fptq.models.arch.LINEAR_GROUPS`, weight quantizers
:data:`fptq.models.config.WEIGHT_QUANTIZER_NAMES`, backends :func:`fptq.backends.registered_backends`.

A pipeline module that imports only the standard library (so ``fptq --help`` stays fast); importing
it starts nothing. The backend is resolved when a model is loaded, by :func:`resolve_backend`.
"""

from __future__ import annotations

import warnings

__all__ = ["BACKEND", "FALLBACK_BACKEND", "CALIB_SOURCE", "CALIB_SAMPLES", "CALIB_SEQ_LEN", "CALIB_BATCH_SIZE",
           "SHARD_BYTES",
           "EVAL_TEXTS", "EVAL_SEQ_LEN", "COMPARE_MAX_WINDOWS", "GENERATION", "DefaultBackendWarning",
           "default_backend", "resolve_backend"]

#: the CPU backend of a W4A8 checkpoint's integer matmuls when none is named: the fastest measured
#: (SmolLM2-135M's default checkpoint, ``benchmarks/bench_generate.py --backends numba,torch``, quiet:
#: 31.3 vs 8.1 tokens/s decode, 610 vs 303 tokens/s prefill; issue 21). It is an extra
#: (``pip install 'fptq[numba]'``); without it :data:`FALLBACK_BACKEND` runs, with a warning.
BACKEND = "numba"
#: the backend when :data:`BACKEND` cannot start here (torch comes with the ``hf`` extra that loading a
#: model needs anyway); same bits, slower
FALLBACK_BACKEND = "torch"

#: the calibration set of ``fptq quantize`` (``QuantConfig.calib / n_samples / seq_len``): "mix", equal shares of
#: wiki + ptb + science (``fptq.data.text.MIX_SOURCES``), since 2026-12-07: against "wiki" it lowered the held-out
#: text's loss on every model measured (docs/results.md, "Calibration that generalizes")
CALIB_SOURCE = "mix"
CALIB_SAMPLES = 128
CALIB_SEQ_LEN = 512
#: calibration samples per forward (memory, not results: the statistics do not depend on it)
CALIB_BATCH_SIZE = 8

#: the largest checkpoint shard (``fptq quantize --shard-size``; :mod:`fptq.models.checkpoint_shards`): the
#: writer buffers one shard's quantized tensors in memory until it writes them, so this bounds what a
#: streamed run holds of the quantized model. 128 MiB: about one W4A8 layer of an 8B model (~120 MB; a layer
#: alone bigger than this is a shard by itself), four of Qwen2.5-1.5B's; SmolLM2-135M's whole quantized
#: decoder (~50 MB) stays one file; 512 MiB would add ~0.4 GB to the 1.5B's peak (the memory model).
SHARD_BYTES = 128 * 1024 * 1024

#: perplexity texts and window length of ``fptq eval`` / ``fptq compare`` (a BOS token is added)
EVAL_TEXTS = ("ptb", "wiki")
EVAL_SEQ_LEN = 512
#: perplexity windows per text of ``fptq compare`` (``fptq eval``: all windows)
COMPARE_MAX_WINDOWS = 16

#: ``fptq generate`` / :func:`fptq.generate.generate_text`; sampling options named as transformers names them
GENERATION = dict(max_new_tokens=64, do_sample=False, temperature=1.0, top_k=50, top_p=1.0)


class DefaultBackendWarning(UserWarning):
    """The default backend cannot start here; the fallback runs instead (same bits, slower)."""


def default_backend() -> str:
    """:data:`BACKEND` if it starts here, else :data:`FALLBACK_BACKEND` with a
    :class:`DefaultBackendWarning` that says why and how to get the fast one."""
    from .backends import BackendUnavailable, get_backend

    try:
        get_backend(BACKEND)
    except BackendUnavailable as e:
        warnings.warn(f"the default backend {BACKEND!r} cannot start here ({e}); using {FALLBACK_BACKEND!r}, "
                      "which gives the same bits but decodes about 4x slower on CPU; name a backend "
                      "(--backend / backend=) to choose one", DefaultBackendWarning, stacklevel=3)
        return FALLBACK_BACKEND
    return BACKEND


def resolve_backend(name: str | None) -> str:
    """``name`` itself, or :func:`default_backend` when it is None (nothing named)."""
    return default_backend() if name is None else name
