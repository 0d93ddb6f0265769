"""``--calib a+b``: every part of a calibration mix is an input the outputs may not overlap
(``fptq quantize --out``, ``fptq compare --out``), checked before any work; a bad mix is refused
before the model is read."""

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from cli_fixtures import model_dir, no_work, stderr_of  # noqa: E402,F401
from fptq.cli import main  # noqa: E402


@pytest.fixture
def texts(tmp_path):
    a, b = tmp_path / "texts", tmp_path / "more"
    a.mkdir(), b.mkdir()
    (a / "a.txt").write_text("words " * 200, encoding="utf-8")
    (b / "b.txt").write_text("other words " * 200, encoding="utf-8")
    return a, b / "b.txt"


def test_quantize_out_may_not_hold_a_part_of_the_mix(model_dir, texts, no_work, capsys):
    a, b = texts
    for out in (a, b.parent):
        assert main(["quantize", str(model_dir), "--calib", f"{a}+{b}", "--out", str(out), "--force",
                     "--seq-len", "16", "--quiet"]) == 2
        assert "would overlap the input" in stderr_of(capsys)
    assert no_work == [] and [p.name for p in a.iterdir()] == ["a.txt"] and b.exists()


def test_compare_out_may_not_hold_a_part_of_the_mix(model_dir, texts, no_work, capsys):
    a, b = texts
    assert main(["compare", str(model_dir), "--calib", f"{b}+{a}", "--out", str(a), "--quiet"]) == 2
    assert "would overlap the input" in stderr_of(capsys)
    assert no_work == [] and sorted(p.name for p in a.iterdir()) == ["a.txt"]


def test_a_bad_mix_is_refused_before_any_work(model_dir, tmp_path, no_work, capsys):
    out = tmp_path / "w4a8"
    assert main(["quantize", str(model_dir), "--calib", "wiki+wiki", "--out", str(out), "--quiet"]) == 2
    assert "calibration mix" in stderr_of(capsys)
    assert no_work == [] and not out.exists()


def test_the_checkpoint_records_a_named_mix_with_its_parts():
    from types import SimpleNamespace

    from fptq.cli_quantize import _info

    def calibration(calib):
        return _info(SimpleNamespace(calib=calib, samples=128, seq_len=512, seed=0, model=None), "src")["calibration"]

    assert calibration("mix") == "mix = wiki+ptb+science: 128 x 512 tokens, seed 0"
    assert calibration("wiki") == "wiki: 128 x 512 tokens, seed 0"  # a single source as before
    assert calibration("wiki+ptb") == "wiki+ptb: 128 x 512 tokens, seed 0"
