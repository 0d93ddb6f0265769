"""The journal of a resumable streamed run (``fptq quantize --resume``; ``docs/scale.md``, "Long runs").

A streamed run with a journal works in ``<out>.fptq-partial/`` (:func:`partial_dir`), next to ``--out``::

    journal.json            the commit point, replaced atomically after each decoder layer: the run's
                            fingerprint, the next layer, the checkpoint writer's state, the plan so far (its
                            arrays in the inputs file), the seconds per layer, every file below with its SHA-256
    inputs-K.safetensors    layer K's calibration inputs (``hidden.B``: batch B, in its dtype; with a weight
                            quantizer that calibrates on the float model's stream too, GPTAQ's, that stream's
                            inputs of layer K beside them, ``float.B``), the channel maxima so far
                            (``stats.NAME``) and the plan's arrays (``plan.J.FIELD``)
    layer-P.safetensors     decoder layer P's stored tensors while the writer holds it in its shard buffer
    checkpoint/             the checkpoint writer's directory: the shards so far; at the end the whole
                            checkpoint, renamed to ``--out`` (nothing is ever at ``--out`` before)

:meth:`Journal.record` writes every file through a temporary name and ``os.replace`` and fsyncs it before
``journal.json`` names it; files it no longer names are removed afterwards. No journal is written after the
last layer: a run stopped later (in the final write) redoes that layer. :meth:`Journal.open` continues a
directory only when its journal is fptq's, its fingerprint equals this run's (else :class:`ResumeError`
naming the fields that differ) and every file it names has its digest; it never deletes or uses a directory
that holds no journal; a run with a float stream (``Journal.open(float_stream=True)``) refuses a journal that
recorded none (``float_batches`` 0, or absent as before the float stream was journaled). On success
:meth:`Journal.discard` removes what the journal made.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io.reading import file_sha256
from ..io.tensorfile import TensorFile, write_tensor_file
from ..reference.plan import GroupPlan
from ..spec import ActPolicy
from .trace import mark

__all__ = ["PARTIAL_SUFFIX", "JOURNAL_FILE", "CHECKPOINT_DIR", "ResumeError", "ResumePoint", "Journal",
           "partial_dir", "encode_groups", "decode_groups", "fingerprint_differences"]

PARTIAL_SUFFIX = ".fptq-partial"
JOURNAL_FILE = "journal.json"
CHECKPOINT_DIR = "checkpoint"
LOCK_FILE = ".lock"
JOURNAL_FORMAT, JOURNAL_VERSION = "fptq-resume-journal", 1


class ResumeError(ValueError):
    """An interrupted run's directory cannot be continued or used (the message says why and what to do)."""


def partial_dir(out) -> Path:
    """``<out>.fptq-partial``: where a resumable run of ``--out`` works (same parent, so the last rename stays on
    one filesystem)."""
    out = Path(os.path.abspath(out))
    return out.with_name(out.name + PARTIAL_SUFFIX)


@dataclass
class ResumePoint:
    """Where a streamed run starts: layer ``start`` (the layers before it are quantized and in the writer),
    its inputs ``hidden`` (per calibration batch; None at layer 0: the captured ones; calibration takes them
    and sets None, so they are freed batch by batch), the channel maxima so far ``stats`` (the dict calibration
    fills on, which the journal reads), the plan's groups so far and, for a run with a float stream (GPTAQ), that
    stream's inputs of layer ``start`` ``float_hidden`` (taken like ``hidden``; None otherwise)."""

    start: int
    hidden: list | None
    stats: dict = field(default_factory=dict)
    plan_groups: list = field(default_factory=list)
    float_hidden: list | None = None


def _encode_value(v, key: str, arrays: dict):
    if isinstance(v, np.ndarray):
        arrays[key] = np.ascontiguousarray(v)
        return {"array": key}
    if isinstance(v, ActPolicy):
        return {"policy": v.value}
    if isinstance(v, np.generic):
        return {"numpy": v.dtype.name, "value": v.item()}
    return list(v) if isinstance(v, tuple) else v


