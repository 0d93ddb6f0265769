"""The checkpoint header, checked field by field: every malformed value is a CheckpointError
naming the file, the metadata key and (for a layer entry) the layer.

:func:`parse_metadata` turns the safetensors ``__metadata__`` strings into typed
values and cross-checks them against each other and against the tensor table
(names, dtypes, shapes), all before any tensor data is read:

* each ``layers`` entry has the documented keys with the documented types;
  ``act_scale`` is a number exactly when the policy is static;
* the top-level ``weight_format`` / ``group_size`` agree with the entries;
* every layer's tensors exist with the dtype and shape its entry implies
  (``wscale`` has ``ceil(K/G)`` columns, ``wzero`` exists only for ``uint4_asym``,
  ``act_scale`` only for static policies, ``bias`` only when the entry says so);
* ``tied`` names stored tensors only, and no tied name is stored;
* version 3: ``float_dtype`` (the storage dtype of the float matrices; 1-D float parts stay F32)
  is ``F32``, ``BF16`` or ``F16``; ``int8_rows`` names modules stored as INT8 rows, each with an ``I8 [V, H]``
  ``qweight`` and an ``F32 [V]`` ``scale`` (or both tied to another such module's);
  versions 1 and 2 have neither key (their float parts are F32);
* version 4: ``online_rotations`` lists the norms whose outputs are rotated at run time (pre-norms
  with ``--rotate online``, Gemma 2/3 post-norms with ``--rotate residual``), unique module paths, none a quantized layer or INT8-rows module, each storing an
  F32 ``[d]`` ``weight``; non-empty exactly when the tensor ``fptq.online_rotation`` (the shared ``Q``,
  F32 ``[d, d]``) is stored; versions 1-3 have neither;
* version 5: ``input_rotations`` lists the quantized layers whose input is rotated at run time (the down
  projections with ``--rotate online``), unique, each one of ``layers``, all of the same ``in_features``
  K; non-empty exactly when the tensor ``fptq.input_rotation`` (their shared ``Q_f``, F32 ``[K, K]``) is
  stored; versions 1-4 have neither;
* version 6: ``shards`` indexes the shard files (:mod:`fptq.models.checkpoint_shards` checks it first and
  adds their tensors to the table the rest is checked against); versions 1-5 have none;
* version 2, first of all: ``header_sha256`` matches the header
  (:func:`header_digest`); then the digest tables list exactly the stored
  tensors and plain file names.

:func:`check_layer_values` checks a layer's tensor *values* (finite scales
within the bounds the spec can produce, zero points in range, the odd-K
padding nibble, ``act_scale`` equal to its entry); :func:`check_int8_row_values` those of an
INT8-rows module (codes in [-127, 127], scales within the spec's per-token bounds);
:func:`check_rotation_values` a stored rotation's (finite and orthogonal).
"""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np

from .. import spec
from ..spec import ActPolicy, WeightFormat

__all__ = ["CheckpointError", "FORMAT_NAME", "TENSORS_FILE", "PLAN_FILE", "FORMAT_VERSION", "SUPPORTED_VERSIONS", "V2_KEYS", "V3_KEYS",
           "V4_KEYS", "V5_KEYS", "V6_KEYS", "SHARDS_KEY", "SHARDED_FORMAT_VERSION", "INPUT_ROTATION_TENSOR",
           "FLOAT_DTYPES", "DEFAULT_FLOAT_DTYPE", "INT8_ROW_KINDS", "INT8_ROW_SUFFIXES",
           "ONLINE_ROTATION_TENSOR", "ROTATION_TOLERANCE", "parse_metadata", "header_digest", "check_layer_values",
           "check_int8_row_values", "check_rotation_values", "layer_tensor_specs", "LAYER_SUFFIXES", "MAX_WSCALE",
           "MAX_ACT_SCALE"]

