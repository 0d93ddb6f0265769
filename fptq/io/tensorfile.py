"""A strict, deterministic safetensors reader and writer, with SHA-256 digests.

The file format is safetensors' own (8-byte little-endian header length N,
an N-byte UTF-8 JSON header, then the raw little-endian tensor bytes), so any
safetensors reader loads what :func:`write_tensor_file` writes. Two things
differ from ``safetensors.torch.save_file``:

* **deterministic bytes**: the header is JSON with sorted keys and no spaces,
  tensors are laid out by (decreasing item size, name) so every tensor is
  aligned, and the header is padded with spaces to a multiple of 8. The same
  tensors and metadata give the same file, byte for byte (``save_file`` writes
  the metadata in hash-map order, which changes from run to run);
* **strict reading**: :class:`TensorFile` refuses anything but a well-formed
  file -- a header length past the end, non-UTF-8 or invalid JSON, duplicate
  keys, an unknown dtype, a shape that is not a list of non-negative integers,
  data offsets that do not match the shape, overlap, leave gaps, or do not end
  exactly at the end of the file -- with a :class:`TensorFileError` saying what
  is wrong. It never hands a malformed header to another parser.

``sha256(name)`` hashes a tensor's raw bytes straight from a read-only memory
map (about 2 GB/s on one core), so digests cost little next to loading.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import struct
from pathlib import Path

import numpy as np

__all__ = ["TensorFileError", "TensorFile", "write_tensor_file", "raw_bytes", "dtype_name", "DTYPES",
           "TORCH_DTYPE_NAMES", "MAX_HEADER_BYTES", "MAX_TENSORS", "read_header_names", "read_header"]

#: safetensors dtype name -> (NumPy dtype, item size). BF16 is read as raw uint16 bits.
DTYPES = {
    "F64": (np.float64, 8), "F32": (np.float32, 4), "F16": (np.float16, 2), "BF16": (np.uint16, 2),
    "I64": (np.int64, 8), "I32": (np.int32, 4), "I16": (np.int16, 2), "I8": (np.int8, 1),
    "U64": (np.uint64, 8), "U32": (np.uint32, 4), "U16": (np.uint16, 2), "U8": (np.uint8, 1),
    "BOOL": (np.bool_, 1),
}
TORCH_DTYPE_NAMES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
                "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
                "uint16": "U16", "uint32": "U32", "uint64": "U64"}

#: a header larger than this is refused (fptq's largest are a few hundred kB)
MAX_HEADER_BYTES = 16 * 1024 * 1024
#: a header listing more tensors than this is refused before it is parsed (an 80-layer model's fptq
#: checkpoint holds about 2,500); counted on the raw bytes, so a hostile header costs no parse
MAX_TENSORS = 65536


class TensorFileError(ValueError):
    """A tensor file is malformed (the message says where)."""


def no_duplicate_keys(pairs):
    """``json.loads`` ``object_pairs_hook``: a key given twice is a TensorFileError (a ValueError)."""
    out = {}
    for k, v in pairs:
        if k in out:
            raise TensorFileError(f"duplicate key {k!r} in the header")
        out[k] = v
    return out


def _no_constants(name):
    raise TensorFileError(f"non-standard JSON constant {name} in the header")


def dtype_name(t) -> str:
    name = str(t.dtype).replace("torch.", "")
    if name not in TORCH_DTYPE_NAMES:
        raise TypeError(f"dtype {t.dtype} cannot be stored in a safetensors file")
    return TORCH_DTYPE_NAMES[name]


def raw_bytes(t) -> memoryview:
    """The little-endian bytes of a CPU torch tensor (or NumPy array), without a copy when contiguous."""
    import torch

    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        t = t.numpy()
    a = np.ascontiguousarray(t)
    if a.dtype.byteorder == ">":
        a = a.byteswap().view(a.dtype.newbyteorder("<"))
    return memoryview(a.reshape(-1).view(np.uint8))


def write_tensor_file(path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (name -> CPU torch tensor) and string ``metadata`` to ``path``, deterministically.

    A value may also be an object with a torch ``dtype``, a ``shape``, ``nbytes`` and ``write_to(file)``, which
    writes its ``nbytes`` raw bytes (a tensor kept in a file: ``fptq.models.checkpoint_shards.SpilledTensor``)."""
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TypeError("metadata keys and values must be str")
    items = sorted(tensors.items(), key=lambda kv: (-DTYPES[dtype_name(kv[1])][1], kv[0]))
    header, views, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = dict(sorted(metadata.items()))
    for name, t in items:
        raw = t if hasattr(t, "write_to") else raw_bytes(t)
        header[name] = {"dtype": dtype_name(t), "shape": [int(s) for s in t.shape],
                        "data_offsets": [offset, offset + raw.nbytes]}
        views.append(raw)
        offset += raw.nbytes
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for v in views:
            if hasattr(v, "write_to"):
                v.write_to(f)
            else:
                f.write(v)


