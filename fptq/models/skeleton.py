"""A float model that is never held whole: its parameters on the meta device until a layer's turn comes.

A streamed quantization (issue 22, ``docs/scale.md``) builds the transformers model of a
:class:`~fptq.models.sources.WeightSource`'s config with every *parameter* on the meta device (no memory,
no initialization) and every *buffer* real (rotary ``inv_freq``, Gemma's ``embed_scale``: computed by the
modules' constructors exactly as :func:`fptq.models.loading.load_float_model` gets them), then
:func:`materialize` reads the parameters of one module (a decoder layer, the embeddings) from the source in
float32 when they are needed and :func:`release` returns them to the meta device afterwards.

The values are the source's converted to float32 (``tensor.to(torch.float32)``): the same bits as
``from_pretrained(dtype=torch.float32)`` gives the whole model (bf16/fp16 widen exactly), so a streamed run
quantizes exactly the model the whole-model path loads.
"""

from __future__ import annotations

import contextlib

from ._torch import nn, torch
from .finite import all_finite
from .loading import ModelLoadError

__all__ = ["skeleton", "materialize", "release", "is_materialized", "check_source_names"]


@contextlib.contextmanager
def _parameters_on_meta():
    """Every parameter registered inside goes to the meta device as it is registered (buffers stay real).

    What ``accelerate.init_empty_weights(include_buffers=False)`` does; with transformers' ``no_init_weights``
    the CPU tensor a constructor makes is never written (its pages never touched) before it moves."""
    register = nn.Module.register_parameter

    def on_meta(module, name, param):
        register(module, name, param)
        if param is not None and not param.is_meta:
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def skeleton(config):
    """The float32 causal LM of ``config`` (a transformers config), eval mode, parameters on meta, buffers real."""
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    config.dtype = torch.float32
    with no_init_weights(), _parameters_on_meta():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.tie_weights()  # no_init_weights skips init_weights, which ties them
    model.eval()
    # tied parameters (one object under several names) stop being one object once a module is read and
    # released on its own; the names of each tie are kept to read and tie them again
    model._fptq_ties = {n: tuple(names) for names in _aliases(model).values() if len(names) > 1 for n in names}
    return model


def _aliases(model) -> dict[int, list[str]]:
    """id(parameter) -> every state-dict name of it (tied weights have several)."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return names


def check_source_names(model, source) -> None:
    """The source holds exactly the parameters ``model`` needs (a tied one under one of its names), each of
    the model's shape: a missing, unused or misshapen tensor is a :class:`ModelLoadError` naming it, before
    anything is read (``load_float_model``'s checks, from the headers alone)."""
    have = set(source.names())
    missing, shapes = [], []
    for names in _aliases(model).values():
        found = [n for n in names if n in have]
        if not found:
            missing.append(names[0])
            continue
        want = tuple(model.get_parameter(names[0]).shape)
        if tuple(source.shape(found[0])) != want:
            shapes.append(f"{found[0]} {list(source.shape(found[0]))} (the config needs {list(want)})")
    used = {n for names in _aliases(model).values() for n in names}
    unused = sorted(have - used - {b for b, _ in model.named_buffers()})
    where = source.path
    if missing or shapes:
        raise ModelLoadError(f"{where}: the weights do not match the config (missing or mismatched: "
                             f"{(sorted(missing) + shapes)[:5]})")
    if unused:
        raise ModelLoadError(f"{where}: weights that the config does not use: {unused[:5]}"
                             f"{'...' if len(unused) > 5 else ''} (was num_hidden_layers or another size edited?)")


def materialize(model, paths, source) -> None:
    """Read every meta parameter of the modules at ``paths`` (full module paths of ``model``) from
    ``source`` as float32 (``requires_grad`` False). A parameter tied to another (the same object under two
    names) is read once, under whichever name the source holds, and stays tied within one call. A value
    that is not finite is a :class:`~fptq.reference.NonFiniteError` naming it (as loading refuses it)."""
    from ..reference import NonFiniteError

    ties = getattr(model, "_fptq_ties", None) or {}
    done: dict[tuple, object] = {}
    have = set(source.names())
    for path in paths:
        for sub_path, sub in model.get_submodule(path).named_modules(prefix=path):
            for pname, p in list(sub._parameters.items()):
                if p is None or not p.is_meta:
                    continue
                names = ties.get(f"{sub_path}.{pname}", (f"{sub_path}.{pname}",))
                if names not in done:
                    key = next((n for n in names if n in have), names[0])
                    t = source.tensor(key)
                    if tuple(t.shape) != tuple(p.shape):
                        raise ModelLoadError(f"{source.path}: tensor {key} has shape {list(t.shape)}, the model "
                                             f"needs {list(p.shape)}")
                    t = t.to(torch.float32)
                    if not all_finite(t):
                        raise NonFiniteError(f"weight {key} of {source.path} contains NaN or Inf")
                    done[names] = nn.Parameter(t, requires_grad=False)
                sub._parameters[pname] = done[names]


def is_materialized(module) -> bool:
    """No parameter of ``module`` is on the meta device."""
    return not any(p.is_meta for p in module.parameters())


def release(module) -> None:
    """Return ``module``'s parameters and buffers to the meta device (their memory freed; a W4A8 module's
    caches too, by its ``_apply``)."""
    module.to("meta")
