"""fptq.defaults: every reader takes its defaults from it, and the default backend falls back clearly."""

from __future__ import annotations

import inspect
import subprocess
import sys
import warnings

import pytest

from fptq import defaults as D


def _default(fn, name):
    return inspect.signature(fn).parameters[name].default


def test_importing_defaults_loads_nothing_heavy():
    code = "import sys, fptq.defaults; print([m for m in ('numpy', 'torch', 'numba', 'fptq.backends') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_flags_default_to_the_defaults():
    from fptq.cli import build_parser

    p = build_parser()
    ev = p.parse_args(["eval"])
    assert (ev.backend, tuple(ev.ppl), ev.seq_len) == (None, D.EVAL_TEXTS, D.EVAL_SEQ_LEN)
    cmp = p.parse_args(["compare"])
    assert (cmp.backend, tuple(cmp.ppl), cmp.eval_seq_len, cmp.max_windows, cmp.batch_size) == (
        None, D.EVAL_TEXTS, D.EVAL_SEQ_LEN, D.COMPARE_MAX_WINDOWS, D.CALIB_BATCH_SIZE)
    q = p.parse_args(["quantize", "--out", "x"])
    assert (q.calib, q.samples, q.seq_len, q.batch_size) == (D.CALIB_SOURCE, D.CALIB_SAMPLES, D.CALIB_SEQ_LEN,
                                                            D.CALIB_BATCH_SIZE)
    g = p.parse_args(["generate", "default", "hi"])
    assert g.backend is None
    assert {k: getattr(g, k) for k in D.GENERATION} == D.GENERATION


def test_library_functions_default_to_the_defaults():
    pytest.importorskip("torch")
    from fptq.data.calibration import calibration_ids
    from fptq.data.text import calibration_samples
    from fptq.eval.perplexity import perplexity
    from fptq.eval.runner import run_eval
    from fptq.generate import GENERATION_DEFAULTS, load
    from fptq.models.calibrate import calibrate
    from fptq.models.checkpoint import load_quantized
    from fptq.models.config import QuantConfig
    from fptq.models.quantize import quantize_model

    for fn in (calibration_ids, calibration_samples):
        assert (_default(fn, "source"), _default(fn, "n_samples"), _default(fn, "seq_len")) == (
            D.CALIB_SOURCE, D.CALIB_SAMPLES, D.CALIB_SEQ_LEN), fn
    q = QuantConfig()
    assert (q.calib, q.n_samples, q.seq_len) == (D.CALIB_SOURCE, D.CALIB_SAMPLES, D.CALIB_SEQ_LEN)
    assert tuple(_default(run_eval, "ppl")) == D.EVAL_TEXTS
    assert _default(run_eval, "seq_len") == _default(perplexity, "seq_len") == D.EVAL_SEQ_LEN
    assert _default(calibrate, "batch_size") == _default(quantize_model, "batch_size") == D.CALIB_BATCH_SIZE
    for fn in (load, load_quantized, quantize_model):
        assert _default(fn, "backend") is None, fn  # None: resolve_backend at load time
    assert GENERATION_DEFAULTS == D.GENERATION


def test_compare_settings_default_to_the_defaults():
    pytest.importorskip("torch")
    from fptq.compare import CompareSettings

    s = CompareSettings()
    assert (tuple(s.ppl), s.eval_seq_len, s.max_windows, s.batch_size) == (
        D.EVAL_TEXTS, D.EVAL_SEQ_LEN, D.COMPARE_MAX_WINDOWS, D.CALIB_BATCH_SIZE)
    assert s.backend == D.default_backend()


def test_default_backend_is_the_fast_one_when_it_starts():
    pytest.importorskip("numba")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert D.default_backend() == D.BACKEND == "numba"
    assert D.resolve_backend(None) == "numba" and D.resolve_backend("numpy") == "numpy"


def test_default_backend_falls_back_with_a_reason(monkeypatch):
    """Without numba (an extra) the fallback runs, and the warning says why and what it costs."""
    from fptq.backends import BackendUnavailable, registry

    real = registry.get_backend

    def no_numba(name):
        if name == "numba":
            raise BackendUnavailable("numba is not installed: pip install 'fptq[numba]'")
        return real(name)

    monkeypatch.setattr(registry, "get_backend", no_numba)
    monkeypatch.setattr("fptq.backends.get_backend", no_numba)
    with pytest.warns(D.DefaultBackendWarning, match=r"'numba' cannot start here \(numba is not installed.*'torch'"):
        assert D.resolve_backend(None) == D.FALLBACK_BACKEND == "torch"


def test_a_w4a8_layer_without_a_named_backend_gets_the_default():
    pytest.importorskip("torch")
    import numpy as np

    from fptq import spec
    from fptq.models.qlinear import W4A8Linear

    w = np.random.default_rng(0).standard_normal((8, 32)).astype(np.float32)
    qw = spec.quantize_weight(w, 32, spec.WeightFormat.SYMMETRIC)
    layer = W4A8Linear.from_quantized(qw, None, spec.ActPolicy.DYNAMIC, None)
    assert layer.backend_name == D.default_backend()
