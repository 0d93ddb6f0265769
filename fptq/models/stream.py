"""Layer-streamed quantization: the float model is never held whole (issue 22, ``docs/scale.md``).

:func:`open_streamed` builds the model of a :class:`~fptq.models.sources.WeightSource` with its parameters
on the meta device (:mod:`fptq.models.skeleton`) and checks the source holds exactly what it needs.
:func:`quantize_streamed` then runs :func:`fptq.models.quantize.quantize_model` (the one implementation of
the pipeline) with a :class:`StreamedLayers` as its ``layer_io``:

1. the input embeddings are read (float32) when the capture's forward starts (after the rotation is planned)
   and every decoder layer's calibration inputs captured; they are released before layer 0 is read;
2. per decoder layer: its weights read from the source (float32), rotated, calibrated, planned, quantized;
   its outputs computed for the next layer; its tensors handed to the checkpoint writer
   (``writer.add_layer``); its memory released;
3. the modules outside the layers read again for the writer's ``finish``: the final norm (and other small
   ones) at once; the input embeddings and ``lm_head`` by the writer itself, one (tied) group at a time,
   each stored and released before the next is read (:class:`DeferredModules`).

With a ``journal`` (:mod:`fptq.models.journal`, ``fptq quantize --resume``) the run records itself after every
layer and starts where an interrupted run of the same settings stopped.

``FPTQ_TRACE=1`` (or ``step``) prints the resident set at the end of every step (:mod:`fptq.models.trace`).

The calibration activations of the current layer and the writer's shard buffer are the only things that
grow with the model besides one layer (the memory model: :mod:`fptq.models.memory`).
"""

from __future__ import annotations

import contextlib
import sys
import time

from .arch import arch_of_model, find_decoder_layers
from .layer_pass import release_freed_memory
from .finite import all_finite
from .loading import ModelLoadError
from . import quantize as _quantize
from .quantize import LayerIO, QuantResult
from .skeleton import check_source_names, materialize, release, skeleton
from .trace import mark

__all__ = ["StreamedLayers", "open_streamed", "quantize_streamed", "outside_layer_paths", "config_of",
           "check_source_finite", "DeferredModules", "deferred_paths"]

#: rotations a streamed run supports: ``"residual"`` rotates the embeddings and lm_head before the layers,
#: which a streamed run reads only at the end
STREAMED_ROTATIONS = ("online", "none")


