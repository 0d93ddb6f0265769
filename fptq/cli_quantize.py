"""``fptq quantize``: the streamed run (``docs/scale.md``) from the command line.

The float model is read one decoder layer at a time from its files (:mod:`fptq.models.sources`), quantized
by the one pipeline (:func:`fptq.models.stream.quantize_streamed` around
:func:`fptq.models.quantize.quantize_model`) and written shard by shard into an atomic checkpoint directory
(:func:`fptq.models.checkpoint.open_writer`): a crash leaves nothing. Before any of it, the memory model
(:mod:`fptq.models.memory`) says what the run will hold; ``--dry-run`` prints it and stops, and a run the
machine cannot hold is refused (``--no-memory-check`` runs it anyway). ``--rotate residual`` changes the
embeddings and lm_head before the layers and takes the whole-model path (the model loaded whole).
``--resume`` records the streamed run after every layer in ``<out>.fptq-partial/`` and continues a stopped one
(:mod:`fptq.cli_resume`, :mod:`fptq.models.journal`).
"""

from __future__ import annotations

import argparse
import sys
import time

from .cli_types import non_negative_int, positive_float

__all__ = ["add_quantize_arguments", "run_quantize", "tuning_fields"]


def tuning_fields(a) -> dict:
    """The :class:`~fptq.models.config.QuantConfig` fields of ``--tune-scales`` / ``--tune-scales-lr`` and
    ``--tune-layers`` / ``--tune-layers-lr``."""
    return {"tune_scales_steps": a.tune_scales, "tune_scales_lr": a.tune_scales_lr,
            "tune_layers_steps": a.tune_layers, "tune_layers_lr": a.tune_layers_lr}


def _mebibytes(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of MiB, got {s}")
    return v * 1024 * 1024


def add_quantize_arguments(q) -> None:
    """The flags of ``fptq quantize`` about the run itself (memory, shards)."""
    from .models.checkpoint_shards import DEFAULT_SHARD_BYTES

    q.add_argument("--dry-run", action="store_true", help="print the memory model (peak memory by component) "
                   "and the expected time, check the inputs, and stop before quantizing")
    q.add_argument("--no-memory-check", dest="memory_check", action="store_false",
                   help="run even when the memory model's peak exceeds the memory available now")
    q.add_argument("--shard-size", type=_mebibytes, default=DEFAULT_SHARD_BYTES, metavar="MIB",
                   help=f"largest checkpoint shard in MiB (default {DEFAULT_SHARD_BYTES >> 20}); the writer holds "
                   "one shard in memory; a checkpoint that fits in one is a single file")
    q.add_argument("--device", default="cpu", help="where the calibration forwards and the GPTQ Hessians run: "
                   "cpu (default) or cuda[:N] (the rotation, GPTQ's column loop and the checkpoint stay on the host; "
                   "the float32 forward rounds differently there, docs/scale.md)")
    from .models.config import QuantConfig

    q.add_argument("--tune-scales", type=non_negative_int, default=QuantConfig.default("tune_scales_steps"), metavar="STEPS",
                   help="after quantizing, train the INT4 group scales (codes and zero points frozen) for STEPS Adam "
                   "steps toward the float model's next-token distribution on the calibration samples (default 0: "
                   "off; loads the model whole and keeps a float32 copy of it; docs/pipeline.md)")
    q.add_argument("--tune-scales-lr", type=positive_float, default=QuantConfig.default("tune_scales_lr"),
                   metavar="LR", help="--tune-scales: Adam's learning rate on the log-scales, a relative change "
                   f"per step (default {QuantConfig.default('tune_scales_lr'):g})")
    q.add_argument("--tune-layers", type=non_negative_int, default=QuantConfig.default("tune_layers_steps"),
                   metavar="STEPS", help="right after each decoder layer is quantized, train its INT4 group scales "
                   "(codes and zero points frozen) for STEPS Adam steps, one per calibration batch, toward the float "
                   "layer's outputs (mean squared error; default 0: off; layer by layer, so the streamed run and "
                   "--resume support it; --device cpu only; docs/pipeline.md)")
    q.add_argument("--tune-layers-lr", type=positive_float, default=QuantConfig.default("tune_layers_lr"),
                   metavar="LR", help="--tune-layers: Adam's learning rate on the log-scales, a relative change "
                   f"per step (default {QuantConfig.default('tune_layers_lr'):g})")
    q.add_argument("--resume", action="store_true", help="record the run after every decoder layer in "
                   "OUT.fptq-partial/ (kept if the run stops: about the calibration activations of one layer plus "
                   "the checkpoint so far) and continue a stopped run from there: the same command again; the "
                   "checkpoint equals an uninterrupted run's byte for byte (docs/scale.md)")


def _time_line(estimate) -> str:
    """The memory model's time estimate (:meth:`~fptq.models.memory.MemoryEstimate.time_estimate`, rates timed
    now on this machine, about half a second) as one line: an estimate, not a measurement."""
    t = estimate.time_estimate()
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in t.items() if k not in ("per_layer_s", "total_s"))
    return (f"expected time: about {t['total_s'] / 60:.0f} min ({t['per_layer_s']:.0f} s per layer: {parts}; "
            "matmul rates timed now, an estimate that a loaded machine or small matrices can miss by 2x)")


