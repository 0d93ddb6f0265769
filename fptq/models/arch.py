"""The architecture table: decoder-layer class -> where its norms and linears are.

FPTQ needs, for every decoder layer, four groups of linears that each share one
input activation, and for each group the module that *produces* that input
(where LAE's ``1/s`` can be folded exactly):

=========  ==========================  =========================================
group      linears                     producer of the input (fold target)
=========  ==========================  =========================================
``qkv``    q_proj, k_proj, v_proj      the pre-attention norm (weight, and bias)
``o``      o_proj                      v_proj's output rows (attention output is
                                       a convex combination of v rows per head)
``gate_up`` gate_proj, up_proj (fc1)   the pre-MLP norm
``down``   down_proj (fc2)             up_proj's output rows (SwiGLU/GeGLU:
                                       down's input is act(gate) * up), or fc1's
                                       rows when the activation is ReLU
                                       (relu(a / s) = relu(a) / s for s > 0)
=========  ==========================  =========================================

One :class:`Arch` row per family, keyed by the decoder layer's class name; no
family has its own copy of the pipeline. Norm kinds:

* ``rms``: ``y = w * x / rms(x)`` (LLaMA, Mistral, Qwen2/3, SmolLM3): fold ``w' = w / s``.
* ``rms_one_plus``: ``y = (1 + w) * x / rms(x)`` (Gemma 1/2/3): fold
  ``w' = (1 + w) / s - 1``.
* ``layernorm``: ``y = w * (x - mean) / std + b`` (OPT): fold ``w' = w / s``,
  ``b' = b / s``.

Gemma2/3 also have *post*-norms (``post_attention_layernorm`` applied to the
attention output, ``post_feedforward_layernorm`` to the MLP output); they act
after o_proj/down_proj and are not fold targets. Their pre-MLP norm is
``pre_feedforward_layernorm``. Qwen3/Gemma3's ``q_norm``/``k_norm`` act after
q/k_proj on the head dimension and do not touch v, so every fold stays exact.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Arch", "ARCHS", "LINEAR_GROUPS", "UnsupportedArchitecture", "arch_of_model",
           "find_decoder_layers", "supported_summary"]

#: The four input-sharing groups of a decoder layer, in forward order.
LINEAR_GROUPS = ("qkv", "o", "gate_up", "down")


class UnsupportedArchitecture(ValueError):
    """The model's decoder layers are not in :data:`ARCHS`."""


@dataclass(frozen=True)
class Arch:
    """Where a family keeps its norms and linears (paths relative to one decoder layer).

    Attributes:
        family: short name (``llama``, ``gemma3``, ``opt``...).
        layer_class: the decoder layer's class name in transformers.
        norm_kind: ``rms`` | ``rms_one_plus`` | ``layernorm`` (see module docstring).
        attn_norm, mlp_norm: the pre-attention / pre-MLP norms.
        q, k, v, o: the attention projections.
        gate_up: the MLP input projections (``(gate, up)`` or ``(fc1,)``).
        down: the MLP output projection.
        down_fold: the linear whose output rows scale down's input exactly, or None.
        down_fold_acts: for a non-gated MLP, the activations for which folding into
            ``down_fold`` is exact (positively homogeneous ones); None = any (gated).
        act_attr: the config attribute naming the MLP activation.
    """

    family: str
    layer_class: str
    norm_kind: str
    attn_norm: str
    mlp_norm: str
    q: str
    k: str
    v: str
    o: str
    gate_up: tuple[str, ...]
    down: str
    down_fold: str | None
    down_fold_acts: tuple[str, ...] | None = None
    act_attr: str = "hidden_act"

    def group_linears(self, group: str) -> tuple[str, ...]:
        """The linears of one input-sharing group (see :data:`LINEAR_GROUPS`)."""
        return {"qkv": (self.q, self.k, self.v), "o": (self.o,),
                "gate_up": self.gate_up, "down": (self.down,)}[group]

    def linears(self) -> tuple[str, ...]:
        """Every quantized linear of a decoder layer, in forward order."""
        return tuple(n for g in LINEAR_GROUPS for n in self.group_linears(g))

    def kind_of(self, linear: str) -> str:
        """The group a linear path belongs to."""
        for g in LINEAR_GROUPS:
            if linear in self.group_linears(g):
                return g
        raise KeyError(linear)


