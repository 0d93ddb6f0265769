"""Write a LLaMA-3-8B-shaped model with random weights: a bf16 safetensors directory, shard by shard.

    python benchmarks/make_synthetic_model.py [--out /work/models/synthetic-llama3-8b-bf16]
        [--layers 32 --hidden 4096 --intermediate 14336 --heads 32 --kv-heads 8 --head-dim 128
         --vocab 128256 --shard-bytes 2000000000 --seed 0 --std 0.02] [--overwrite] [--tokenizer-dir DIR]

The default shape is LLaMA-3-8B's (untied ``lm_head``, ``rope_theta`` 500000, ``rms_norm_eps``
1e-5): about 8.0 B parameters, 16 GB on disk. Smaller shapes (``--layers 2 --hidden 64 ...``) are
for tests. What is written:

* ``config.json``: ``transformers.LlamaConfig(...).save_pretrained`` (LlamaForCausalLM, dtype bfloat16),
  so it is exactly what the installed transformers writes;
* ``model-0000i-of-0000n.safetensors`` shards of at most ``--shard-bytes`` (a tensor larger than
  that gets a shard of its own) and ``model.safetensors.index.json`` (``weight_map``, ``total_size``);
* ``tokenizer.json`` and ``tokenizer_config.json`` copied from the embedded SmolLM2's cached
  conversion (``fptq.models.loading.default_model_dir()``): its ids are < 49152, valid for any
  vocabulary at least that large;
* ``synthetic_model.json``: the parameters it was made with (the mark that this script made it).

Weights: every linear and the embeddings are normal(0, ``--std``) (a trained model's init scale,
LlamaConfig's ``initializer_range``), drawn from a torch generator seeded by ``--seed`` and the
tensor's name, in row blocks of a fixed size, so the same arguments write the same bytes; the
RMSNorm weights are 1. Each shard's safetensors header is written first (every shape is known in
advance) and then the tensors' bytes block by block: memory holds one block (64 MB), never a
tensor, a shard or the model. The directory is built under a temporary name beside ``--out`` and
renamed into place at the end; an existing non-empty ``--out`` is refused unless this script made it
and ``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

import torch

DEFAULT_OUT = "/work/models/synthetic-llama3-8b-bf16"
MARK = "synthetic_model.json"
BLOCK_ELEMENTS = 1 << 24
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def tensor_shapes(a) -> list[tuple[str, tuple[int, ...]]]:
    """The LlamaForCausalLM state dict of the shape in ``a``: (name, shape), in transformers' order."""
    h, f, q, kv = a.hidden, a.intermediate, a.heads * a.head_dim, a.kv_heads * a.head_dim
    out = [("model.embed_tokens.weight", (a.vocab, h))]
    for i in range(a.layers):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (h,)), (p + "self_attn.q_proj.weight", (q, h)),
                (p + "self_attn.k_proj.weight", (kv, h)), (p + "self_attn.v_proj.weight", (kv, h)),
                (p + "self_attn.o_proj.weight", (h, q)), (p + "post_attention_layernorm.weight", (h,)),
                (p + "mlp.gate_proj.weight", (f, h)), (p + "mlp.up_proj.weight", (f, h)),
                (p + "mlp.down_proj.weight", (h, f))]
    return out + [("model.norm.weight", (h,)), ("lm_head.weight", (a.vocab, h))]


def nbytes(shape) -> int:
    n = 2
    for d in shape:
        n *= d
    return n


