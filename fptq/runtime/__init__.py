"""A lean W4A8 runtime: a whole token (or prompt) through one compiled Numba forward with a KV cache.

The transformers path (:func:`fptq.models.checkpoint.load_quantized`) is the reference; this package
runs the same checkpoint without transformers' per-layer Python:

* :mod:`.family`: the one family table (what a family computes beyond the shared decoder layer);
* :mod:`.weights`: a loaded model read into flat arrays, :mod:`.linears` its W4A8 linears in the numba
  backend's blocked layout (released from the model as taken when it hands them over);
* :mod:`.forward`: the compiled forward (embedding, layers, final norm, lm_head); :mod:`.ops` its
  float pieces (norms, rotation, RoPE, exp, activations), :mod:`.attention` the causal attention
  over the KV cache, :mod:`.head` the lm_head kernels;
* :mod:`.engine`: :class:`Runtime`, the KV cache and the position;
* :mod:`.sampling`: greedy decoding and sampling; :mod:`.attach`: how ``fptq generate``, ``fptq eval``
  and ``fptq.load`` use it; :mod:`.profile`: where a decoded token's or a prefill's time goes.

``docs/architecture.md`` ("The W4A8 runtime") and ``docs/benchmarks.md`` describe it and its speed.
"""

from __future__ import annotations

__all__ = ["Runtime", "RuntimeUnsupported", "FAMILIES"]


def __getattr__(name):
    if name == "Runtime":
        from .engine import Runtime

        return Runtime
    if name == "RuntimeUnsupported":
        from .weights import RuntimeUnsupported

        return RuntimeUnsupported
    if name == "FAMILIES":
        from .family import FAMILIES

        return FAMILIES
    raise AttributeError(f"module 'fptq.runtime' has no attribute {name!r}")