def read_header_names(path) -> list[str]:
    """The tensor names of a safetensors file, from its header alone (bounded by :data:`MAX_HEADER_BYTES`
    and :data:`MAX_TENSORS`; the data is not read or checked). TensorFileError if the header is malformed."""
    return sorted(k for k in read_header(path)[0] if k != "__metadata__")


def read_header(path) -> tuple[dict, int]:
    """``(header, data start)``: the parsed JSON header of a safetensors file and the file offset its data
    starts at (``8 + N``), bounded as :func:`read_header_names` (the entries are not checked: a reader
    that uses their offsets checks the file first, e.g. with ``safetensors.safe_open``)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if n > MAX_HEADER_BYTES and 8 + n <= size:
            raise TensorFileError(f"{path}: a header of {n} bytes, more than the {MAX_HEADER_BYTES} fptq reads")
        if n < 2 or 8 + n > size:
            raise TensorFileError(f"{path}: header length {n} does not fit a file of {size} bytes")
        raw = f.read(n)
    if raw.count(b'"data_offsets"') > MAX_TENSORS:
        raise TensorFileError(f"{path}: the header lists more than the {MAX_TENSORS} tensors fptq reads")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise TensorFileError(f"{path}: header is not valid UTF-8 JSON ({e})") from None
    if not isinstance(header, dict):
        raise TensorFileError(f"{path}: header is not a JSON object")
    return header, 8 + n


class TensorFile:
    """A safetensors file opened read-only and checked in full (see the module docstring).

    Use as a context manager. ``metadata`` (dict str -> str), ``names`` (sorted),
    ``dtype(name)``, ``shape(name)``, ``sha256(name)``, ``numpy(name)`` (a copy),
    ``tensor(name)`` (a torch tensor owning its memory).
    """

    def __init__(self, path):
        self.path = Path(path)
        self._file = open(self.path, "rb")
        try:
            size = os.fstat(self._file.fileno()).st_size
            self._mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else None
            self.metadata, self._entries, self._base = self._parse(size)
        except BaseException:
            self.close()
            raise

    # ---- parsing -----------------------------------------------------------------
    def _parse(self, size: int):
        if size < 8:
            raise TensorFileError(f"{size} bytes: too short for a header")
        (n,) = struct.unpack("<Q", self._mm[:8])
        if n > MAX_HEADER_BYTES and 8 + n <= size:
            raise TensorFileError(f"a header of {n} bytes, more than the {MAX_HEADER_BYTES} fptq reads")
        if n < 2 or 8 + n > size:
            raise TensorFileError(f"header length {n} does not fit a file of {size} bytes")
        raw = bytes(self._mm[8:8 + n])
        count = raw.count(b'"data_offsets"')
        if count > MAX_TENSORS:
            raise TensorFileError(f"the header lists {count} tensors, more than the {MAX_TENSORS} fptq reads")
        try:
            text = raw.decode("utf-8")
            header = json.loads(text, object_pairs_hook=no_duplicate_keys, parse_constant=_no_constants)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise TensorFileError(f"header is not valid UTF-8 JSON ({e})") from None
        if not isinstance(header, dict):
            raise TensorFileError("header is not a JSON object")
        meta = header.pop("__metadata__", {})
        if meta is None:
            meta = {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise TensorFileError("__metadata__ is not an object of strings")
        entries = {name: self._entry(name, e) for name, e in header.items()}
        end = 0
        for name, (_, _, begin, stop) in sorted(entries.items(), key=lambda kv: (kv[1][2], kv[1][3])):
            if begin != end:
                raise TensorFileError(f"tensor {name}: data starts at {begin}, expected {end} (gap or overlap)")
            end = stop
        if 8 + n + end != size:
            raise TensorFileError(f"tensor data ends at {8 + n + end} but the file has {size} bytes")
        return meta, entries, 8 + n

    @staticmethod
    def _entry(name: str, e):
        if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
            raise TensorFileError(f"tensor {name}: entry must have exactly dtype, shape and data_offsets")
        dt, shape, offs = e["dtype"], e["shape"], e["data_offsets"]
        if dt not in DTYPES:
            raise TensorFileError(f"tensor {name}: unknown dtype {dt!r}")
        ints = (lambda xs: isinstance(xs, list) and all(type(x) is int and x >= 0 for x in xs))
        if not ints(shape):
            raise TensorFileError(f"tensor {name}: shape {shape!r} is not a list of non-negative integers")
        if not ints(offs) or len(offs) != 2 or offs[1] < offs[0]:
            raise TensorFileError(f"tensor {name}: data_offsets {offs!r} are not [begin, end]")
        nbytes = math.prod(shape) * DTYPES[dt][1]
        if offs[1] - offs[0] != nbytes:
            raise TensorFileError(f"tensor {name}: {offs[1] - offs[0]} data bytes for shape {shape} {dt} "
                                  f"({nbytes} needed)")
        return dt, tuple(shape), offs[0], offs[1]

    # ---- access --------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return sorted(self._entries)

    def dtype(self, name: str) -> str:
        return self._entries[name][0]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def _view(self, name: str) -> memoryview:
        _, _, b, e = self._entries[name]
        if b == e:
            return memoryview(b"")
        return memoryview(self._mm)[self._base + b:self._base + e]

    def sha256(self, name: str) -> str:
        """Hex SHA-256 of the tensor's raw bytes as stored."""
        with self._view(name) as v:
            digest = hashlib.sha256(v).hexdigest()
        self._unmap_pages(name)
        return digest

    def numpy(self, name: str) -> np.ndarray:
        """A writable copy of the tensor (BF16 comes back as its uint16 bit patterns)."""
        dt, shape, _, _ = self._entries[name]
        with self._view(name) as v:
            a = np.frombuffer(v, dtype=np.dtype(DTYPES[dt][0]).newbyteorder("<")).copy()
        self._unmap_pages(name)
        return a.astype(a.dtype.newbyteorder("="), copy=False).reshape(shape)

    def _unmap_pages(self, name: str) -> None:
        """Drop the pages of ``name``'s bytes from this process's mapping once read (``MADV_DONTNEED``; a later
        read maps them again from the page cache): a mapped page once read counts in the resident set until
        the file is closed, so reading a whole checkpoint would otherwise hold all its bytes as well as the
        copies made of them."""
        _, _, b, e = self._entries[name]
        if self._mm is None or b == e or not hasattr(mmap, "MADV_DONTNEED"):
            return
        start = (self._base + b) // mmap.PAGESIZE * mmap.PAGESIZE
        self._mm.madvise(mmap.MADV_DONTNEED, start, self._base + e - start)

    def tensor(self, name: str):
        """The tensor as a torch tensor that owns its memory."""
        import torch

        a = self.numpy(name)
        if self.dtype(name) == "BF16":
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(a)

    def close(self) -> None:
        if getattr(self, "_mm", None) is not None:
            self._mm.close()
            self._mm = None
        if getattr(self, "_file", None) is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