def _llama_like(family: str, layer_class: str, norm_kind: str = "rms",
                mlp_norm: str = "post_attention_layernorm") -> Arch:
    return Arch(family, layer_class, norm_kind, "input_layernorm", mlp_norm,
                "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj", "mlp.up_proj")


#: decoder layer class name -> its row.
ARCHS: dict[str, Arch] = {a.layer_class: a for a in (
    _llama_like("llama", "LlamaDecoderLayer"),
    _llama_like("mistral", "MistralDecoderLayer"),
    _llama_like("qwen2", "Qwen2DecoderLayer"),
    _llama_like("qwen3", "Qwen3DecoderLayer"),
    _llama_like("smollm3", "SmolLM3DecoderLayer"),  # LLaMA's layer; every 4th layer has no RoPE (NoPE)
    _llama_like("gemma", "GemmaDecoderLayer", "rms_one_plus"),
    _llama_like("gemma2", "Gemma2DecoderLayer", "rms_one_plus", "pre_feedforward_layernorm"),
    _llama_like("gemma3", "Gemma3DecoderLayer", "rms_one_plus", "pre_feedforward_layernorm"),
    Arch("opt", "OPTDecoderLayer", "layernorm", "self_attn_layer_norm", "final_layer_norm",
         "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
         ("fc1",), "fc2", "fc1", down_fold_acts=("relu",), act_attr="activation_function"),
)}


def supported_summary() -> str:
    """``"llama (LlamaDecoderLayer), ..."`` for error messages and docs."""
    return ", ".join(f"{a.family} ({a.layer_class})" for a in ARCHS.values())


def find_decoder_layers(model):
    """The ``nn.ModuleList`` of decoder layers and its dotted path in ``model``.

    Finds the first ModuleList whose children are all instances of one class
    (the decoder stack). Returns ``(path, layers, layer_class_name)``.
    Raises :class:`UnsupportedArchitecture` when there is none.
    """
    import torch.nn as nn

    for path, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            names = {type(c).__name__ for c in mod}
            if len(names) == 1 and next(iter(names)).endswith(("DecoderLayer", "Block", "Layer")):
                return path, mod, next(iter(names))
    raise UnsupportedArchitecture(
        f"{type(model).__name__}: no stack of decoder layers found; supported: {supported_summary()}")


def arch_of_model(model) -> Arch:
    """The :class:`Arch` row of a transformers causal LM, checked against the model.

    Raises :class:`UnsupportedArchitecture` (listing the supported families) when
    the decoder layer class is not in the table, or a variant the table cannot
    handle (OPT with post-layer-norm, e.g. OPT-350m).
    """
    _, layers, cls = find_decoder_layers(model)
    arch = ARCHS.get(cls)
    if arch is None:
        raise UnsupportedArchitecture(
            f"unsupported architecture: decoder layer {cls} ({type(model).__name__}); "
            f"supported: {supported_summary()}")
    cfg = getattr(model, "config", None)
    if arch.family == "opt" and cfg is not None and not getattr(cfg, "do_layer_norm_before", True):
        raise UnsupportedArchitecture(
            "OPT with do_layer_norm_before=False (post-norm, e.g. OPT-350m) is not supported: "
            "its q/k/v and fc1 inputs are not norm outputs")
    layer = layers[0]
    for path in (arch.attn_norm, arch.mlp_norm) + arch.linears():
        if get_submodule(layer, path) is None:
            raise UnsupportedArchitecture(f"{cls}: expected submodule {path!r} is missing")
    return arch


def get_submodule(module, path: str):
    """``module.a.b`` for path ``"a.b"``, or None when a part is missing."""
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module
