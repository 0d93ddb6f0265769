"""fptq.models: FPTQ on transformers causal LMs, the adapter between models and :mod:`fptq.reference`.

This package moves tensors in and out of transformers models (hooks, module
surgery, checkpoint I/O); every piece of FPTQ math it applies is a NumPy
function of :mod:`fptq.reference` (see ``docs/architecture.md``). Needs torch
and transformers.

Pipeline: :mod:`~fptq.models.loading` (local float models, the embedded
SmolLM2 default) -> :mod:`~fptq.models.calibrate` (layer-by-layer channel
maxima) -> :mod:`~fptq.models.plan` (each group's policy, LAE scales,
fallbacks) -> :mod:`~fptq.models.fold` (offline folding, in place) ->
:mod:`~fptq.models.qlinear` (the W4A8 module, on any backend) ->
:mod:`~fptq.models.checkpoint` (safetensors + metadata);
:mod:`~fptq.models.arch` is the architecture table,
:mod:`~fptq.models.config` the one configuration object,
:mod:`~fptq.models.quantize` ties the steps together,
:mod:`~fptq.models.fakequant` is the float module of the compare baselines,
:mod:`~fptq.models.int8rows` the INT8-row embedding / lm_head of ``--int8-embeddings``.

Submodules are imported on use so that ``import fptq.models`` stays cheap.
"""

__all__ = ["arch", "calibrate", "checkpoint", "config", "fakequant", "fold", "int8rows", "loading", "plan",
           "qlinear", "quantize"]