def _memory_estimate(a, cfg, model, source):
    """The memory model's estimate of this run (:func:`fptq.models.memory.estimate`)."""
    from .models import memory
    from .models._torch import torch

    names = source.names()
    layer_weight = next((n for n in names if ".layers." in n and n.endswith("proj.weight")), names[0])
    return memory.estimate(model.config.to_dict(), n_samples=a.samples, seq_len=a.seq_len, batch_size=a.batch_size,
                           quant=cfg, source_dtype_bytes=source.dtype(layer_weight).itemsize,
                           float_dtype_bytes=getattr(torch, a.float_dtype).itemsize, shard_bytes=a.shard_size,
                           device="cpu" if a.torch_device is None else "cuda")


def _gpu_free(device) -> int | None:
    """Free bytes on ``device`` (None on the host)."""
    if device is None:
        return None
    from .models._torch import torch

    return torch.cuda.mem_get_info(device)[0]


def _whole_model(a, cfg, out, protect):
    """``--rotate residual`` and ``--tune-scales``: the model loaded whole (the pre-streaming path)."""
    from .data.calibration import calibration_ids
    from .eval.health import check_forward
    from .models.checkpoint import save_quantized
    from .models.loading import check_seq_len, load_float_model
    from .models.quantize import quantize_model

    model, tok, src = load_float_model(a.model, progress=not a.quiet)
    check_seq_len(model.config, a.seq_len, "--seq-len")
    ids = calibration_ids(tok, a.calib, a.samples, a.seq_len, a.seed, vocab_size=model.config.vocab_size)
    check_forward(model, ids[:1], f"the float model {src}")  # an overflow inside is an error, not a plan
    res = quantize_model(model, ids, cfg, batch_size=a.batch_size, progress=not a.quiet, inplace=True,
                         device=a.torch_device)
    if res.scale_tuning is not None and a.quiet:   # not quiet: tune_scales printed it
        print(res.scale_tuning.summary(), file=sys.stderr)
    info = _info(a, src)
    save_quantized(out, res.model, tok, res.plan, cfg, info, overwrite=a.force, protect=protect,
                   float_dtype=a.float_dtype, int8_embeddings=a.int8_embeddings)
    return res, src


def _info(a, src) -> dict:
    from .data.text import calibration_parts
    from .models.loading import DEFAULT_MODEL_NAME

    # nothing run-dependent in info (reproducible bytes); how the float parts are stored is in the metadata
    parts = "+".join(calibration_parts(a.calib))  # a named mix is recorded with its parts
    calib = a.calib if parts == a.calib else f"{a.calib} = {parts}"
    return {"source_model": str(src), "model_name": DEFAULT_MODEL_NAME if a.model is None else str(a.model),
            "calibration": f"{calib}: {a.samples} x {a.seq_len} tokens, seed {a.seed}"}


