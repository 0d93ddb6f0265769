"""Compiling the cupy backend's CUDA sources (``fptq/backends/cuda/*.cu``) with NVRTC.

The backend and the compile check (``tests/test_cupy_compile.py``) both go
through :func:`compile_module`, so what is checked without a GPU is what runs
on one: the same sources, the same options, the same NVRTC.

Why fptq calls NVRTC itself instead of ``cupy.RawModule(code=...)``: CuPy's
compile path appends ``-ftz=true`` to every user's options (CuPy 14), and the
last ``-ftz`` wins, so every float op would flush subnormals to zero, which
the spec forbids (a flushed subnormal is a wrong bit). Here the options are
exactly :func:`compile_options`: no fast math, ``--fmad=false``,
``-ftz=false``, IEEE division and square root, and ``ptxas -v`` for the
resource report. The cubin is loaded with ``cupy.RawModule(path=...)``
from :func:`cubin_file`.

The cubin's bytes come from NVRTC itself (``nvrtcGetCUBINSize`` /
``nvrtcGetCUBIN`` through ``ctypes`` on the library CuPy loaded,
:func:`_complete_cubin`), not from CuPy's ``getCUBIN``, which drops the last
byte (it strips a "trailing NUL" that a binary does not have) and leaves a
file one byte short of its ELF program-header table. Every cubin is checked
(:func:`fptq.backends.cubin_elf.check_cubin`: length == ELF extent) when it is
made, read from the cache and written for loading.
CuPy's own elementwise kernels (``a * b``, ``a > 0`` on float arrays) are
compiled with ``-ftz=true`` too, which is why the backend does no float
arithmetic or float comparison with CuPy operators (see
:mod:`fptq.backends.cupy_arrays`).

NVRTC comes from CuPy's bindings (``cupy_backends.cuda.libs.nvrtc``), which
need no GPU: compiling for an explicit architecture works on any machine with
CuPy and the NVRTC library installed.

The integer formats reach the kernels as ``-D`` macros made from the one
table, :mod:`fptq.spec.formats` (:func:`spec_defines`).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from ..spec import INT4_SYM, INT8_ACT, MIN_SCALE, POLICY_CODES, UINT4_ASYM, ActPolicy
from . import cupy_launch as L
from .cubin_elf import check_cubin, elf_extent

__all__ = ["HEADER", "MODULES", "KernelResources", "CompiledModule", "spec_defines", "compile_options",
           "name_expressions", "read_source", "parse_ptxas_log", "nvrtc_version", "compile_module",
           "cache_dir", "cubin_file", "compile_ptx", "forbidden_float_ops", "CACHE_FORMAT", "kernel_params",
           "check_launch_args"]

#: The header every module includes (not compiled alone).
HEADER = "common.cu"
#: The modules, one per .cu file (file stem), and the kernels each defines.
MODULES = {
    "activation": ("act_scale_from_amax", "quantize_act_per_tensor", "quantize_act_per_token", "dequantize_act"),
    "lae": ("lae_scales", "lae_apply_activation", "lae_apply_weight"),
    "weights": ("weight_scales", "quantize_weight_with_scales", "dequantize_weight"),
    "packing": ("pack_int4", "unpack_int4"),
    "matmul": ("w4a8_group_sums", "w4a8_epilogue"),
    "policy": ("select_policies",),
    "gemm_decode": tuple(L.decode_kernel_name(mt) for mt in L.DECODE_MT),
    "gemm_prefill": tuple(L.prefill_kernel_name(t) for t in L.PREFILL_TILES),
}
#: Modules whose kernels are C++ templates, looked up through NVRTC name expressions.
_TEMPLATED = ("gemm_decode", "gemm_prefill")


def _hexfloat(x: np.float32) -> str:
    return float(x).hex().replace("0x1.0000000000000p", "0x1p") + "f"


def spec_defines() -> tuple[str, ...]:
    """``-D`` options for every constant the kernels use, from :mod:`fptq.spec.formats`."""
    d = {
        "FPTQ_INT8_QMIN": INT8_ACT.qmin, "FPTQ_INT8_QMAX": INT8_ACT.qmax,
        "FPTQ_INT8_DIVISOR": INT8_ACT.scale_divisor,
        "FPTQ_INT4_SYM_QMIN": INT4_SYM.qmin, "FPTQ_INT4_SYM_QMAX": INT4_SYM.qmax,
        "FPTQ_INT4_SYM_DIVISOR": INT4_SYM.scale_divisor,
        "FPTQ_UINT4_QMIN": UINT4_ASYM.qmin, "FPTQ_UINT4_QMAX": UINT4_ASYM.qmax,
        "FPTQ_UINT4_DIVISOR": UINT4_ASYM.scale_divisor,
        "FPTQ_MIN_SCALE": _hexfloat(MIN_SCALE),
        "FPTQ_POLICY_STATIC": POLICY_CODES[ActPolicy.STATIC],
        "FPTQ_POLICY_LAE_STATIC": POLICY_CODES[ActPolicy.LAE_STATIC],
        "FPTQ_POLICY_DYNAMIC": POLICY_CODES[ActPolicy.DYNAMIC],
    }
    return tuple(f"-D{k}={v}" for k, v in d.items())


def compile_options(arch: str) -> tuple[str, ...]:
    """The NVRTC options of every module for ``arch`` (e.g. ``"90"``: a cubin for sm_90).

    Pinned float math: ``--fmad=false`` (no FMA contraction), ``-ftz=false``
    (subnormals kept), ``-prec-div=true`` / ``-prec-sqrt=true`` (IEEE), no
    ``--use_fast_math``. ``--ptxas-options=-v`` only adds the resource report to
    the log. ``-lineinfo`` is not used (it does not change the code, but keeps
    the cache key small).
    """
    if not re.fullmatch(r"\d{2,3}a?", str(arch)):
        raise ValueError(f"arch: expected a compute capability such as '90' or '90a', got {arch!r}")
    return (f"-arch=sm_{arch}", "--std=c++17", "--fmad=false", "-ftz=false", "-prec-div=true",
            "-prec-sqrt=true", "--ptxas-options=-v") + spec_defines()


def name_expressions(module: str) -> tuple[str, ...]:
    """The template instantiations of a module to look up by name (empty for plain extern "C" kernels)."""
    return MODULES[module] if module in _TEMPLATED else ()


def read_source(name: str) -> str:
    """The text of ``fptq/backends/cuda/<name>`` (shipped as package data)."""
    return resources.files("fptq.backends").joinpath("cuda", name).read_text(encoding="utf-8")


@dataclass
class KernelResources:
    """What ``ptxas -v`` reports for one kernel."""

    registers: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    stack_bytes: int = 0
    smem_bytes: int = 0


_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '([^']+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas_log(log: str) -> dict[str, KernelResources]:
    """Per-kernel registers, spills, stack frame and static shared memory from a ``ptxas -v`` log.

    Keys are the kernels' (mangled) entry names, in the order ptxas reports them.
    """
    out: dict[str, KernelResources] = {}
    cur = None
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            cur = out.setdefault(m.group(1), KernelResources())
        elif cur is not None and (m := _FRAME.search(line)):
            cur.stack_bytes, cur.spill_stores, cur.spill_loads = (int(v) for v in m.groups())
        elif cur is not None and (m := _USED.search(line)):
            cur.registers = int(m.group(1))
            if s := _SMEM.search(line):
                cur.smem_bytes = int(s.group(1))
    return out


@dataclass
class CompiledModule:
    """One compiled .cu file: the cubin, NVRTC's log, kernel name -> entry name, resources per kernel."""

    name: str
    arch: str
    cubin: bytes
    log: str
    entries: dict[str, str]
    resources: dict[str, KernelResources] = field(default_factory=dict)
    #: the cached cubin file (None when the cache is off or could not be written)
    path: Path | None = None

    def kernel_resources(self, kernel: str) -> KernelResources:
        """The ptxas report of ``kernel`` (its name as in :data:`MODULES`)."""
        return self.resources[self.entries[kernel]]


