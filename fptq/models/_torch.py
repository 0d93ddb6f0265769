"""torch for the modules of fptq.models that need it when they are imported (the ``nn.Module``
classes, e.g. :mod:`~fptq.models.qlinear`, :mod:`~fptq.models.fakequant`, :mod:`~fptq.models.checkpoint`),
with one clear error when it is missing. Functions that need torch only when they run import it
themselves, inside the function."""

try:
    import torch
    import torch.nn as nn
except ImportError as e:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "fptq.models (quantizing transformers models) needs torch and transformers: "
        "pip install 'fptq[hf]' (CPU torch: see the README)") from e

__all__ = ["torch", "nn"]
