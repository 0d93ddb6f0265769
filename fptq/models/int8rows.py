"""INT8 per-row embeddings and lm_head: the optional storage of ``fptq quantize --int8-embeddings``.

Row ``v`` of the ``[V, H]`` matrix (token ``v``'s embedding; for lm_head, output channel ``v``)
is symmetric INT8 with one float32 scale, the rule of
:func:`fptq.reference.quantize_weight_int8_per_channel` (the spec's per-token rule on rows)::

    scale[v] = max(max_h |W[v, h]| / 127, 2**-126)
    q[v, h]  = clip(rint(W[v, h] / scale[v]), -127, 127)
    W_hat[v, h] = float32(q[v, h]) * scale[v]        (fptq.spec.dequantize_act)

Compute stays float32: :class:`Int8Embedding` returns ``W_hat[ids]`` (times the module's
``embed_scale`` where the model's embedding module had one, Gemma-3's scaled embedding), and
:class:`Int8LMHead` returns ``x @ W_hat^T (+ bias)``, dequantizing the weight at each forward (no
float copy is kept, so the model also holds 1 byte per element instead of 4). Both give exactly
the values of the float model whose weight is ``W_hat`` (the same float32 products).

Tied embeddings (``lm_head.weight is embed_tokens.weight``) become one (q, scale) pair shared
by both modules: the checkpoint stores it once. The formula above is not implemented here: rows
are quantized by :mod:`fptq.reference` and dequantized element for element as
:func:`fptq.spec.dequantize_act` does (one float32 multiply).
"""

from __future__ import annotations

from ..reference import quantize_weight_int8_per_channel
from ._torch import nn, torch
from .checkpoint_meta import INT8_ROW_KINDS

__all__ = ["Int8Embedding", "Int8LMHead", "INT8_ROW_KINDS", "int8_row_targets", "int8_row_modules",
           "install_int8_rows"]


class _Int8Rows(nn.Module):
    """Buffers ``qweight`` (int8 [V, H]) and ``scale`` (float32 [V]); shared when ``tied_to`` is given."""

    def __init__(self, rows: int, cols: int, tied_to: _Int8Rows | None = None):
        super().__init__()
        if tied_to is not None:
            if (tied_to.rows, tied_to.cols) != (rows, cols):
                raise ValueError(f"cannot tie a {rows}x{cols} INT8 matrix to a {tied_to.rows}x{tied_to.cols} one")
            q, s = tied_to.qweight, tied_to.scale
        else:
            q, s = torch.zeros(rows, cols, dtype=torch.int8), torch.ones(rows, dtype=torch.float32)
        self.rows, self.cols = rows, cols
        self.register_buffer("qweight", q)
        self.register_buffer("scale", s)

    def set_rows(self, w) -> None:
        """Quantize a float [V, H] weight into the buffers (in place, so tied modules see it too)."""
        q, s = quantize_weight_int8_per_channel(w.detach().to("cpu", torch.float32).numpy())
        with torch.no_grad():
            self.qweight.copy_(torch.from_numpy(q))
            self.scale.copy_(torch.from_numpy(s))

    def dequantized(self, rows=None):
        """float32 ``float32(q) * scale`` of all rows, or of the rows ``rows`` (any index shape)."""
        if rows is None:
            return self.qweight.to(torch.float32) * self.scale[:, None]
        return self.qweight[rows].to(torch.float32) * self.scale[rows].unsqueeze(-1)