def _nvrtc():
    try:
        from cupy_backends.cuda.libs import nvrtc
    except ImportError as e:
        raise ImportError(f"compiling the CUDA kernels needs CuPy's NVRTC bindings (pip install cupy-cuda13x): {e}") \
            from e
    return nvrtc


def nvrtc_version() -> tuple[int, int]:
    """NVRTC's (major, minor); ImportError/RuntimeError when CuPy or the NVRTC library is missing."""
    nvrtc = _nvrtc()
    try:
        return tuple(nvrtc.getVersion())
    except Exception as e:  # noqa: BLE001 - the library itself is missing: say so
        raise RuntimeError(f"NVRTC is not usable here ({type(e).__name__}: {e}); "
                           "install the NVRTC library, e.g. pip install 'nvidia-cuda-nvrtc==13.0.*'") from e


def cache_dir() -> Path:
    """Where compiled cubins are kept: ``$FPTQ_CUDA_CACHE`` or ``~/.cache/fptq/cuda``."""
    return Path(os.environ.get("FPTQ_CUDA_CACHE") or Path.home() / ".cache" / "fptq" / "cuda")


#: Part of every cache key: cubins cached before the complete-cubin fix (one byte short) are never read.
CACHE_FORMAT = "cubin-complete-2"


def _key(name: str, arch: str, opts: tuple[str, ...], sources: list[str]) -> str:
    h = hashlib.sha256()
    for part in (CACHE_FORMAT, name, arch, repr(opts), repr(nvrtc_version()), *sources):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def compile_module(name: str, arch: str, use_cache: bool = True) -> CompiledModule:
    """Compile ``cuda/<name>.cu`` for ``sm_<arch>`` with :func:`compile_options` (NVRTC, no GPU needed).

    Cached on disk under :func:`cache_dir` (key: sources, options, NVRTC version).
    Raises ``RuntimeError`` with NVRTC's log when the source does not compile.
    """
    if name not in MODULES:
        raise ValueError(f"unknown CUDA module {name!r}; expected one of {sorted(MODULES)}")
    src, header = read_source(f"{name}.cu"), read_source(HEADER)
    opts = compile_options(arch)
    key = _key(name, arch, opts, [src, header])
    cubin_path = cache_dir() / f"{name}-sm{arch}-{key}.cubin"
    meta_path = cubin_path.with_suffix(".json")
    if use_cache and cubin_path.is_file() and meta_path.is_file():
        cached = _read_cache(name, arch, cubin_path, meta_path)
        if cached is not None:
            return cached
    nvrtc = _nvrtc()
    nvrtc_version()
    prog = nvrtc.createProgram(src, f"{name}.cu", (header.encode(),), (HEADER.encode(),))
    try:
        exprs = name_expressions(name)
        for e in exprs:
            nvrtc.addNameExpression(prog, e)
        try:
            nvrtc.compileProgram(prog, opts)
        except nvrtc.NVRTCError as e:
            raise RuntimeError(f"NVRTC failed to compile fptq/backends/cuda/{name}.cu for sm_{arch}: {e}\n"
                               f"{nvrtc.getProgramLog(prog)}") from None
        log = nvrtc.getProgramLog(prog)
        cubin = _complete_cubin(nvrtc, prog)
        check_cubin(cubin, f"{name}.cu's cubin from NVRTC")
        entries = {e: nvrtc.getLoweredName(prog, e) for e in exprs} or {k: k for k in MODULES[name]}
    finally:
        nvrtc.destroyProgram(prog)
    mod = CompiledModule(name, arch, cubin, log, entries, parse_ptxas_log(log))
    if use_cache and _write_cache(cubin_path, meta_path, cubin, {"log": log, "entries": entries}):
        mod.path = cubin_path
    return mod


