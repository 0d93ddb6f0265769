"""The one place fptq.models imports torch: a clear error when it is missing."""

try:
    import torch
    import torch.nn as nn
except ImportError as e:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "fptq.models (quantizing transformers models) needs torch and transformers: "
        "pip install 'fptq[hf]' (CPU torch: see the README)") from e

__all__ = ["torch", "nn"]
