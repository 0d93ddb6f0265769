"""``fptq quantize --resume`` (issue 22): a streamed run stopped after a layer and run again writes the checkpoint
of an uninterrupted run byte for byte; a run with other settings is refused by name; the partial directory is
kept when the run stops, removed when it succeeds, and a directory at its path that fptq did not make is
refused, never used or deleted. Planted breaks (the next layer's inputs or the plan not restored) make the
identity test fail. GPTAQ (two calibration streams, the float model's beside the quantized one) and plain
``--sequential`` (one stream, the quantized one) resume byte for byte too; GPTAQ's float stream not restored
(the quantized one given to both) fails the identity."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from fptq.cli import main  # noqa: E402
from fptq.models import journal as journal_mod  # noqa: E402
from fptq.models import stream  # noqa: E402
from fptq.models.journal import Journal, ResumePoint, decode_groups, encode_groups, partial_dir  # noqa: E402

LAYERS = 4
RUN = ["--calib", "random", "--samples", "6", "--seq-len", "16", "--batch-size", "4", "--quiet"]
#: one shard (the single-file checkpoint: every layer in the writer's buffer) and shards of about 2 layers
SHARDS = {"single": "1", "sharded": "0"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny untied llama saved as bfloat16 shards with fptq.testing's tokenizer (as tests/test_streaming.py's)."""
    from fptq.testing import save_tiny_bf16_shards

    return save_tiny_bf16_shards(tmp_path_factory.mktemp("model") / "model", LAYERS)


def _args(model_dir, out, shards: str, *extra) -> list[str]:
    return ["quantize", str(model_dir), "--out", str(out), *RUN, "--shard-size", shards, *extra]


@pytest.fixture(scope="module", params=sorted(SHARDS))
def reference(request, model_dir, tmp_path_factory):
    """(shard kind, the checkpoint of an uninterrupted run without --resume)."""
    out = tmp_path_factory.mktemp("ref") / "ckpt"
    assert _run(request.param, model_dir, out) == 0
    return request.param, out


def _run(kind, model_dir, out, *extra, patch=None) -> int:
    """``fptq quantize`` of the tiny model; ``kind`` "sharded": a 60 KiB shard size (``--shard-size`` takes whole
    MiB; a tiny layer stores ~28 KiB), so a shard is written mid-run and a layer left in the writer's buffer."""
    from fptq import cli_quantize

    with pytest.MonkeyPatch.context() as mp:
        if SHARDS[kind] == "0":
            mp.setattr(cli_quantize, "_mebibytes", lambda s: 60 * 1024)
        if patch is not None:
            patch(mp)
        return main(_args(model_dir, out, "1", *extra))


def _fail_after(k: int, where: str = "done"):
    """A patch making layer ``k`` raise: after it is recorded (``done``: an error) or as it is read (``load``: an
    interruption)."""
    def patch(mp):
        orig = getattr(stream.StreamedLayers, where)

        def hooked(self, i, *a):
            if where == "load" and i == k:   # as Ctrl-C or SIGTERM (fptq's Terminated) would
                raise KeyboardInterrupt(f"injected failure at layer {k}")
            orig(self, i, *a)
            if where == "done" and i == k:
                raise RuntimeError(f"injected failure after layer {k}")
        mp.setattr(stream.StreamedLayers, where, hooked)
    return patch


def _files(d) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _same_checkpoint(a, b) -> None:
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    differ = [n for n in fa if fa[n] != fb[n]]
    assert not differ, f"files differ from the uninterrupted run's: {differ}"


@pytest.mark.parametrize("k,where", [(2, "done"), (1, "load")])
def test_resumed_checkpoint_is_byte_identical(reference, model_dir, tmp_path, capsys, k, where):
    kind, ref = reference
    out = tmp_path / "ckpt"
    assert _run(kind, model_dir, out, "--resume", patch=_fail_after(k, where)) == (2 if where == "done" else 130)
    err = capsys.readouterr().err
    part = partial_dir(out)
    assert part.is_dir() and not out.exists()            # kept; nothing at --out
    assert ("injected failure" in err if where == "done" else "interrupted" in err)
    assert str(part) in err and "--resume" in err and f"rm -r {part}" in err
    state = json.loads((part / "journal.json").read_text())
    assert state["next_layer"] == (k + 1 if where == "done" else k)
    if kind == "sharded" and where == "done":   # layers 0-1 in a shard, layer 2 in the buffer (its own file)
        assert len(state["writer"]["shards"]) == 1 and state["writer"]["buffered"] == ["model.layers.2"]
        assert sorted(state["files"]) == ["inputs-3.safetensors", "layer-model.layers.2.safetensors"]
    assert _run(kind, model_dir, out, "--resume") == 0
    assert f"continuing at layer {state['next_layer'] + 1}" in capsys.readouterr().err
    _same_checkpoint(out, ref)
    assert not part.exists()                              # removed on success


