"""Fuzzing the checkpoint loader (issue 13): random mutations of a tiny checkpoint's header,
tensor bytes, config.json and tokenizer.json. Every mutation must either load with bit-identical logits or
raise CheckpointError: no other exception, no silent change.

CI runs a few hundred derandomized mutations (well under a minute). A long run::

    FPTQ_FUZZ_EXAMPLES=10000 python -m pytest tests/test_fuzz_checkpoint.py -q -s

uses fresh random mutations and prints how many were refused and how many loaded unchanged.
"""

import os
import shutil
from collections import Counter

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from checkpoint_helpers import IDS, save_tiny  # noqa: E402

from fptq.models.checkpoint import TENSORS_FILE, CheckpointError, load_quantized  # noqa: E402

N_EXAMPLES = int(os.environ.get("FPTQ_FUZZ_EXAMPLES", "300"))
LONG = "FPTQ_FUZZ_EXAMPLES" in os.environ
OUTCOMES = Counter()


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    """(work dir, {file: original bytes}, header length, reference logits of the loaded original)."""
    d, _, _ = save_tiny(tmp_path_factory.mktemp("fuzz") / "ck")
    model, _, _ = load_quantized(d, backend="numpy")
    with torch.no_grad():
        ref = model(IDS).logits
    originals = {n: (d / n).read_bytes() for n in (TENSORS_FILE, "config.json", "tokenizer.json")}
    n = int.from_bytes(originals[TENSORS_FILE][:8], "little")
    yield d, originals, 8 + n, ref
    if LONG:
        print(f"\nfuzz outcomes over {sum(OUTCOMES.values())} mutations: {dict(OUTCOMES)}")


def _mutate(data: bytes, kind: str, pos: int, value: int, length: int) -> bytes:
    pos = pos % max(len(data), 1)
    if kind == "flip":
        return data[:pos] + bytes([data[pos] ^ (1 << (value % 8))]) + data[pos + 1:]
    if kind == "set":
        return data[:pos] + bytes([value]) + data[pos + 1:]
    if kind == "truncate":
        return data[:pos]
    if kind == "delete":
        return data[:pos] + data[pos + length:]
    if kind == "insert":
        return data[:pos] + bytes([value]) * length + data[pos:]
    raise AssertionError(kind)


REGIONS = st.sampled_from(["header", "header", "data", "data", "length_prefix", "config", "tokenizer"])
KINDS = st.sampled_from(["flip", "flip", "flip", "set", "set", "truncate", "delete", "insert"])


@settings(max_examples=N_EXAMPLES, deadline=None, derandomize=not LONG, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(region=REGIONS, kind=KINDS, pos=st.integers(0, 2**31), value=st.integers(0, 255),
       length=st.integers(1, 16))
def test_every_mutation_is_refused_or_harmless(fuzz_dir, region, kind, pos, value, length):
    d, originals, data_start, ref = fuzz_dir
    name = {"config": "config.json", "tokenizer": "tokenizer.json"}.get(region, TENSORS_FILE)
    original = originals[name]
    if region == "header":
        lo, hi = 8, data_start
    elif region == "data":
        lo, hi = data_start, len(original)
    elif region == "length_prefix":
        lo, hi = 0, 8
    else:
        lo, hi = 0, len(original)
    at = lo + pos % (hi - lo)
    mutated = original[:lo] + _mutate(original[lo:], kind, at - lo, value, length)
    (d / name).write_bytes(mutated)
    try:
        try:
            model, _, _ = load_quantized(d, backend="numpy")
        except CheckpointError:
            OUTCOMES[f"{region}: refused"] += 1
            return
        with torch.no_grad():
            logits = model(IDS).logits
        assert torch.equal(logits, ref), f"{region} {kind} at {at}: loaded with different logits"
        OUTCOMES[f"{region}: loaded identical" + (" (bytes unchanged)" if mutated == original else "")] += 1
    finally:
        (d / name).write_bytes(original)


def test_fuzz_fixture_restores_the_checkpoint(fuzz_dir, tmp_path):
    """The fuzz loop restores each file; the checkpoint still loads exactly."""
    d, originals, _, ref = fuzz_dir
    assert all((d / n).read_bytes() == b for n, b in originals.items())
    copy = tmp_path / "copy"
    shutil.copytree(d, copy)
    model, _, _ = load_quantized(copy, backend="numpy")
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, ref)
