"""The weight-quantizer registry: every INT4 weight quantizer by name, with what it needs.

An entry (:class:`WeightQuantizer`) says what the pipeline must hand its
quantizer, so that no module outside this one compares quantizer names
(``fptq.models.quantize``, ``fptq.models.config``, ``fptq compare`` read the
entry):

* ``channel_weight``: ``c_j = m_j^2`` from the channel maxima of the input the
  quantized weight sees (:func:`activation_channel_weight`);
* ``hessian``: ``H`` of the layer's calibration rows as its linears see them
  (:func:`fptq.reference.equalized_hessian`);
* ``rows_option``: the :class:`~fptq.models.config.QuantConfig` field saying how
  many calibration rows per linear input the pipeline must keep for it;
* ``options``: ``(keyword, QuantConfig field)`` pairs handed to ``quantize``;
* ``scale_search``: ``f(x, weights, group_size, fmt, kv_heads) -> (s, s_fold)``,
  per-input-channel scales folded exactly into the input's producer before
  quantizing (``W[:, j] * s_j``, the producer ``/ s``; the planner,
  :func:`fptq.reference.plan.plan_group`, composes them with LAE's and skips
  groups whose producer cannot absorb them);
* ``judge_with``: the calibration-free quantizer whose weights the plan's
  error selection uses to judge policy candidates (None: the entry itself);
* ``toggle``: ``(QuantConfig bool field, key, words)``, a switch ``fptq compare``
  shows a with/without row for (``fptq_w4a8_[no]<key>``);
* ``float_inputs``: asymmetric calibration (GPTAQ): the layers are calibrated on
  the quantized model's inputs ``X~`` (as ``sequential``), the float model's rows
  ``X`` of the same tokens kept beside them, and ``quantize`` gets ``cross=``,
  the [K, K] ``(X - X~)^T X~ / n`` as its linears see it
  (:func:`fptq.reference.gptaq.cross_term`) with ``hessian=`` of ``X~``.

``quantize(w, group_size, fmt, **needs) -> fptq.spec.QuantizedWeight`` takes
``channel_weight=``, ``hessian=`` and the ``options`` keywords it declares; its
codes come from :func:`fptq.spec.quantize_weight_with_scales`, so formats and
kernels never change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .. import spec
from ..spec import WeightFormat
from .awq import awq_scales
from .gptaq import gptaq_quantize
from .gptq import gptq_quantize
from .weight_quantizers import quantize_weight_mse, quantize_weight_rtn

__all__ = ["WeightQuantizer", "WEIGHT_QUANTIZERS", "weight_quantizer", "quantize_weight_by", "fake_quant_weight"]


@dataclass(frozen=True)
class WeightQuantizer:
    """One registry entry (see the module docstring)."""

    name: str
    words: str
    quantize: Callable
    channel_weight: bool = False
    hessian: bool = False
    #: ``quantize`` accepts its ``hessian=`` as a :class:`~fptq.reference.gptq.HessianHandoff` it may overwrite
    #: (no copy: GPTQ's peak memory); others get the array itself
    hessian_handoff: bool = False
    rows_option: str | None = None
    options: tuple = ()
    scale_search: Callable | None = None
    judge_with: str | None = None
    toggle: tuple | None = None
    float_inputs: bool = False

    def __post_init__(self):
        if self.float_inputs and not self.hessian:
            raise ValueError(f"weight quantizer {self.name!r}: float_inputs (the cross term) needs hessian=True")
        if not self.calibration_free and self.judge_with is None:
            raise ValueError(f"weight quantizer {self.name!r} needs calibration rows: name a calibration-free "
                             "judge_with for the plan's error selection")

    @property
    def calibration_free(self) -> bool:
        """True when the weight alone (and optional channel weights) decide its codes."""
        return not self.hessian and self.scale_search is None


def _gptq(w, group_size: int, fmt, *, hessian, **options) -> spec.QuantizedWeight:
    return gptq_quantize(w, hessian, group_size, fmt, **options)


def _gptaq(w, group_size: int, fmt, *, hessian, cross, **options) -> spec.QuantizedWeight:
    return gptaq_quantize(w, hessian, cross, group_size, fmt, **options)


_GPTQ_OPTIONS = (("damp", "gptq_damp"), ("act_order", "gptq_act_order"), ("clip", "gptq_clip"))

#: name -> :class:`WeightQuantizer`; the CLI's ``--weight-quantizer`` choices and ``QuantConfig``'s check
WEIGHT_QUANTIZERS: dict[str, WeightQuantizer] = {e.name: e for e in (
    WeightQuantizer("rtn", "RTN", quantize_weight_rtn),
    WeightQuantizer("mse", "act-aware clip search", quantize_weight_mse, channel_weight=True),
    WeightQuantizer("gptq", "GPTQ", _gptq, hessian=True, hessian_handoff=True, rows_option="gptq_rows",
                    judge_with="rtn", options=_GPTQ_OPTIONS, toggle=("gptq_clip", "clip", "clip search")),
    WeightQuantizer("awq", "AWQ scales + RTN", quantize_weight_rtn, rows_option="keep_rows", scale_search=awq_scales,
                    judge_with="rtn"),
    WeightQuantizer("gptaq", "GPTAQ (asymmetric calibration)", _gptaq, hessian=True, hessian_handoff=True,
                    rows_option="gptq_rows", judge_with="rtn", options=_GPTQ_OPTIONS + (("alpha", "gptaq_alpha"),),
                    float_inputs=True),
)}


def weight_quantizer(name: str) -> WeightQuantizer:
    """The registry entry ``name``; a ValueError names the choices."""
    try:
        return WEIGHT_QUANTIZERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown weight quantizer {name!r}; choose from {tuple(WEIGHT_QUANTIZERS)}") from None


def quantize_weight_by(method: str, w, group_size: int, fmt=WeightFormat.SYMMETRIC,
                       channel_weight=None) -> spec.QuantizedWeight:
    """INT4 weight by the named calibration-free quantizer (:attr:`WeightQuantizer.calibration_free`)."""
    e = weight_quantizer(method)
    if not e.calibration_free:
        free = tuple(n for n, x in WEIGHT_QUANTIZERS.items() if x.calibration_free)
        raise ValueError(f"weight quantizer {method!r} needs calibration rows (a Hessian or a scale search); "
                         f"quantize_weight_by takes only {free}")
    return e.quantize(w, group_size, fmt, channel_weight=channel_weight if e.channel_weight else None)


def fake_quant_weight(w, group_size: int, fmt=WeightFormat.SYMMETRIC, method: str = "rtn",
                      channel_weight=None) -> np.ndarray:
    """float32 [N, K]: the INT4 weight ``method`` would store, dequantized (:func:`fptq.spec.dequantize_weight`)."""
    qw = quantize_weight_by(method, w, group_size, fmt, channel_weight)
    return spec.dequantize_weight(qw.q, qw.scale, qw.zero, qw.group_size, qw.fmt)
