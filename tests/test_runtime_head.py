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
