"""``fptq quantize --resume``: the command line's side of a resumable streamed run (:mod:`fptq.models.journal`).

``--resume`` makes the streamed run work in ``<out>.fptq-partial/``, record itself there after every decoder
layer and keep it when it stops; the same command again continues from the last finished layer, and the
checkpoint is byte for byte the one an uninterrupted run writes. This module checks the flags, builds the
run's fingerprint (everything that changes the checkpoint's bytes) and says, when a run stops, what was kept
and how to continue or discard it.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import sys
from pathlib import Path

__all__ = ["check_resume_flags", "run_fingerprint", "code_digest", "open_run_journal", "stopped_message"]

#: the parts of the fptq package a checkpoint's bytes depend on (the code digest of the fingerprint)
RESULT_SOURCES = ("spec", "reference", "models", "data", "io", "defaults.py", "__init__.py")


def check_resume_flags(a, cfg) -> None:
    """Before any work: ``--resume`` only on the streamed run (not ``--rotate residual`` nor ``--tune-scales``; any
    weight quantizer: the journal keeps GPTAQ's float stream too; ``--tune-layers`` tunes each layer before the
    journal records it); without ``--resume``, an interrupted resumable
    run of ``--out`` is refused (it would be left behind and wasted), naming it and both ways on."""
    from .models.journal import JOURNAL_FILE, partial_dir
    from .models.stream import STREAMED_ROTATIONS

    d = partial_dir(a.out)
    if not a.resume:
        if os.path.isfile(d / JOURNAL_FILE) and not a.dry_run:
            raise ValueError(f"--out: {d} holds an interrupted resumable run of {a.out}: add --resume to continue "
                             f"it, or remove it (rm -r {d}) to start over")
        return
    if cfg.rotate not in STREAMED_ROTATIONS:
        raise ValueError(f"--resume needs the streamed run; --rotate {cfg.rotate} loads the model whole")
    if cfg.tune_scales_steps:
        raise ValueError("--resume cannot be used with --tune-scales: scale tuning trains the whole model at the end "
                         "(loaded whole, nothing to resume layer by layer); drop one of them")


def code_digest() -> str:
    """SHA-256 over the sources of the fptq modules a checkpoint's bytes depend on (:data:`RESULT_SOURCES`):
    a resumed run must run the code that made the layers before it."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for part in RESULT_SOURCES:
        p = root / part
        for f in sorted(p.rglob("*.py")) if p.is_dir() else [p]:
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def _model_files(path) -> dict:
    """name -> [bytes, mtime in ns] of the model file, or of every file directly in the model directory."""
    p = Path(path)
    files = sorted(x for x in p.iterdir() if x.is_file()) if p.is_dir() else [p]
    return {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in files}


def run_fingerprint(a, cfg, source, info: dict) -> dict:
    """What must be equal for a run to continue another's: the model (its path, each file's size and
    modification time), every setting that changes the checkpoint (the QuantConfig, the calibration and storage
    flags, the device, the recorded ``info``), fptq's version and :func:`code_digest`, and the versions of the
    libraries whose arithmetic the run uses."""
    import numpy
    import scipy
    import torch
    import transformers

    from . import __version__

    return {"model": {"path": str(Path(source.path).resolve()), "files": _model_files(source.path)},
            "quant_config": cfg.to_json(), "info": info,
            "run": {"calib": a.calib, "samples": a.samples, "seq_len": a.seq_len, "seed": a.seed,
                    "batch_size": a.batch_size, "float_dtype": a.float_dtype, "int8_embeddings": a.int8_embeddings,
                    "shard_size": a.shard_size, "device": str(a.torch_device or "cpu")},
            "fptq": {"version": __version__, "code_sha256": code_digest()},
            "libraries": {m.__name__: m.__version__ for m in (torch, transformers, numpy, scipy)}}


def open_run_journal(a, cfg, source, info: dict, n_layers: int, protect=()):
    """The :class:`~fptq.models.journal.Journal` of this run (new, or the interrupted run's, checked: with a weight
    quantizer that calibrates on the float stream too, GPTAQ, the journal must hold that stream); its directory
    must not overlap an input."""
    from .io.outputs import OutputPathError, is_within
    from .models.journal import Journal, partial_dir

    d = partial_dir(a.out)
    for src in protect:
        if src is not None and os.path.lexists(src) and (is_within(src, d) or is_within(d, src)):
            raise OutputPathError(f"--resume: {d} would overlap the input {src}; write somewhere else")
    journal = Journal.open(a.out, run_fingerprint(a, cfg, source, info), n_layers,
                           float_stream=cfg.float_stream)
    if journal.next_layer:
        print(f"fptq: resuming {d}: layers 1-{journal.next_layer} of {n_layers} are done, continuing at layer "
              f"{journal.next_layer + 1}", file=sys.stderr)
    return journal


def _command() -> str:
    argv = sys.argv[1:]
    if argv[:1] == ["quantize"] and "--resume" in argv:
        return shlex.join(["fptq", *argv])
    return "the same fptq quantize command, with --resume"


def stopped_message(journal) -> str:
    """What a stopped resumable run says: what is kept where, the command that continues it, how to discard it."""
    d, n = journal.directory, journal.state["n_layers"]
    return (f"fptq: the run stopped with {journal.next_layer} of {n} layers recorded; its work is kept in {d} "
            f"({journal.disk_bytes() / 2 ** 20:.0f} MiB). To continue from layer {journal.next_layer + 1}, run "
            f"again: {_command()}\n      To discard it instead: rm -r {shlex.quote(str(d))}")
