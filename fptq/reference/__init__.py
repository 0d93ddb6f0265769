"""fptq.reference: the FPTQ algorithm in pure NumPy on top of :mod:`fptq.spec`.

* :mod:`~fptq.reference.calibration`  per-channel input maxima of linear layers
* :mod:`~fptq.reference.plan`         per-layer policy, LAE scales, static activation scale
* :mod:`~fptq.reference.linear`       a W4A8 linear layer: quantization and integer forward

Typical use::

    stats = CalibrationStats()
    for x in batches:
        stats.observe("mlp.down_proj", x)          # x float32 [..., T, K]
    plans = plan_layers(stats.channel_maxima())    # {name: LayerPlan}
    layer = quantize_linear(W, b, plans["mlp.down_proj"], group_size=128)
    y = layer.forward(x)                           # integer W4A8, float32 out
"""

from .calibration import CalibrationStats, LayerStats
from .linear import QuantizedLinear, quantize_linear
from .plan import LayerPlan, equalized_amax, plan_layer, plan_layers, with_policy

__all__ = ["CalibrationStats", "LayerStats", "LayerPlan", "equalized_amax", "plan_layer", "plan_layers",
           "with_policy", "QuantizedLinear", "quantize_linear"]