def plan_shards(shapes, shard_bytes: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Consecutive tensors grouped greedily into shards of at most ``shard_bytes`` (one oversized tensor alone)."""
    shards, cur, size = [], [], 0
    for name, shape in shapes:
        if cur and size + nbytes(shape) > shard_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append((name, shape))
        size += nbytes(shape)
    return shards + [cur] if cur else shards


def safetensors_header(tensors) -> bytes:
    """The 8-byte length + JSON header of a safetensors file holding ``tensors`` (bf16) in order."""
    meta, off = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in tensors:
        meta[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + nbytes(shape)]}
        off += nbytes(shape)
    text = json.dumps(meta, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def write_tensor(f, name: str, shape, seed: int, std: float) -> None:
    """Write one bf16 tensor's bytes: ones for a norm (1-D), else normal(0, std) in fixed row blocks."""
    if len(shape) == 1:
        f.write(torch.ones(shape, dtype=torch.bfloat16).view(torch.int16).numpy().tobytes())
        return
    rows, cols = shape
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    step = max(1, BLOCK_ELEMENTS // cols)
    for r in range(0, rows, step):
        block = torch.randn(min(step, rows - r), cols, generator=g).mul_(std).to(torch.bfloat16)
        f.write(block.view(torch.int16).numpy().tobytes())


def write_shards(tmp: Path, shards, seed: int, std: float) -> dict:
    """Every shard file under ``tmp``; the index (``metadata``, ``weight_map``)."""
    weight_map, total, n = {}, 0, len(shards)
    for i, tensors in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{n:05d}.safetensors"
        t0 = time.time()
        with open(tmp / fname, "wb") as f:
            f.write(safetensors_header(tensors))
            for name, shape in tensors:
                write_tensor(f, name, shape, seed, std)
                weight_map[name] = fname
                total += nbytes(shape)
        print(f"{fname}: {len(tensors)} tensors, {(tmp / fname).stat().st_size / 1e9:.2f} GB "
              f"({time.time() - t0:.1f} s)", flush=True)
    return {"metadata": {"total_size": total, "total_parameters": total // 2}, "weight_map": weight_map}


def write_config(tmp: Path, a) -> None:
    from transformers import LlamaConfig

    cfg = LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
                      num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                      head_dim=a.head_dim, max_position_embeddings=a.max_position, rms_norm_eps=a.rms_norm_eps,
                      rope_theta=a.rope_theta, tie_word_embeddings=False, initializer_range=a.std,
                      bos_token_id=1, eos_token_id=2, dtype="bfloat16")
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.save_pretrained(tmp)


def copy_tokenizer(tmp: Path, src: str | None = None) -> None:
    """The tokenizer files from ``src`` (``--tokenizer-dir``: a machine without the embedded model, e.g. a GPU
    machine) or the embedded SmolLM2's cached conversion."""
    from fptq.models.loading import default_model_dir

    src = Path(src) if src else default_model_dir()
    missing = [n for n in TOKENIZER_FILES if not (src / n).is_file()]
    if missing:
        raise ValueError(f"--tokenizer-dir {src}: missing {', '.join(missing)}")
    for name in TOKENIZER_FILES:
        shutil.copyfile(src / name, tmp / name)


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that holds something this script did not make, or that it made without ``--overwrite``."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ValueError(f"--out {out} exists and is not a directory")
    if not out.exists() or not any(out.iterdir()):
        return
    if not (out / MARK).is_file():
        raise ValueError(f"--out {out} is a non-empty directory this script did not make; refusing to replace it")
    if not overwrite:
        raise ValueError(f"--out {out} holds a synthetic model already; pass --overwrite to replace it")


def publish(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` to ``out``; an old one (checked by check_out) is moved aside first, then removed."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    try:
        tmp.rename(out)
    except OSError:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old)


def make(a) -> tuple[Path, int]:
    """Write the model of ``a`` to ``a.out``; (the directory, bytes of its weights)."""
    out = Path(a.out).expanduser().absolute()
    check_out(out, a.overwrite)
    shards = plan_shards(tensor_shapes(a), a.shard_bytes)
    weight_bytes = sum(nbytes(s) for sh in shards for _, s in sh)
    out.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out.parent).free
    if free < weight_bytes * 1.05 + 2**28:
        raise ValueError(f"{out.parent} has {free / 1e9:.1f} GB free; the model needs {weight_bytes / 1e9:.1f} GB")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        index = write_shards(tmp, shards, a.seed, a.std)
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        write_config(tmp, a)
        copy_tokenizer(tmp, a.tokenizer_dir)
        params = {k: v for k, v in vars(a).items() if k not in ("out", "overwrite", "tokenizer_dir")}
        (tmp / MARK).write_text(json.dumps({"made_by": "benchmarks/make_synthetic_model.py", **params}, indent=1) + "\n")
        tmp.chmod(0o755)
        if out.exists() and not any(out.iterdir()):
            out.rmdir()
        publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out, weight_bytes


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=DEFAULT_OUT, help=f"the model directory (default {DEFAULT_OUT})")
    for flag, default in (("layers", 32), ("hidden", 4096), ("intermediate", 14336), ("heads", 32),
                          ("kv-heads", 8), ("head-dim", 128), ("vocab", 128256), ("max-position", 8192),
                          ("shard-bytes", 2_000_000_000), ("seed", 0)):
        p.add_argument(f"--{flag}", type=int, default=default)
    p.add_argument("--rope-theta", type=float, default=500000.0)
    p.add_argument("--rms-norm-eps", type=float, default=1e-5)
    p.add_argument("--std", type=float, default=0.02, help="standard deviation of the linears and embeddings")
    p.add_argument("--overwrite", action="store_true", help="replace a model this script made at --out")
    p.add_argument("--tokenizer-dir", default=None, help="copy tokenizer.json and tokenizer_config.json from here "
                   "(default: the embedded SmolLM2's cached conversion)")
    a = p.parse_args(argv)
    for k in ("layers", "hidden", "intermediate", "heads", "kv_heads", "head_dim", "vocab", "shard_bytes"):
        if getattr(a, k) < 1:
            p.error(f"--{k.replace('_', '-')} must be >= 1, got {getattr(a, k)}")
    if a.heads % a.kv_heads:
        p.error(f"--heads {a.heads} must be a multiple of --kv-heads {a.kv_heads}")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    t0 = time.time()
    try:
        out, weight_bytes = make(a)
    except ValueError as e:
        print(f"make_synthetic_model: {e}", file=sys.stderr)
        return 1
    disk = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {out}: {weight_bytes // 2:,} parameters, {disk / 1e9:.2f} GB on disk, {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
