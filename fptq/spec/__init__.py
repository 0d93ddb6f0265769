"""fptq.spec: the W4A8 quantization math as a bit-exact pure-NumPy definition.

One module per section of ``docs/spec.md``:

1. :mod:`~fptq.spec.formats`     integer formats, layouts, constants (the one table)
2. :mod:`~fptq.spec.activation`  INT8 activations: per-tensor static, per-token dynamic
3. :mod:`~fptq.spec.lae`         logarithmic activation equalization
4. :mod:`~fptq.spec.weights`     groupwise INT4 weights, symmetric and asymmetric
5. :mod:`~fptq.spec.packing`     two nibbles per byte along K
6. :mod:`~fptq.spec.matmul`      the integer W4A8 matmul and its pinned epilogue
7. :mod:`~fptq.spec.policy`      the layerwise activation policy
"""

from .activation import act_scale_from_amax, dequantize_act, quantize_act_per_tensor, quantize_act_per_token
from .formats import (
    DEFAULT_GROUP_SIZE, DEFAULT_V0, DEFAULT_V1, INT4_SYM, INT8_ACT, MAX_GROUP_SIZE, MIN_SCALE,
    UINT4_ASYM, ActPolicy, Int4Packing, IntFormat, WeightFormat,
)
from .lae import LAE_SCALE_ULP_TOLERANCE, lae_apply_activation, lae_apply_weight, lae_scales
from .matmul import w4a8_epilogue, w4a8_group_sums, w4a8_matmul
from .packing import PACKING, pack_int4, packed_width, unpack_int4
from .policy import POLICY_CODES, select_policies, select_policy
from .weights import (
    QuantizedWeight, dequantize_weight, group_bounds, num_groups, quantize_weight,
    quantize_weight_with_scales, weight_scales,
)

__all__ = [n for n in dir() if not n.startswith("_")]
