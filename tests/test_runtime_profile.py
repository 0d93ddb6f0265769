"""The runtime's breakdowns (:mod:`fptq.runtime.profile`): where the tuner chooses per token, the decoded
token is also timed with each mode forced, ``other`` is taken within one mode (split), and the tuner is left
as it was; the prefill breakdown's parts and remainder add up to its total."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("numba")

from fptq.models.checkpoint import load_quantized  # noqa: E402
from fptq.runtime import decode  # noqa: E402
from fptq.runtime.engine import Runtime  # noqa: E402
from fptq.runtime.profile import prefill_breakdown, token_breakdown  # noqa: E402

from test_runtime import _quantize  # noqa: E402  (test_runtime's tiny checkpoints, made the same way)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_quantized(_quantize(tmp_path_factory, "llama"), backend="numba")[0]


def test_token_breakdown_times_both_modes_and_restores_the_tuner(model):
    rt = Runtime.from_model(model, threads=2, split_decode=True)
    tuner = rt.tuner
    assert tuner.active
    b = token_breakdown(rt, context=8, reps=3, clock=time.process_time)
    assert tuner.active                                   # the tuner runs again after the forced runs
    assert b["timed_tokens"] == 3 and 0 <= b["split_tokens"] <= 3
    assert b["linears_ms"] == b["linears_split_ms"]
    assert b["other_ms"] == b["total_split_ms"] - b["linears_split_ms"] - b["attention_ms"] - b["lm_head_ms"]
    for key in ("total_serial_ms", "linears_serial_ms", "total_ms"):
        assert b[key] > 0


def test_token_breakdown_without_a_choice_keeps_one_mode(model):
    rt = Runtime.from_model(model, threads=2, split_decode=False)
    assert not rt.tuner.active and int(rt.w.dims[8]) == decode.NEVER
    b = token_breakdown(rt, context=8, reps=3, clock=time.process_time)
    assert "total_split_ms" not in b and not b["linears_two_threads"]
    assert b["other_ms"] == b["total_ms"] - b["linears_ms"] - b["attention_ms"] - b["lm_head_ms"]


def test_prefill_breakdown_parts_add_up(model):
    rt = Runtime.from_model(model, threads=1)
    p = prefill_breakdown(rt, tokens=20, reps=2, clock=time.process_time)
    parts = sum(v for k, v in p.items() if k.endswith("_ms") and k not in ("total_ms", "other_ms"))
    assert np.isclose(parts + p["other_ms"], p["total_ms"])


def test_both_modes_forces_each_mode_then_restores_the_tuner(model):
    """``_both_modes``: the token runs with dims[8] = the split threshold, then NEVER, the tuner off meanwhile;
    afterwards the tuner's state (active, dims[8]) is what it was."""
    from fptq.runtime.profile import _both_modes

    rt = Runtime.from_model(model, threads=2, split_decode=True)
    rt.w.dims[8] = 12345
    seen = []

    def one_token():
        seen.append((rt.tuner.active, int(rt.w.dims[8])))

    out = _both_modes(rt, one_token, lambda split_min: float(split_min), 2, time.process_time)
    assert set(seen) == {(False, rt.tuner.threshold), (False, decode.NEVER)}
    assert seen[0][1] == rt.tuner.threshold and seen[-1][1] == decode.NEVER
    assert out["linears_split_ms"] == float(rt.tuner.threshold) and out["linears_serial_ms"] == float(decode.NEVER)
    assert rt.tuner.active and int(rt.w.dims[8]) == 12345
