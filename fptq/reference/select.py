"""Policy selection by measured error, and the fake-quantized activations it measures with.

The paper's bands choose a layer's policy from its input range v alone
(:func:`fptq.spec.select_policy`). The error-based selection keeps the bands'
``v >= v1 -> per-token dynamic`` and, below v1, measures both static
candidates on calibration rows ``x`` (float32 [n, K]) of the group's input and
keeps the one whose outputs are closer to the float outputs::

    err(s) = sum_l || fq(x / s) Q(W_l * s)^T - x W_l^T ||^2     (over the group's linears l)

``s = None`` is plain ``static`` (``act_scale`` from v), ``s`` the LAE scales is
``lae_static`` (``act_scale`` from the equalized range). ``fq`` is per-tensor
static INT8 fake quantization (:func:`fake_quant_act`); for the third candidate,
``dynamic`` (:func:`dynamic_candidate_error`), ``fq`` is per-token INT8 and ``s``
is None. ``Q`` is the weight the
model would really store (``weight_fn(W', c)`` with ``c`` the squared channel
maxima of ``x / s``, :func:`fptq.reference.activation_channel_weight`, e.g. :func:`fptq.reference.fake_quant_weight`), or the
identity. Products and sums are float32 (NumPy's matmul).

The rows ``x`` a candidate is judged on should not be the rows its scales were
taken from: the pipeline holds calibration samples out
(:func:`fptq.models.calibrate.calibrate`, ``holdout``), takes the candidates'
scales from the other samples' maxima and measures ``err`` on the held-out
rows. :func:`select_by_error` keeps the candidate with the smallest error;
``dynamic`` only when it is strictly better than both static candidates.
"""

from __future__ import annotations

import numpy as np

from .. import spec
from ..spec import ActPolicy
from ..spec.formats import FLOAT
from ..spec.validate import as_float32, check_ndim
from .weight_quantizers import activation_channel_weight

__all__ = ["fake_quant_act", "static_candidate_error", "dynamic_candidate_error", "static_and_dynamic_errors",
           "select_by_error"]


def fake_quant_act(x, policy, act_scale=None) -> np.ndarray:
    """INT8-quantize float32 activations [M, K] per ``policy`` and dequantize them (float32 [M, K]).

    ``DYNAMIC``: :func:`fptq.spec.quantize_act_per_token`; ``STATIC``/``LAE_STATIC``:
    :func:`fptq.spec.quantize_act_per_tensor` with ``act_scale`` (the input is already
    equalized); then :func:`fptq.spec.dequantize_act`. ``policy=None`` returns ``x``.
    """
    if policy is None:
        return x
    x = as_float32(x, "x")
    check_ndim(x, 2, "x")
    if ActPolicy(policy) is ActPolicy.DYNAMIC:
        q, scale = spec.quantize_act_per_token(x)
        return spec.dequantize_act(q, scale)
    if act_scale is None:
        raise ValueError(f"policy {ActPolicy(policy).value} needs a static activation scale")
    scale = np.asarray(act_scale, dtype=FLOAT).reshape(())
    return spec.dequantize_act(spec.quantize_act_per_tensor(x, scale), scale)


def _candidate_errors(x, weights, xqs, s, weight_fn) -> list[float]:
    """``[sum_l || xq Q(W_l * s)^T - x W_l^T ||^2 for xq in xqs]``: candidates that share the
    equalization ``s`` (and so the reference outputs and the quantized weights, made once)."""
    xs = x if s is None else spec.lae_apply_activation(x, s)
    cmax = np.abs(xs).max(axis=0) if xs.shape[0] else np.zeros(xs.shape[1], FLOAT)
    errs = [0.0] * len(xqs)
    for w in weights:
        w = as_float32(w, "weight")
        ref = x @ w.T
        wn = w if s is None else spec.lae_apply_weight(w, s)
        if weight_fn is not None:
            wn = weight_fn(wn, activation_channel_weight(cmax))
        wt = np.asarray(wn, dtype=FLOAT).T
        for i, xq in enumerate(xqs):
            errs[i] += float(np.square(xq @ wt - ref).sum())
    return errs


def static_candidate_error(x, weights, act_scale: float, s=None, weight_fn=None) -> float:
    """``err(s)`` of the module docstring for one static candidate.

    Args:
        x: float32 [n, K] calibration rows of the group's input.
        weights: the group's float32 weights [N_l, K].
        act_scale: the candidate's per-tensor static scale.
        s: float32 [K] LAE scales, or None (plain static).
        weight_fn: ``f(W', channel_weight) -> float32 [N, K]`` or None (float weights).
    """
    x = as_float32(x, "x")
    check_ndim(x, 2, "x")
    xs = x if s is None else spec.lae_apply_activation(x, s)
    return _candidate_errors(x, weights, [fake_quant_act(xs, ActPolicy.STATIC, act_scale)], s, weight_fn)[0]


def dynamic_candidate_error(x, weights, weight_fn=None) -> float:
    """``err`` of the per-token dynamic candidate: ``fq`` = :func:`fptq.spec.quantize_act_per_token`
    of ``x`` itself (no equalization, no static scale). Arguments as :func:`static_candidate_error`."""
    x = as_float32(x, "x")
    check_ndim(x, 2, "x")
    return _candidate_errors(x, weights, [fake_quant_act(x, ActPolicy.DYNAMIC)], None, weight_fn)[0]


def static_and_dynamic_errors(x, weights, act_scale: float, weight_fn=None) -> tuple[float, float]:
    """``(static_candidate_error(x, weights, act_scale, None, weight_fn),
    dynamic_candidate_error(x, weights, weight_fn))``, the same values, with the reference outputs
    and quantized weights the two share computed once."""
    x = as_float32(x, "x")
    check_ndim(x, 2, "x")
    xqs = [fake_quant_act(x, ActPolicy.STATIC, act_scale), fake_quant_act(x, ActPolicy.DYNAMIC)]
    e_static, e_dynamic = _candidate_errors(x, weights, xqs, None, weight_fn)
    return e_static, e_dynamic


def select_by_error(err_static: float, err_lae: float | None, err_dynamic: float | None = None) -> ActPolicy:
    """The candidate with the smallest error: ``LAE_STATIC`` if strictly below ``err_static``;
    ``DYNAMIC`` only if strictly below both static candidates (the static policies need no
    per-token reduction at run time, so ties keep them); else ``STATIC``. None = no such candidate."""
    best, policy = err_static, ActPolicy.STATIC
    if err_lae is not None and err_lae < best:
        best, policy = err_lae, ActPolicy.LAE_STATIC
    if err_dynamic is not None and err_dynamic < best:
        policy = ActPolicy.DYNAMIC
    return policy
