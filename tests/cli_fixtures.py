"""Fixtures shared by the CLI safety tests (test_cli_safety, test_output_paths, test_input_safety):
a tiny llama on disk, its quick W4A8 checkpoint, and ``no_work``, which refuses any model load or
calibration so a check can be shown to fail before them. Import the names a test module uses."""

from pathlib import Path

import pytest

from fptq.cli import main
from fptq.testing import save_tiny_model

SMALL = ["--calib", "random", "--samples", "2", "--seq-len", "16", "--group-size", "32", "--quiet"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("src") / "tiny-llama", "llama")


@pytest.fixture(scope="module")
def ckpt(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "w4a8"
    assert main(["quantize", str(model_dir), "--out", str(out), *SMALL]) == 0
    return out


@pytest.fixture
def no_work(monkeypatch):
    """Record (and refuse) any model load or calibration: a check must fail before them."""
    import fptq.compare
    import fptq.models.checkpoint
    import fptq.models.loading
    import fptq.models.quantize

    calls = []

    def refuse(what):
        def f(*a, **k):
            calls.append(what)
            raise RuntimeError(f"reached {what}")
        return f

    monkeypatch.setattr(fptq.models.loading, "load_float_model", refuse("load_float_model"))
    monkeypatch.setattr(fptq.models.checkpoint, "load_quantized", refuse("load_quantized"))
    monkeypatch.setattr(fptq.models.checkpoint, "verify_checkpoint", refuse("verify_checkpoint"))  # fptq report's
    monkeypatch.setattr(fptq.models.quantize, "quantize_model", refuse("quantize_model"))
    monkeypatch.setattr(fptq.compare, "run_compare", refuse("run_compare"))
    return calls


def stderr_of(capsys) -> str:
    return capsys.readouterr().err


def file_bytes(d: Path) -> dict:
    """Every file under ``d`` (relative POSIX path) -> its bytes."""
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}