def _streamed(a, cfg, out, protect, source):
    from .data.calibration import calibration_ids
    from .models.checkpoint import open_writer
    from .models.loading import check_seq_len
    from .models.memory import check_fits
    from .models.calibrate import release_freed_memory
    from .models.arch import find_decoder_layers
    from .models.stream import check_source_finite, open_streamed, quantize_streamed
    from .models.trace import mark

    model = open_streamed(source)
    check_seq_len(model.config, a.seq_len, "--seq-len")
    estimate = _memory_estimate(a, cfg, model, source)
    if a.dry_run:
        print(estimate.describe())
        print(_time_line(estimate))
        return None
    if not a.quiet:
        print(f"fptq: memory model: peak {estimate.peak_bytes / 2 ** 30:.2f} GiB in '{estimate.peak_step}' "
              "(--dry-run prints the table)", file=sys.stderr)
    if a.memory_check:
        check_fits(estimate, device_available=_gpu_free(a.torch_device))
    check_source_finite(source, progress=not a.quiet)
    tok = source.tokenizer()
    ids = calibration_ids(tok, a.calib, a.samples, a.seq_len, a.seed, vocab_size=model.config.vocab_size)
    release_freed_memory()  # the calibration text's temporaries (hundreds of MB) go back before the layers
    mark("calibration text")
    journal = None
    if a.resume:
        from .cli_resume import open_run_journal

        journal = open_run_journal(a, cfg, source, _info(a, source.path), len(find_decoder_layers(model)[1]), protect)
    try:
        with open_writer(out, overwrite=a.force, protect=protect, float_dtype=a.float_dtype,
                         int8_embeddings=a.int8_embeddings, shard_bytes=a.shard_size,
                         workdir=None if journal is None else journal.checkpoint_dir) as writer:
            if journal is not None:
                journal.restore_writer(writer)
            res, io = quantize_streamed(model, source, ids, cfg, writer, batch_size=a.batch_size,
                                        progress=not a.quiet, device=a.torch_device, journal=journal)
            _check_final_norm(model, io.last_hidden, f"the float model {source.path}")
            writer.finish(model, tok, res.plan, cfg, _info(a, source.path))
    except BaseException:
        if journal is not None:
            from .cli_resume import stopped_message

            print(stopped_message(journal), file=sys.stderr)
            journal.close()
        raise
    if journal is not None:
        journal.discard()
    return res


def _check_final_norm(model, hidden, where: str) -> None:
    """The final norm of the last layer's outputs for the first calibration sample (the float model's with the
    default calibration) holds no NaN/Inf or all-zero row (:func:`fptq.eval.health.check_hidden`): an overflow
    inside the model is an error, not a checkpoint (raised before the checkpoint is written)."""
    from .eval.health import check_hidden, final_norm_of
    from .models._torch import torch

    norm = final_norm_of(model)
    if norm is not None and hidden is not None:
        with torch.no_grad():
            check_hidden(norm(hidden), where)


def run_quantize(a, cfg) -> int:
    """``fptq quantize`` with parsed flags ``a`` and their :class:`~fptq.models.config.QuantConfig` ``cfg``."""
    from .cli_resume import check_resume_flags
    from .models.checkpoint import check_checkpoint_out
    from .models.device import resolve_device
    from .data.text import calibration_parts
    from .models.loading import model_argument, resolve_model_dir
    from .models.sources import open_source
    from .models.stream import STREAMED_ROTATIONS
    from .report import plan_summary

    # every check that can fail runs before the model is read and calibrated
    a.model = model_argument(a.model)
    a.torch_device = resolve_device(a.device)
    if a.torch_device is not None and cfg.sequential_calibration:
        raise ValueError("--sequential (and --weight-quantizer gptaq, which calibrates sequentially) runs the "
                         "quantized layer on the host: it cannot be used with --device cuda")
    from .models.layer_tuning import layer_tuner

    layer_tuner(cfg, device=a.torch_device)   # before any work: its refusal of a calibration device
    check_resume_flags(a, cfg)
    protect = [x for x in (a.model, *calibration_parts(a.calib)) if x is not None]  # every part of a mix
    check_checkpoint_out(a.out, a.force, protect)
    t0 = time.time()
    if cfg.rotate not in STREAMED_ROTATIONS or cfg.tune_scales_steps:   # the model whole
        protect.append(resolve_model_dir(a.model, progress=not a.quiet))
        out = check_checkpoint_out(a.out, a.force, protect)
        if a.dry_run:
            print("--dry-run: the memory model covers the streamed run; --rotate residual and --tune-scales load "
                  "the model whole")
            return 0
        res, src = _whole_model(a, cfg, out, protect)
    else:
        with open_source(a.model) as source:
            src = source.path
            protect.append(src)
            out = check_checkpoint_out(a.out, a.force, protect)
            res = _streamed(a, cfg, out, protect, source)
        if res is None:
            return 0
    print(plan_summary([g.to_json() for g in res.plan.groups]))
    if res.layer_tuning is not None:
        from .models.layer_tuning import summarize

        print(summarize(res.layer_tuning), file=sys.stderr)
    if a.torch_device is not None:
        from .models._torch import torch

        print(f"GPU ({torch.cuda.get_device_name(a.torch_device)}): peak allocated "
              f"{torch.cuda.max_memory_allocated(a.torch_device) / 2 ** 30:.2f} GiB")
    print(f"quantized {len(res.plan.by_linear())} linears of {src} in {time.time() - t0:.1f} s -> {out}")
    return 0