def _read_cache(name: str, arch: str, cubin_path: Path, meta_path: Path) -> CompiledModule | None:
    """The cached module, or None when the files are unreadable or the cubin is not whole (then it is rebuilt)."""
    try:
        meta = json.loads(meta_path.read_text())
        cubin = cubin_path.read_bytes()
        check_cubin(cubin, str(cubin_path))
        return CompiledModule(name, arch, cubin, meta["log"], meta["entries"], parse_ptxas_log(meta["log"]),
                              cubin_path)
    except (OSError, ValueError, KeyError):
        return None


def _loaded_nvrtc_library() -> ctypes.CDLL | None:
    """The NVRTC shared library already mapped into this process (the one CuPy's bindings loaded), or None.

    Only that copy may be called with CuPy's program handles, so it is found in
    ``/proc/self/maps`` (Linux) rather than searched for; ``dlopen`` of a mapped
    file returns the same handle.
    """
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "libnvrtc.so" in line and "builtins" not in line}
    except OSError:
        return None
    paths = sorted(p for p in paths if p.startswith("/"))
    return ctypes.CDLL(paths[0]) if len(paths) == 1 else None


def _complete_cubin(nvrtc, prog) -> bytes:
    """All ``nvrtcGetCUBINSize`` bytes of a compiled program, from NVRTC itself.

    CuPy's ``getCUBIN`` returns one byte fewer (module docstring). Where the
    library cannot be called directly, CuPy's bytes are completed with zero
    bytes up to the ELF extent, which only ever replaces a zero byte: the end
    of the file is the last program header's high ``p_align`` byte. Either
    way the caller checks the result with :func:`check_cubin`.
    """
    lib = _loaded_nvrtc_library()
    if lib is not None:
        size = ctypes.c_size_t()
        handle = ctypes.c_void_p(int(prog))
        if lib.nvrtcGetCUBINSize(handle, ctypes.byref(size)) != 0:
            raise RuntimeError("nvrtcGetCUBINSize failed")
        buf = ctypes.create_string_buffer(size.value)
        if lib.nvrtcGetCUBIN(handle, buf) != 0:
            raise RuntimeError("nvrtcGetCUBIN failed")
        return buf.raw[:size.value]
    cubin = bytes(nvrtc.getCUBIN(prog))
    return cubin + b"\0" * max(0, elf_extent(cubin) - len(cubin))