def test_uninterrupted_resume_run_equals_plain_run_and_leaves_nothing(reference, model_dir, tmp_path):
    kind, ref = reference
    out = tmp_path / "ckpt"
    assert _run(kind, model_dir, out, "--resume") == 0
    _same_checkpoint(out, ref)
    assert not partial_dir(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


@pytest.mark.parametrize("planted", ["hidden", "plan"])
def test_planted_break_fails_identity(reference, model_dir, tmp_path, monkeypatch, planted):
    if reference[0] != "single":
        pytest.skip("one shard layout is enough to show the test bites")
    """The identity test bites: a resume that does not restore the next layer's inputs (the captured embeddings
    are used instead) or the plan so far writes another checkpoint."""
    kind, ref = reference
    out = tmp_path / "ckpt"
    assert _run(kind, model_dir, out, "--resume", patch=_fail_after(1)) == 2
    orig = Journal.resume_point

    def broken(self):
        p = orig(self)
        return ResumePoint(p.start, None if planted == "hidden" else p.hidden, p.stats,
                           [] if planted == "plan" else p.plan_groups)
    monkeypatch.setattr(Journal, "resume_point", broken)
    assert _run(kind, model_dir, out, "--resume") == 0
    with pytest.raises(AssertionError, match="differ"):
        _same_checkpoint(out, ref)


def test_changed_option_refused_by_name(model_dir, tmp_path, capsys):
    out = tmp_path / "ckpt"
    assert _run("single", model_dir, out, "--resume", patch=_fail_after(0)) == 2
    part = partial_dir(out)
    before = _files(part)
    capsys.readouterr()
    assert main(_args(model_dir, out, "1", "--resume", "--seed", "5")) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "quant_config.seed: interrupted run 0, this run 5" in err
    assert f"rm -r {part}" in err
    assert _files(part) == before and not out.exists()     # untouched
    # without --resume the interrupted run is named, not silently left behind
    assert main(_args(model_dir, out, "1")) == 2
    assert "add --resume to continue" in capsys.readouterr().err
    assert _files(part) == before


def test_changed_model_file_refused(model_dir, tmp_path, capsys):
    out = tmp_path / "ckpt"
    assert _run("single", model_dir, out, "--resume", patch=_fail_after(0)) == 2
    cfg = model_dir / "generation_config.json"
    st = cfg.stat()
    try:
        import os

        os.utime(cfg, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
        capsys.readouterr()
        assert main(_args(model_dir, out, "1", "--resume")) == 2
        assert "model.files.generation_config.json" in capsys.readouterr().err
    finally:
        os.utime(cfg, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_foreign_directory_at_partial_path_refused_never_deleted(model_dir, tmp_path, capsys):
    out = tmp_path / "ckpt"
    part = partial_dir(out)
    part.mkdir()
    (part / "mine.txt").write_text("not fptq's")
    assert main(_args(model_dir, out, "1", "--resume")) == 2
    err = capsys.readouterr().err
    assert str(part) in err and "holds no fptq journal" in err
    assert (part / "mine.txt").read_text() == "not fptq's" and sorted(p.name for p in part.iterdir()) == ["mine.txt"]
    assert not out.exists()
    assert main(_args(model_dir, out, "1")) == 0             # without --resume it is not ours to care about
    assert (part / "mine.txt").read_text() == "not fptq's"


def test_changed_journal_file_refused(model_dir, tmp_path, capsys):
    out = tmp_path / "ckpt"
    assert _run("single", model_dir, out, "--resume", patch=_fail_after(1)) == 2
    part = partial_dir(out)
    inputs = next(part.glob("inputs-*.safetensors"))
    data = bytearray(inputs.read_bytes())
    data[-5] ^= 1
    inputs.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(_args(model_dir, out, "1", "--resume")) == 2
    assert f"{inputs} is missing or changed" in capsys.readouterr().err


def test_plan_groups_round_trip():
    from fptq.reference.plan import GroupPlan
    from fptq.spec import ActPolicy

    g = GroupPlan(layer=3, prefix="m.layers.3", group="qkv", linears=("a", "b"), v=np.float32(7.25),
                  band=ActPolicy.LAE_STATIC, policy=ActPolicy.DYNAMIC, fold="m.n", v_after=1.5, act_scale=None,
                  s=np.arange(4, dtype=np.float32) + 1, m=np.ones(4, np.float32), err_static=np.float64(0.1),
                  s_weight=None, scale_fallback="why")
    records, arrays = encode_groups([g])
    json.dumps(records)
    (back,) = decode_groups(json.loads(json.dumps(records)), arrays.__getitem__)
    assert back.to_json() == g.to_json() and type(back.v) is np.float32 and type(back.err_static) is np.float64
    assert back.linears == g.linears and back.band is ActPolicy.LAE_STATIC
    for f in ("s", "m"):
        assert np.array_equal(getattr(back, f), getattr(g, f)) and getattr(back, f).dtype == np.float32
    assert back.s_fold is None


def test_no_journal_after_the_last_layer(model_dir, tmp_path):
    """A run stopped in the final write keeps the journal of the layer before the last (it redoes that one)."""
    out = tmp_path / "ckpt"
    assert _run("single", model_dir, out, "--resume", patch=_fail_after(LAYERS - 1)) == 2
    state = json.loads((partial_dir(out) / journal_mod.JOURNAL_FILE).read_text())
    assert state["next_layer"] == LAYERS - 1


def test_resume_refused_where_not_journaled(model_dir, tmp_path, capsys):
    out = tmp_path / "ckpt"
    assert main(_args(model_dir, out, "1", "--resume", "--rotate", "residual")) == 2
    assert "needs the streamed run" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


#: calibrations on the quantized model's stream: GPTAQ (and the float model's stream beside it), --sequential
STREAMS = {"gptaq": ("--weight-quantizer", "gptaq"), "sequential": ("--sequential",)}


@pytest.fixture(scope="module", params=sorted(STREAMS))
def stream_reference(request, model_dir, tmp_path_factory):
    """(name, its flags, the single-file checkpoint of an uninterrupted run of them without --resume)."""
    out = tmp_path_factory.mktemp("ref") / "ckpt"
    flags = STREAMS[request.param]
    assert _run("single", model_dir, out, *flags) == 0
    return request.param, flags, out


@pytest.mark.parametrize("k,where", [(1, "done"), (2, "load")])
def test_two_stream_resume_is_byte_identical(stream_reference, model_dir, tmp_path, k, where):
    """GPTAQ stopped after layer 1 (or as layer 2 is read) records both streams' inputs of the next layer and
    resumes to the uninterrupted run's bytes; --sequential records its one (quantized) stream."""
    name, flags, ref = stream_reference
    out = tmp_path / "ckpt"
    assert _run("single", model_dir, out, "--resume", *flags, patch=_fail_after(k, where)) == \
        (2 if where == "done" else 130)
    part = partial_dir(out)
    state = json.loads((part / "journal.json").read_text())
    assert state["next_layer"] == (k + 1 if where == "done" else k)
    assert (state["batches"], state["float_batches"]) == (2, 2 if name == "gptaq" else 0)
    from fptq.io.tensorfile import TensorFile

    with TensorFile(part / state["inputs"]) as tf:
        floats = sorted(n for n in tf.names if n.startswith("float."))
        assert floats == ([f"float.{b}" for b in range(state["batches"])] if name == "gptaq" else [])
        if floats:   # the float model's stream is not the quantized one's
            assert not torch.equal(tf.tensor("float.0"), tf.tensor("hidden.0"))
    assert _run("single", model_dir, out, "--resume", *flags) == 0
    _same_checkpoint(out, ref)
    assert not part.exists()


def test_gptaq_float_stream_not_restored_fails_identity(stream_reference, model_dir, tmp_path, monkeypatch):
    """The identity test bites for the float stream: a resume that gives GPTAQ's float stream the quantized
    stream's inputs (what a journal keeping one stream would have to do) writes another checkpoint."""
    name, flags, ref = stream_reference
    if name != "gptaq":
        pytest.skip("one stream only")
    out = tmp_path / "ckpt"
    assert _run("single", model_dir, out, "--resume", *flags, patch=_fail_after(1)) == 2
    orig = Journal.resume_point

    def broken(self):
        p = orig(self)
        return ResumePoint(p.start, p.hidden, p.stats, p.plan_groups, list(p.hidden))
    monkeypatch.setattr(Journal, "resume_point", broken)
    assert _run("single", model_dir, out, "--resume", *flags) == 0
    with pytest.raises(AssertionError, match="differ"):
        _same_checkpoint(out, ref)


def test_gptaq_resume_of_journal_without_float_stream_refused(model_dir, tmp_path, capsys):
    """A journal that recorded no float stream (as one written before the float stream was journaled) is
    refused for a GPTAQ run, named, and left as it is."""
    out = tmp_path / "ckpt"
    flags = STREAMS["gptaq"]
    assert _run("single", model_dir, out, "--resume", *flags, patch=_fail_after(0)) == 2
    part = partial_dir(out)
    state = json.loads((part / "journal.json").read_text())
    del state["float_batches"]
    (part / "journal.json").write_text(json.dumps(state, sort_keys=True))
    before = _files(part)
    capsys.readouterr()
    assert main(_args(model_dir, out, "1", "--resume", *flags)) == 2
    err = capsys.readouterr().err
    assert "recorded no float stream" in err and f"rm -r {part}" in err
    assert _files(part) == before and not out.exists()


def _api_run(model_dir, out, device, journaled: bool) -> None:
    """The streamed run through the API (as ``fptq quantize`` runs it) with ``device``; ``journaled``: with a
    journal, resumed when one exists."""
    from fptq.models.checkpoint import open_writer
    from fptq.models.config import QuantConfig
    from fptq.models.sources import open_source
    from fptq.models.stream import open_streamed, quantize_streamed

    qc = QuantConfig(n_samples=4, seq_len=16, keep_rows=48)
    ids = torch.randint(0, 259, (4, 16), generator=torch.Generator().manual_seed(1))
    with open_source(str(model_dir)) as source:
        model = open_streamed(source)
        journal = Journal.open(out, {"test": 1}, LAYERS) if journaled else None
        with journal or contextlib.nullcontext(), \
                open_writer(out, workdir=None if journal is None else journal.checkpoint_dir) as writer:
            if journal is not None:
                journal.restore_writer(writer)
            res, _ = quantize_streamed(model, source, ids, qc, writer, batch_size=2, progress=False, device=device,
                                       journal=journal)
            writer.finish(model, None, res.plan, qc, {"run": "test"})
    if journal is not None:
        journal.discard()


def test_device_path_resume_identical(model_dir, tmp_path, monkeypatch):
    """The ``--device`` path's code (each layer lent to the device, its outputs left there, copied to the host by
    the journal) with the host as the device: resumed equals uninterrupted."""
    device = torch.device("cpu")
    _api_run(model_dir, tmp_path / "ref", device, journaled=False)
    with pytest.MonkeyPatch.context() as mp:
        _fail_after(1)(mp)
        with pytest.raises(RuntimeError, match="injected"):
            _api_run(model_dir, tmp_path / "ckpt", device, journaled=True)
    assert json.loads((partial_dir(tmp_path / "ckpt") / "journal.json").read_text())["next_layer"] == 2
    _api_run(model_dir, tmp_path / "ckpt", device, journaled=True)
    _same_checkpoint(tmp_path / "ckpt", tmp_path / "ref")
    assert not partial_dir(tmp_path / "ckpt").exists()


def test_one_process_at_a_time(tmp_path):
    """A second process (here: a second open of the directory) cannot continue a run another holds."""
    out = tmp_path / "ckpt"
    with Journal.open(out, {"test": 1}, LAYERS):
        with pytest.raises(journal_mod.ResumeError, match="in use by another fptq process"):
            Journal.open(out, {"test": 1}, LAYERS)
    with Journal.open(out, {"test": 1}, LAYERS) as j:   # released: it opens again
        assert j.next_layer == 0
        j.discard()
    assert not partial_dir(out).exists()


KILL_DRIVER = """
import os, signal, sys
from fptq.models import journal
from fptq.cli import main
orig, seen = journal._replace_atomically, []
def replace(path, write):
    if path.name == journal.JOURNAL_FILE:
        seen.append(path)
        if len(seen) == int(sys.argv[1]):   # the new journal written beside the old one, not yet renamed
            write(path.with_name(f".{path.name}.tmp"))
            os.kill(os.getpid(), signal.SIGKILL)
    orig(path, write)
journal._replace_atomically = replace
sys.exit(main(sys.argv[2:]))
"""


def test_sigkill_mid_record_resumes_identical(reference, model_dir, tmp_path):
    """A process killed (SIGKILL: no cleanup, no message) while it records layer 1, its new inputs file written
    and its new journal not yet in place: the resume drops what the old journal does not name, redoes layer 1,
    and the checkpoint equals the uninterrupted run's."""
    import subprocess
    import sys

    kind, ref = reference
    if kind != "single":
        pytest.skip("one shard layout is enough for the kill")
    out = tmp_path / "ckpt"
    args = _args(model_dir, out, "1", "--resume")
    # the journal is written at the start (1) and after layers 0 (2) and 1 (3): killed in the third
    p = subprocess.run([sys.executable, "-c", KILL_DRIVER, "3", *args], capture_output=True, text=True)
    assert p.returncode == -9, p.stderr[-2000:]
    part = partial_dir(out)
    names = sorted(x.name for x in part.iterdir())
    assert {"inputs-1.safetensors", "inputs-2.safetensors", ".journal.json.tmp"} <= set(names), names
    assert json.loads((part / "journal.json").read_text())["next_layer"] == 1
    assert main(args) == 0
    _same_checkpoint(out, ref)
    assert not part.exists()
