"""``--device``: the calibration forward and the GPTQ Hessians on another torch device (fptq.models.device).

Without a GPU the device code path runs on ``torch.device("cpu")`` (passed explicitly, it takes the same
route as CUDA: maxima reduced by torch, rows copied to the host, Hessians by torch in float64); the CUDA
comparison at the end runs only where torch sees a GPU.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from fptq import reference as ref  # noqa: E402
from fptq.cli import main  # noqa: E402
from fptq.models.config import QuantConfig  # noqa: E402
from fptq.models.device import channel_max, device_hessian, layer_on, resolve_device, to_device  # noqa: E402
from fptq.models.qlinear import quantized_linears  # noqa: E402
from fptq.models.quantize import quantize_model  # noqa: E402
from fptq.testing import tiny_model  # noqa: E402

IDS = torch.randint(3, 259, (8, 32), generator=torch.Generator().manual_seed(0))
CPU = torch.device("cpu")


def test_resolve_device_names_the_argument():
    assert resolve_device("cpu") is None and resolve_device(None) is None
    with pytest.raises(ValueError, match="--device: expected 'cpu' or 'cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA device"):
            resolve_device("cuda")


def test_layer_on_lends_and_gives_back_the_very_host_tensors():
    layer = tiny_model("llama").model.layers[0]
    params = {n: (p, p.data.data_ptr()) for n, p in layer.named_parameters()}
    buffers = {n: b for n, b in layer.named_buffers()}
    with layer_on(layer, torch.device("meta")):
        assert all(p.is_meta for p in layer.parameters())
        assert all(b.is_meta for b in layer.buffers())
    for n, p in layer.named_parameters():
        assert p is params[n][0] and not p.is_meta and p.data.data_ptr() == params[n][1]
    for n, b in layer.named_buffers():
        assert b is buffers[n]


def test_layer_on_gives_back_when_the_block_raises():
    layer = tiny_model("llama").model.layers[0]
    with pytest.raises(RuntimeError, match="boom"):
        with layer_on(layer, torch.device("meta")):
            raise RuntimeError("boom")
    assert not any(p.is_meta for p in layer.parameters())


def test_to_device_walks_nested_arguments():
    t = torch.ones(2)
    out = to_device((t, [t, None], {"a": t, "b": 3}), torch.device("meta"))
    assert out[0].is_meta and out[1][0].is_meta and out[1][1] is None and out[2]["a"].is_meta and out[2]["b"] == 3


def test_channel_max_equals_the_reference_maxima_and_keeps_nan():
    x = torch.randn(3, 7, 5, generator=torch.Generator().manual_seed(1))
    st = ref.CalibrationStats(non_first=False)
    st.observe("a", x.numpy())
    st.observe("b", channel_max(x))
    assert np.array_equal(st["a"].channel_max, st["b"].channel_max)
    x[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        ref.CalibrationStats(non_first=False).observe("c", channel_max(x))


def test_device_hessian_is_the_reference_formula():
    rows = torch.randn(300, 24, generator=torch.Generator().manual_seed(2))
    s = np.linspace(0.5, 2.0, 24)
    want = ref.equalized_hessian(rows.numpy(), s)
    got = device_hessian(rows, s, CPU)
    assert got.dtype == np.float64 and got.shape == (24, 24)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)   # float64 sums: only their order differs
    rows[5, 3] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        device_hessian(rows, None, CPU)


def _codes(res):
    return {n: (m.qweight.numpy().copy(), m.wscale.numpy().copy()) for n, m in quantized_linears(res.model).items()}


@pytest.mark.parametrize("quantizer", ["gptq", "rtn"])
def test_the_device_path_gives_the_host_path_codes(quantizer):
    """On the CPU the device path computes the same forward, the same maxima (exact) and the Hessian by another
    float64 product: the plan and the stats are equal, the INT4 codes equal (up to a rare rounding tie)."""
    cfg = QuantConfig(group_size=32, weight_quantizer=quantizer, gptq_rows=128)
    host = quantize_model(tiny_model("llama"), IDS, cfg, backend="numpy", progress=False)
    dev = quantize_model(tiny_model("llama"), IDS, cfg, backend="numpy", progress=False, device=CPU)
    assert host.stats.keys() == dev.stats.keys()
    for name in host.stats:
        assert np.array_equal(host.stats[name], dev.stats[name]), name
    assert [g.to_json() for g in host.plan.groups] == [g.to_json() for g in dev.plan.groups]
    a, b = _codes(host), _codes(dev)
    same = sum(int((a[n][0] == b[n][0]).sum()) for n in a)
    total = sum(a[n][0].size for n in a)
    assert same >= 0.999 * total, (same, total)
    if quantizer == "rtn":   # no Hessian: every byte equal
        assert all(np.array_equal(a[n][0], b[n][0]) and np.array_equal(a[n][1], b[n][1]) for n in a)


def test_sequential_with_a_device_is_refused():
    with pytest.raises(ValueError, match="sequential"):
        quantize_model(tiny_model("llama"), IDS, QuantConfig(group_size=32, sequential=True), progress=False,
                       device=CPU)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cli_device_cuda_without_a_gpu_is_one_clear_error(tmp_path, capsys):
    rc = main(["quantize", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"), "--device", "cuda"])
    err = capsys.readouterr().err
    assert rc != 0 and "--device cuda" in err and "no CUDA device" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")
def test_cuda_calibration_is_close_to_the_host_path():
    """The float32 forward rounds differently on the GPU: the maxima agree to float32 noise and nearly every
    INT4 code is the host path's (docs/scale.md gives the measured fraction on larger models)."""
    cfg = QuantConfig(group_size=32, weight_quantizer="gptq", gptq_rows=128)
    host = quantize_model(tiny_model("llama"), IDS, cfg, backend="numpy", progress=False)
    dev = quantize_model(tiny_model("llama"), IDS, cfg, backend="numpy", progress=False,
                         device=resolve_device("cuda"))
    for name in host.stats:
        np.testing.assert_allclose(dev.stats[name], host.stats[name], rtol=1e-4, err_msg=name)
    a, b = _codes(host), _codes(dev)
    same = sum(int((a[n][0] == b[n][0]).sum()) for n in a)
    assert same >= 0.98 * sum(a[n][0].size for n in a)
