"""A decoder-only model's shape read from its transformers config dict, for the memory model
(:mod:`fptq.models.memory`): widths, the linears of a layer and their groups, what a checkpoint stores.

Also the calibration rows a run keeps per linear input (:func:`kept_rows`, :func:`heldout_rows`), what
GPTAQ's second calibration stream adds (:func:`float_stream_components`), what layer-wise scale tuning holds
(:func:`tune_components`), and the run's settings they read (:class:`Settings`, made by
:func:`fptq.models.memory.settings`).
Standard library only (no torch, no transformers): the config is the ``config.json`` dict
(``WeightSource.config_dict()``), read before any weight is. Families: llama, mistral, qwen2, qwen3,
gemma, gemma2, gemma3 (its text part may be nested under ``text_config``), smollm3, opt (fc1/fc2, biases
everywhere, LayerNorms; its learned position table is not counted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Shape", "shape_of", "FAMILIES", "kept_rows", "heldout_rows", "FLOAT_STREAM_MEANINGS",
           "float_stream_components", "TUNE_MEANINGS", "tune_components", "Settings"]

#: model_type -> (tie_word_embeddings when the config omits it, q/k/v bias, attention masks per batch as
#: bytes per element (one entry per distinct mask), rotary tables, eager attention, [H] norms per layer,
#: [head_dim] norms per layer).
#: Measured on the tiny models of fptq.testing with transformers 5.25 (``capture_layer_inputs``):
#: llama/qwen2 run sdpa without a mask; gemma2 eager with a float32 mask per layer type (sliding, full);
#: gemma3 sdpa with a bool mask per layer type and two rotary tables (local, global)
FAMILIES = {
    "llama": (False, False, (), 1, False, 2, 0),
    "mistral": (False, False, (), 1, False, 2, 0),
    "qwen2": (False, True, (), 1, False, 2, 0),
    "qwen3": (False, False, (), 1, False, 2, 2),
    "smollm3": (True, False, (), 1, False, 2, 0),
    "gemma": (True, False, (), 1, False, 2, 0),
    "gemma2": (True, False, (4, 4), 1, True, 4, 0),
    "gemma3": (True, False, (1, 1), 2, False, 4, 2),
    "opt": (True, True, (), 0, False, 2, 0),
}
#: families with an ungated MLP (fc1 -> activation -> fc2), a bias on every linear and LayerNorms (weight + bias)
_OPT_LIKE = {"opt"}
#: config keys a family names otherwise
_KEY_ALIASES = {"intermediate_size": "ffn_dim"}
_ALIASES = {"gemma3_text": "gemma3"}
_REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


@dataclass(frozen=True)
class Shape:
    """What the memory model needs of an architecture (widths in elements)."""

    family: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    qkv_bias: bool = False
    mask_bytes: tuple = ()        # bytes per element of each distinct [B, 1, L, L] mask per batch
    rope_tables: int = 1          # distinct (cos, sin) pairs per batch, each [1, L, head_dim] float32
    eager: bool = False           # eager attention: [B, heads, L, L] scores materialized
    norms: int = 2                # norm vectors [H] per layer
    head_norms: int = 0           # norm vectors [head_dim] per layer (qwen3/gemma3's q_norm, k_norm)
    gated: bool = True            # gate_proj and up_proj (False: OPT's fc1 alone)
    all_bias: bool = False        # a bias on every linear (OPT)
    norm_bias: bool = False       # LayerNorms: weight and bias

    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    def linears(self) -> list[tuple[str, str, int, int]]:
        """``(name, group, N, K)`` of every quantized linear of one layer (weight [N, K]), in the order the
        pipeline quantizes them (groups qkv, o, gate_up, down)."""
        h, f, q, kv = self.hidden, self.intermediate, self.q_width, self.kv_width
        mlp = [("gate_proj", "gate_up", f, h), ("up_proj", "gate_up", f, h)] if self.gated \
            else [("fc1", "gate_up", f, h)]
        return [("q_proj", "qkv", q, h), ("k_proj", "qkv", kv, h), ("v_proj", "qkv", kv, h),
                ("o_proj", "o", h, q), *mlp, ("down_proj", "down", h, f)]

    def groups(self) -> list[tuple[str, int, list[tuple[str, int]]]]:
        """``(group, K, [(linear, N), ...])`` in order: one input (and one Hessian) per group."""
        out: dict[str, tuple[int, list]] = {}
        for name, group, n, k in self.linears():
            out.setdefault(group, (k, []))[1].append((name, n))
        return [(g, k, lins) for g, (k, lins) in out.items()]

    def layer_params(self) -> int:
        """Weights of one layer's linears (what a forward multiplies by)."""
        return sum(n * k for _, _, n, k in self.linears())

    def layer_float_bytes(self) -> int:
        """One layer's weights in float32: linears, biases, norms."""
        bias = sum(n for _, g, n, _ in self.linears() if self._has_bias(g))
        return 4 * (self.layer_params() + bias + self._norm_elements())

    def _has_bias(self, group: str) -> bool:
        return self.all_bias or (self.qkv_bias and group == "qkv")

    def _norm_elements(self) -> int:
        return self.norms * self.hidden * (2 if self.norm_bias else 1) + self.head_norms * self.head_dim

    def linear_stored_bytes(self, n: int, k: int, group_size: int, asym: bool, bias: bool) -> int:
        """A W4A8 linear as stored: packed INT4 [N, ceil(K/2)] uint8, float32 scales and uint8 zero points per
        (row, group), a float32 bias, the static activation scale."""
        ng = 1 if group_size == -1 else math.ceil(k / group_size)
        return n * math.ceil(k / 2) + n * ng * (4 + (1 if asym else 0)) + (4 * n if bias else 0) + 4

    def layer_stored_bytes(self, group_size: int, asym: bool) -> int:
        """One quantized layer as the checkpoint stores it (norms float32: 1-D tensors keep their dtype)."""
        q = sum(self.linear_stored_bytes(n, k, group_size, asym, self._has_bias(g))
                for _, g, n, k in self.linears())
        return q + 4 * self._norm_elements()


