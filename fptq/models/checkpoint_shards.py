"""Sharded checkpoints (format version 6): the shard files, their index, and reading them back as one.

A checkpoint whose decoder layers' tensors exceed :data:`DEFAULT_SHARD_BYTES` (or the writer's
``shard_bytes``) keeps them in shard files ``fptq_w4a8-00001.safetensors``, ``-00002``, ... (plain
safetensors files written by :func:`fptq.io.tensorfile.write_tensor_file`, no metadata, whole layers
in order, at most ``shard_bytes`` of tensors each unless one layer alone holds more); the tensors file ``fptq_w4a8.safetensors`` keeps the other tensors, all the metadata
and the index, metadata key ``shards``::

    {"fptq_w4a8-00001.safetensors": {"sha256": "<hex of the whole file>", "bytes": 123456,
                                     "tensors": {"model.layers.0.mlp.down_proj.qweight": ["U8", [64, 48]], ...}},
     ...}

Every shard tensor is also in ``tensor_sha256``, and ``header_sha256`` covers the shards' tables (they
are part of the table it digests, and of the ``shards`` string). A checkpoint that fits in one shard
is written as a single file (format version 5), byte for byte as before shards existed.

Reading: :func:`parse_shards` checks the key (before the rest of the header, which is checked against
the table of every stored tensor it returns); :func:`open_shards` opens and verifies each listed shard
(a regular file in the directory, its size, the SHA-256 of its bytes read bounded, its tensor table) and
refuses a shard-named file the header does not list; :class:`CheckpointTensors` reads the tensors file
and its shards as one :class:`~fptq.io.tensorfile.TensorFile`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path

from ..defaults import SHARD_BYTES
from ..io.reading import file_sha256
from ..io.tensorfile import (DTYPES, MAX_TENSORS, TensorFile, TensorFileError, dtype_name, no_duplicate_keys,
                             raw_bytes, write_tensor_file)
from .checkpoint_meta import SHARDED_FORMAT_VERSION, SHARDS_KEY, SUPPORTED_VERSIONS, CheckpointError

__all__ = ["DEFAULT_SHARD_BYTES", "shard_file_name", "is_shard_name", "write_shard", "parse_shards",
           "open_shards", "CheckpointTensors", "SPILL_DIR", "SpilledTensor", "spill_tensor", "remove_spilled"]

#: the most bytes of tensors a shard holds (unless one layer alone holds more): fptq.defaults.SHARD_BYTES,
#: where the choice is explained (it bounds the quantized tensors a streamed run holds)
DEFAULT_SHARD_BYTES = SHARD_BYTES
_PREFIX, _SUFFIX = "fptq_w4a8-", ".safetensors"
_ENTRY_KEYS = {"sha256", "bytes", "tensors"}
_HEX64 = re.compile(r"[0-9a-f]{64}")


def shard_file_name(i: int) -> str:
    """The file name of shard ``i`` (from 1): ``fptq_w4a8-00001.safetensors``."""
    return f"{_PREFIX}{i:05d}{_SUFFIX}"


def is_shard_name(name: str) -> bool:
    """Whether a file name looks like a shard's (``fptq_w4a8-*.safetensors``)."""
    return name.startswith(_PREFIX) and name.endswith(_SUFFIX)


def write_shard(path: Path, tensors: dict) -> dict:
    """Write ``tensors`` (name -> CPU tensor) as the shard file ``path``; returns its index entry
    (``sha256`` of the file, ``bytes``, ``tensors``: name -> [dtype, shape])."""
    write_tensor_file(path, tensors)
    return {"sha256": file_sha256(path), "bytes": path.stat().st_size,
            "tensors": {k: [dtype_name(t), [int(s) for s in t.shape]] for k, t in sorted(tensors.items())}}


#: the directory (inside a checkpoint's temporary directory) where a writer keeps tensors until the tensors
#: file is written (:func:`spill_tensor`); removed then, or with the temporary directory on a failure
SPILL_DIR = ".spill"
#: bytes copied at a time from a spilled tensor's file into the tensors file
SPILL_CHUNK_BYTES = 16 << 20


class SpilledTensor:
    """A stored tensor's bytes kept in a file until the tensors file is written: ``dtype`` (torch), ``shape`` and
    ``nbytes`` as the tensor's; :meth:`write_to` copies them into an open file a chunk at a time (what
    :func:`~fptq.io.tensorfile.write_tensor_file` calls for it), checking them against ``sha256``, the digest
    taken from the tensor itself."""

    def __init__(self, path: Path, dtype, shape: tuple, nbytes: int, sha256: str) -> None:
        self.path, self.dtype, self.shape, self.nbytes, self.sha256 = Path(path), dtype, tuple(shape), nbytes, sha256

    def write_to(self, f) -> None:
        h, done = hashlib.sha256(), 0
        view = memoryview(bytearray(max(1, min(SPILL_CHUNK_BYTES, self.nbytes))))
        with open(self.path, "rb") as src:
            while n := src.readinto(view):
                h.update(view[:n])
                f.write(view[:n])
                done += n
        if done != self.nbytes or h.hexdigest() != self.sha256:
            raise CheckpointError(f"{self.path}: the bytes kept for a tensor changed before they were written "
                                  f"({done} of {self.nbytes} bytes read back, or their SHA-256 differs)")