FORMAT_NAME = "fptq-w4a8"
#: the tensors file of a checkpoint directory, and its readable plan (informative)
TENSORS_FILE = "fptq_w4a8.safetensors"
PLAN_FILE = "fptq_plan.json"
#: the version of a checkpoint in one tensors file; one with shard files is :data:`SHARDED_FORMAT_VERSION`
FORMAT_VERSION = 5
SHARDED_FORMAT_VERSION = 6
#: versions this fptq reads; version 1 (no digests) loads with a warning
SUPPORTED_VERSIONS = (1, 2, 3, 4, 5, 6)
#: metadata keys that exist from version 2 on (a version-1 header holding one is corrupt)
V2_KEYS = ("tensor_sha256", "file_sha256", "header_sha256")
#: metadata keys that exist from version 3 on (required there; an older header holding one is corrupt)
V3_KEYS = ("float_dtype", "int8_rows")
#: metadata keys that exist from version 4 on (required there; an older header holding one is corrupt)
V4_KEYS = ("online_rotations",)
#: metadata keys that exist from version 5 on (required there; an older header holding one is corrupt)
V5_KEYS = ("input_rotations",)
#: metadata keys that exist from version 6 on (the shard index, :mod:`fptq.models.checkpoint_shards`)
SHARDS_KEY = "shards"
V6_KEYS = (SHARDS_KEY,)
#: the tensor holding the online rotation ``Q`` (F32 ``[d, d]``, stored once, never rounded) shared by every
#: module of ``online_rotations``; not a state-dict name of any model
ONLINE_ROTATION_TENSOR = "fptq.online_rotation"
#: the tensor holding the input rotation ``Q_f`` (F32 ``[K, K]``, stored once, never rounded) shared by every
#: layer of ``input_rotations``
INPUT_ROTATION_TENSOR = "fptq.input_rotation"
#: the largest ``|Q Q^T - I|`` entry a stored ``Q`` may have (a float32 rounding of an orthogonal matrix is
#: orthogonal to ~1e-7; the product is computed in float32)
ROTATION_TOLERANCE = 1e-3
#: storage dtype of the float matrices (float parts of 2 or more dimensions; 1-D ones, norms and
#: biases, are always F32): the name ``fptq quantize --float-dtype`` takes -> the ``float_dtype``
#: metadata value (the safetensors dtype); versions 1 and 2 are all ``F32``
FLOAT_DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}
#: the float matrices' storage unless asked otherwise: bfloat16 keeps float32's exponent range (rotated
#: or otherwise rewritten weights cannot overflow, as they could in float16) in half the bytes
DEFAULT_FLOAT_DTYPE = "bfloat16"
#: the kinds of module ``int8_rows`` may name (module name -> kind)
INT8_ROW_KINDS = ("embedding", "lm_head")
#: the tensors an INT8-rows module ``E`` stores, as ``E.<suffix>``
INT8_ROW_SUFFIXES = ("qweight", "scale")

_FLT_MAX = float(np.finfo(np.float32).max)
#: the largest weight scale the spec produces from finite float32 weights, per format:
#: symmetric amax / 7 <= FLT_MAX / 7; asymmetric (max - min) / 15 < FLT_MAX / 15 (a larger span overflows
#: and is refused by spec.weight_scales)
MAX_WSCALE = {WeightFormat.SYMMETRIC: float(np.float32(_FLT_MAX) / np.float32(spec.INT4_SYM.scale_divisor)),
              WeightFormat.ASYMMETRIC: float(np.float32(_FLT_MAX) / np.float32(spec.UINT4_ASYM.scale_divisor))}