@dataclass(frozen=True)
class Settings:
    """The run's inputs to the memory model (rows: kept calibration rows per linear input; made by
    :func:`fptq.models.memory.settings`)."""

    n_samples: int
    seq_len: int
    batch_size: int
    rows: int                 # rows of every sample kept per linear input (the Hessian's rows)
    heldout_rows: int         # rows of the held-out samples kept per linear input (the plan's judging)
    hessian: bool             # the weight quantizer takes a Hessian (GPTQ)
    by_error: bool            # the plan judges candidates by their error
    sequential: bool
    rotate: str
    group_size: int
    asym: bool
    source_dtype_bytes: int
    float_dtype_bytes: int
    shard_bytes: int
    device: str
    shared_input_rows: bool   # one copy of the rows per group input instead of per linear
    float_inputs: bool = False   # GPTAQ: the float model's calibration stream beside the sequential one
    tune_steps: int = 0          # layer-wise scale tuning's steps per layer (QuantConfig.tune_layers_steps)
    calib_text: int = 0          # peak bytes of reading and tokenizing the calibration text (memory.CALIB_TEXT_BYTES)


def _text_part(cfg: dict) -> dict:
    """The language model's part of ``cfg`` (gemma3's ``text_config``), with the outer keys as fallback."""
    inner = cfg.get("text_config")
    if isinstance(inner, dict):
        return {**{k: v for k, v in cfg.items() if k != "text_config"}, **inner}
    return cfg


def shape_of(cfg: dict) -> Shape:
    """The :class:`Shape` of a transformers config dict; ValueError naming a missing key or an unknown family."""
    if not isinstance(cfg, dict):
        raise ValueError(f"config: expected the transformers config as a dict, got {type(cfg).__name__}")
    text = _text_part(cfg)
    family = _ALIASES.get(str(text.get("model_type", "")), str(text.get("model_type", "")))
    if family not in FAMILIES:
        family = _ALIASES.get(str(cfg.get("model_type", "")), str(cfg.get("model_type", "")))
    if family not in FAMILIES:
        raise ValueError(f"memory model: model_type {cfg.get('model_type')!r} is not one of {sorted(FAMILIES)}")
    text = {**{k: text[a] for k, a in _KEY_ALIASES.items() if k not in text and a in text}, **text}
    missing = [k for k in _REQUIRED if not isinstance(text.get(k), int)]
    if missing:
        raise ValueError(f"memory model: the {family} config lacks integer {missing}")
    tie_default, qkv_bias, masks, rope, eager, norms, head_norms = FAMILIES[family]
    heads = text["num_attention_heads"]
    tied = cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", tie_default))
    return Shape(family=family, hidden=text["hidden_size"], intermediate=text["intermediate_size"],
                 layers=text["num_hidden_layers"], heads=heads, kv_heads=text.get("num_key_value_heads") or heads,
                 head_dim=text.get("head_dim") or text["hidden_size"] // heads, vocab=text["vocab_size"],
                 tied=bool(tied), qkv_bias=bool(text.get("attention_bias", qkv_bias)), mask_bytes=masks,
                 rope_tables=rope, eager=eager, norms=norms, head_norms=head_norms, gated=family not in _OPT_LIKE,
                 all_bias=family in _OPT_LIKE and bool(text.get("enable_bias", True)), norm_bias=family in _OPT_LIKE)