def encode_groups(groups) -> tuple[list, dict]:
    """``(JSON records, arrays)`` of a plan's :class:`~fptq.reference.plan.GroupPlan` list: every field, its
    arrays (``s``, ``m``...) named ``plan.J.FIELD`` in ``arrays``; :func:`decode_groups` gives them back equal."""
    records, arrays = [], {}
    for j, g in enumerate(groups):
        records.append({f.name: _encode_value(getattr(g, f.name), f"plan.{j}.{f.name}", arrays)
                        for f in dataclasses.fields(g)})
    return records, arrays


def _decode_value(v, arrays):
    if isinstance(v, dict) and "array" in v:
        return arrays(v["array"])
    if isinstance(v, dict) and "policy" in v:
        return ActPolicy(v["policy"])
    if isinstance(v, dict) and "numpy" in v:
        return np.dtype(v["numpy"]).type(v["value"])
    return v


def decode_groups(records: list, arrays) -> list:
    """The :class:`~fptq.reference.plan.GroupPlan` list of :func:`encode_groups`' ``records``; ``arrays(name)``
    reads one array."""
    out = []
    for r in records:
        kw = {k: _decode_value(v, arrays) for k, v in r.items()}
        kw["linears"] = tuple(kw["linears"])
        out.append(GroupPlan(**kw))
    return out


