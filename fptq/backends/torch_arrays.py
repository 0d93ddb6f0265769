"""The torch array adapter of the spec's argument checks (:mod:`fptq.spec.arrays`).

:mod:`fptq.spec.validate` states every rule once over an adapter; this one
answers its questions for torch tensors on one device, so the torch backends
reject exactly what the NumPy reference rejects, with the same exception class
and message. Imports torch when constructed (einops style).

Reading an argument (``asarray``): a ``torch.Tensor`` must already live on the
backend's device (another device, ``meta`` included, is a ``TypeError`` naming
the argument); anything else goes through the NumPy adapter (so a foreign
object it cannot read is the same ``TypeError``) and is copied to the device.
"""

from __future__ import annotations

import numpy as np

from ..spec.arrays import NUMPY

__all__ = ["TorchArrays"]


class TorchArrays:
    """The array adapter of torch tensors on ``device`` (see the module docstring)."""

    name = "torch"

    def __init__(self, device):
        import torch

        self.torch = torch
        self.device = torch.device(device)

    def asarray(self, x, name: str):
        torch = self.torch
        if isinstance(x, torch.Tensor):
            if x.device != self.device:
                raise TypeError(f"{name}: tensor is on {x.device}, but this backend computes on {self.device}; "
                                f"move it with .to({str(self.device)!r}) or backend.from_numpy [docs/spec.md §9]")
            return x
        a = NUMPY.asarray(x, name)
        try:
            t = torch.from_numpy(np.array(a, copy=True, order="C"))
        except TypeError:
            raise TypeError(f"{name}: expected an array of numbers, got dtype {a.dtype} [docs/spec.md §9]") from None
        return t.to(self.device)

    def dtype(self, a) -> str:
        return str(a.dtype).removeprefix("torch.")

    def shape(self, a) -> tuple:
        return tuple(int(s) for s in a.shape)

    def to_float32(self, a):
        return a.to(self.torch.float32)

    def isfinite(self, a):
        return self.torch.isfinite(a)

    def first_true(self, mask) -> tuple | None:
        if not bool(mask.any()):
            return None
        return tuple(int(i) for i in mask.nonzero()[0])

    def item(self, a, idx: tuple):
        return a[idx].item()

    def min(self, a):
        return a.min().item()

    def max(self, a):
        return a.max().item()

    def device_of(self, a) -> str:
        return str(a.device)
