"""Input checks of the torch backend: :mod:`fptq.spec.validate` on torch tensors.

Every public operation of :class:`fptq.backends.torch_backend.TorchBackend`
runs its arguments through these first, so a tensor on the wrong device, of
the wrong dtype or shape, or holding NaN/Inf is rejected with a
``ValueError``/``TypeError`` that names the argument, with the same rules the
NumPy reference applies:

* float arguments: float32 is taken as is; other real dtypes (float64,
  float16, bfloat16, integers) are converted to float32 exactly as
  ``np.asarray(x).astype(np.float32)`` would (round to nearest even); bool and
  complex are refused;
* integer arguments (``qx`` int8, ``packed``/``zero`` uint8, ``acc`` int32)
  must already have their dtype;
* a ``torch.Tensor`` must live on the backend's device; anything else
  (a NumPy array, a Python number) is converted with ``from_numpy``.

Imports torch at module level: only :mod:`fptq.backends.torch_backend`
imports this module, after checking that torch is installed.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["as_tensor", "as_float32", "check_dtype", "check_ndim", "check_shape",
           "check_finite", "check_positive_scale", "check_nonnegative", "check_zero_points"]

_REAL = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.uint8, torch.int8,
         torch.int16, torch.int32, torch.int64)


def as_tensor(x, name: str, device: torch.device) -> torch.Tensor:
    """``x`` as a tensor on ``device``: a tensor elsewhere is an error, an array-like is copied there."""
    if isinstance(x, torch.Tensor):
        if x.device != device:
            raise ValueError(f"{name}: tensor is on {x.device}, but this backend computes on {device}; "
                             f"move it with .to({str(device)!r}) or backend.from_numpy")
        return x
    if x is None:
        raise TypeError(f"{name}: expected a tensor, got None")
    a = np.asarray(x)
    if a.dtype == object:
        raise TypeError(f"{name}: cannot make a tensor of {type(x).__name__}")
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    return torch.from_numpy(np.array(a, copy=True, order="C")).to(device)


def as_float32(x, name: str, device: torch.device) -> torch.Tensor:
    """``x`` as a finite float32 tensor on ``device`` (see the module docstring for the dtype rule)."""
    t = as_tensor(x, name, device)
    if t.dtype != torch.float32:
        if t.dtype not in _REAL:
            raise TypeError(f"{name}: expected a float32 tensor, got dtype {t.dtype}")
        t = t.to(torch.float32)
    check_finite(t, name)
    return t


def check_finite(t: torch.Tensor, name: str) -> None:
    """``ValueError`` naming ``name`` and the first bad index if ``t`` holds NaN or Inf."""
    if t.numel() and t.is_floating_point():
        ok = torch.isfinite(t)
        if not bool(ok.all()):
            idx = tuple(int(i) for i in (~ok).nonzero()[0])
            raise ValueError(f"{name} contains a non-finite value ({t[idx].item()!r} at index {idx}); "
                             "fptq rejects NaN and Inf")


def check_dtype(x, dtype: torch.dtype, name: str, device: torch.device) -> torch.Tensor:
    """``x`` as a tensor on ``device`` that must already have ``dtype`` (no conversion)."""
    t = as_tensor(x, name, device)
    if t.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {t.dtype}")
    return t


def check_ndim(t: torch.Tensor, ndim: int, name: str) -> None:
    if t.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor, got shape {tuple(t.shape)}")


def check_shape(t: torch.Tensor, shape: tuple, name: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(t.shape)}")


def check_positive_scale(s: torch.Tensor, name: str) -> None:
    """Scales must be finite and > 0 (the spec never produces anything else)."""
    check_finite(s, name)
    if s.numel():
        ok = s > 0
        if not bool(ok.all()):
            idx = tuple(int(i) for i in (~ok).nonzero()[0])
            raise ValueError(f"{name} must be > 0, got {s[idx].item()!r} at index {idx}")


def check_nonnegative(t: torch.Tensor, name: str) -> None:
    if t.numel() and bool((t < 0).any()):
        raise ValueError(f"{name} must be >= 0")


def check_zero_points(zero, shape: tuple, asymmetric: bool, device: torch.device):
    """``fptq.spec.validate.check_zero_points`` on tensors: uint8 of ``shape`` with values in
    [0, 15] for the asymmetric format, ``None`` for the symmetric one."""
    from ..spec.formats import UINT4_ASYM

    if not asymmetric:
        if zero is not None:
            raise ValueError("zero: the symmetric format has no zero point; pass None")
        return None
    if zero is None:
        raise ValueError("zero: the asymmetric format needs a zero point per group")
    zero = check_dtype(zero, torch.uint8, "zero", device)
    check_shape(zero, shape, "zero")
    if zero.numel():
        bad = zero > UINT4_ASYM.qmax
        if bool(bad.any()):
            idx = tuple(int(i) for i in bad.nonzero()[0])
            raise ValueError(f"zero: zero points must be in [0, {UINT4_ASYM.qmax}], "
                             f"got {int(zero[idx])} at index {idx}")
    return zero