def _flat(d, prefix="") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def fingerprint_differences(old: dict, new: dict) -> list[str]:
    """Readable lines ``field: interrupted run X, this run Y`` for every field of two fingerprints that differs."""
    a, b = _flat(old), _flat(new)
    return [f"{k}: interrupted run {_short(a.get(k))}, this run {_short(b.get(k))}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _short(v) -> str:
    text = json.dumps(v)
    return text if len(text) <= 80 else text[:77] + "..."


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_atomically(path: Path, write) -> None:
    """``write(tmp)`` then fsync and ``os.replace`` onto ``path``: ``path`` is the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    _fsync(tmp)
    os.replace(tmp, path)


class Journal:
    """One resumable run's directory (module docstring): :meth:`open` it, hand :meth:`resume_point` to the
    run, :meth:`restore_writer` the checkpoint writer, :meth:`record` each finished layer, :meth:`discard` at
    the end (or :meth:`close` it: a context manager). ``checkpoint_dir``: the writer's directory
    (``open_writer(workdir=...)``). One process at a time holds a directory (a lock on ``.lock``)."""

    def __init__(self, directory: Path, state: dict) -> None:
        self.directory, self.state = Path(directory), state
        self.checkpoint_dir = self.directory / CHECKPOINT_DIR
        self._point: ResumePoint | None = None
        self._lock_file = None

    @property
    def next_layer(self) -> int:
        """The first layer not yet done (0: nothing recorded)."""
        return int(self.state["next_layer"])

    @property
    def layer_seconds(self) -> list:
        """Wall seconds of each layer done so far (those of earlier processes included)."""
        return list(self.state["layer_seconds"])

    @classmethod
    def open(cls, out, fingerprint: dict, n_layers: int, float_stream: bool = False) -> "Journal":
        """The journal of ``--out``'s run: a new one in a new :func:`partial_dir`, or the interrupted run's there,
        checked (:class:`ResumeError`: not fptq's, another fingerprint, a file changed or missing, no float stream
        recorded for a run that has one: ``float_stream``, GPTAQ) and cleared of what it does not name (files a
        stopped process was writing)."""
        d = partial_dir(out)
        if not os.path.lexists(d):
            d.parent.mkdir(parents=True, exist_ok=True)
            d.mkdir()
            (d / CHECKPOINT_DIR).mkdir()
            state = {"format": JOURNAL_FORMAT, "version": JOURNAL_VERSION, "fingerprint": fingerprint,
                     "n_layers": n_layers, "next_layer": 0, "layer_seconds": [], "files": {}}
            journal = cls(d, state)
            journal._lock()
            journal._commit()
            return journal
        journal = cls(d, _read_state(d))
        journal._lock()
        try:
            journal._check(fingerprint, n_layers, float_stream)
            journal._clear_unnamed()
        except BaseException:
            journal.close()
            raise
        return journal

    def _lock(self) -> None:
        """Hold an exclusive lock on ``.lock`` in the directory for this process's life (released when it exits):
        a second process continuing the same run at once is refused."""
        import fcntl

        self._lock_file = open(self.directory / LOCK_FILE, "a")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            raise ResumeError(f"{self.directory} is in use by another fptq process running this run; wait for it "
                              "to stop") from None

    def close(self) -> None:
        """Release the directory's lock (the process may run it again); :meth:`discard` and a context exit call it."""
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check(self, fingerprint: dict, n_layers: int, float_stream: bool = False) -> None:
        diff = fingerprint_differences(self.state["fingerprint"], fingerprint)
        if diff or self.state.get("n_layers") != n_layers:
            lines = diff or [f"n_layers: interrupted run {self.state.get('n_layers')}, this run {n_layers}"]
            raise ResumeError(f"--resume: {self.directory} is the work of a run with other settings; "
                              + "; ".join(lines[:4]) + (f" (and {len(lines) - 4} more)" if len(lines) > 4 else "")
                              + f". Run it with the settings it was started with, or remove it (rm -r "
                              f"{self.directory}) to start over")
        if not self.checkpoint_dir.is_dir():
            raise ResumeError(f"--resume: {self.directory} has no {CHECKPOINT_DIR}/ (the run may have finished and "
                              f"put its checkpoint in place): remove it (rm -r {self.directory})")
        shards = self.state.get("writer", {}).get("shards", {})
        named = [(self.directory / n, d) for n, d in self.state["files"].items()]
        named += [(self.checkpoint_dir / n, e["sha256"]) for n, e in shards.items()]
        for path, digest in sorted(named):
            if not path.is_file() or file_sha256(path) != digest:
                raise ResumeError(f"--resume: {path} is missing or changed since the journal recorded it: the "
                                  f"interrupted run cannot be continued; remove {self.directory} (rm -r) to start over")
        if float_stream and self.next_layer and not self.state.get("float_batches"):
            raise ResumeError(f"--resume: {self.directory} recorded no float stream (the float model's layer "
                              "inputs), which this run's weight quantizer calibrates on: it cannot be continued; "
                              f"remove it (rm -r {self.directory}) to start over")

    def _clear_unnamed(self) -> None:
        """Remove what a stopped process left and no journal names: our temporary and superseded files, and in
        ``checkpoint/`` anything but the recorded shards (a shard written after the last journal, a final write
        cut short: fptq made all of it, and the run writes it again)."""
        for p in self.directory.iterdir():
            if p.is_file() and p.name not in self.state["files"] and p.name != JOURNAL_FILE and \
                    (p.name.startswith((".inputs-", ".layer-", f".{JOURNAL_FILE}", "inputs-", "layer-"))):
                p.unlink()
        shards = self.state.get("writer", {}).get("shards", {})
        for p in self.checkpoint_dir.iterdir():
            if p.name in shards:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()

    def resume_point(self) -> ResumePoint:
        """The run's :class:`ResumePoint` (read once: the inputs of the next layer, statistics, plan)."""
        if self._point is not None:
            return self._point
        start = self.next_layer
        if start == 0:
            self._point = ResumePoint(0, None)
            return self._point
        with TensorFile(self.directory / self.state["inputs"]) as tf:
            hidden = [tf.tensor(f"hidden.{b}") for b in range(int(self.state["batches"]))]
            floats = [tf.tensor(f"float.{b}") for b in range(int(self.state.get("float_batches", 0)))]
            stats = {n: tf.numpy(f"stats.{n}") for n in self.state["stats"]}
            groups = decode_groups(self.state["plan"], tf.numpy)
        self._point = ResumePoint(start, hidden, stats, groups, floats or None)
        mark("journal: read")
        return self._point

    def restore_writer(self, writer) -> None:
        """Give ``writer`` (a fresh :class:`~fptq.models.checkpoint_write.CheckpointWriter` in
        ``checkpoint_dir``) the interrupted run's state and buffered layers (nothing at layer 0)."""
        if self.next_layer == 0:
            return
        ws, buffer = self.state["writer"], {}
        for prefix in ws["buffered"]:
            with TensorFile(self.directory / _layer_file(prefix)) as tf:
                buffer.update({n: tf.tensor(n) for n in tf.names})
        writer.restore(ws, buffer)

    def record(self, i: int, outputs: list, plan, writer, layer_seconds: list,
               float_outputs: list | None = None) -> None:
        """After layer ``i`` is done (in the writer, its outputs computed): the next layer's inputs (with
        ``float_outputs``, GPTAQ's float stream, that stream's too), the statistics and plan so far, the writer's
        state and its buffered layers' tensors, then ``journal.json``. Nothing after the last layer (the run that
        resumes redoes it)."""
        if i + 1 >= int(self.state["n_layers"]):
            return
        records, arrays = encode_groups(plan.groups)
        stats = self.resume_point().stats
        tensors = {f"hidden.{b}": h.detach().to("cpu") for b, h in enumerate(outputs)}
        tensors.update({f"float.{b}": h.detach().to("cpu") for b, h in enumerate(float_outputs or ())})
        tensors.update({f"stats.{n}": np.ascontiguousarray(v) for n, v in stats.items()})
        tensors.update(arrays)
        files, inputs = {}, f"inputs-{i + 1}.safetensors"
        files[inputs] = self._write(inputs, tensors)
        del tensors
        ws = writer.journal_state()
        for prefix in ws["buffered"]:
            name = _layer_file(prefix)
            files[name] = self.state["files"].get(name) or self._write(name, writer.buffered(prefix))
        for shard in set(ws["shards"]) - set(self.state.get("writer", {}).get("shards", {})):
            _fsync(self.checkpoint_dir / shard)
        _fsync(self.checkpoint_dir)
        old = set(self.state["files"]) - set(files)
        self.state.update(next_layer=i + 1, layer_seconds=list(layer_seconds), files=files, inputs=inputs,
                          batches=len(outputs), float_batches=len(float_outputs or ()), stats=sorted(stats),
                          plan=records, writer=ws)
        self._commit()
        for name in old:
            (self.directory / name).unlink(missing_ok=True)
        mark(f"journal: layer {i}")

    def _write(self, name: str, tensors: dict) -> str:
        path = self.directory / name
        _replace_atomically(path, lambda tmp: write_tensor_file(tmp, tensors))
        return file_sha256(path)

    def _commit(self) -> None:
        text = json.dumps(self.state, sort_keys=True)
        _replace_atomically(self.directory / JOURNAL_FILE, lambda tmp: tmp.write_text(text))
        _fsync(self.directory)

    def disk_bytes(self) -> int:
        """Bytes the directory holds now."""
        return sum(p.stat().st_size for p in self.directory.rglob("*") if p.is_file())

    def discard(self) -> None:
        """Remove what the journal made (after the checkpoint was renamed to ``--out``); anything else found in
        the directory is left, with the directory, and named on stderr."""
        self.close()
        for name in [*self.state["files"], JOURNAL_FILE, LOCK_FILE]:
            (self.directory / name).unlink(missing_ok=True)
        if self.checkpoint_dir.is_dir() and not any(self.checkpoint_dir.iterdir()):
            self.checkpoint_dir.rmdir()
        try:
            self.directory.rmdir()
        except OSError:
            import sys

            left = sorted(p.name for p in self.directory.iterdir())
            print(f"fptq: note: {self.directory} is kept: it holds files fptq did not make: {', '.join(left[:8])}",
                  file=sys.stderr)


def _layer_file(prefix: str) -> str:
    return f"layer-{prefix}.safetensors"


def _read_state(d: Path) -> dict:
    """The checked ``journal.json`` of ``d``; a directory without one (or not a directory) is not fptq's."""
    path = d / JOURNAL_FILE
    if d.is_symlink() or not d.is_dir() or not path.is_file():
        raise ResumeError(f"{d} exists but holds no fptq journal ({JOURNAL_FILE}); fptq did not make it and will "
                          "neither use nor delete it: move it away or choose another --out")
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ResumeError(f"{path}: not a readable fptq journal ({e}); remove {d} (rm -r) to start over") from None
    if not isinstance(state, dict) or state.get("format") != JOURNAL_FORMAT or \
            state.get("version") != JOURNAL_VERSION:
        raise ResumeError(f"{path}: not an fptq journal of version {JOURNAL_VERSION}; remove {d} (rm -r) to start "
                          "over")
    return state
