"""fptq.models: FPTQ on transformers causal LMs, the adapter between models and :mod:`fptq.reference`.

This package moves tensors in and out of transformers models (hooks, module
surgery, checkpoint I/O); every piece of FPTQ math it applies is a NumPy
function of :mod:`fptq.reference` (see ``docs/architecture.md``). Needs torch
and transformers.

Modules, in levels (a module imports only lower levels; ``docs/architecture.md``,
"Inside fptq.models", checked by ``tests/test_layering.py``):

0. :mod:`~fptq.models._torch` (torch or one clear error), :mod:`~fptq.models.arch` (the
   architecture table), :mod:`~fptq.models.checkpoint_meta` (the checkpoint's metadata, no torch),
   :mod:`~fptq.models.loading` (local float models, the embedded SmolLM2 default),
   :mod:`~fptq.models.memory_shape`, :mod:`~fptq.models.memory_time` (the memory model's reading of a config
   and its operation counts, standard library only);
1. :mod:`~fptq.models.config` (the one configuration object);
2. :mod:`~fptq.models.calibrate` (layer-by-layer statistics), :mod:`~fptq.models.rotate` (the
   rotations), :mod:`~fptq.models.fold` (LAE folds, in place), :mod:`~fptq.models.qlinear` (the
   W4A8 module, on any backend), :mod:`~fptq.models.int8rows` (``--int8-embeddings``),
   :mod:`~fptq.models.memory` (the memory model of a streamed run, ``docs/scale.md``);
3. :mod:`~fptq.models.plan` (each group's policy, LAE scales, fallbacks),
   :mod:`~fptq.models.fakequant` (the float module of the compare baselines);
4. :mod:`~fptq.models.quantize` (ties the steps together: :func:`~fptq.models.quantize.quantize_model`);
5. :mod:`~fptq.models.checkpoint_read`, :mod:`~fptq.models.checkpoint_write` (the files);
6. :mod:`~fptq.models.checkpoint` (:func:`~fptq.models.checkpoint.save_quantized`,
   :func:`~fptq.models.checkpoint.load_quantized`).

Submodules are imported on use so that ``import fptq.models`` stays cheap.
"""

__all__ = ["arch", "calibrate", "checkpoint", "checkpoint_meta", "checkpoint_read", "checkpoint_write", "config",
           "fakequant", "fold", "int8rows", "loading", "memory", "memory_shape", "memory_time", "plan", "qlinear",
           "quantize", "rotate"]
