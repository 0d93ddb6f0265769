"""``fptq compare``: FPTQ side by side with the baselines, one table.

Every row is evaluated on the same perplexity windows. Rows whose weights are
round-to-nearest or clip-searched share one float calibration pass (per-channel
input maxima of every linear, calibration rows for the error-selected plan) and
build their copy of the model from it; rows that need GPTQ (the layer's own
calibration inputs) or a rotated model run :func:`fptq.models.quantize.quantize_model`
itself, exactly as ``fptq quantize`` does (own calibration on the same tokens).

=========================  ===============================  ===============================
method                     weights                          activations
=========================  ===============================  ===============================
``fp32``                   float32                          float32
``rtn_w4a16``              INT4 groupwise RTN               float32
``gptq_w4a16``             INT4 groupwise GPTQ              float32
``smoothquant_w8a8``       INT8 per-channel, after SQ       INT8 per-tensor static, after
                           smoothing (alpha 0.5)            SQ smoothing (folded like LAE)
``w4a8_dynamic``           INT4 groupwise RTN               INT8 per-token dynamic everywhere
``w4a8_static``            INT4 groupwise RTN               INT8 per-tensor static everywhere
``fptq_paper``             INT4 int4_sym RTN, LAE-folded    the paper's v0/v1 bands
``fptq_w4a8_fake``         the settings' weights (default   FPTQ plan (fake-quant)
                           GPTQ uint4_asym), LAE-folded
``fptq_w4a8_int``          same, integer backend            FPTQ plan, integer W4A8 matmuls
``fptq_a8_only``           float32, LAE-folded              FPTQ plan (attribution row)
``fptq_w4_only``           the settings' INT4, LAE-folded   float32 (attribution row)
``fptq_w4a8_<change>``     one change from the settings:    another policy selection
                           another quantizer (each entry of (``bands`` / ``error`` /
                           the registry: ``rtn``, ``mse``,  ``error_static``), or as the
                           ``gptq``, ...), the other
                           format (``int4_sym`` /           settings
                           ``uint4_asym``), another rotation
                           (``rotate_online`` /
                           ``rotate_residual`` /
                           ``rotate_none``),
                           a quantizer's switch (GPTQ's
                           clip search: ``clip`` /
                           ``noclip``), calibration inputs
                           (``sequential`` /
                           ``nosequential``), G = 64 (``g64``),
                           every group per-token dynamic
                           (``dynamic``: the plan's check)
``fptq_only_<group>``      FPTQ W4A8 on one linear group    (per-kind ablation: which of
                           (qkv, o, gate_up, down), the     q/k/v, o, gate/up, down costs
                           rest float                       most of the W4A8 loss)
=========================  ===============================  ===============================

"FPTQ plan" follows ``policy_select`` (as ``fptq quantize --policy-select``):
``error`` (the default: v >= v1 per-token dynamic; below v1, static, LAE +
static or per-token dynamic, whichever gives the smallest output error on
held-out calibration rows, INT4 weights in place), ``error_static`` (static or
LAE + static only) or ``bands`` (the paper's fixed v0/v1 bands). The
attribution rows use the W4A8 row's plan (same calibration, same candidate
errors).

Every row except ``fptq_w4a8_int`` is fake quantization (float matmuls on
dequantized values), named as such in the table.

The package: :mod:`~fptq.compare.methods` (the rows and the QuantConfig each
runs; the quantizer rows come from the weight-quantizer registry),
:mod:`~fptq.compare.variants` (building each row's model),
:mod:`~fptq.compare.report` (the table, the peers' rows),
:mod:`~fptq.compare.run` (:func:`run_compare`).
"""

from __future__ import annotations

from .methods import METHODS, CompareSettings, Method, methods_of, quant_config_of, uses_pipeline
from .report import format_markdown, machine, read_peer_rows
from .run import run_compare
from .variants import Variants, build_variant

# the names the tests and benchmarks/peers/run_peers.py have used
_methods, _quant_config, _uses_pipeline, _Variants, _machine = (methods_of, quant_config_of, uses_pipeline, Variants,
                                                               machine)

__all__ = ["CompareSettings", "Method", "METHODS", "run_compare", "build_variant", "format_markdown",
           "read_peer_rows", "machine", "methods_of", "quant_config_of", "uses_pipeline", "Variants"]
