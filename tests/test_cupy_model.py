"""A real model's forward through CupyBackend's model-facing methods, on the CPU.

There is no GPU here, so the backend is tests/test_cupy_simulation.py's
``EmulatedCupyBackend``: CupyBackend's host code (the base class's checks,
``prepare_linear``/``linear_forward``/``linear_forward_finite``, every hook's
allocations, argument order, flags, grids and path choice) over NumPy arrays,
each CUDA kernel replaced by a NumPy transcription of its source. A tiny llama
from fptq.testing, quantized once, must give the numpy backend's logits bit for
bit, on every matmul path the shapes allow.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_cupy_simulation import EmulatedCupyBackend  # noqa: E402

from fptq.backends import BackendBase, get_backend  # noqa: E402
from fptq.backends.base import missing_members  # noqa: E402
from fptq.models.config import QuantConfig  # noqa: E402
from fptq.models.qlinear import quantized_linears, set_quantized_mode  # noqa: E402
from fptq.models.quantize import quantize_model  # noqa: E402
from fptq.testing import tiny_model  # noqa: E402


class CpuCupy(EmulatedCupyBackend):
    """The emulated cupy backend, choosing its matmul path by shape (decode / prefill / generic)."""

    name = "cupy-emulated-cpu"
    device = "cpu"
    paths: list = []

    def _launcher(self, *args):
        launch, out = super()._launcher(*args)
        type(self).paths.append(self.last_path)
        return launch, out


class CpuCupyGeneric(CpuCupy):
    def __init__(self):
        super().__init__(force_path="generic")


@pytest.fixture(scope="module")
def quantized():
    model = tiny_model("llama")
    ids = torch.randint(3, 259, (4, 24), generator=torch.Generator().manual_seed(0))
    res = quantize_model(model, ids, QuantConfig(group_size=32), backend="numpy", progress=False)
    return res.model, ids[:1, :20]


def _logits(model, ids, backend, origin=False):
    set_quantized_mode(model, "integer", backend)
    for m in quantized_linears(model).values():
        if origin:
            m.origin = f"layer of test ({backend})"
        else:
            m.__dict__.pop("origin", None)
    with torch.no_grad():
        return model(ids).logits.numpy()


def test_the_cupy_class_is_a_complete_backend():
    b = CpuCupy()
    assert isinstance(b, BackendBase) and not missing_members(b)
    assert b.array_type is np.ndarray  # the emulation's arrays: the model hands it NumPy arrays


@pytest.mark.parametrize("cls", [CpuCupy, CpuCupyGeneric])
@pytest.mark.parametrize("origin", [False, True])
def test_tiny_model_forward_matches_numpy_bit_for_bit(quantized, cls, origin):
    model, ids = quantized
    want = _logits(model, ids, "numpy")
    cls.paths = []
    got = _logits(model, ids, f"{__name__}:{cls.__name__}", origin)   # prefill: M = 20 rows
    assert got.tobytes() == want.tobytes()
    got1 = _logits(model, ids[:, :1], f"{__name__}:{cls.__name__}", origin)  # decode: M = 1
    assert got1.tobytes() == _logits(model, ids[:, :1], "numpy").tobytes()
    assert set(cls.paths) == ({"generic"} if cls is CpuCupyGeneric else {"prefill", "decode"}), set(cls.paths)
    assert isinstance(get_backend(f"{__name__}:{cls.__name__}"), cls)