def cubin_file(mod: CompiledModule) -> Path:
    """A file holding the whole cubin of ``mod``, checked, for ``cupy.RawModule(path=...)``:
    the cache file, or a private temporary one when the cache is off or unwritable."""
    check_cubin(mod.cubin, f"the cubin of {mod.name}.cu")
    if mod.path is not None and mod.path.is_file() and mod.path.stat().st_size == len(mod.cubin):
        return mod.path
    path = Path(tempfile.mkdtemp(prefix="fptq-cuda-")) / f"{mod.name}-sm{mod.arch}.cubin"
    path.write_bytes(mod.cubin)
    return path


def _write_cache(cubin_path: Path, meta_path: Path, cubin: bytes, meta: dict) -> bool:
    """Write atomically (temp file + rename); False when the cache cannot be written (then it is skipped)."""
    try:
        cubin_path.parent.mkdir(parents=True, exist_ok=True)
        for path, data in ((cubin_path, cubin), (meta_path, json.dumps(meta).encode())):
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
    except OSError:
        return False
    return True


def compile_ptx(name: str, arch: str, extra_options: tuple[str, ...] = ()) -> str:
    """The PTX of ``cuda/<name>.cu`` with the same options as :func:`compile_module` except
    ``-arch=compute_<arch>`` (for reading: the compile check scans it for float ops the spec forbids).
    ``extra_options`` are appended (the check's own test plants ``-ftz=true`` with it)."""
    nvrtc = _nvrtc()
    opts = tuple(f"-arch=compute_{arch}" if o.startswith("-arch=") else o for o in compile_options(arch)
                 if o != "--ptxas-options=-v") + tuple(extra_options)
    prog = nvrtc.createProgram(read_source(f"{name}.cu"), f"{name}.cu", (read_source(HEADER).encode(),),
                               (HEADER.encode(),))
    try:
        for e in name_expressions(name):
            nvrtc.addNameExpression(prog, e)
        nvrtc.compileProgram(prog, opts)
        ptx = nvrtc.getPTX(prog)
    finally:
        nvrtc.destroyProgram(prog)
    return ptx.decode() if isinstance(ptx, bytes) else ptx