#: the largest activation scale: amax / 127 with amax <= FLT_MAX
MAX_ACT_SCALE = float(np.float32(_FLT_MAX) / np.float32(spec.INT8_ACT.scale_divisor))
_HEX64 = re.compile(r"[0-9a-f]{64}")


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, truncated, of an unknown version, or inconsistent."""


def _is_int(x) -> bool:
    return type(x) is int


def _is_num(x) -> bool:
    return type(x) in (int, float) and np.isfinite(x)


_ENTRY_TYPES = {  # key -> (required, type check, description)
    "in_features": (True, lambda x: _is_int(x) and x >= 1, "an integer >= 1"),
    "out_features": (True, lambda x: _is_int(x) and x >= 1, "an integer >= 1"),
    "bias": (True, lambda x: type(x) is bool, "true or false"),
    "group_size": (True, lambda x: _is_int(x) and 1 <= x <= spec.MAX_GROUP_SIZE,
                   f"an integer in [1, {spec.MAX_GROUP_SIZE}]"),
    "weight_format": (True, lambda x: x in [f.value for f in WeightFormat], "a weight format"),
    "policy": (True, lambda x: x in [p.value for p in ActPolicy], "an activation policy"),
    "act_scale": (True, lambda x: x is None or _is_num(x), "a number or null"),
    "group": (False, lambda x: x is None or isinstance(x, str), "a string"),
    "layer": (False, lambda x: _is_int(x), "an integer"),
    "v": (False, lambda x: x is None or _is_num(x), "a number or null"),
    "band": (False, lambda x: x is None or x in [p.value for p in ActPolicy], "an activation policy or null"),
    "v_after": (False, lambda x: x is None or _is_num(x), "a number or null"),
    "fold": (False, lambda x: x is None or isinstance(x, str), "a string or null"),
    "fallback": (False, lambda x: x is None or isinstance(x, str), "a string or null"),
}


def header_digest(metadata: dict[str, str], table: dict[str, tuple[str, tuple]]) -> str:
    """SHA-256 hex of the canonical header: every metadata key but ``header_sha256``, and every
    tensor's dtype and shape (``docs/checkpoint.md`` gives the exact bytes)."""
    doc = {"__metadata__": {k: v for k, v in metadata.items() if k != "header_sha256"},
           "tensors": {n: [dt, list(shape)] for n, (dt, shape) in table.items()}}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def layer_tensor_specs(e: dict) -> dict[str, tuple[str, tuple]]:
    """suffix -> (safetensors dtype, shape) of the tensors a checked layer entry must have."""
    n, k = e["out_features"], e["in_features"]
    ng = spec.num_groups(k, e["group_size"])
    out = {"qweight": ("U8", (n, spec.packed_width(k))), "wscale": ("F32", (n, ng))}
    if e["weight_format"] == WeightFormat.ASYMMETRIC.value:
        out["wzero"] = ("U8", (n, ng))
    if e["bias"]:
        out["bias"] = ("F32", (n,))
    if e["policy"] != ActPolicy.DYNAMIC.value:
        out["act_scale"] = ("F32", (1,))
    return out


#: the tensors a quantized linear ``L`` may store, as ``L.<suffix>``
LAYER_SUFFIXES = ("qweight", "wscale", "wzero", "bias", "act_scale")


