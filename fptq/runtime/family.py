"""The runtime's one family table: what a family computes beyond the shared decoder layer.

Where a family keeps its norms and linears is :data:`fptq.models.arch.ARCHS` (one row per family,
shared with the quantizer). What the runtime needs on top is this table, one :class:`Family` row
per supported family (keyed like :attr:`fptq.models.arch.Arch.family`); everything else is read
from the loaded model itself: the attention module's ``scaling``, ``sliding_window``,
``attn_logit_softcapping`` and ``use_rope`` (SmolLM3's layers without RoPE), the config's
activation and ``final_logit_softcapping``, and the RoPE tables from the model's own rotary module
(so RoPE scaling variants and Gemma-3's local/global bases come for free).

OPT (LayerNorm, learned positions) is in the quantizer's table but not here: a checkpoint of it
runs on the transformers path.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Family", "FAMILIES", "family_of"]


@dataclass(frozen=True)
class Family:
    """What the runtime computes differently per family.

    Attributes:
        name: the :class:`fptq.models.arch.Arch` family name.
        gain_plus_one: RMSNorm gains are ``1 + w`` (Gemma 1/2/3) instead of ``w``.
        scaled_embedding: the embedding rows are multiplied by ``float32(sqrt(hidden))`` (Gemma).
        qk_norm: RMS norms over each query/key head before RoPE (Qwen3, Gemma-3).
        post_norms: norms on the attention and MLP outputs before the residual add (Gemma 2/3).
    """

    name: str
    gain_plus_one: bool = False
    scaled_embedding: bool = False
    qk_norm: bool = False
    post_norms: bool = False


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("llama"),
    Family("mistral"),
    Family("qwen2"),
    Family("qwen3", qk_norm=True),
    Family("smollm3"),
    Family("gemma", gain_plus_one=True, scaled_embedding=True),
    Family("gemma2", gain_plus_one=True, scaled_embedding=True, post_norms=True),
    Family("gemma3", gain_plus_one=True, scaled_embedding=True, qk_norm=True, post_norms=True),
)}


def family_of(name: str) -> Family | None:
    """The row of family ``name``, or None when the runtime does not run it."""
    return FAMILIES.get(name)
