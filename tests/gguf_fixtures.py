"""A small real GGUF for tests: the embedded SmolLM2's GGUF cut to its first layers (same metadata, tokenizer
and quantized tensor bytes; ``<arch>.block_count`` set to the layers kept)."""

from __future__ import annotations

from pathlib import Path


def truncated_gguf(src, dest, n_layers: int) -> Path:
    """Write ``dest``: the GGUF ``src`` with only decoder blocks ``0 .. n_layers - 1`` (tensors copied as stored)."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    r = GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = GGUFWriter(str(dest), arch)
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = n_layers if key == f"{arch}.block_count" else f.contents()
        sub = f.types[1] if f.types[0] == GGUFValueType.ARRAY else None
        w.add_key_value(key, value, f.types[0], sub_type=sub)
    for t in r.tensors:
        if t.name.startswith("blk.") and int(t.name.split(".")[1]) >= n_layers:
            continue
        w.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)  # t.data: the stored bytes (quantized) or values
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(dest)
