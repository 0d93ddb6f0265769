"""Per-tensor access to a float model's weights without materializing the model (issue 22).

The streamed quantizer reads one decoder layer's tensors at a time from a :class:`WeightSource`:

* :class:`SafetensorsSource` -- a transformers directory: one ``model.safetensors`` or shards listed by
  ``model.safetensors.index.json``. Every shard is checked whole by ``safetensors.safe_open`` when the
  source opens; a tensor is read with plain reads into memory of its own (no memory map is kept: its pages
  would count in the process's RSS until closed, the whole model by the last layer) and comes back in the
  dtype it is stored in (bf16, fp16, fp32). The directory is checked as
  :func:`fptq.models.loading.load_float_model` checks it (``config.json``, regular files only, the
  layer count of the weights), and the index too: it names only regular files inside the directory,
  every tensor it lists is in the shard it names, no tensor is in two files, no shard holds a tensor
  the index does not list.
* :class:`GGUFSource` -- a ``.gguf`` file whose tensor table transformers' ``GgufHeader`` reads (or
  ``gguf.GGUFReader`` where transformers has no such reader); one tensor read (plain reads, as above)
  and dequantized per :meth:`~WeightSource.tensor` call, with transformers' own name map
  (``get_gguf_hf_weights_map``) and tensor processor (llama's q/k un-permutation, Gemma's ``norm - 1``,
  ...): the values are bit for bit those of ``load_gguf_checkpoint(path, return_tensors=True,
  model_to_load=model)`` widened to float32, as :func:`fptq.models.loading.gguf_to_directory` stores
  them, with no float32 copy of the file on disk. GGUF tensors that no model parameter names are
  skipped as transformers skips them; a tied ``lm_head`` has no tensor of its own.
* :func:`open_source` -- the model argument as :func:`fptq.models.loading.model_argument` takes it:
  None / ``"default"`` is the embedded SmolLM2's cached safetensors conversion (the same float weights
  as the whole-model path), a directory a :class:`SafetensorsSource`, a ``.gguf`` file a
  :class:`GGUFSource`.

A source is a context manager; :meth:`~WeightSource.close` releases it. An unknown tensor
name is a :class:`~fptq.models.loading.ModelLoadError` naming the file and the tensor.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import NamedTuple

from ..io.reading import InputFileError, check_regular_file
from .loading import (ModelLoadError, _offline, check_config_dict, check_layer_count, check_model_files,
                      model_argument, read_config_dict, read_json_file, resolve_model_dir)

__all__ = ["WeightSource", "SafetensorsSource", "GGUFSource", "open_source", "SAFETENSORS_INDEX",
           "SAFETENSORS_SINGLE"]

#: the index of a sharded safetensors directory, and the single-file name
SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"


class WeightSource:
    """The tensors of one float model, read one at a time (the module docstring).

    A subclass fills ``path``, ``_config`` (the checked transformers config dict) and ``_entries``
    (state-dict name -> ``(shape, torch dtype)``) and implements ``_read(name)`` and ``tokenizer()``."""

    path: Path

    def __init__(self, path):
        self.path = Path(path)
        self._config: dict = {}
        self._entries: dict = {}

    def config_dict(self) -> dict:
        """The transformers config as a dict (a copy; checked like :func:`loading.read_config_dict`)."""
        return copy.deepcopy(self._config)

    def names(self) -> list[str]:
        """The transformers state-dict names the source holds, in file order."""
        return list(self._entries)

    def __contains__(self, name) -> bool:
        return name in self._entries

    def _entry(self, name):
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ModelLoadError(f"{self.path}: no tensor named {name!r}") from None

    def shape(self, name) -> tuple[int, ...]:
        """The shape of tensor ``name`` (without reading it)."""
        return self._entry(name)[0]

    def dtype(self, name):
        """The torch dtype tensor ``name`` comes back in (the stored one; float32 for GGUF)."""
        return self._entry(name)[1]

    def nbytes(self) -> int:
        """Bytes of all tensors in the dtypes :meth:`tensor` returns."""
        return sum(math.prod(shape) * dt.itemsize for shape, dt in self._entries.values())

    def tensor(self, name):
        """Tensor ``name`` as a CPU torch tensor of :meth:`dtype`, in memory of its own (never a view of
        the file)."""
        shape, dt = self._entry(name)
        t = self._read(name)
        if tuple(t.shape) != shape or t.dtype != dt:
            raise ModelLoadError(f"{self.path}: tensor {name!r} read as {t.dtype} {tuple(t.shape)}, "
                                 f"expected {dt} {shape}")
        return t

    def _read(self, name):
        raise NotImplementedError

    def tokenizer(self):
        """The model's transformers tokenizer (local files only)."""
        raise NotImplementedError

    def close(self) -> None:
        """Close the source; it cannot be read afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"{type(self).__name__}({str(self.path)!r}, {len(self._entries)} tensors)"


def _torch_dtype(code: str, where, name):
    import torch

    from ..io.tensorfile import TORCH_DTYPE_NAMES

    attr = {v: k for k, v in TORCH_DTYPE_NAMES.items()}.get(code)
    if attr is None or not hasattr(torch, attr):
        raise ModelLoadError(f"{where}: tensor {name!r} has dtype {code}, which fptq does not read")
    return getattr(torch, attr)


def _read_exact(path: Path, offset: int, out, name) -> None:
    """Fill the writable buffer ``out`` with the bytes of ``path`` from ``offset`` by plain reads (no memory
    map, whose pages would stay in the process's resident set until the file is closed: the whole model
    by the last layer); ModelLoadError naming the file and tensor ``name`` if it ends first."""
    view = memoryview(out).cast("B")
    try:
        with open(path, "rb", buffering=0) as fh:
            fh.seek(offset)
            got = 0
            while got < len(view):  # one read() returns at most ~2 GiB on Linux
                n = fh.readinto(view[got:])
                if not n:
                    raise ModelLoadError(f"{path}: ends inside tensor {name!r} (changed since it was opened)")
                got += n
    except OSError as e:
        raise ModelLoadError(f"{path}: tensor {name!r} unreadable ({e.strerror or e})") from None


def _read_index(d: Path) -> dict[str, Path]:
    """``model.safetensors.index.json``'s weight map (tensor name -> shard path), each shard a regular file
    directly inside ``d``."""
    path = d / SAFETENSORS_INDEX
    index = read_json_file(path)
    wmap = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wmap, dict) or not wmap:
        raise ModelLoadError(f"{path}: no 'weight_map' object naming the shards")
    out = {}
    for name, file in wmap.items():
        if not isinstance(file, str) or file in ("", ".", "..") or Path(file).name != file or "\\" in file:
            raise ModelLoadError(f"{path}: tensor {name!r} is in {file!r}, not a file directly inside {d}")
        if d / file not in out.values():
            try:
                check_regular_file(d / file, 1 << 62, f"a shard named by {path}")
            except InputFileError as e:
                raise ModelLoadError(str(e)) from None
        out[name] = d / file
    return out


class SafetensorsSource(WeightSource):
    """The safetensors weights of a transformers directory, read one tensor at a time (module docstring)."""

    def __init__(self, directory):
        _offline()
        super().__init__(directory)
        d = self.path
        if not d.is_dir():
            raise ModelLoadError(f"{d} is not a model directory")
        self._config = read_config_dict(d)
        check_model_files(d, self._config)
        self._where: dict[str, tuple[Path, int, int]] = {}  # name -> (file, first byte, byte count)
        self._closed = False
        if os.path.lexists(d / SAFETENSORS_INDEX) and os.path.lexists(d / SAFETENSORS_SINGLE):
            raise ModelLoadError(f"{d}: both {SAFETENSORS_SINGLE} and {SAFETENSORS_INDEX}; which weights are the "
                                 "model's is ambiguous (remove one)")
        if os.path.lexists(d / SAFETENSORS_INDEX):
            index = _read_index(d)
            files = sorted(set(index.values()))
        elif os.path.lexists(d / SAFETENSORS_SINGLE):
            index, files = None, [d / SAFETENSORS_SINGLE]
        else:
            raise ModelLoadError(f"{d}: no {SAFETENSORS_SINGLE} or {SAFETENSORS_INDEX} (fptq streams "
                                 "safetensors weights only)")
        for f in files:
            self._add_shard(f)
        if index is not None:
            self._check_index(index)

    def _add_shard(self, f: Path) -> None:
        """The tensors of shard ``f``: checked whole by ``safe_open`` (offsets, coverage, dtypes), then
        located from the header; no mapping is kept."""
        from safetensors import safe_open

        from ..io.tensorfile import read_header

        try:
            with safe_open(str(f), framework="pt") as h:
                slices = [(k, h.get_slice(k)) for k in h.keys()]
                entries = [(k, tuple(int(n) for n in s.get_shape()), s.get_dtype()) for k, s in slices]
            header, start = read_header(f)
        except Exception as e:  # safetensors raises its own error type; TensorFileError, OSError
            raise ModelLoadError(f"{f}: unreadable safetensors file ({e})") from None
        for name, shape, code in entries:
            if name in self._where:
                raise ModelLoadError(f"{f}: tensor {name!r} is also in {self._where[name][0]}")
            dt = _torch_dtype(code, f, name)
            first, end = (header.get(name) or {}).get("data_offsets") or (0, -1)
            if end - first != math.prod(shape) * dt.itemsize:  # safe_open checked it: a file changed since
                raise ModelLoadError(f"{f}: tensor {name!r} is not where safe_open found it (the file changed)")
            self._where[name] = (f, start + first, end - first)
            self._entries[name] = (shape, dt)

    def _check_index(self, index: dict[str, Path]) -> None:
        where = self.path / SAFETENSORS_INDEX
        for name, f in index.items():
            if name not in self._where or self._where[name][0] != f:
                raise ModelLoadError(f"{where}: tensor {name!r} is listed in {f.name}, but {f} does not hold it")
        extra = sorted(set(self._where) - set(index))
        if extra:
            raise ModelLoadError(f"{self._where[extra[0]][0]}: holds tensor {extra[0]!r}, which {where} does "
                                 "not list")

    def _read(self, name):
        """Read into a new tensor (:func:`_read_exact`)."""
        import torch

        f, first, nbytes = self._where[name]
        if self._closed:
            raise ModelLoadError(f"{f}: the source is closed (tensor {name!r})")
        shape, dt = self._entries[name]
        t = torch.empty(shape, dtype=dt)
        if nbytes:
            _read_exact(f, first, t.view(-1).view(torch.uint8).numpy(), name)
        return t

    def tokenizer(self):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        except Exception as e:  # transformers raises many types here
            raise ModelLoadError(f"cannot load a tokenizer from {self.path}: {e}") from e

    def close(self) -> None:
        self._closed = True


#: transformers' tensor processors that keep a GGUF tensor's name and shape, so one tensor can be read alone
_PER_TENSOR_PROCESSORS = ("TensorProcessor", "LlamaTensorProcessor", "Gemma2TensorProcessor",
                          "NemotronTensorProcessor", "BloomTensorProcessor")


class _GGUFTensor(NamedTuple):
    """Where one GGUF tensor is and how it is stored."""

    name: str
    qtype: object  # gguf.GGMLQuantizationType
    shape: tuple[int, ...]  # in torch order: the dequantized array's
    offset: int  # of its first byte in the file
    nbytes: int


def _header_table(p: Path):
    """``(architecture, tensors)`` from transformers' own header reader (``GgufHeader``: 0.07 s for
    Qwen2.5-1.5B's file, which skips the vocabulary), or None where transformers has none or it refuses
    the file (a tensor type it does not know: ``gguf.GGUFReader`` reads it then)."""
    try:
        from transformers.integrations.gguf.reader import GgufHeader
    except ImportError:
        return None
    from gguf import GGMLQuantizationType

    try:
        h = GgufHeader.from_file(str(p))
    except ValueError:
        return None
    return h.architecture, [_GGUFTensor(i.name, GGMLQuantizationType(i.ggml_type), tuple(i.shape),
                                        h.data_start + i.offset, i.nbytes) for i in h.tensors]


def _reader_table(p: Path):
    """``(architecture, tensors)`` from ``gguf.GGUFReader`` (15 s for Qwen2.5-1.5B's file under load: it
    parses every vocabulary entry; the reader is not kept, its metadata holds ~150 MB for 49k tokens)."""
    from gguf import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import read_field

    reader = GGUFReader(str(p))
    return read_field(reader, "general.architecture")[0], [
        _GGUFTensor(t.name, t.tensor_type, tuple(int(n) for n in reversed(t.shape.tolist())), int(t.data_offset),
                    int(t.n_bytes)) for t in reader.tensors]


class GGUFSource(WeightSource):
    """The tensors of a ``.gguf`` file, dequantized one at a time as transformers dequantizes them."""

    def __init__(self, path):
        _offline()
        super().__init__(path)
        p = self.path
        try:
            check_regular_file(p, 1 << 62, "GGUF model")
        except InputFileError as e:
            raise ModelLoadError(str(e)) from None
        self._config, cfg, raw = _gguf_config(p)
        table, self._processor, self._mapping = _gguf_table_and_map(p, cfg, raw)
        self._tensors: dict[str, _GGUFTensor] = {}
        self._closed = False
        import torch

        for t in table:
            hf = self._mapping.get(t.name)
            if hf is None:  # load_gguf_checkpoint skips it too
                continue
            if hf in self._tensors:
                raise ModelLoadError(f"{p}: tensors {self._tensors[hf].name!r} and {t.name!r} both map to {hf!r}")
            self._tensors[hf] = t
            self._entries[hf] = (t.shape, torch.float32)
        check_layer_count(self._config, self._entries, p, "the GGUF tensors")

    def _read(self, name):
        import numpy as np
        import torch
        from gguf.quants import quant_shape_to_byte_shape

        if self._closed:
            raise ModelLoadError(f"{self.path}: the source is closed (tensor {name!r})")
        t = self._tensors[name]
        try:  # the bytes as GGUFReader shapes them (rows of blocks); for F32/F16 dequantize views them
            raw = np.empty(quant_shape_to_byte_shape(t.shape, t.qtype), dtype=np.uint8)
        except Exception as e:  # a shape that is not whole blocks
            raise ModelLoadError(f"{self.path}: GGUF tensor {t.name!r} {t.shape} {t.qtype}: {e}") from None
        if raw.nbytes != t.nbytes:
            raise ModelLoadError(f"{self.path}: GGUF tensor {t.name!r} has {t.nbytes} bytes for {raw.shape}")
        _read_exact(self.path, t.offset, raw, name)
        try:
            weights = _dequantize_rows(raw, t.qtype)
            result = self._processor.process(weights=weights, name=t.name, tensor_key_mapping=self._mapping,
                                             parsed_parameters={"tensors": {}})
        except Exception as e:  # a damaged block or an unknown quantization type
            raise ModelLoadError(f"{self.path}: GGUF tensor {t.name!r} ({name!r}) cannot be dequantized "
                                 f"({e})") from None
        if result.name != t.name:
            raise ModelLoadError(f"{self.path}: GGUF tensor {t.name!r} is not readable on its own")
        # the values load_gguf_checkpoint gives (it copies them: here they are already in memory of their
        # own), then gguf_to_directory's float32
        return torch.from_numpy(np.ascontiguousarray(result.weights)).to(torch.float32)

    def tokenizer(self):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(self.path.parent), gguf_file=self.path.name,
                                                 local_files_only=True)
        except Exception as e:  # transformers raises many types here
            raise ModelLoadError(f"cannot read the tokenizer of GGUF {self.path}: {e}") from e

    def close(self) -> None:
        self._closed = True


#: rows of a GGUF tensor are dequantized in chunks of about this many float32 bytes
DEQUANTIZE_CHUNK_BYTES = 16 << 20


def _dequantize_rows(raw, qtype):
    """``gguf.dequantize(raw, qtype)``, computed a chunk of rows at a time into one float32 array: the
    same values (a block's floats depend on that block alone), without gguf's intermediates for the whole
    tensor at once (about 1.3 times the float32 result: a Q8_0 embedding peaked at 2.3 times its float32
    bytes whole, 1.5 times in chunks). A tensor of at most one chunk is dequantized whole."""
    import numpy as np
    from gguf import dequantize

    if raw.ndim < 2:
        return dequantize(raw, qtype)
    rows = raw.reshape(-1, raw.shape[-1])
    first = dequantize(rows[:1], qtype)
    step = max(1, DEQUANTIZE_CHUNK_BYTES // max(1, first.nbytes))
    if rows.shape[0] <= step:
        return dequantize(raw, qtype)
    out = np.empty((rows.shape[0], first.shape[-1]), dtype=first.dtype)
    for i in range(0, rows.shape[0], step):
        out[i:i + step] = dequantize(rows[i:i + step], qtype)
    return out.reshape(*raw.shape[:-1], out.shape[-1])


def _gguf_config(p: Path):
    """``(config dict, config, raw config)``: the transformers config of a GGUF file as
    ``AutoConfig.from_pretrained(dir, gguf_file=name)`` builds it, from ``load_gguf_checkpoint``'s config
    dict (``raw``, what its tensor processor is given), made float32 and with ``architectures`` as
    ``gguf_to_directory`` saves it; checked by ``check_config_dict``. One parse of the metadata (the
    slow part of opening a GGUF: ~10 s for SmolLM2's 49k-token vocabulary on a loaded 2-core machine)."""
    import torch
    from transformers import CONFIG_MAPPING
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        raw = load_gguf_checkpoint(str(p), return_tensors=False)["config"]
        cfg = CONFIG_MAPPING[raw["model_type"]].from_dict(copy.deepcopy(raw))
    except Exception as e:  # gguf and transformers raise many types here
        raise ModelLoadError(f"cannot read GGUF {p}: {e}") from e
    cfg._name_or_path = str(p.parent)  # as AutoConfig.from_pretrained sets it
    cfg.dtype = torch.float32
    arch = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(cfg.model_type)
    if arch is None:
        raise ModelLoadError(f"{p}: model type {cfg.model_type!r} is not a causal LM transformers knows")
    cfg.architectures = [arch]
    d = cfg.to_dict()
    check_config_dict(d, p)
    return d, cfg, raw


def _gguf_table_and_map(p: Path, cfg, raw: dict):
    """``(tensor table, processor, GGUF name -> state-dict name)``, the processor and map as
    ``load_gguf_checkpoint`` builds them, the map from a model built on the meta device (no weight memory)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

    try:
        architecture, table = _header_table(p) or _reader_table(p)
    except Exception as e:  # gguf raises many types here
        raise ModelLoadError(f"cannot read GGUF {p}: {e}") from e
    cls = TENSOR_PROCESSORS.get(architecture, TensorProcessor)
    if cls.__name__ not in _PER_TENSOR_PROCESSORS:
        raise ModelLoadError(f"{p}: GGUF architecture {architecture!r} ({cls.__name__}) merges or renames "
                             "tensors; fptq cannot stream it")
    processor = cls(config=raw)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    return table, processor, get_gguf_hf_weights_map(model, processor)


def open_source(model=None) -> WeightSource:
    """The :class:`WeightSource` of a model argument (:func:`loading.model_argument`): a ``.gguf`` file ->
    :class:`GGUFSource` (no float32 copy on disk); anything else as :func:`loading.resolve_model_dir`
    resolves it (None or ``"default"``: the embedded SmolLM2's cached conversion, the float weights of the
    whole-model path) -> :class:`SafetensorsSource`."""
    model = model_argument(model)
    if model is not None:
        p = Path(model).expanduser()
        if p.is_file() and p.suffix == ".gguf":
            return GGUFSource(p)
    return SafetensorsSource(resolve_model_dir(model))