class Int8Embedding(_Int8Rows):
    """Embedding lookup from INT8 rows: ``float32(qweight[ids]) * scale[ids]`` (times ``embed_scale``
    when the float module had one, as Gemma-3's ``Gemma3TextScaledWordEmbedding`` multiplies)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, embed_scale=None, padding_idx=None):
        super().__init__(num_embeddings, embedding_dim)
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.register_buffer("embed_scale", None if embed_scale is None else embed_scale.detach().clone(),
                             persistent=False)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 rows"

    def forward(self, input_ids):
        out = self.dequantized(input_ids)
        return out if self.embed_scale is None else out * self.embed_scale.to(torch.float32)


class Int8LMHead(_Int8Rows):
    """``y = x @ (float32(qweight) * scale[:, None])^T + bias``: lm_head from INT8 rows, float32 compute."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, tied_to: Int8Embedding | None = None):
        super().__init__(out_features, in_features, tied_to)
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32) if bias else None)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int8 rows, bias={self.bias is not None}"

    def forward(self, x):
        return torch.nn.functional.linear(x.to(torch.float32), self.dequantized(), self.bias)


def _name_of(model, module) -> str | None:
    return next((n for n, m in model.named_modules() if m is module), None)


def int8_row_targets(model) -> dict[str, str]:
    """module name -> kind (``embedding`` / ``lm_head``) of the modules ``--int8-embeddings`` stores as
    INT8 rows: the model's input embedding (an ``nn.Embedding``) and its output embedding (an
    ``nn.Linear``), in the order of ``named_modules``. ValueError if the model has neither."""
    found = {}
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if isinstance(emb, nn.Embedding):
        found[_name_of(model, emb)] = "embedding"
    if isinstance(head, nn.Linear):
        found[_name_of(model, head)] = "lm_head"
    found.pop(None, None)
    if not found:
        raise ValueError(f"{type(model).__name__} has no nn.Embedding input embedding or nn.Linear lm_head "
                         "to store as INT8 rows")
    order = [n for n, _ in model.named_modules()]
    return dict(sorted(found.items(), key=lambda kv: order.index(kv[0])))


def _new_module(mod, kind: str, shared):
    if kind == "embedding":
        return Int8Embedding(mod.num_embeddings, mod.embedding_dim, getattr(mod, "embed_scale", None),
                             mod.padding_idx)
    tied = shared if shared is not None and mod.weight is shared[1] else None
    return Int8LMHead(mod.in_features, mod.out_features, mod.bias is not None,
                      tied_to=None if tied is None else tied[0])


def int8_row_modules(model, targets: dict[str, str], quantize: bool = True) -> dict:
    """name -> a new :class:`Int8Embedding` / :class:`Int8LMHead` for each of ``targets`` (name ->
    kind) of ``model`` (not modified). A lm_head whose weight *is* the embedding's weight (tied)
    shares the embedding module's buffers. ``quantize``: fill the rows from the float weights
    (else they stay empty, to be loaded). Raises ValueError for a name that is not a module of
    that kind."""
    out, shared = {}, None
    for name, kind in sorted(targets.items(), key=lambda nk: nk[1] != "embedding"):  # the embedding first
        try:
            mod = model.get_submodule(name)
        except AttributeError:
            mod = None
        want = {"embedding": nn.Embedding, "lm_head": nn.Linear}.get(kind)
        if want is None or not isinstance(mod, want):
            raise ValueError(f"int8 rows: {name!r} is not an {want.__name__ if want else kind} of this "
                             f"{type(model).__name__} (kind {kind!r}; kinds: {INT8_ROW_KINDS})")
        new = _new_module(mod, kind, shared)
        tied = kind == "lm_head" and shared is not None and mod.weight is shared[1]
        if quantize and not tied:  # a tied lm_head already shares the embedding's filled buffers
            new.set_rows(mod.weight)
        if quantize and kind == "lm_head" and mod.bias is not None:
            with torch.no_grad():
                new.bias.copy_(mod.bias.detach().to(torch.float32))
        if kind == "embedding":
            shared = (new, mod.weight)
        out[name] = new
    return {name: out[name] for name in targets}


def install_int8_rows(model, modules: dict) -> None:
    """Put the modules of :func:`int8_row_modules` into ``model`` in place of the float ones."""
    for name, new in modules.items():
        parent_path, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, attr, new)
