"""fptq.models: FPTQ on transformers causal LMs (needs torch and transformers).

Pipeline: :mod:`~fptq.models.loading` (local float models, the embedded
SmolLM2 default) -> :mod:`~fptq.models.calibrate` (layer-by-layer channel
maxima) -> :mod:`~fptq.models.plan` (bands, LAE scales, fallbacks) ->
:mod:`~fptq.models.fold` (exact offline folding) -> :mod:`~fptq.models.qlinear`
(the W4A8 module) -> :mod:`~fptq.models.checkpoint` (safetensors + metadata);
:mod:`~fptq.models.arch` is the architecture table,
:mod:`~fptq.models.quantize` ties the steps together,
:mod:`~fptq.models.report` prints and plots a plan, :mod:`~fptq.models.wquant`
chooses INT4 scales (round to nearest or an activation-aware clipping search).

Submodules are imported on use so that ``import fptq.models`` stays cheap.
"""

__all__ = ["arch", "atomic", "calibrate", "calibset", "checkpoint", "fakequant", "fold", "loading", "plan",
           "qlinear", "quantize", "report", "tiny", "wquant"]
