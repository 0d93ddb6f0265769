"""Where the calibration's heavy float work runs: ``fptq quantize --device cuda`` (issue 22, ``docs/scale.md``).

With a device, each decoder layer's calibration forward runs there (:func:`layer_on` lends the layer's
parameters and buffers to the device for the pass and gives the host tensors back after it, so every
tensor the rest of the pipeline holds is the one it held before: identities, shared rotations and the
checkpoint's bytes logic unchanged), the per-channel input maxima are reduced there (only ``[K]`` comes
back), the kept calibration rows come back to the host (every consumer reads them there), and each group's
GPTQ Hessian ``X'^T X'`` is computed there in float64 (:func:`device_hessian`). The rotation, the plan,
the folds, GPTQ's column loop and the checkpoint stay on the host (:mod:`fptq.reference`, NumPy).

What differs from the CPU path: the float32 forward's rounding (another GEMM and attention kernel; TF32 is
off) and the Hessian's float64 summation order. The maxima reduce exactly; the difference is in the layer
outputs' last bits, so a few INT4 codes can fall on the other side of a rounding boundary
(``docs/scale.md`` gives the measured fraction and its perplexity effect).

``device=None`` (the default everywhere) is the CPU path, untouched; a ``torch.device("cpu")`` passed
explicitly runs this module's code on the CPU (how the tests check it without a GPU).
"""

from __future__ import annotations

import contextlib

import numpy as np

__all__ = ["resolve_device", "to_device", "layer_on", "device_hessian", "channel_max"]


def resolve_device(name: str | None):
    """The ``torch.device`` of ``--device NAME`` (None for ``"cpu"`` or None: the CPU path); ``"cuda"`` or
    ``"cuda:N"`` must be a device torch sees (a ValueError naming the argument otherwise). Float32 matrix
    products on it are made full precision (no TF32)."""
    if name is None or name == "cpu":
        return None
    import torch

    if not str(name).startswith("cuda"):
        raise ValueError(f"--device: expected 'cpu' or 'cuda[:N]', got {name!r}")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device {name}: {e}") from None
    if not torch.cuda.is_available():
        raise ValueError(f"--device {name}: torch {torch.__version__} sees no CUDA device (a CPU-only torch, or "
                         "no GPU/driver here); use --device cpu")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: torch sees {torch.cuda.device_count()} CUDA device(s)")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return dev


def to_device(obj, device):
    """``obj`` with every tensor in it (nested tuples, lists, dicts) moved to ``device``; other values as they are."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(to_device(o, device) for o in obj)
    if isinstance(obj, list):
        return [to_device(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


@contextlib.contextmanager
def layer_on(layer, device):
    """``layer``'s parameters and buffers on ``device`` inside the block (device copies in their slots); on exit
    the very host objects are put back in those slots, whatever the block raised."""
    import torch

    lent, copies = [], {}   # a tensor in several slots (a shared rotation) gets one device copy
    try:
        for module in layer.modules():
            for slots in (module._parameters, module._buffers):
                for name, t in list(slots.items()):
                    if t is None:
                        continue
                    lent.append((slots, name, t))
                    if id(t) not in copies:
                        moved = t.detach().to(device)
                        copies[id(t)] = torch.nn.Parameter(moved, t.requires_grad) \
                            if isinstance(t, torch.nn.Parameter) else moved
                    slots[name] = copies[id(t)]
        yield layer
    finally:
        for slots, name, host in reversed(lent):
            slots[name] = host


def channel_max(x):
    """``max |x[..., j]|`` over every row of ``x`` [..., K] as float32 ``[1, K]`` on the host: what
    :meth:`fptq.reference.CalibrationStats.observe` folds, reduced where ``x`` lives (exact: a maximum has
    no rounding). NaN/Inf propagate into it, so the stats' finiteness check still fires."""
    import torch

    x2 = x.detach().reshape(-1, x.shape[-1])
    if x2.shape[0] == 0:
        return np.zeros((0, x.shape[-1]), np.float32)
    return x2.abs().amax(dim=0).to(torch.float32).cpu().numpy()[None]   # amax propagates NaN


def device_hessian(rows, s, device):
    """``H = X'^T X' / n`` (float64 ``[K, K]``, host NumPy) with ``X' = rows / s`` (``rows``: float32 tensor
    ``[n, K]`` on the host; ``s``: float ``[K]`` or None), the products on ``device`` in float64: the same
    formula as :func:`fptq.reference.equalized_hessian` (the division in float64, then the sum of products;
    only the summation order differs). Refuses non-finite rows as the reference does."""
    import torch

    x = rows.to(device=device, dtype=torch.float64)
    if s is not None:
        x.div_(torch.as_tensor(np.asarray(s, np.float64), device=device))
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains a non-finite value; fptq rejects NaN and Inf")
    n = x.shape[0]
    if n == 0:
        raise ValueError("no calibration rows were added to the Hessian")
    h = x.T @ x
    del x
    h.div_(n)
    out = h.cpu().numpy()
    del h
    return out