_OPCODE = re.compile(r"^\s*(?:@!?%p\d+\s+)?([a-z][\w.:]*)", re.M)


def forbidden_float_ops(ptx: str) -> list[str]:
    """The float32 PTX instructions the spec's float rules forbid, one entry per kind found.

    Forbidden: any ``.ftz`` float32 op (flushes subnormals), ``fma``/``mad`` on
    float32 (contraction), ``.approx`` float32 ops and ``div.full.f32`` (not
    correctly rounded). float64 ops are not looked at (the LAE ``log2`` is
    double precision and the spec bounds its error separately).
    """
    bad = set()
    for op in _OPCODE.findall(ptx):
        if ".f32" not in op:
            continue
        if ".ftz" in op or op.startswith(("fma.", "mad.")) or ".approx" in op or op.startswith("div.full"):
            bad.add(op)
    return sorted(bad)


# ---------------------------------------------------------------------------------------------
# Kernel signatures, read from the sources: what each launch must pass


_KERNEL_DEF = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s*)?(\w+)\s*\(([^)]*)\)\s*\{")
#: C scalar type -> the NumPy scalar type a launch must pass (CuPy passes a Python int as 8 bytes)
_SCALARS = {"i64": np.int64, "long long": np.int64, "int": np.int32, "unsigned": np.uint32, "float": np.float32}
_POINTEES = {"i8": np.int8, "signed char": np.int8, "u8": np.uint8, "unsigned char": np.uint8, "int": np.int32,
             "float": np.float32}


def kernel_params(module: str) -> dict[str, tuple[tuple[str, str], ...]]:
    """kernel name (as in :data:`MODULES`) -> its parameters as (name, C type) with ``const`` and
    ``__restrict__`` dropped (``"i8*"``, ``"i64"``, ``"int"``, ``"float"``), read from ``cuda/<module>.cu``.
    A template's instantiations share its parameters."""
    defs = {}
    for name, params in _KERNEL_DEF.findall(read_source(f"{module}.cu")):
        out = []
        for p in params.split(","):
            words = p.replace("*", " * ").replace("__restrict__", " ").replace("const", " ").split()
            out.append((words[-1], " ".join(words[:-1]).replace(" *", "*")))
        defs[name] = tuple(out)
    return {k: defs[k.split("<")[0]] for k in MODULES[module]}


def check_launch_args(module: str, kernel: str, args, placeholders=()) -> None:
    """TypeError unless ``args`` match ``kernel``'s parameters one for one: a NumPy scalar of exactly the
    C type's width for each scalar (np.int32 for ``int``, np.int64 for ``i64``: a Python int would be passed
    as 8 bytes), an array of the pointee's dtype for each pointer (an object in ``placeholders``, the
    backend's stand-in for an absent zero point or bias, passes as any pointer)."""
    params = kernel_params(module)[kernel]
    if len(args) != len(params):
        raise TypeError(f"{kernel}: {len(args)} launch arguments for {len(params)} parameters")
    for (pname, ctype), a in zip(params, args):
        if ctype.endswith("*"):
            if any(a is p for p in placeholders):
                continue
            want = _POINTEES[ctype[:-1].strip()]
            if getattr(a, "dtype", None) != np.dtype(want):
                raise TypeError(f"{kernel}: argument {pname} ({ctype}) is {type(a).__name__} of dtype "
                                f"{getattr(a, 'dtype', None)}, expected {np.dtype(want).name}")
        elif type(a) is not _SCALARS[ctype]:
            raise TypeError(f"{kernel}: argument {pname} ({ctype}) is {type(a).__name__}, expected "
                            f"{_SCALARS[ctype].__name__}")
