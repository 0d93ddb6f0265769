"""Building each ``fptq compare`` row's model: from the shared calibration, or by the pipeline.

Rows from the shared float calibration are planned and folded here with
:func:`fptq.models.quantize.apply_plan_layer`; rows that need the pipeline
(:func:`fptq.compare.methods.uses_pipeline`) run
:func:`fptq.models.quantize.quantize_model` with a ``make_linear`` hook for the
attribution rows, so a row and ``fptq quantize`` of its settings are one code path.
"""

from __future__ import annotations

import copy
import json

import numpy as np

from .methods import CompareSettings, Method, quant_config_of, uses_pipeline

__all__ = ["build_variant", "Variants"]


def _fake_linear(m: Method, weight, linear, gp):
    """The fake-quant module of row ``m`` (float compute; ``weight``: float32 [N, K] tensor)."""
    from ..models.fakequant import FakeQuantLinear

    return FakeQuantLinear(weight, linear.bias, gp.policy if m.act else None, gp.act_scale if m.act else None,
                           label=m.key)


def _dequantized(qw) -> np.ndarray:
    from .. import spec

    return spec.dequantize_weight(qw.q, qw.scale, qw.zero, qw.group_size, qw.fmt)


def _make_linear_factory(m: Method, s: CompareSettings):
    """``f(linear, gp)`` for the rows built from the shared calibration."""
    import torch

    from .. import reference as ref
    from ..models.quantize import quantize_linear_weight, w4a8_factory

    qc = quant_config_of(m, s)
    if m.kind == "w4a8":
        return w4a8_factory(qc, s.backend, m.mode)

    def make(linear, gp):
        w = linear.weight.detach().cpu().numpy().astype(np.float32)
        if m.weight == "int4":  # the row's own (calibration-free: not a pipeline row) quantizer
            w = _dequantized(quantize_linear_weight(linear, gp, qc))
        elif m.weight == "int8pc":
            w = ref.fake_quant_weight_int8_per_channel(w)
        return _fake_linear(m, torch.from_numpy(w), linear, gp)
    return make


def _pipeline_factory(m: Method, s: CompareSettings):
    """``f(linear, gp, samples)`` for :func:`fptq.models.quantize.quantize_model` (None: its W4A8 layers)."""
    if m.kind == "w4a8":
        return None
    import torch

    from ..models.quantize import quantize_linear_weight

    qc = quant_config_of(m, s)

    def make(linear, gp, samples=None):
        if m.weight == "int4":
            w = torch.from_numpy(_dequantized(quantize_linear_weight(linear, gp, qc, samples)))
        elif m.weight is None:
            w = linear.weight.detach()
        else:
            raise ValueError(f"{m.key}: weights {m.weight!r} are not made by the pipeline")
        return _fake_linear(m, w, linear, gp)
    return make


def build_variant(model, stats: dict, m: Method, s: CompareSettings, samples: dict | None = None, ids=None):
    """A copy of the float ``model`` quantized as method ``m``.

    Rows from the shared calibration (``stats``; ``samples``: calibration rows per linear input,
    for ``select="error"``) are built here; rows that need GPTQ or a rotation run
    :func:`fptq.models.quantize.quantize_model` on calibration tokens ``ids``. Every quantized row's
    plan measures its candidates with the INT4 weights the W4A8 row gets, so the attribution rows
    (A8 only, W4 only) have the W4A8 row's plan.

    Returns ``(model_copy, plan_groups)``."""
    from ..models.arch import arch_of_model, find_decoder_layers
    from ..models.plan import LayerRef
    from ..models.quantize import apply_plan_layer, dequantized_weight_fn, plan_options, quantize_model

    if m.kind == "float":
        return copy.deepcopy(model), []
    qc = quant_config_of(m, s)
    if uses_pipeline(m, s):
        if ids is None:
            raise ValueError(f"method {m.key} runs the quantization pipeline: it needs the calibration ids")
        r = quantize_model(model, ids, qc, backend=s.backend, mode=m.mode, batch_size=s.batch_size,
                           progress=s.progress, make_linear=_pipeline_factory(m, s))
        return r.model, r.plan.groups
    model = copy.deepcopy(model)
    arch = arch_of_model(model)
    path, layers, _ = find_decoder_layers(model)
    make = _make_linear_factory(m, s)
    if samples is not None and not qc.holdout:
        from ..models.calibrate import LayerSamples

        samples = LayerSamples(samples)  # the same rows without the held-out ones: judged on every sample
    options = plan_options(qc, equalize=m.equalize)
    weight_fn = dequantized_weight_fn(qc)
    groups = []
    for i, layer in enumerate(layers):
        lr = LayerRef(i, f"{path}.{i}", layer, arch, model.config)
        groups += apply_plan_layer(lr, stats, make, options, samples=samples, weight_fn=weight_fn)
    return model, groups


class Variants:
    """Builds each row's model; two rows that differ only in compute mode (``fptq_w4a8_fake`` /
    ``fptq_w4a8_int``) share one quantization (the model is switched, not rebuilt)."""

    def __init__(self, model, stats, s: CompareSettings, samples, ids):
        """``stats``: the shared calibration statistics, or a function that makes them (called once,
        when the first row that needs them comes)."""
        self.model, self.stats, self.s, self.samples, self.ids = model, stats, s, samples, ids
        self.last = None  # (key, model, groups)

    def _stats(self, m: Method):
        if callable(self.stats) and m.kind != "float" and not uses_pipeline(m, self.s):
            self.stats = self.stats()
        return None if callable(self.stats) else self.stats

    def _key(self, m: Method):
        if m.kind != "w4a8":
            return None
        return json.dumps(quant_config_of(m, self.s).to_json(), sort_keys=True) + repr(m.equalize)

    def get(self, m: Method):
        from ..models.qlinear import set_quantized_mode

        key = self._key(m)
        if key is not None and self.last is not None and self.last[0] == key:
            set_quantized_mode(self.last[1], m.mode, self.s.backend)
            return self.last[1], self.last[2]
        self.last = None
        qm, groups = build_variant(self.model, self._stats(m), m, self.s, self.samples, self.ids)
        if key is not None:
            self.last = (key, qm, groups)
        return qm, groups