def _batches(n: int, b: int) -> list[int]:
    return [min(b, n - i) for i in range(0, n, b)]


def kept_rows(n: int, seq_len: int, batch: int, rows: int) -> int:
    """Rows per linear input that calibration keeps of every sample: each batch's ``[B * L, K]`` input strided
    by ``ceil(n L / rows)`` (:func:`fptq.models.calibrate.calibrate`)."""
    if not rows:
        return 0
    stride = max(1, -(-(n * seq_len) // rows))
    return sum(-(-(b * seq_len) // stride) for b in _batches(n, batch))


def heldout_rows(n: int, seq_len: int, batch: int, holdout: int, rows: int) -> int:
    """Rows per linear input kept of the last ``holdout`` samples, strided by ``ceil(holdout L / rows)``."""
    if not holdout or not rows:
        return 0
    stride, n_fit, first, total = max(1, -(-(holdout * seq_len) // rows)), n - holdout, 0, 0
    for b in _batches(n, batch):
        held = b - min(max(n_fit - first, 0), b)
        total += -(-(held * seq_len) // stride) if held else 0
        first += b
    return total


#: the components asymmetric calibration (GPTAQ, a weight quantizer with ``float_inputs``) adds to the memory
#: model (:mod:`fptq.models.memory` merges them into its ``MEANINGS``)
FLOAT_STREAM_MEANINGS = {
    "hidden_float": "GPTAQ: the float model's layer inputs/outputs, a second stream float32 [n, L, H] beside the "
                    "quantized one (its pass consumes its inputs as it makes its outputs)",
    "kept_rows_float": "GPTAQ: the float stream's kept rows per group input, float32 [rows, K]",
    "gptaq_work": "GPTAQ: the cross term D float64 [K,K], the dampened copy of H~ factored, W D and its solve "
                  "[N,K] float64, beside GPTQ of the worst group",
    "rows_again": "GPTAQ: a group's rows taken again from the layer as quantized so far, beside the kept rows of it "
                  "and of the groups after it (the worst group after the first)",
}


def float_stream_components(shape: Shape, s) -> dict:
    """Bytes of :data:`FLOAT_STREAM_MEANINGS` of a run with settings ``s`` (:class:`Settings`;
    none without ``s.float_inputs``): one more hidden-state stream,
    the float rows of every group input (the same count as the quantized stream's kept rows, no held-out rows),
    GPTAQ's target computation at the largest linear (``2 K^2 + 2 N K`` float64: D, the factor, ``W D``
    and its solve; not measured, counted from :mod:`fptq.reference.gptaq`), and the rows of a group taken again
    (:func:`fptq.models.quantize.refresh_group_rows`) beside the kept rows of that group and the later ones."""
    if not s.float_inputs:
        return {}
    ks = [k for _, k, _ in shape.groups()] if s.shared_input_rows else [k for *_, k in shape.linears()]
    work = max(2 * k * k + 2 * n * k for _, _, n, k in shape.linears())
    per_group = [4 * k * (1 if s.shared_input_rows else len(lins)) for _, k, lins in shape.groups()]
    again = max((s.rows * b + (s.rows + s.heldout_rows) * sum(per_group[j:])
                 for j, b in enumerate(per_group) if j), default=0)
    return {"hidden_float": s.n_samples * s.seq_len * shape.hidden * 4, "kept_rows_float": s.rows * 4 * sum(ks),
            "gptaq_work": 8 * work, "rows_again": again}


#: the components layer-wise scale tuning (``QuantConfig.tune_layers_steps``, :mod:`fptq.models.layer_tuning`) adds
#: to the memory model, all in its ``layer: tune`` step (:mod:`fptq.models.memory` merges them into its ``MEANINGS``)
TUNE_MEANINGS = {
    "tune_inputs": "--tune-layers without --sequential: the layer's inputs kept from its pass until its tuning ends "
                   "(the default pass drops each batch once used), float32 [n, L, H]",
    "tune_integer": "--tune-layers: the layer's integer parts (q - z) as float32 [N,K] per linear (TunedLinear)",
    "tune_scales": "--tune-layers: per linear [N, groups] float32 x6: s0, log-step d, its gradient, Adam's two "
                   "moments, exp(d) kept for the backward",
    "tune_autograd": "--tune-layers: what autograd keeps of one batch through the layer: the linears' rounded "
                     "inputs, attention q/k/v/output (eager: scores), MLP activations, norms, the loss's difference, "
                     "the dequantized weights W^ of o and the MLP",
    "tune_backward": "--tune-layers: the backward's transients (counted, not measured): the largest linear's W^ "
                     "gradient and its product with (q - z), an MLP-wide activation gradient and its input's",
}


def tune_components(shape: Shape, s) -> dict:
    """Bytes of :data:`TUNE_MEANINGS` of a run with settings ``s`` (none without ``s.tune_steps``). The targets
    are tensors counted already (``hidden_out``: the observe pass's outputs; GPTAQ: ``hidden_float``); with
    ``--sequential`` (GPTAQ too) the inputs are ``hidden_in_kept``. ``tune_autograd`` counts, for the
    ``T = B L`` tokens of one batch (float32; checked against ``torch.autograd.graph.saved_tensors_hooks`` on tiny
    models, ``tests/test_memory_model.py``): each linear's own INT8-rounded input (q/k/v: 3 ``[T,H]``, o ``[T,Nq]``,
    gate/up ``[T,H]`` each (fc1: one), down ``[T,F]``); attention's q, output ``[T,Nq]`` and k, v (``[T,Nkv]``
    where sdpa runs GQA itself: no mask; else repeated to ``[T,Nq]``); eager: q, k, v and ``2 [B,heads,L,L]``
    (the softmax's output, softcapping's tanh); the MLP's
    activation input, output and up ``3 [T,F]`` (ungated: the activation's output ``[T,F]``); each norm after the
    first ``[T,H]`` (the first's input needs no gradient; qwen3/gemma3's q/k norms ``[T,Nq + Nkv]``); the loss's
    ``y - t`` ``[T,H]``; ``W^`` of the linears whose input needs a gradient (o and the MLP; q/k/v's is dropped after
    its product). Left out as small: the norms' ``[T]`` factors, sdpa's log-sum-exp ``[B,heads,L]``, the rotary
    tables (``captured_args``), the online rotation's factors."""
    if not s.tune_steps:
        return {}
    h, f, q, b = shape.hidden, shape.intermediate, shape.q_width, min(s.batch_size, s.n_samples)
    T, kv = b * s.seq_len, q if shape.mask_bytes else shape.kv_width
    inputs = (3 + (2 if shape.gated else 1)) * h + q + f
    attention = 3 * q if shape.eager else 2 * q + 2 * kv
    heads = (q + shape.kv_width) if shape.head_norms else 0
    acts = attention + (3 if shape.gated else 1) * f + shape.norms * h + heads   # norms after the first + y - t
    qkv = sum(n * k for _, g, n, k in shape.linears() if g == "qkv")
    scales = sum(n * (1 if s.group_size == -1 else -(-k // s.group_size)) for *_, n, k in shape.linears())
    eager = 2 * b * shape.heads * s.seq_len ** 2 * 4 if shape.eager else 0
    return {"tune_inputs": 0 if s.sequential else s.n_samples * s.seq_len * h * 4,
            "tune_integer": 4 * shape.layer_params(), "tune_scales": 6 * 4 * scales,
            "tune_autograd": 4 * T * (inputs + acts) + eager + 4 * (shape.layer_params() - qkv),
            "tune_backward": 8 * max(n * k for *_, n, k in shape.linears()) + 8 * T * f}