def config_of(source):
    """The transformers config of ``source`` (from its ``config_dict()``)."""
    from transformers import AutoConfig

    d = dict(source.config_dict())
    model_type = d.pop("model_type", None)
    if not model_type:
        raise ModelLoadError(f"{source.path}: the config names no model_type")
    try:
        return AutoConfig.for_model(model_type, **d)
    except (ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(f"{source.path}: cannot build a {model_type!r} config: {e}") from None


def open_streamed(source):
    """The float32 model of ``source``, parameters on the meta device, checked against the source's names."""
    model = skeleton(config_of(source))
    arch_of_model(model)  # an unsupported family is refused by name before anything else
    check_source_names(model, source)
    return model


def check_source_finite(source, progress: bool = False) -> None:
    """Every tensor of ``source`` is finite (read one at a time): a model with NaN/Inf anywhere is refused
    before any calibration, as :func:`fptq.models.loading.load_float_model` refuses it (ModelLoadError naming
    the tensor). One pass over the weights: about 2 GB/s from safetensors, the dequantization's rate from GGUF."""
    from tqdm.auto import tqdm

    for name in tqdm(source.names(), desc="checking weights", unit="tensor", disable=not progress):
        t = source.tensor(name)
        if not all_finite(t):
            raise ModelLoadError(f"{source.path}: parameter {name} holds NaN/Inf; fptq refuses non-finite models")
        del t
    mark("check weights")


def outside_layer_paths(model) -> list[str]:
    """Module paths owning a parameter outside the decoder layers (embeddings, final norm, lm_head...)."""
    path, _, _ = find_decoder_layers(model)
    inside = f"{path}."
    return sorted({name.rpartition(".")[0] for name, _ in model.named_parameters(remove_duplicate=False)
                   if not name.startswith(inside)})


def _capture_paths(model) -> list[str]:
    """The modules outside the decoder layers except the output head: those the capture may run (input and
    positional embeddings, OPT's projections; the final norm is small). The head is read only at the end."""
    head = model.get_output_embeddings()
    head_path = next((name for name, m in model.named_modules() if m is head), None)
    return [p for p in outside_layer_paths(model) if p != head_path]


class StreamedLayers(LayerIO):
    """Each decoder layer read from ``source`` before its turn and released after it; ``writer`` (a checkpoint
    writer: ``add_layer(model, prefix, plan)``) gets its tensors first. ``layer_seconds[i]``: wall time of
    layer ``i`` from its read to its release; with ``progress`` a line per layer goes to stderr. ``journal``
    (:class:`fptq.models.journal.Journal`): where the run starts, and a record of it after every layer."""

    def __init__(self, model, source, writer=None, progress: bool = True, journal=None) -> None:
        self.model, self.source, self.writer, self.progress = model, source, writer, progress
        self.n_layers = len(find_decoder_layers(model)[1])
        self.journal, self._next_inputs, self._next_float = journal, None, None
        self.layer_seconds: list[float] = [] if journal is None else journal.layer_seconds
        self.pending_release: list = []   # modules read for the capture only (the input embeddings)
        #: the most bytes the model's real (not meta) parameters and buffers held at a layer's read or
        #: hand-over: one layer (float32, or quantized) plus what lives outside the layers
        self.peak_tensor_bytes = 0
        #: the last decoder layer's outputs for the first calibration sample ([1, L, H]; the float model's with
        #: the default non-sequential calibration): what the final norm reads
        self.last_hidden = None
        self._t0 = 0.0
        self._capture_hook = None

    def _note_resident(self) -> None:
        held = sum(t.nbytes for t in (*self.model.parameters(), *self.model.buffers()) if not t.is_meta)
        self.peak_tensor_bytes = max(self.peak_tensor_bytes, held)

    def read_at_capture(self, paths) -> None:
        """Read the modules at ``paths`` when the capture's first forward starts (a pre-hook on the model the
        capture runs, removed there): after the rotation is planned, whose float64 transient then does not meet
        the embeddings; they are released when layer 0 is read (:meth:`release_capture`)."""
        path = find_decoder_layers(self.model)[0]
        base = self.model.get_submodule(path.rsplit(".", 1)[0]) if "." in path else self.model

        def read(*_):
            self._capture_hook.remove()
            materialize(self.model, paths, self.source)
            mark("capture: read")
        self._capture_hook = base.register_forward_pre_hook(read)
        self.pending_release.extend(self.model.get_submodule(p) for p in paths)

    def release_capture(self) -> None:
        """Release what :meth:`read_at_capture` read (and its hook, if the capture never ran)."""
        if self._capture_hook is not None:
            self._capture_hook.remove()
            self._capture_hook = None
        for module in self.pending_release:
            release(module)
        self.pending_release = []

    def resume_point(self):
        return None if self.journal is None else self.journal.resume_point()

    def load(self, i: int, prefix: str, layer) -> None:
        self.release_capture()
        self._t0 = time.perf_counter()
        materialize(self.model, [prefix], self.source)
        self._note_resident()
        mark(f"{prefix}: load")

    def outputs(self, i: int, outputs: list, float_outputs: list | None = None) -> None:
        if self.journal is not None:   # held until the journal records them (done)
            self._next_inputs, self._next_float = outputs, float_outputs
        if i == self.n_layers - 1:   # the last hidden states of the first sample, for the caller's final check
            self.last_hidden = outputs[0][:1].to("cpu", copy=True)   # from the calibration's device, if any

    def done(self, i: int, prefix: str, layer, plan) -> None:
        self._note_resident()
        mark(f"{prefix}: outputs")
        if self.writer is not None:
            self.writer.add_layer(self.model, prefix, plan)
        release(layer)
        release_freed_memory()
        mark(f"{prefix}: flush")
        self.layer_seconds.append(time.perf_counter() - self._t0)
        if self.progress:
            from tqdm.auto import tqdm

            tqdm.write(f"fptq: layer {i + 1}/{self.n_layers} quantized in {self.layer_seconds[-1]:.1f} s",
                       file=sys.stderr)
        if self.journal is not None:
            self.journal.record(i, self._next_inputs, plan, self.writer, self.layer_seconds, self._next_float)
            self._next_inputs = self._next_float = None


def deferred_paths(model, outside) -> list[tuple[str, ...]]:
    """The groups of module paths among ``outside`` (:func:`outside_layer_paths`) that the checkpoint writer reads
    one at a time: the input embeddings and the output head ([V, H] each), each with every module sharing a
    tied parameter with it (the skeleton's ``_fptq_ties``), so a tied pair is read once, as one tensor; groups
    and their paths in the model's module order."""
    ties = getattr(model, "_fptq_ties", None) or {}
    order = [n for n, _ in model.named_modules()]
    names = {id(m): n for n, m in model.named_modules()}
    seeds = [names.get(id(m)) for m in (model.get_input_embeddings(), model.get_output_embeddings())
             if m is not None]
    groups: list[set] = []
    for seed in (s for s in seeds if s in outside):
        group, todo = {seed}, [seed]
        while todo:
            path = todo.pop()
            for pname in model.get_submodule(path)._parameters:
                for other in ties.get(f"{path}.{pname}", ()):
                    owner = other.rpartition(".")[0]
                    if owner in outside and owner not in group:
                        group.add(owner)
                        todo.append(owner)
        if not any(group & g for g in groups):
            groups.append(group)
    return sorted((tuple(sorted(g, key=order.index)) for g in groups), key=lambda g: order.index(g[0]))


class DeferredModules:
    """The modules outside the decoder layers a streamed run leaves on the meta device for the checkpoint
    writer's ``finish`` to read a group at a time (the embeddings and lm_head: float32 [V, H] each, which
    would otherwise be held together with their stored copies): ``groups`` (:func:`deferred_paths`),
    ``reading(group)`` a context manager that reads the group's parameters (float32) from the source and
    releases them when it exits."""

    def __init__(self, model, source, outside) -> None:
        self.model, self.source = model, source
        self.groups = deferred_paths(model, outside)

    def holds(self, path: str) -> bool:
        """Whether module ``path`` is one of the deferred modules."""
        return any(path in g for g in self.groups)

    @contextlib.contextmanager
    def reading(self, group):
        materialize(self.model, list(group), self.source)
        try:
            yield
        finally:
            for path in group:
                release(self.model.get_submodule(path))
            release_freed_memory()


def quantize_streamed(model, source, calib_ids, config, writer=None, *, batch_size: int,
                      progress: bool = True, device=None, journal=None) -> tuple[QuantResult, StreamedLayers]:
    """Quantize the model of :func:`open_streamed` layer by layer (module docstring); on return the layers
    are released (their tensors are the writer's) and the modules outside them read again, so
    ``writer.finish(model, ...)`` can store them: with a ``writer``, the embeddings and lm_head stay on the meta
    device and the writer reads them one at a time in ``finish`` (:class:`DeferredModules`, handed over by
    ``writer.defer``); without one, everything outside the layers is read. Returns the :class:`QuantResult` and
    the :class:`StreamedLayers` (its ``layer_seconds``). ``device``: where the calibration forwards and GPTQ
    Hessians run (:mod:`fptq.models.device`; None: the host). ``journal``: a resumable run's
    (:class:`fptq.models.journal.Journal`; ``writer`` in its ``checkpoint_dir``, restored from it)."""
    if config.rotate not in STREAMED_ROTATIONS:
        raise ValueError(f"a streamed run rotates with {' or '.join(STREAMED_ROTATIONS)}; --rotate "
                         f"{config.rotate} changes the embeddings and lm_head before the layers (quantize a model "
                         "that fits in memory with the whole-model path: fptq.models.quantize.quantize_model)")
    if journal is not None and writer is None:
        raise ValueError("a journaled run needs the checkpoint writer it records")
    io = StreamedLayers(model, source, writer, progress, journal)
    io.read_at_capture(_capture_paths(model))   # what runs before the layers: embeddings, OPT's positions...
    try:
        res = _quantize.quantize_model(model, calib_ids, config, batch_size=batch_size, progress=progress,
                                       inplace=True, layer_io=io, device=device)
    finally:
        io.release_capture()   # its hook, if the capture never ran; what it read, if no layer was loaded
    outside = outside_layer_paths(model)
    deferred = DeferredModules(model, source, outside) if writer is not None else None
    if deferred is not None:
        writer.defer(deferred)
    materialize(model, [p for p in outside if deferred is None or not deferred.holds(p)], source)
    mark("write: read")
    return res, io
