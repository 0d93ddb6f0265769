"""The runtime's lm_head kinds (:mod:`fptq.runtime.head`) against each other and the integer formula."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

from fptq.runtime.head import HEAD_BF16, HEAD_F32, head_logits  # noqa: E402


@pytest.mark.parametrize("vocab, hidden", [(300, 64), (1001, 1536), (77, 37)])
def test_bf16_bits_head_equals_the_float32_head(vocab, hidden):
    """HEAD_BF16 (the bits widened inside the dot product's loop) == HEAD_F32 on the same values, bit for bit."""
    rng = np.random.default_rng(vocab)
    w = rng.standard_normal((vocab, hidden)).astype(np.float32)
    bits = (w.view(np.uint32) >> np.uint32(16)).astype(np.uint16)
    wf = (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)      # the bfloat16 values, as float32
    h = rng.standard_normal((2, hidden)).astype(np.float32)
    ones, eq = np.ones(vocab, np.float32), np.zeros((1, 1), np.int8)
    f32 = head_logits(h, (np.int64(HEAD_F32), wf, np.zeros((1, 1), np.uint16), eq, ones), np.float32(0.0), 2)
    b16 = head_logits(h, (np.int64(HEAD_BF16), np.zeros((1, 1), np.float32), bits, eq, ones), np.float32(0.0), 2)
    assert np.array_equal(f32.view(np.uint32), b16.view(np.uint32))
    np.testing.assert_allclose(b16, h @ wf.T, rtol=1e-4, atol=1e-4)


def _head_of(linear, int8_head):
    """weights._head of a stand-in model whose output embedding is ``linear``."""
    from types import SimpleNamespace

    from fptq.runtime.weights import _head

    return _head(SimpleNamespace(get_output_embeddings=lambda: linear), int8_head)


def test_int8_weights_head_quantizes_the_rows_only():
    """``int8_head="weights"``: a float head made INT8 rows at load by the same rule as ``True`` (the same codes
    and scales, compared exactly), computed by HEAD_INT8_FLOAT (``x`` float32: ``sum_h x[h] (q[v, h] s[v])``),
    not by the integer kernel that also quantizes ``x``."""
    torch = pytest.importorskip("torch")
    from fptq.reference import quantize_weight_int8_per_channel
    from fptq.runtime.head import HEAD_INT8, HEAD_INT8_FLOAT

    rng = np.random.default_rng(7)
    lin = torch.nn.Linear(96, 500, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(rng.standard_normal((500, 96)).astype(np.float32)))
    hw, hi = _head_of(lin, "weights"), _head_of(lin, True)
    assert int(hw[0]) == HEAD_INT8_FLOAT and int(hi[0]) == HEAD_INT8
    q, s = quantize_weight_int8_per_channel(lin.weight.detach().numpy())
    assert np.array_equal(hw[3], q) and np.array_equal(hw[4].view(np.uint32), s.view(np.uint32))
    h = (rng.standard_normal((3, 96)) * 3).astype(np.float32)
    got = head_logits(h, hw, np.float32(0.0), 2)
    want = h.astype(np.float64) @ (q.astype(np.float32) * s[:, None]).astype(np.float64).T
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 1e-5 * scale                         # float32 sums of the formula
    assert np.abs(head_logits(h, hi, np.float32(0.0), 2) - want).max() > 1e-3 * scale   # x quantized: not this


def test_int8_head_rejects_an_unknown_choice():
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match="int8_head"):
        _head_of(torch.nn.Linear(8, 16, bias=False), "rows")


@pytest.mark.parametrize("rows", [1, 7, 4096])
def test_int8_rows_by_blocks_equal_the_whole_matrix_rule(rows):
    """The head's INT8 rows are made ``rows`` rows at a time from the stored bfloat16 (no float32 copy of the
    whole head): the codes and scales are the reference rule's on the whole widened matrix, compared exactly."""
    torch = pytest.importorskip("torch")
    from fptq.reference import quantize_weight_int8_per_channel
    from fptq.runtime.weights import _int8_rows

    w = torch.from_numpy(np.random.default_rng(rows).standard_normal((61, 40)).astype(np.float32) * 5)
    w[3] = 0.0                                                            # an all-zero row: the scale floor
    wb = w.to(torch.bfloat16)
    q, s = _int8_rows(wb, rows=rows)
    want_q, want_s = quantize_weight_int8_per_channel(wb.float().numpy())
    assert np.array_equal(q, want_q) and np.array_equal(s.view(np.uint32), want_s.view(np.uint32))


def test_head_choices_are_checked_once_by_name():
    """``--head`` / ``fptq.load(head=)``: an unknown name is refused naming the choices, before any file is read."""
    from fptq.runtime.attach import HEADS, check_head, load_checkpoint

    assert [check_head(h) for h in HEADS] == list(HEADS)
    with pytest.raises(ValueError, match="head: expected one of auto, checkpoint, int8w, int8"):
        load_checkpoint("/nonexistent/checkpoint", "numba", "integer", head="bf16")