def spill_tensor(directory, name: str, t, sha256: str) -> SpilledTensor:
    """Write tensor ``t``'s raw bytes (``name``'s, digest ``sha256``) to a file in ``directory``/:data:`SPILL_DIR`
    and return its :class:`SpilledTensor` (the caller drops ``t``)."""
    d = Path(directory) / SPILL_DIR
    d.mkdir(exist_ok=True)
    path = d / f"{hashlib.sha256(name.encode()).hexdigest()[:32]}.bin"
    if path.exists():
        raise CheckpointError(f"tensor {name} is spilled twice")
    raw = raw_bytes(t)
    with open(path, "wb") as f:
        f.write(raw)
    return SpilledTensor(path, t.dtype, tuple(t.shape), raw.nbytes, sha256)


def remove_spilled(spilled: dict) -> None:
    """Delete the files of ``spilled`` (name -> :class:`SpilledTensor`) and their directory once empty."""
    for s in spilled.values():
        s.path.unlink(missing_ok=True)
    for d in {s.path.parent for s in spilled.values()}:
        try:
            d.rmdir()
        except OSError:
            pass


def _refuse(where, what: str):
    raise CheckpointError(f"{where}: metadata key {SHARDS_KEY!r}: {what}")


def _check_entry(name: str, e, table: dict, where) -> None:
    """One index entry, its tensors added to ``table`` (refusing a name stored twice)."""
    if not isinstance(e, dict) or set(e) != _ENTRY_KEYS:
        _refuse(where, f"entry {name} must be an object with exactly {sorted(_ENTRY_KEYS)}")
    if not isinstance(e["sha256"], str) or not _HEX64.fullmatch(e["sha256"]):
        _refuse(where, f"entry {name}: sha256 must be a SHA-256 hex digest")
    if type(e["bytes"]) is not int or e["bytes"] < 8:
        _refuse(where, f"entry {name}: bytes must be an integer >= 8, got {e['bytes']!r}")
    if not isinstance(e["tensors"], dict) or not e["tensors"]:
        _refuse(where, f"entry {name}: tensors must be a non-empty object (name -> [dtype, shape])")
    for t, ds in e["tensors"].items():
        ok = isinstance(ds, list) and len(ds) == 2 and ds[0] in DTYPES and isinstance(ds[1], list) and \
            all(type(x) is int and x >= 0 for x in ds[1])
        if not t or not ok:
            _refuse(where, f"entry {name}: tensor {t!r} must map to [dtype, shape], got {ds!r}")
        if t in table:
            _refuse(where, f"tensor {t} of {name} is stored twice")
        table[t] = (ds[0], tuple(ds[1]))


def parse_shards(raw: dict[str, str], table: dict, where) -> tuple[dict, dict]:
    """``(shards, tables)`` of a header: ``shards`` the checked index (``{}`` before version 6), ``tables``
    the tensors file's ``table`` (name -> (dtype, shape)) with every shard's tensors added, which the
    rest of the header is checked against. Version 6 must have the key (shards numbered from 1, a tensor
    stored once); versions 1-5 must not (a corrupted version field); an unknown version is left to
    :func:`fptq.models.checkpoint_meta.parse_metadata` to refuse."""
    version = raw.get("format_version")
    if SHARDS_KEY not in raw:
        if version == str(SHARDED_FORMAT_VERSION):
            raise CheckpointError(f"{where}: metadata key {SHARDS_KEY!r} is missing (version "
                                  f"{SHARDED_FORMAT_VERSION} needs it)")
        return {}, dict(table)
    if version != str(SHARDED_FORMAT_VERSION):
        if version in {str(v) for v in SUPPORTED_VERSIONS}:
            raise CheckpointError(f"{where}: format_version says {version} but the header has version-"
                                  f"{SHARDED_FORMAT_VERSION} field [{SHARDS_KEY!r}]: the version field is corrupt")
        return {}, dict(table)
    try:
        shards = json.loads(raw[SHARDS_KEY], object_pairs_hook=no_duplicate_keys)
    except (ValueError, RecursionError) as e:
        _refuse(where, f"not JSON ({e})")
    if not isinstance(shards, dict) or not shards:
        _refuse(where, "must be a non-empty object (shard file name -> entry)")
    want = [shard_file_name(i) for i in range(1, len(shards) + 1)]
    if sorted(shards) != want:
        _refuse(where, f"names {sorted(shards)[:3]} where {want[:3]}... (plain file names numbered from 1) "
                "were expected")
    tables = dict(table)
    for name in want:
        _check_entry(name, shards[name], tables, where)
    if len(tables) > MAX_TENSORS:
        _refuse(where, f"{len(tables)} tensors in all, more than the {MAX_TENSORS} fptq reads")
    return shards, tables