def _json_field(raw: dict, key: str, where: str, want, what: str, default=None):
    if key not in raw:
        if default is not None:
            return default()
        raise CheckpointError(f"{where}: metadata key {key!r} is missing")
    try:
        value = json.loads(raw[key])
    except (json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{where}: metadata field unreadable: {key!r} is not JSON ({e})") from None
    if not want(value):
        raise CheckpointError(f"{where}: metadata key {key!r} must be {what}")
    return value


def _check_entry(name: str, e, where: str) -> dict:
    if not isinstance(e, dict):
        raise CheckpointError(f"{where}: metadata key 'layers': entry {name!r} is not an object")
    for key, (required, ok, desc) in _ENTRY_TYPES.items():
        if key not in e:
            if required:
                raise CheckpointError(f"{where}: metadata key 'layers': entry {name!r} lacks {key!r}")
            continue
        if not ok(e[key]):
            raise CheckpointError(f"{where}: metadata key 'layers': entry {name!r}: {key!r} must be {desc}, "
                                  f"got {e[key]!r} (unsupported or malformed entry)")
    extra = sorted(set(e) - set(_ENTRY_TYPES))
    if extra:
        raise CheckpointError(f"{where}: metadata key 'layers': entry {name!r} has unknown keys {extra}")
    if (e["act_scale"] is None) != (e["policy"] == ActPolicy.DYNAMIC.value):
        raise CheckpointError(f"{where}: metadata key 'layers': entry {name!r}: policy {e['policy']!r} "
                              f"with act_scale {e['act_scale']!r} (static policies need one, dynamic none)")
    return e


def _check_top_level(layers: dict, raw: dict, where: str) -> None:
    fmts = {e["weight_format"] for e in layers.values()}
    wf = raw.get("weight_format")
    if not ((len(fmts) == 1 and wf in fmts) or (len(fmts) > 1 and wf == "mixed")):
        raise CheckpointError(f"{where}: metadata key 'weight_format' is {wf!r} but the layers use {sorted(fmts)}")
    gs = raw.get("group_size")
    small = {e["group_size"] for e in layers.values() if e["group_size"] < e["in_features"]}
    if gs == "mixed":
        ok = len(small) > 1
    else:
        try:
            top = int(gs)
        except (TypeError, ValueError):
            raise CheckpointError(f"{where}: metadata key 'group_size' is {gs!r}, not an integer or 'mixed'") from None
        ok = (small == {top}) if top != -1 else not small
        ok = ok and all(e["group_size"] in (e["in_features"], top) for e in layers.values()
                        if e["group_size"] >= e["in_features"])
    if not ok:
        raise CheckpointError(f"{where}: metadata key 'group_size' is {gs!r} but the layers use "
                              f"{sorted({e['group_size'] for e in layers.values()})}")


def _check_table(layers: dict, tied: dict, table: dict, where: str) -> None:
    for name, e in layers.items():
        want = layer_tensor_specs(e)
        for suffix in LAYER_SUFFIXES:
            key = f"{name}.{suffix}"
            if suffix not in want:
                if key in table:
                    raise CheckpointError(f"{where}: tensor {key} present but layer {name}'s entry has no "
                                          f"{suffix} (policy {e['policy']}, {e['weight_format']}, bias {e['bias']})")
                continue
            if key not in table:
                raise CheckpointError(f"{where}: tensors do not match the model (missing [{key!r}]) "
                                      f"for layer {name}")
            if table[key] != want[suffix]:
                raise CheckpointError(f"{where}: tensor {key}: {table[key][0]} {table[key][1]} where layer "
                                      f"{name}'s entry (K={e['in_features']}, G={e['group_size']}) needs "
                                      f"{want[suffix][0]} {want[suffix][1]}")
    for dup, kept in tied.items():
        if dup in table or kept not in table:
            raise CheckpointError(f"{where}: metadata key 'tied': {dup} -> {kept} must name a stored tensor "
                                  f"from one that is not stored")


def _check_int8_rows(rows: dict, tied: dict, table: dict, where: str) -> None:
    """Each INT8-rows module stores ``qweight`` I8 [V, H] and ``scale`` F32 [V], or has both tied to
    the same other module's; its float ``weight`` is not stored."""
    for name, kind in rows.items():
        key = f"{name}.qweight"
        if f"{name}.weight" in table:
            raise CheckpointError(f"{where}: tensor {name}.weight present but metadata key 'int8_rows' stores "
                                  f"{name} as INT8 rows")
        if key in tied:
            other = tied[key].rpartition(".")[0]
            if tied.get(f"{name}.scale") != f"{other}.scale" or other not in rows:
                raise CheckpointError(f"{where}: metadata key 'tied': {name}.qweight and {name}.scale must both be "
                                      f"tied to one INT8-rows module's (got {tied[key]!r}, "
                                      f"{tied.get(f'{name}.scale')!r})")
            continue
        q, sc = table.get(key), table.get(f"{name}.scale")
        if q is None or sc is None:
            raise CheckpointError(f"{where}: tensors do not match the model (missing [{key!r} or "
                                  f"'{name}.scale']) for INT8-rows module {name} ({kind})")
        if q[0] != "I8" or len(q[1]) != 2 or sc != ("F32", (q[1][0],)):
            raise CheckpointError(f"{where}: INT8-rows module {name}: {key} is {q[0]} {list(q[1])} and {name}.scale "
                                  f"{sc[0]} {list(sc[1])}; they must be I8 [V, H] and F32 [V]")


def _check_storage_keys(raw: dict, version: int, where: str) -> tuple[str, dict]:
    """(float_dtype, int8_rows) of a header: version 3 must have both keys; older versions neither
    (their float parts are F32, nothing is stored as INT8 rows)."""
    if version < 3:
        present = [k for k in V3_KEYS if k in raw]
        if present:
            raise CheckpointError(f"{where}: format_version says {version} but the header has version-3 storage "
                                  f"fields {present}: the version field is corrupt")
        return "F32", {}
    if "float_dtype" not in raw:
        raise CheckpointError(f"{where}: metadata key 'float_dtype' is missing (version 3 needs it)")
    fd = raw["float_dtype"]
    if fd not in FLOAT_DTYPES.values():
        raise CheckpointError(f"{where}: metadata key 'float_dtype' is {fd!r}; expected one of "
                              f"{sorted(FLOAT_DTYPES.values())}")
    rows = _json_field(raw, "int8_rows", where, lambda d: isinstance(d, dict) and all(
        isinstance(k, str) and k and v in INT8_ROW_KINDS for k, v in d.items()),
        f"an object (module name -> one of {list(INT8_ROW_KINDS)})")
    return fd, rows


def _rotation_paths(raw: dict, version: int, key: str, since: int, tensor: str, table: dict, where: str,
                    what: str, unit: str, symbol: str) -> tuple[list, int | None]:
    """The part the two rotation keys share: ``key`` (a version-``since`` key; refused before it, ``[]``
    then) parsed as a list of unique module paths, and the F32 ``[n, n]`` ``tensor`` stored exactly
    when the list is non-empty; returns ``(paths, n)`` (``n`` None when there are none)."""
    if version < since:
        if key in raw:
            raise CheckpointError(f"{where}: format_version says {version} but the header has version-{since} "
                                  f"field {[key]}: the version field is corrupt")
        paths = []
    else:
        paths = _json_field(raw, key, where, lambda d: isinstance(d, list) and all(
            isinstance(p, str) and p for p in d), f"a list of {what}")
        dup = sorted({p for p in paths if paths.count(p) > 1})
        if dup:
            raise CheckpointError(f"{where}: metadata key {key!r} lists {dup[:3]} more than once")
    q = table.get(tensor)
    if not paths:
        if q is not None:
            raise CheckpointError(f"{where}: tensor {tensor} present but metadata key {key!r} names no {unit} "
                                  "that uses it")
        return paths, None
    if q is None:
        raise CheckpointError(f"{where}: metadata key {key!r} names {len(paths)} {unit}s but tensor {tensor} "
                              "(their rotation) is missing")
    if q[0] != "F32" or len(q[1]) != 2 or q[1][0] != q[1][1] or q[1][0] < 1:
        raise CheckpointError(f"{where}: tensor {tensor} is {q[0]} {list(q[1])}; it must be F32 [{symbol}, {symbol}]")
    return paths, q[1][0]


def _check_online_rotations(raw: dict, version: int, meta: dict, table: dict, where: str) -> list:
    """``online_rotations`` of a header (``[]`` before version 4), checked against the tensor table:
    unique module paths, none a quantized layer or INT8-rows module, each storing an F32 ``[d]``
    weight, non-empty exactly when the F32 ``[d, d]`` :data:`ONLINE_ROTATION_TENSOR` is stored."""
    paths, d = _rotation_paths(raw, version, "online_rotations", 4, ONLINE_ROTATION_TENSOR, table, where,
                               "module paths (the norms rotated at run time)", "module", "d")
    clash = sorted(set(paths) & (set(meta["layers"]) | set(meta["int8_rows"])))
    if clash:
        raise CheckpointError(f"{where}: metadata key 'online_rotations' names {clash[:3]}, which are "
                              "quantized layers or INT8-rows modules, not norms")
    for p in paths:
        w = table.get(f"{p}.weight")
        if w != ("F32", (d,)):
            got = "missing" if w is None else f"{w[0]} {list(w[1])}"
            raise CheckpointError(f"{where}: metadata key 'online_rotations': module {p} needs an F32 [{d}] "
                                  f"tensor {p}.weight (the norm gain the rotation follows); it is {got}")
    return paths


def _check_input_rotations(raw: dict, version: int, meta: dict, table: dict, where: str) -> list:
    """``input_rotations`` of a header (``[]`` before version 5), checked against the layers and the
    tensor table: unique quantized layers of one ``in_features`` K, non-empty exactly when the F32
    ``[K, K]`` :data:`INPUT_ROTATION_TENSOR` is stored."""
    paths, k = _rotation_paths(raw, version, "input_rotations", 5, INPUT_ROTATION_TENSOR, table, where,
                               "quantized layer paths (inputs rotated at run time)", "layer", "K")
    stray = sorted(set(paths) - set(meta["layers"]))
    if stray:
        raise CheckpointError(f"{where}: metadata key 'input_rotations' names {stray[:3]}, which are not "
                              "quantized layers (metadata key 'layers')")
    for p in paths:
        if meta["layers"][p]["in_features"] != k:
            raise CheckpointError(f"{where}: metadata key 'input_rotations': layer {p} has "
                                  f"{meta['layers'][p]['in_features']} inputs but {INPUT_ROTATION_TENSOR} is "
                                  f"[{k}, {k}]")
    return paths


def _check_digest_tables(raw: dict, table: dict, where: str) -> dict:
    is_hex_map = (lambda d: isinstance(d, dict) and all(isinstance(v, str) and _HEX64.fullmatch(v)
                                                          for v in d.values()))
    tens = _json_field(raw, "tensor_sha256", where, is_hex_map, "an object of SHA-256 hex digests")
    files = _json_field(raw, "file_sha256", where, is_hex_map, "an object of SHA-256 hex digests")
    if set(tens) != set(table):
        extra, missing = sorted(set(tens) - set(table)), sorted(set(table) - set(tens))
        raise CheckpointError(f"{where}: metadata key 'tensor_sha256' does not list the stored tensors "
                              f"(not stored: {extra[:4]}, no digest: {missing[:4]})")
    bad = [f for f in files if not re.fullmatch(r"[A-Za-z0-9_.-]+", f) or f in (".", "..")]
    if bad:
        raise CheckpointError(f"{where}: metadata key 'file_sha256' names {bad[:3]}, not plain file names")
    return {"tensors": tens, "files": files}


def _check_header_digest(raw: dict, table: dict, where: str) -> None:
    h = raw.get("header_sha256")
    if not isinstance(h, str) or not _HEX64.fullmatch(h):
        raise CheckpointError(f"{where}: metadata key 'header_sha256' is missing or not a SHA-256 hex digest")
    if header_digest(raw, table) != h:
        raise CheckpointError(f"{where}: header digest mismatch: the metadata or the tensor table was changed "
                              "after writing (header_sha256)")


def parse_metadata(raw: dict[str, str], table: dict[str, tuple[str, tuple]], where) -> dict:
    """Check the raw metadata strings against each other and the tensor ``table`` (name -> (dtype, shape)).

    Returns the metadata with ``layers``, ``tied``, ``info``, ``quant_config``, ``int8_rows``,
    ``online_rotations`` (``[]`` before version 4) parsed,
    ``float_dtype`` (``"F32"`` for versions 1 and 2), ``format_version`` kept as the string it was, and
    (version >= 2) ``digests`` = ``{"tensors": ..., "files": ...}``.
    """
    where = str(where)
    if raw.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{where}: format {raw.get('format')!r} is not {FORMAT_NAME!r}")
    fv = raw.get("format_version", "")
    version = int(fv) if re.fullmatch(r"[0-9]{1,3}", fv) else None
    if version is None:
        raise CheckpointError(f"{where}: unreadable format_version {fv!r}")
    if version not in SUPPORTED_VERSIONS:
        raise CheckpointError(f"{where}: format version {version} is not supported "
                              f"(this fptq reads versions {', '.join(map(str, SUPPORTED_VERSIONS))})")
    if version == 1 and any(k in raw for k in V2_KEYS):
        raise CheckpointError(f"{where}: format_version says 1 but the header has version-2 digest fields: "
                              "the version field is corrupt")
    if version >= 2:  # first: a corrupted header is reported as such, whichever field the damage hit
        _check_header_digest(raw, table, where)
    if raw.get("packing") != spec.PACKING.value:
        raise CheckpointError(f"{where}: unknown INT4 packing {raw.get('packing')!r} (expected {spec.PACKING.value!r})")
    if raw.get("act_format") != spec.INT8_ACT.name:
        raise CheckpointError(f"{where}: unknown activation format {raw.get('act_format')!r}")
    for key in ("fptq_version", "model_type"):
        if key not in raw:
            raise CheckpointError(f"{where}: metadata key {key!r} is missing")
    meta = dict(raw)
    meta["layers"] = _json_field(raw, "layers", where, lambda d: isinstance(d, dict) and d,
                                 "a non-empty object (linear name -> entry)")
    meta["tied"] = _json_field(raw, "tied", where, lambda d: isinstance(d, dict) and all(
        isinstance(v, str) for v in d.values()), "an object (name -> name)", default=dict)
    meta["info"] = _json_field(raw, "info", where, lambda d: isinstance(d, dict), "an object", default=dict)
    meta["quant_config"] = _json_field(
        raw, "quant_config", where,
        lambda d: d is None or (isinstance(d, dict) and all(_is_num(d[k]) for k in ("v0", "v1") if k in d)),
        "null or an object whose v0/v1 are numbers", default=lambda: None)
    meta["float_dtype"], meta["int8_rows"] = _check_storage_keys(raw, version, where)
    for name, e in meta["layers"].items():
        _check_entry(name, e, where)
    clash = sorted(set(meta["int8_rows"]) & set(meta["layers"]))
    if clash:
        raise CheckpointError(f"{where}: {clash[:3]} listed both in 'layers' and in 'int8_rows'")
    _check_top_level(meta["layers"], raw, where)
    _check_table(meta["layers"], meta["tied"], table, where)
    _check_int8_rows(meta["int8_rows"], meta["tied"], table, where)
    meta["online_rotations"] = _check_online_rotations(raw, version, meta, table, where)
    meta["input_rotations"] = _check_input_rotations(raw, version, meta, table, where)
    if version >= 2:
        meta["digests"] = _check_digest_tables(raw, table, where)
    return meta


def _refuse(key: str, what: str):
    raise CheckpointError(f"tensor {key}: {what}")


def check_int8_row_values(name: str, q: np.ndarray, scale: np.ndarray) -> None:
    """Check an INT8-rows module's tensors: codes in [-127, 127] (the symmetric range; -128 is never
    produced), scales finite in ``[2^-126, FLT_MAX / 127]`` (the spec's per-token bounds)."""
    if q.size and int(q.min()) < spec.INT8_ACT.qmin:
        _refuse(f"{name}.qweight", f"code {int(q.min())} outside [{spec.INT8_ACT.qmin}, {spec.INT8_ACT.qmax}]")
    lo = float(spec.MIN_SCALE)
    ok = np.isfinite(scale) & (scale >= lo) & (scale <= MAX_ACT_SCALE)
    if not ok.all():
        _refuse(f"{name}.scale", f"scale {float(scale[~ok].flat[0])!r} outside [{lo:.3g}, {MAX_ACT_SCALE:.4g}] "
                "(row scales must be > 0, finite, and no larger than amax / 127 of finite float32 rows)")


def check_rotation_values(q: np.ndarray, name: str = ONLINE_ROTATION_TENSOR) -> None:
    """Check a stored rotation (tensor ``name``, float32 ``[d, d]``): finite and orthogonal, every entry
    of ``Q Q^T - I`` within :data:`ROTATION_TOLERANCE`."""
    if not np.isfinite(q).all():
        _refuse(name, "holds NaN/Inf")
    err = float(np.abs(q @ q.T - np.eye(q.shape[0], dtype=np.float32)).max()) if q.size else 0.0
    if not err <= ROTATION_TOLERANCE:
        _refuse(name, f"is not orthogonal (max |Q Q^T - I| = {err:.3g} > {ROTATION_TOLERANCE:g})")


def check_layer_values(name: str, e: dict, t: dict[str, np.ndarray]) -> None:
    """Check one layer's tensor values (``t``: suffix -> NumPy array) against the spec's bounds."""
    fmt = WeightFormat(e["weight_format"])
    ws = t["wscale"]
    lo, hi = float(spec.MIN_SCALE), MAX_WSCALE[fmt]
    if not (np.isfinite(ws).all() and (ws >= lo).all() and (ws <= hi).all()):
        bad = float(ws[~(np.isfinite(ws) & (ws >= lo) & (ws <= hi))].flat[0])
        _refuse(f"{name}.wscale", f"scale {bad!r} outside [{lo:.3g}, {hi:.4g}] (the scales must be > 0, finite, and "
                f"no larger than the spec can produce from finite float32 weights)")
    if "wzero" in t and t["wzero"].size and int(t["wzero"].max()) > spec.UINT4_ASYM.qmax:
        _refuse(f"{name}.wzero", f"zero points must be <= {spec.UINT4_ASYM.qmax}")
    if "bias" in t and not np.isfinite(t["bias"]).all():
        _refuse(f"{name}.bias", "holds NaN/Inf")
    if "act_scale" in t:
        a = t["act_scale"]
        if not (np.isfinite(a).all() and float(spec.MIN_SCALE) <= float(a[0]) <= MAX_ACT_SCALE):
            _refuse(f"{name}.act_scale", f"scale {float(a[0])!r} outside [{float(spec.MIN_SCALE):.3g}, "
                    f"{MAX_ACT_SCALE:.4g}] (scales must be > 0 and finite)")
        if np.float32(e["act_scale"]).tobytes() != a.astype(np.float32).tobytes():
            _refuse(f"{name}.act_scale", f"{float(a[0])!r} differs from the layer entry's {e['act_scale']!r}")
    k = e["in_features"]
    qw = t["qweight"]
    if k % 2 and qw.size and int((qw[:, -1] >> 4).max()) != 0:
        _refuse(f"{name}.qweight", "the padding nibble of odd K must be 0")
