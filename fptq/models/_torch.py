"""torch for the modules of fptq.models that need it when they are imported (those defining
``nn.Module`` classes or torch-typed buffers: :mod:`~fptq.models.qlinear`, :mod:`~fptq.models.fakequant`,
:mod:`~fptq.models.int8rows`, :mod:`~fptq.models.rotate` and the checkpoint modules), with one clear
error when it is missing. Functions that need torch only when they run import it themselves, inside
the function (:mod:`~fptq.models.arch`, :mod:`~fptq.models.calibrate`, :mod:`~fptq.models.loading`),
so importing those modules costs no torch."""

try:
    import torch
    import torch.nn as nn
except ImportError as e:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "fptq.models (quantizing transformers models) needs torch and transformers: "
        "pip install 'fptq[hf]' (CPU torch: see the README)") from e

__all__ = ["torch", "nn"]
