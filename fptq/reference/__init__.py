"""fptq.reference: the FPTQ algorithm in pure NumPy on top of :mod:`fptq.spec`.

Every piece of FPTQ math the model pipeline (:mod:`fptq.models`) uses is here,
once; the pipeline only moves tensors in and out of models.

* :mod:`~fptq.reference.calibration`        per-channel input maxima of linear layers
* :mod:`~fptq.reference.plan`               **the** planner the pipeline runs (:func:`plan_group`: per
                                            input group the policy by the paper's bands or by measured
                                            error, LAE / SmoothQuant / searched scales, fallbacks,
                                            static activation scale); ``plan_layer`` is its bands
                                            strategy for one linear
* :mod:`~fptq.reference.equalize`           scales of an input shared by several linears
                                            (LAE, SmoothQuant, GQA-shared o_proj scales)
* :mod:`~fptq.reference.fold`               folding ``1/s`` into the producer (norms, linear rows)
* :mod:`~fptq.reference.select`             static vs LAE + static by measured error; fake-quantized activations
* :mod:`~fptq.reference.quantizer_registry` the weight quantizers by name and what each needs
                                            (channel weights, a Hessian, calibration rows, a scale fold)
* :mod:`~fptq.reference.weight_quantizers`  INT4 scale choice: round to nearest, clipping search
* :mod:`~fptq.reference.gptq`               GPTQ: INT4 weights with second-order error feedback
* :mod:`~fptq.reference.gptaq`              GPTAQ: GPTQ matching the float model's outputs from the quantized inputs
* :mod:`~fptq.reference.rotation`           orthogonal rotations of the residual stream and value heads
* :mod:`~fptq.reference.linear`             a W4A8 linear layer: quantization and integer forward

Typical use::

    stats = CalibrationStats()
    for x in batches:
        stats.observe("mlp.down_proj", x)          # x float32 [..., T, K]
    plans = plan_layers(stats.channel_maxima())    # {name: LayerPlan}
    layer = quantize_linear(W, b, plans["mlp.down_proj"], group_size=128)
    y = layer.forward(x)                           # integer W4A8, float32 out
"""

from .calibration import CalibrationStats, LayerStats, NonFiniteError
from .equalize import (
    equalization_scales, equalized_channel_max, group_channel_max, smoothquant_scales, static_act_scale,
    weight_column_max,
)
from .fold import NORM_KINDS, fold_into_norm, fold_into_rows
from .gptaq import cross_term, gptaq_quantize
from .gptq import HessianAccumulator, HessianHandoff, equalized_hessian, gptq_quantize
from .linear import QuantizedLinear, quantize_linear
from .plan import (
    SELECTIONS, GroupInputs, GroupPlan, LayerPlan, equalized_amax, plan_group, plan_layer, plan_layers, with_policy,
)
from .quantizer_registry import (
    WEIGHT_QUANTIZERS, WeightQuantizer, fake_quant_weight, quantize_weight_by, weight_quantizer,
)
from .select import (
    dynamic_candidate_error, fake_quant_act, select_by_error, static_and_dynamic_errors, static_candidate_error,
)
from .weight_quantizers import (
    activation_channel_weight, fake_quant_weight_int8_per_channel, quantize_weight_int8_per_channel, quantize_weight_mse,
    quantize_weight_rtn,
)

__all__ = ["HessianAccumulator", "HessianHandoff", "equalized_hessian", "gptq_quantize", "cross_term", "gptaq_quantize",
           "CalibrationStats", "LayerStats",
           "NonFiniteError", "SELECTIONS", "GroupInputs", "GroupPlan", "plan_group", "LayerPlan", "equalized_amax",
           "plan_layer", "plan_layers", "with_policy", "QuantizedLinear", "quantize_linear", "equalization_scales",
           "group_channel_max", "equalized_channel_max", "weight_column_max", "smoothquant_scales",
           "activation_channel_weight", "static_act_scale", "NORM_KINDS", "fold_into_norm", "fold_into_rows",
           "fake_quant_act", "select_by_error", "static_candidate_error", "dynamic_candidate_error",
           "static_and_dynamic_errors", "WEIGHT_QUANTIZERS", "WeightQuantizer", "weight_quantizer",
           "fake_quant_weight", "fake_quant_weight_int8_per_channel", "quantize_weight_int8_per_channel",
           "quantize_weight_by", "quantize_weight_mse", "quantize_weight_rtn"]
