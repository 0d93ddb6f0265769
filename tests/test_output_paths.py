"""Nothing lost (issue 20): ``--force`` replaces only a real fptq checkpoint or an empty directory,
every output (``eval --json``, ``report --plot``, ``compare --out``) is never an input and never a
file fptq did not write, every output path is checked before any work, and the swap holds signals
until it is complete. The data-loss cases keep a directory of user files that must survive byte
for byte."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from cli_fixtures import SMALL, ckpt, model_dir, no_work, stderr_of as _err  # noqa: E402,F401
from fptq.cli import main  # noqa: E402
from fptq.io import atomic  # noqa: E402
from fptq.models.checkpoint import TENSORS_FILE, load_quantized  # noqa: E402





def _tree(d: Path) -> dict:
    """Every file and directory under ``d`` with its bytes (directories as None)."""
    return {p.relative_to(d).as_posix(): (None if p.is_dir() else p.read_bytes()) for p in sorted(d.rglob("*"))}


def _user_files(d: Path) -> None:
    (d / "src").mkdir(parents=True, exist_ok=True)
    (d / "src" / "main.py").write_text("code\n")
    (d / ".git").mkdir(exist_ok=True)
    (d / ".git" / "HEAD").write_text("ref: refs/heads/main\n")


# ---- data loss 1 and 2: --force ----------------------------------------------------------------------------------
def test_force_refuses_a_directory_holding_an_empty_tensors_file(model_dir, tmp_path, no_work, capsys):
    p = tmp_path / "P"
    _user_files(p)
    (p / TENSORS_FILE).touch()
    before = _tree(p)
    assert main(["quantize", str(model_dir), "--out", str(p), "--force", *SMALL]) == 2
    err = _err(capsys)
    assert "not a valid fptq checkpoint" in err and "src/" in err and ".git/" in err  # names what it would delete
    assert _tree(p) == before and no_work == []
    assert sorted(os.listdir(tmp_path)) == ["P"]


def test_force_keeps_the_users_files_inside_a_checkpoint(model_dir, ckpt, tmp_path, capsys):
    ck = tmp_path / "CK"
    shutil.copytree(ckpt, ck)
    (ck / "notes").mkdir()
    (ck / "notes" / "n.txt").write_text("my notes")
    (ck / "README_mine.txt").write_text("mine")
    assert main(["report", str(ck), "--plot", str(tmp_path / "plan.png")]) == 0
    shutil.copy(tmp_path / "plan.png", ck / "plan.png")
    capsys.readouterr()
    before = _tree(ck)
    assert main(["quantize", str(model_dir), "--out", str(ck), "--force", *SMALL]) == 2
    err = _err(capsys)
    assert all(n in err for n in ("notes/", "README_mine.txt", "plan.png")) and "move them out first" in err
    assert _tree(ck) == before
    assert sorted(os.listdir(tmp_path)) == ["CK", "plan.png"]  # no .tmp / .old left


def test_force_still_replaces_a_pure_checkpoint(model_dir, ckpt, tmp_path):
    ck = tmp_path / "CK"
    shutil.copytree(ckpt, ck)
    assert main(["quantize", str(model_dir), "--out", str(ck), "--force", *SMALL]) == 0
    assert _tree(ck) == _tree(ckpt) and os.listdir(tmp_path) == ["CK"]


# ---- data loss 3, 4, 5: eval --json onto an input ------------------------------------------------------------------
def test_eval_json_never_writes_over_or_into_an_input(model_dir, ckpt, tmp_path, no_work, capsys):
    ck, fl = tmp_path / "CK", tmp_path / "FLOAT"
    shutil.copytree(ckpt, ck)
    shutil.copytree(model_dir, fl)
    text = tmp_path / "T.txt"
    text.write_text("words to score " * 50)
    before = {d: _tree(d) for d in (ck, fl)}
    cases = [
        (["eval", str(ck), "--json", str(ck / TENSORS_FILE)], "is inside the input"),
        (["eval", str(fl), "--json", str(fl / "model.safetensors")], "is inside the input"),
        (["eval", str(ck), "--ppl", str(text), "--json", str(text)], "is the input"),
        (["eval", str(fl), "--json", str(fl / "results.json")], "is inside the input"),
    ]
    for args, match in cases:
        assert main([*args, "--quiet"]) == 2, args
        assert match in _err(capsys), args
    assert {d: _tree(d) for d in (ck, fl)} == before
    assert text.read_text() == "words to score " * 50 and no_work == []


def test_eval_json_replaces_only_its_own_results(model_dir, tmp_path, capsys):
    mine = tmp_path / "notes.json"
    mine.write_text('{"my": "data"}\n')
    args = ["eval", str(model_dir), "--ppl", "ptb", "--seq-len", "32", "--max-windows", "1", "--quiet"]
    assert main([*args, "--json", str(mine)]) == 2
    assert "is not an fptq eval result" in _err(capsys) and mine.read_text() == '{"my": "data"}\n'
    res = tmp_path / "r.json"
    assert main([*args, "--json", str(res)]) == 0
    assert "wrote" not in capsys.readouterr().out  # status on stderr: stdout holds the table only
    assert main([*args, "--json", str(res)]) == 0  # its own result: replaced


# ---- report --plot and compare --out ------------------------------------------------------------------------------
def test_report_plot_checked_before_loading(ckpt, tmp_path, no_work, capsys):
    mine = tmp_path / "photo.png"
    mine.write_bytes(b"\x89PNG\r\n\x1a\n not fptq's")
    cases = [
        (["report", str(ckpt), "--plot", str(tmp_path / "x.txt")], "written as PNG"),
        (["report", str(ckpt), "--plot", str(ckpt / "plan.png")], "is inside the input"),
        (["report", str(ckpt), "--plot", str(mine)], "is not a plot written by fptq report"),
    ]
    for args, match in cases:
        assert main(args) == 2, args
        assert match in _err(capsys), args
    assert no_work == [] and not (ckpt / "plan.png").exists() and mine.read_bytes().endswith(b"not fptq's")


def test_report_plot_replaces_its_own_plot(ckpt, tmp_path, capsys):
    p = tmp_path / "plan.png"
    assert main(["report", str(ckpt), "--plot", str(p)]) == 0
    assert main(["report", str(ckpt), "--plot", str(p)]) == 0
    out = capsys.readouterr()
    assert "wrote" in out.err and "wrote" not in out.out


def test_compare_out_protects_inputs_and_foreign_files(model_dir, tmp_path, no_work, capsys):
    res = tmp_path / "res"
    res.mkdir()
    (res / "compare.json").write_text('{"mine": 1}')
    text = tmp_path / "texts"
    text.mkdir()
    (text / "a.txt").write_text("words " * 100)
    cases = [
        (["compare", str(model_dir), "--out", str(res)], "is not a file fptq wrote"),
        (["compare", str(model_dir), "--out", str(model_dir)], "would overlap the input"),
        (["compare", str(model_dir), "--ppl", str(text), "--out", str(text)], "would overlap the input"),
    ]
    for args, match in cases:
        assert main([*args, "--quiet"]) == 2, args
        assert match in _err(capsys), args
    assert (res / "compare.json").read_text() == '{"mine": 1}' and no_work == []


# ---- every output path checked before any work ---------------------------------------------------------------------
def test_names_too_long_for_the_temporary_name_are_refused_first(model_dir, ckpt, tmp_path, no_work, capsys):
    for n in (241, 255):
        name = "n" * n
        assert main(["quantize", str(model_dir), "--out", str(tmp_path / name), *SMALL]) == 2
        assert "temporary name" in _err(capsys)
        assert main(["eval", str(ckpt), "--json", str(tmp_path / (name[:-5] + ".json")), "--quiet"]) == 2
        assert "temporary name" in _err(capsys)
    assert no_work == [] and os.listdir(tmp_path) == []


def test_force_refuses_a_mount_point_first(model_dir, tmp_path, monkeypatch, no_work, capsys):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (mnt / "data").write_text("on another filesystem")
    real = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: Path(p) == mnt or real(p))
    assert main(["quantize", str(model_dir), "--out", str(mnt), "--force", *SMALL]) == 2
    assert "is a mount point" in _err(capsys) and no_work == []
    assert (mnt / "data").read_text() == "on another filesystem"


@pytest.mark.parametrize("args", [
    ["quantize", "M", "--out", "O", "--seed", "-1"],
    ["quantize", "M", "--out", "O", "--v0", "nan"],
    ["quantize", "M", "--out", "O", "--v1", "-3"],
    ["compare", "M", "--seed", "-2"],
    ["generate", "M", "hi", "--seed", "-1"],
    ["generate", "M", "hi", "--temperature", "0"],
    ["generate", "M", "hi", "--top-p", "1.5"],
])
def test_odd_numbers_are_refused_by_the_parser(args, no_work, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2 and no_work == []
    assert "expected" in _err(capsys)


def test_thresholds_in_the_wrong_order_are_refused_before_loading(model_dir, tmp_path, no_work, capsys):
    assert main(["quantize", str(model_dir), "--out", str(tmp_path / "o"), *SMALL, "--v0", "200", "--v1", "100"]) == 2
    assert "v0" in _err(capsys) and no_work == []


# ---- the swap: signals held, leftovers named -------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_during_the_swap_waits_until_the_new_checkpoint_is_in_place(model_dir, ckpt, tmp_path, monkeypatch,
                                                                             capsys, sig):
    ck = tmp_path / "CK"
    shutil.copytree(ckpt, ck)
    (ck / "config.json").write_bytes((ck / "config.json").read_bytes())  # same bytes: still a pure checkpoint
    real = os.replace

    def replace(a, b):
        if ".old-" in str(b):  # the first rename of the swap
            os.kill(os.getpid(), sig)
        return real(a, b)

    monkeypatch.setattr(atomic.os, "replace", replace)
    assert main(["quantize", str(model_dir), "--out", str(ck), "--force", *SMALL]) == 0
    err = _err(capsys)
    assert f"signal {int(sig)} arrived while the output was being put in place; it is complete" in err
    assert sorted(os.listdir(tmp_path)) == ["CK"]  # no half-deleted .CK.old-*
    load_quantized(ck, backend="numpy")


@pytest.mark.parametrize("sig,status", [(signal.SIGHUP, 129), (signal.SIGQUIT, 131)])
def test_sighup_and_sigquit_clean_up_like_sigterm(tmp_path, sig, status):
    code = ("import sys, time; from fptq.io.atomic import atomic_directory, sigterm_as_interrupt, Terminated\n"
            "with sigterm_as_interrupt():\n"
            "    try:\n"
            "        with atomic_directory(sys.argv[1]) as tmp:\n"
            "            (tmp / 'big.bin').write_bytes(b'x' * 1_000_000)\n"
            "            print('ready', flush=True)\n"
            "            time.sleep(60)\n"
            "    except Terminated as e:\n"
            "        sys.exit(128 + e.signum)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "ck")], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(sig)
    assert p.wait(timeout=30) == status
    assert os.listdir(tmp_path) == []  # no .ck.tmp-* left


def test_leftovers_of_an_interrupted_run_are_named(model_dir, ckpt, tmp_path, no_work, capsys):
    old = tmp_path / ".CK.old-abc123"
    shutil.copytree(ckpt, old)
    assert main(["quantize", str(model_dir), "--out", str(tmp_path / "CK"), *SMALL]) == 2
    err = _err(capsys)
    assert str(old) in err and "move it back" in err
    shutil.copytree(ckpt, tmp_path / "CK")
    (tmp_path / ".CK.tmp-xyz").mkdir()
    main(["quantize", str(model_dir), "--out", str(tmp_path / "CK"), "--force", *SMALL])  # refused later by no_work
    assert "left by an interrupted run" in _err(capsys)
    assert old.is_dir() and (tmp_path / ".CK.tmp-xyz").is_dir()  # named, not deleted
