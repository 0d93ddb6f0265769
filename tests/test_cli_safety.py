"""The CLI as a hostile or careless user meets it (issue 13): a safe --force, output paths
checked before any work, SIGTERM cleanup, NaN refused as input and as a result, --seq-len
bounds, report that never writes into the checkpoint, clear errors for odd arguments."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from checkpoint_helpers import rewrite  # noqa: E402

from cli_fixtures import SMALL, ckpt, model_dir, no_work, file_bytes as _listing, stderr_of as _err  # noqa: E402,F401
from fptq.cli import main  # noqa: E402
from fptq.io import atomic  # noqa: E402
from fptq.models.checkpoint import TENSORS_FILE  # noqa: E402
from fptq.testing import tiny_model, tiny_tokenizer  # noqa: E402





# ---- case 1 and 10: --force ---------------------------------------------------------------------------------
@pytest.mark.parametrize("target,match", [
    ("model", "would overlap the input"),
    ("parent", "would overlap the input"),
    ("unrelated", "it is not an fptq checkpoint"),
    ("file", "exists and is not a directory"),
    ("symlink", "is a symbolic link"),
])
def test_force_replaces_only_checkpoints(model_dir, ckpt, tmp_path, no_work, capsys, target, match):
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    (tmp_path / "file.bin").write_bytes(b"keep")
    (tmp_path / "link").symlink_to(ckpt)
    out = {"model": model_dir, "parent": model_dir.parent, "unrelated": other, "file": tmp_path / "file.bin",
           "symlink": tmp_path / "link"}[target]
    before = {p: _listing(p) for p in (model_dir, other, ckpt)}
    parent_before = sorted(os.listdir(out.parent))
    assert main(["quantize", str(model_dir), "--out", str(out), "--force", *SMALL]) == 2
    assert match in _err(capsys)
    assert no_work == []
    assert {p: _listing(p) for p in before} == before  # nothing deleted, nothing changed
    assert sorted(os.listdir(out.parent)) == parent_before  # no stray hidden copies
    assert (tmp_path / "file.bin").read_bytes() == b"keep" and (tmp_path / "link").is_symlink()


def test_force_never_replaces_the_working_directory(model_dir, tmp_path, monkeypatch, no_work, capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    for out in (".", str(tmp_path)):
        assert main(["quantize", str(model_dir), "--out", out, "--force", *SMALL]) == 2
        assert "working directory" in _err(capsys)
    assert (work / "notes.txt").read_text() == "mine" and no_work == []


def test_force_replaces_a_checkpoint_and_an_empty_directory(model_dir, ckpt, tmp_path, capsys):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(ckpt, old)
    (old / "stale.txt").write_text("not listed by the checkpoint")  # a file of the user's: refused, kept
    assert main(["quantize", str(model_dir), "--out", str(old), "--force", *SMALL]) == 2
    assert "stale.txt" in _err(capsys) and (old / "stale.txt").read_text() == "not listed by the checkpoint"
    (old / "stale.txt").unlink()
    assert main(["quantize", str(model_dir), "--out", str(old), "--force", *SMALL]) == 0
    assert (old / TENSORS_FILE).is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["quantize", str(model_dir), "--out", str(empty), "--force", *SMALL]) == 0
    assert sorted(os.listdir(tmp_path)) == ["empty", "old"]  # no .tmp / .old leftovers


def test_failed_second_rename_rolls_back(tmp_path, monkeypatch):
    dest = tmp_path / "d"
    with atomic.atomic_directory(dest) as tmp:
        (tmp / "v").write_text("old")
    real, n = os.replace, []

    def flaky(a, b):
        n.append(1)
        if len(n) == 2:  # the rename of the new directory into place
            raise OSError("disk trouble")
        return real(a, b)

    monkeypatch.setattr(atomic.os, "replace", flaky)
    with pytest.raises(OSError, match="disk trouble"):
        with atomic.atomic_directory(dest, overwrite=True) as tmp:
            (tmp / "v").write_text("new")
    assert (dest / "v").read_text() == "old"
    assert os.listdir(tmp_path) == ["d"]  # neither .tmp nor .old left


def test_sigterm_during_a_save_leaves_nothing(tmp_path):
    code = ("import sys, time; from pathlib import Path; from fptq.io.atomic import atomic_directory, "
            "sigterm_as_interrupt\n"
            "with sigterm_as_interrupt():\n"
            "    try:\n"
            "        with atomic_directory(sys.argv[1]) as tmp:\n"
            "            (tmp / 'big.bin').write_bytes(b'x' * 1_000_000)\n"
            "            print('ready', flush=True)\n"
            "            time.sleep(60)\n"
            "    except KeyboardInterrupt:\n"
            "        sys.exit(143)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "ck")], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    assert any(n.startswith(".ck.tmp-") for n in os.listdir(tmp_path))
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 143
    assert os.listdir(tmp_path) == []


def test_cli_exits_143_on_sigterm(monkeypatch, capsys):
    import fptq.cli

    def slow(a):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        return 0

    monkeypatch.setitem(fptq.cli._COMMANDS, "report", slow)
    assert main(["report", "whatever"]) == 143
    assert "terminated" in _err(capsys)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed again


# ---- case 11: output paths checked first ------------------------------------------------------------------------
def test_output_paths_are_checked_before_any_work(model_dir, ckpt, tmp_path, no_work, capsys):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    cases = [
        (["quantize", str(model_dir), "--out", str(tmp_path / "afile" / "ck"), *SMALL], "is not a directory"),
        (["quantize", str(model_dir), "--out", str(tmp_path / "dangling"), "--force", *SMALL], "dangling"),
        (["eval", str(ckpt), "--json", str(tmp_path), "--quiet"], "is a directory, not a file"),
        (["eval", str(ckpt), "--json", str(tmp_path / "afile" / "r.json"), "--quiet"], "is not a directory"),
        (["eval", str(ckpt), "--json", str(tmp_path / "dangling"), "--quiet"], "dangling symbolic link"),
        (["compare", str(model_dir), "--out", str(tmp_path / "afile"), "--quiet"], "exists and is not a directory"),
        (["report", str(ckpt), "--plot", str(tmp_path / "afile" / "p.png")], "is not a directory"),
    ]
    for args, match in cases:
        assert main(args) == 2, args
        assert match in _err(capsys), args
    assert no_work == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_output_directory_is_found_first(model_dir, tmp_path, no_work, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(["quantize", str(model_dir), "--out", str(ro / "ck"), *SMALL]) == 2
        assert "cannot write in" in _err(capsys) and no_work == []
    finally:
        ro.chmod(0o755)


# ---- case 12: --seq-len beyond the model's positions ---------------------------------------------------------------
def test_seq_len_beyond_max_position_embeddings(model_dir, tmp_path, monkeypatch, capsys):
    import fptq.models.quantize

    calls = []
    monkeypatch.setattr(fptq.models.quantize, "quantize_model", lambda *a, **k: calls.append(1))
    args = ["quantize", str(model_dir), "--out", str(tmp_path / "o"), *SMALL, "--seq-len", "300"]
    assert main(args) == 2
    assert "--seq-len: sequences of 300 tokens exceed the model's max_position_embeddings (256)" in _err(capsys)
    assert calls == []
    assert main(["eval", str(model_dir), "--seq-len", "256", "--max-windows", "1", "--quiet"]) == 2
    assert "(+1 for the BOS token): sequences of 257 tokens exceed" in _err(capsys)


# ---- cases 5 and 6: NaN in, NaN out ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nan_model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("nan") / "tiny"
    m = tiny_model("llama")
    with torch.no_grad():
        m.model.norm.weight[3] = float("nan")  # a part calibration never looks at
    m.save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return d


def test_nan_anywhere_in_the_model_is_refused_before_calibration(nan_model_dir, tmp_path, monkeypatch, capsys):
    import fptq.models.quantize

    calls = []
    monkeypatch.setattr(fptq.models.quantize, "quantize_model", lambda *a, **k: calls.append(1))
    assert main(["quantize", str(nan_model_dir), "--out", str(tmp_path / "o"), *SMALL]) == 2
    assert "parameter model.norm.weight holds NaN/Inf" in _err(capsys) and calls == []
    assert main(["eval", str(nan_model_dir), "--max-windows", "1", "--quiet"]) == 2  # no 'ppl nan' result
    assert "holds NaN/Inf" in _err(capsys)


def test_nan_metric_is_an_error_exit(model_dir, tmp_path, monkeypatch, capsys):
    import fptq.compare.run
    import fptq.eval.runner

    monkeypatch.setattr(fptq.eval.runner, "run_eval", lambda *a, **k: {"ppl": {"wiki": {"ppl": float("nan")}}})
    out = tmp_path / "r.json"
    assert main(["eval", str(model_dir), "--json", str(out), "--seq-len", "32", "--quiet"]) == 2
    assert "ppl.wiki.ppl is not finite" in _err(capsys) and not out.exists()
    text = tmp_path / "t.txt"
    text.write_text("a few words of text to score " * 20)
    monkeypatch.setattr(fptq.compare.run, "_eval_ppl", lambda model, tokens, *a: {
        t: {"ppl": float("inf"), "nll": float("inf"), "n_tokens": 1} for t in tokens})
    assert main(["compare", str(model_dir), "--out", str(tmp_path / "c"), "--methods", "fp32", "--ppl", str(text),
                 "--calib", "random", "--samples", "2", "--seq-len", "16", "--eval-seq-len", "32", "--quiet"]) == 2
    assert f"compare: rows.0.ppl.{text} is not finite" in _err(capsys)
    assert not (tmp_path / "c").exists()  # nothing written


# ---- cases 8 and 15: report ----------------------------------------------------------------------------------------
def test_report_exits_non_zero_on_a_checkpoint_the_loader_refuses(ckpt, tmp_path, capsys):
    def flip(d):
        p = d / TENSORS_FILE
        data = bytearray(p.read_bytes())
        data[-5] ^= 1
        p.write_bytes(bytes(data))

    bad = rewrite(ckpt, tmp_path / "bad", redigest=False)
    flip(bad)
    assert main(["report", str(bad)]) == 2
    assert "digest mismatch" in _err(capsys)


def test_report_never_writes_into_the_checkpoint(ckpt, tmp_path, capsys):
    import shutil

    ro = tmp_path / "ro"
    shutil.copytree(ckpt, ro)
    before = sorted(os.listdir(ro))
    ro.chmod(0o555)
    try:
        assert main(["report", str(ro)]) == 0
        assert sorted(os.listdir(ro)) == before
    finally:
        ro.chmod(0o755)
    plots = tmp_path / "plots"
    plots.mkdir()
    assert main(["report", str(ckpt), "--plot", str(plots)]) == 0  # a directory: DIR/plan.png, not DIR.png
    assert (plots / "plan.png").read_bytes()[:4] == b"\x89PNG" and not (tmp_path / "plots.png").exists()
    assert main(["report", str(ckpt), "--plot", str(tmp_path / "new") + "/"]) == 0
    assert (tmp_path / "new" / "plan.png").is_file()
    capsys.readouterr()


def test_backend_that_is_not_a_class_is_a_clear_error(ckpt, capsys):
    assert main(["eval", str(ckpt), "--backend", "os:path", "--quiet"]) == 2
    assert "os:path is a module, not a backend class" in _err(capsys)


def test_non_utf8_calibration_text_names_the_file(model_dir, tmp_path, capsys):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 au lait ".encode("latin-1") * 50)
    args = ["quantize", str(model_dir), "--out", str(tmp_path / "o"), *SMALL]
    args[args.index("random")] = str(bad)
    assert main(args) == 2
    assert f"{bad}: not UTF-8 text" in _err(capsys)


# ---- case 16: reproducible through the CLI ---------------------------------------------------------------------
def test_quantize_twice_gives_identical_files(model_dir, ckpt, tmp_path):
    again = tmp_path / "again"
    assert main(["quantize", str(model_dir), "--out", str(again), *SMALL]) == 0
    assert _listing(again) == _listing(ckpt)
    info = json.loads((again / "fptq_plan.json").read_text())["info"]
    assert info["calibration"].startswith("random") and "created" not in info and "backend_at_quantization" not in info


def test_a_new_checkpoint_inside_the_model_directory_is_allowed(model_dir, tmp_path):
    from fptq.io.outputs import OutputPathError
    from fptq.models.checkpoint import check_checkpoint_out

    assert check_checkpoint_out(model_dir / "w4a8", False, [model_dir]) == model_dir / "w4a8"
    for out in (model_dir, model_dir.parent):
        with pytest.raises(OutputPathError, match="it is the input or holds it"):
            check_checkpoint_out(out, True, [model_dir])


def test_json_results_follow_the_umask(tmp_path):
    from fptq.eval.runner import write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "r.json", {"ppl": 1.0})
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "r.json").st_mode & 0o777 == 0o644


def test_an_error_without_a_message_is_named(monkeypatch, capsys):
    import fptq.cli

    def oom(a):
        raise MemoryError()

    monkeypatch.setitem(fptq.cli._COMMANDS, "report", oom)
    assert main(["report", "whatever"]) == 2
    assert _err(capsys).strip() == "fptq report: error: MemoryError"