def _bounded_sha256(path: Path, size: int) -> str:
    """SHA-256 of the regular file ``path`` of ``size`` bytes (checked on the open descriptor), reading
    at most ``size + 1`` bytes in 4 MiB blocks; CheckpointError when it is not that file."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            raise CheckpointError(f"{path}: a shard file must be a regular file of the {size} bytes the header "
                                  f"lists (metadata key {SHARDS_KEY!r}); it is {st.st_size} bytes")
        h, n = hashlib.sha256(), 0
        while n <= size:
            block = os.read(fd, min(1 << 22, size + 1 - n))
            if not block:
                break
            h.update(block)
            n += len(block)
    finally:
        os.close(fd)
    if n != size:
        raise CheckpointError(f"{path}: read {n} bytes where the header lists {size} (the file changed while read)")
    return h.hexdigest()


def _open_shard(d: Path, name: str, e: dict) -> TensorFile:
    """The shard ``name`` of directory ``d``, verified against its index entry ``e``."""
    path = d / name
    try:
        st = os.stat(path)
    except OSError as err:
        raise CheckpointError(f"{path}: a shard the header lists (metadata key {SHARDS_KEY!r}) is missing or "
                              f"unreadable ({err.strerror or err})") from None
    if Path(os.path.realpath(path)).parent != Path(os.path.realpath(d)) or not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{path}: a shard must be a regular file inside the checkpoint directory; this one "
                              f"is {'outside it' if stat.S_ISREG(st.st_mode) else 'not a regular file'}")
    if st.st_size != e["bytes"]:
        raise CheckpointError(f"{path}: {st.st_size} bytes where the header lists {e['bytes']} (metadata key "
                              f"{SHARDS_KEY!r}): a truncated, extended or replaced shard")
    if _bounded_sha256(path, e["bytes"]) != e["sha256"]:
        raise CheckpointError(f"{path}: digest mismatch (the shard changed after the checkpoint was written)")
    try:
        tf = TensorFile(path)
    except (TensorFileError, OSError) as err:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({err})") from None
    table = {n: [tf.dtype(n), list(tf.shape(n))] for n in tf.names}
    if table != e["tensors"]:
        tf.close()
        raise CheckpointError(f"{path}: its tensors do not match the header's table of it (metadata key "
                              f"{SHARDS_KEY!r})")
    return tf


def _refuse_strays(d: Path, shards: dict, where) -> None:
    """A shard-named file the header does not list means a renamed, extra or foreign shard: refused."""
    stray = sorted(e.name for e in os.scandir(d) if is_shard_name(e.name) and e.name not in shards)
    if stray:
        raise CheckpointError(f"{d / stray[0]}: a shard file the header of {where} does not list (metadata key "
                              f"{SHARDS_KEY!r}): a renamed, extra or foreign shard ({len(stray)} such files)")


class CheckpointTensors:
    """A checkpoint's tensors file and its shards read as one :class:`~fptq.io.tensorfile.TensorFile`:
    ``names``, ``dtype``, ``shape``, ``sha256``, ``numpy``, ``tensor``, ``close`` (and a context manager);
    ``metadata`` and ``path`` are the tensors file's."""

    def __init__(self, main: TensorFile, shards: dict[str, TensorFile]):
        self._files = [main, *shards.values()]
        self._owner = {n: f for f in self._files for n in f.names}
        self.metadata, self.path = main.metadata, main.path

    @property
    def names(self) -> list[str]:
        return sorted(self._owner)

    def dtype(self, name: str) -> str:
        return self._owner[name].dtype(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._owner[name].shape(name)

    def sha256(self, name: str) -> str:
        return self._owner[name].sha256(name)

    def numpy(self, name: str):
        return self._owner[name].numpy(name)

    def tensor(self, name: str):
        return self._owner[name].tensor(name)

    def close(self) -> None:
        for f in self._files:
            f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_shards(tf: TensorFile, ckpt_dir, meta: dict) -> CheckpointTensors:
    """The tensors file ``tf`` (of :func:`fptq.models.checkpoint_read.open_checkpoint`; closed here if this
    fails) with every shard of ``meta["shards"]`` opened and verified (:func:`_open_shard`), after refusing
    any shard-named file the header does not list. A CheckpointError names the file."""
    d, opened = Path(ckpt_dir), {}
    try:
        _refuse_strays(d, meta["shards"], meta["_path"])
        for name, e in sorted(meta["shards"].items()):
            opened[name] = _open_shard(d, name, e)
    except BaseException:
        for f in [tf, *opened.values()]:
            f.close()
        raise
    return CheckpointTensors(tf, opened)
