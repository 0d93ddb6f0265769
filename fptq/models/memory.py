"""The memory model of a streamed quantization run: peak bytes (and a time estimate) from a transformers
config and the calibration settings, before anything is loaded.

The streamed run (``docs/scale.md``) holds one decoder layer at a time. Its memory is a sum of named
components (:data:`MEANINGS`), each alive during some steps of the run; the peak is the largest step:

* ``rotation plan`` (rotations built), ``capture`` (embeddings float32, layer 0's inputs, per-batch arguments);
* per layer: ``layer: load`` (its weights float32 from the source), ``layer: rotate`` (``W Q`` in float64),
  ``layer: forward`` (the calibration pass: outputs, activations, kept rows), ``layer: rows`` (the kept rows
  concatenated), ``layer: plan`` (the error-selected plan's judging), ``layer: Hessian`` (building the
  float64 Hessian of the worst group input), ``layer: GPTQ`` (its inverse Cholesky and error feedback),
  ``layer: tune`` (``--tune-layers``: its scales trained, :data:`TUNE_MEANINGS`), ``layer: sequential``
  (``--sequential``'s second pass), ``layer: flush`` (a full shard serialized);
* ``write: read`` / ``write``: the embeddings, then ``lm_head``, each read and stored alone, beside the last shard.

The GPTQ and Hessian coefficients are measured on :mod:`fptq.reference.gptq` as it is (peak RSS over
the inputs; see the constants), so a change there changes one constant here. Pure arithmetic: importing
this module imports only the standard library; :func:`estimate` reads the weight quantizer's needs from
:mod:`fptq.reference`'s registry and, when ``quant`` is None, the defaults of :class:`~fptq.models.config.QuantConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..defaults import SHARD_BYTES
from .memory_shape import (FLOAT_STREAM_MEANINGS, TUNE_MEANINGS, Settings, Shape, _batches, float_stream_components,
                           heldout_rows, kept_rows, shape_of, tune_components)
from .memory_time import layer_flops, measure_rate

__all__ = ["MemoryEstimate", "InsufficientMemory", "Shape", "shape_of", "estimate", "check_fits",
           "mem_available", "measure_rate", "MEANINGS", "BASELINE_BYTES", "GiB", "MiB"]

GiB, MiB = 1 << 30, 1 << 20
DEFAULT_SHARD_BYTES = SHARD_BYTES   # the writer's shard size when none is given

#: the Python + torch + transformers + numba process before any weight: peak RSS 433,136 kB of
#: ``/usr/bin/time -v .venv/bin/python /tmp/c_baseline.py`` (imports fptq.cli, fptq.data.calibration,
#: fptq.eval.health, fptq.models.checkpoint/loading/quantize, fptq.report, fptq.backends.numba_backend and
#: numba, and runs fptq.testing.tiny_model("llama") on 16 tokens), 2026-12-06, this 2-core machine (loaded;
#: the figure is memory, not time), twice, equal to 1 kB
BASELINE_BYTES = 433_136 * 1024
#: NumPy/OpenBLAS's buffers touched by the first matmul and LAPACK call: +8,960 kB RSS (/tmp/c_blas.py:
#: after importing numpy, torch and fptq.models.quantize, a 512 x 512 float64/float32 matmul, Cholesky, inverse),
#: and SciPy's LAPACK loaded by GPTQ's first inverse: +25,653,248 bytes (``from scipy.linalg import lapack`` and
#: one ``dpotrf`` after numpy and torch, 2026-12-06)
BLAS_BYTES = 8960 * 1024 + 25_653_248
#: ``fptq.reference.gptq.gptq_quantize(w [N, K], H)``, peak RSS over its inputs =
#: ``max(INV_KK K^2 + INV_NK N K, FB_KK K^2 + FB_NK N K) * 8`` bytes: the inverse Cholesky works in the one
#: float64 [K, K] it is handed (LAPACK potrf/potri/potrf in place) beside W float64; the error feedback U
#: beside W's float64 copies, the block update and the float32 result. Measured 2026-12-06 after the in-place
#: inverse with ``python benchmarks/memory_model_check.py coefficients`` (VmHWM after clear_refs, BLAS warmed
#: up; H passed as an array, so gptq_quantize's own copy is the [K, K] it works in; W visited in place without
#: act_order): K=8960 N=1536: 1.53 K^2 = K^2 + 3.1 N K; K=4096 N=1024: 1.92 K^2 (SciPy's first load, 26 MB =
#: 0.19 K^2, inside the window; the rest K^2 + 2.9 N K). Before it (numpy's cholesky/inv/cholesky and a
#: visiting-order copy of W): 4.1 K^2 + N K in the inverse, K^2 + 3.9 N K in the feedback, at K=4096
GPTQ_INV_KK, GPTQ_INV_NK, GPTQ_FB_KK, GPTQ_FB_NK = 1.0, 1.0, 1.0, 3.1
#: ``fptq.models.quantize.layer_hessian`` -> ``equalized_hessian(x [R, K], s)``: peak over x =
#: ``(HESS_RK R K + HESS_KK K^2) * 8`` (x / s float64, divided in place; X^T X, which becomes the sum and then
#: H in place); measured (same script): K=4096 R=8192: R K + 1.08 K^2; K=2048 R=8192: R K + 1.13 K^2
HESS_RK, HESS_KK = 1.0, 1.1
#: the tokenizer: SmolLM2-135M's (vocab 49,152) added 58,167,296 bytes of peak RSS when loaded
#: (``source.tokenizer()`` after the baseline); other vocabularies scaled by their size (not measured)
TOKENIZER_BYTES_PER_TOKEN = 1183
#: ``fptq.data.calibration.calibration_ids(tok, SOURCE, 128, 512)``: bytes of peak RSS above the process with the
#: tokenizer loaded (the calibration splits read and tokenized whole, so independent of n_samples): "wiki"
#: 626,311,168 (2026-12-06; afterwards ~17 MB stays once freed memory is trimmed, ``release_freed_memory``, ~300 MB
#: if not); "mix" (wiki + ptb + science) 998,338,560 (2026-12-07, ``ru_maxrss`` around ``calibration_samples``; wiki
#: the same way: 632,713,216). SmolLM2's tokenizer. Any other source counts as the largest measured
CALIB_TEXT_BYTES = {"wiki": 626_311_168, "mix": 998_338_560}
#: the assumed CUDA context (``device="cuda"``): GPU memory and host RSS of torch's CUDA libraries. NOT
#: measured (no GPU was lent to this session); replace with a measurement
CUDA_DEVICE_BYTES, CUDA_HOST_BYTES = 600 * MiB, 1 * GiB
ROTATION_BLOCK_BYTES = 6 * 32 * MiB  # online rotation's float64 row blocks (rotate_input_side_factored)

#: one line per component
MEANINGS = {
    "baseline": "Python + torch + transformers + numba, BLAS buffers (measured, BASELINE_BYTES + BLAS_BYTES)",
    "cuda_context": "CUDA context and libraries (assumed, not measured)",
    "tokenizer": "the tokenizer (TOKENIZER_BYTES_PER_TOKEN x vocab: extrapolated from SmolLM2's, measured)",
    "calibration_text": "reading and tokenizing the calibration text (measured for 'mix', the default, and 'wiki')",
    "rotations": "rotations held: Q [H,H] float64 + float32, Q_f [F,F] float32 (online), the head rotation",
    "rotation_build": "the rotations built (online: Q_f float64 [F,F] and its float32 copy while built)",
    "embeddings_f32": "input embeddings [V,H] float32 (capture); embeddings or lm_head, one at a time (final write)",
    "embeddings_read": "an embedding/lm_head in the source dtype while it becomes float32 (finiteness: in chunks)",
    "embeddings_rotation": "residual rotation of the embeddings: E float64 and E Q float64",
    "nonlayer_stored": "the embeddings or lm_head being stored, in the stored float dtype (then spilled to a file)",
    "hidden_in": "calibration inputs of the current layer, float32 [n, L, H]",
    "hidden_out": "its outputs, the next layer's inputs, float32 [n, L, H]",
    "hidden_in_forward": "one batch of inputs during the pass (each dropped once used; all with --sequential or "
                         "--tune-layers)",
    "hidden_in_kept": "--sequential: the inputs kept for the second pass",
    "rows_hessian": "kept rows of the Hessian's group and the later groups (each group's dropped after its Hessian)",
    "rows_gptq": "kept rows of the groups after the one being GPTQ'd",
    "hidden_out_sequential": "--sequential: the quantized layer's outputs beside the float ones",
    "captured_args": "per-batch layer arguments: attention masks [B,1,L,L], rotary cos/sin, position ids",
    "layer_f32": "one decoder layer's weights, float32",
    "layer_f32_device": "the layer's float32 weights on the GPU for the forward (cuda)",
    "layer_read": "the largest linear in the source dtype while it becomes float32 (finiteness: in chunks)",
    "rotation_transient": "rotating a layer: W Q of the largest linear through Q's Hadamard factors (online: its "
                          "float32 copy, the float32 result, float64 row blocks); residual: W float64, W Q, result",
    "forward_work": "one batch's activations inside the layer forward (MLP [B,L,F] x4, attention)",
    "kept_rows": "kept calibration rows per group input, float32 [rows + held-out rows, K]",
    "kept_rows_concat": "the kept rows concatenated while the per-batch lists are alive",
    "plan_judging": "error-selected plan, per linear: held-out rows quantized, outputs, dequantized weight",
    "hessian_build": "building the worst group's Hessian: its rows float64, X^T X",
    "hessian": "the cached float64 Hessian [K,K] beside GPTQ of a group's earlier linears (the last one works in it)",
    "gptq_work": "GPTQ's working set: the float64 [K,K] its inverse Cholesky overwrites in place, W float64 "
                 "[N,K] and its copies in the error feedback",
    "layer_quantized": "the layer's quantized form (packed INT4, scales, zero points, norms)",
    "layer_dequantized": "--sequential: fake-quant float32 weights of the quantized layer",
    "shard_buffer": "quantized layers buffered for the current shard (up to shard_bytes)",
    "shard_flush": "the shard buffer at a flush: up to shard_bytes + one layer (written without a copy)",
    "write_buffer": "layers still buffered at the final write (up to shard_bytes), written with the rest",
    **FLOAT_STREAM_MEANINGS, **TUNE_MEANINGS}

#: components that live on the GPU with ``device="cuda"`` (:mod:`fptq.models.device`: the calibration forward,
#: the activations between layers and each group's Hessian product there; kept rows, GPTQ and the rest on the host)
ON_DEVICE = frozenset({"cuda_context", "hidden_in", "hidden_out", "hidden_out_sequential", "hidden_in_forward",
                       "hidden_in_kept", "layer_f32_device", "forward_work", "hessian_build"})

_COMMON = ("baseline", "cuda_context", "tokenizer", "rotations")
_LAYER = _COMMON + ("captured_args", "shard_buffer", "layer_f32", "layer_f32_device", "hidden_float", "kept_rows_float")
_KEPT = ("hidden_in_kept", "tune_inputs", "hidden_out")   # the inputs kept past the pass (--sequential, --tune-layers)
_RERUN = _KEPT + ("forward_work", "layer_quantized", "layer_dequantized")   # the layer run again
#: step -> the components alive during it (the peak of a step is their sum). The layer is handed to the writer
#: (``layer: flush``) after its outputs are computed; its inputs are gone by then (kept with --sequential)
STEPS = {
    "calibration text": ("baseline", "cuda_context", "tokenizer", "calibration_text"),
    "rotation plan": ("baseline", "cuda_context", "tokenizer", "rotation_build"),
    "capture": _COMMON + ("embeddings_read", "embeddings_f32", "embeddings_rotation", "hidden_in", "captured_args"),
    "layer: load": _LAYER + ("hidden_in", "layer_read"),
    "layer: rotate": _LAYER + ("hidden_in", "rotation_transient"),
    "layer: forward": _LAYER + ("hidden_in_forward", "hidden_out", "forward_work", "kept_rows"),
    "layer: rows": _LAYER + _KEPT + ("kept_rows", "kept_rows_concat"),
    "layer: plan": _LAYER + _KEPT + ("kept_rows", "plan_judging"),
    "layer: Hessian": _LAYER + _KEPT + ("rows_hessian", "hessian_build", "layer_quantized"),
    "layer: GPTQ": _LAYER + _KEPT + ("rows_gptq", "hessian", "gptq_work", "layer_quantized", "gptaq_work"),
    "layer: rows again": _LAYER + _RERUN + ("rows_again",),   # GPTAQ: a group's rows from the layer quantized so far
    "layer: tune": _LAYER + _KEPT + ("layer_quantized", "tune_integer", "tune_scales", "tune_autograd", "tune_backward"),
    "layer: sequential": _LAYER + _RERUN + ("hidden_out_sequential",),
    "layer: flush": tuple(c for c in _LAYER if c != "shard_buffer") + ("hidden_out", "layer_quantized",
                                                                       "shard_flush"),
    "write: read": _COMMON + ("embeddings_read", "embeddings_f32", "write_buffer"),
    "write": _COMMON + ("embeddings_f32", "embeddings_rotation", "nonlayer_stored", "write_buffer"),
}


def settings(quant, *, n_samples: int, seq_len: int, batch_size: int, source_dtype_bytes: int = 4,
             float_dtype_bytes: int = 2, shard_bytes: int = DEFAULT_SHARD_BYTES, device: str = "cpu",
             shared_input_rows: bool = True) -> Settings:
    """:class:`Settings` of a run of ``quant`` (a :class:`~fptq.models.config.QuantConfig`; None: its defaults):
    the rows kept are :func:`fptq.models.quantize.rows_to_keep`'s rule (the error plan's ``keep_rows``, the
    weight quantizer's ``rows_option``), held out as ``quant.holdout_samples`` says; ``quant.tune_layers_steps``
    (layer-wise scale tuning) its ``tune_steps``."""
    from ..reference import weight_quantizer
    if quant is None:
        from .config import QuantConfig
        quant = QuantConfig()
    for name, v in (("n_samples", n_samples), ("seq_len", seq_len), ("batch_size", batch_size),
                    ("source_dtype_bytes", source_dtype_bytes), ("float_dtype_bytes", float_dtype_bytes),
                    ("shard_bytes", shard_bytes)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    entry = weight_quantizer(quant.weight_quantizer)
    by_error = quant.policy_select != "bands" and quant.force_policy is None
    rows = max(quant.keep_rows if by_error else 0, getattr(quant, entry.rows_option) if entry.rows_option else 0)
    holdout = quant.holdout_samples(n_samples) if by_error and rows else 0
    return Settings(n_samples, seq_len, batch_size, kept_rows(n_samples, seq_len, batch_size, rows),
                    heldout_rows(n_samples, seq_len, batch_size, holdout, quant.keep_rows),
                    bool(entry.hessian and rows), by_error, quant.sequential_calibration, quant.rotate,
                    int(quant.group_size), quant.weight_format == "uint4_asym", source_dtype_bytes,
                    float_dtype_bytes, shard_bytes, device, shared_input_rows, entry.float_inputs,
                    int(quant.tune_layers_steps), CALIB_TEXT_BYTES.get(quant.calib, max(CALIB_TEXT_BYTES.values())))


def _hessian_parts(shape: Shape, s: Settings) -> tuple[dict, str]:
    """The Hessian components of the group whose Hessian build or GPTQ peaks highest, and that group's name.

    A group's Hessian is cached for its linears and handed to the last one (``HessianHandoff``: GPTQ works in
    it, so ``hessian`` is 0 there and ``gptq_work``'s inverse Cholesky is the peak); a group of one linear
    (o, down) has no cached copy beside GPTQ. A group's kept rows are dropped once its Hessian is built, so its
    Hessian build sees its rows and the later groups' (``rows_hessian``), its GPTQ only the later groups'
    (``rows_gptq``)."""
    if not s.hessian:
        return {}, ""
    best, groups = None, shape.groups()
    row_bytes = [(s.rows + s.heldout_rows) * 4 * (k if s.shared_input_rows else k * len(lins)) for _, k, lins in groups]
    for i, (group, k, lins) in enumerate(groups):
        n = max(n for _, n in lins)
        parts = {"hessian_build": int((HESS_RK * s.rows * k + HESS_KK * k * k) * 8),
                 "hessian": 8 * k * k if len(lins) > 1 else 0,
                 "gptq_work": int(8 * max(GPTQ_INV_KK * k * k + GPTQ_INV_NK * n * k,
                                          GPTQ_FB_KK * k * k + GPTQ_FB_NK * n * k)),
                 "rows_hessian": sum(row_bytes[i:]), "rows_gptq": sum(row_bytes[i + 1:])}
        total = max(parts["hessian_build"] + parts["rows_hessian"],
                    parts["hessian"] + parts["gptq_work"] + parts["rows_gptq"])
        if best is None or total > best[0]:
            best = (total, parts, group)
    return best[1], best[2]


def _layer_components(shape: Shape, s: Settings) -> dict:
    """Components of one layer's quantization (bytes)."""
    h, f, n, L, B = shape.hidden, shape.intermediate, s.n_samples, s.seq_len, s.batch_size
    biggest = max(nn * k for _, _, nn, k in shape.linears())
    ks = [k for _, k, _ in shape.groups()] if s.shared_input_rows else [k for *_, k in shape.linears()]
    attention = 2 * B * shape.heads * L * L * 4 if shape.eager else 0
    r = s.heldout_rows  # the plan judges one linear at a time: rows fake-quantized, outputs, a dequantized weight
    plan = max(4 * (2 * r * k + 3 * r * nn + 2 * nn * k) for _, _, nn, k in shape.linears()) if s.by_error and r else 0
    return {
        "hidden_in": n * L * h * 4, "hidden_out": n * L * h * 4,
        # the default pass drops each batch's input once its output is computed; --sequential runs it again
        "hidden_in_forward": (n if s.sequential or s.tune_steps else min(B, n)) * L * h * 4,
        "hidden_in_kept": n * L * h * 4 if s.sequential else 0,
        "hidden_out_sequential": n * L * h * 4 if s.sequential else 0,
        "captured_args": n * L * L * sum(shape.mask_bytes)
        + len(_batches(n, B)) * (shape.rope_tables * 2 * L * shape.head_dim * 4 + L * 8),
        "layer_f32": shape.layer_float_bytes(),
        "layer_f32_device": shape.layer_float_bytes() if s.device == "cuda" else 0,
        "layer_read": biggest * (s.source_dtype_bytes if s.source_dtype_bytes != 4 else 0),
        "rotation_transient": {"online": 8 * biggest + ROTATION_BLOCK_BYTES, "residual": 24 * biggest}.get(
            s.rotate, 0),
        "forward_work": B * L * 4 * (4 * f + 5 * shape.q_width + 2 * shape.kv_width + 4 * h) + attention,
        "kept_rows": (s.rows + s.heldout_rows) * 4 * sum(ks),
        "kept_rows_concat": (s.rows + s.heldout_rows) * 4 * sum(ks),
        "plan_judging": plan,
        "layer_quantized": shape.layer_stored_bytes(s.group_size, s.asym),
        "layer_dequantized": 4 * shape.layer_params() if s.sequential else 0,
        **float_stream_components(shape, s), **tune_components(shape, s)}


def _model_components(shape: Shape, s: Settings) -> dict:
    """Components of the whole run: the process, the rotations, embeddings, shards (bytes)."""
    h, f, v, fb = shape.hidden, shape.intermediate, shape.vocab, s.float_dtype_bytes
    heads = 12 * shape.head_dim ** 2 if s.rotate != "none" else 0
    rot = {"online": 12 * h * h + 4 * f * f, "residual": 12 * h * h}.get(s.rotate, 0) + heads
    layers_total = shape.layers * shape.layer_stored_bytes(s.group_size, s.asym)
    layer_q = shape.layer_stored_bytes(s.group_size, s.asym)
    leftover = min(s.shard_bytes, layers_total)
    return {
        "baseline": BASELINE_BYTES + BLAS_BYTES + (CUDA_HOST_BYTES if s.device == "cuda" else 0),
        "cuda_context": CUDA_DEVICE_BYTES if s.device == "cuda" else 0,
        "tokenizer": TOKENIZER_BYTES_PER_TOKEN * v,
        "calibration_text": s.calib_text,
        "rotations": rot,
        "embeddings_f32": v * h * 4,
        "rotation_build": {"online": 12 * f * f, "residual": 12 * h * h}.get(s.rotate, 0),
        "embeddings_read": v * h * (s.source_dtype_bytes if s.source_dtype_bytes != 4 else 0),
        "embeddings_rotation": 16 * v * h if s.rotate == "residual" else 0,
        "nonlayer_stored": v * h * fb if fb != 4 else 0,   # one table at a time (spilled before the next)
        "shard_buffer": leftover,
        "shard_flush": min(s.shard_bytes + layer_q, layers_total),
        "write_buffer": leftover,
    }


_PHASES = {"capture": ("calibration text", "rotation plan", "capture"),
           "per-layer quantization": tuple(k for k in STEPS if k.startswith("layer")),
           "final write": ("write: read", "write")}


@dataclass
class MemoryEstimate:
    """Peak memory of a streamed quantization run, by component (bytes) and step.

    ``components``: name -> bytes (only those this run has; :data:`MEANINGS` says what each is);
    ``steps``: step -> host bytes alive (the sum of its components on the host), ``device_steps`` the same
    on the GPU (``device="cuda"``); ``peak_bytes`` / ``peak_step``: the largest host step;
    ``device_peak_bytes``: the largest GPU step (0 on the CPU); ``hessian_group``: the group input whose
    Hessian and GPTQ set the Hessian components; ``flops``: name -> (FLOPs or elementwise operations per
    layer, the rate kind that times it) for :meth:`time_estimate`."""

    shape: Shape
    settings: Settings
    components: dict
    steps: dict
    device_steps: dict
    peak_bytes: int
    peak_step: str
    device_peak_bytes: int
    hessian_group: str = ""
    flops: dict = field(default_factory=dict)

    @property
    def phases(self) -> dict:
        """Peak host bytes of the phases: capture, per-layer quantization, final write."""
        return {p: max(self.steps[s] for s in steps if s in self.steps) for p, steps in _PHASES.items()}

    def where(self, name: str) -> str:
        """``"gpu"`` for a component on the GPU (``device="cuda"``), else ``"host"``."""
        return "gpu" if self.settings.device == "cuda" and name in ON_DEVICE else "host"

    def biggest(self, step: str | None = None, count: int = 4) -> list[tuple[str, int]]:
        """The ``count`` biggest host components alive in ``step`` (default: the peak step)."""
        names = [c for c in STEPS[step or self.peak_step] if self.where(c) == "host" and self.components.get(c)]
        return sorted(((c, self.components[c]) for c in names), key=lambda t: -t[1])[:count]

    def describe(self, rate=None) -> str:
        """A table: every component, its size in GiB, where and in which phases it lives, its meaning; the
        steps' totals; the peak; with ``rate`` (as :meth:`time_estimate` takes it) the expected time too."""
        text = _describe(self)
        if rate is None:
            return text
        t = self.time_estimate(rate)
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in t.items() if k not in ("per_layer_s", "total_s"))
        return (f"{text}\nexpected time: {t['per_layer_s']:.1f} s per layer ({parts}), {t['total_s'] / 60:.1f} min "
                f"for {self.shape.layers} layers (an estimate from this machine's measured rates)")

    def time_estimate(self, rate=None) -> dict:
        """Seconds per layer of each kind of work and ``total_s`` for every layer: :attr:`flops` divided by
        ``rate`` (FLOP/s; one number for every kind, or a dict ``{"float32", "float64", "elementwise"}``
        as :func:`measure_rate` returns; None: measure it now)."""
        rates = measure_rate() if rate is None else rate
        out = {}
        for name, (ops, kind) in self.flops.items():
            r = rates[kind] if isinstance(rates, dict) else float(rates)
            out[name] = ops / r
        out["per_layer_s"] = sum(out.values())
        out["total_s"] = out["per_layer_s"] * self.shape.layers
        return out


def estimate(cfg: dict, *, n_samples: int, seq_len: int, batch_size: int, quant=None, source_dtype_bytes: int = 4,
             float_dtype_bytes: int = 2, shard_bytes: int = DEFAULT_SHARD_BYTES, device: str = "cpu",
             shared_input_rows: bool = True) -> MemoryEstimate:
    """The :class:`MemoryEstimate` of quantizing the model of transformers config dict ``cfg`` streamed.

    Args:
        cfg: ``config.json`` as a dict (``WeightSource.config_dict()``); :func:`shape_of` reads it.
        n_samples, seq_len, batch_size: the calibration set and samples per forward.
        quant: the :class:`~fptq.models.config.QuantConfig` (None: its defaults).
        source_dtype_bytes: bytes per element of the source weights (bf16: 2; GGUF tensors dequantize to 4).
        float_dtype_bytes: the checkpoint's float dtype (``--float-dtype``: bfloat16 2, float32 4).
        shard_bytes: the checkpoint writer's shard size.
        device: ``"cpu"``, or ``"cuda"`` (the calibration forward, kept rows, Hessians and GPTQ on one GPU).
        shared_input_rows: one copy of the rows per group input, as ``calibrate`` keeps them; False: per linear.
    Raises:
        ValueError naming a bad argument or what the config lacks.
    """
    shape = shape_of(cfg)
    s = settings(quant, n_samples=n_samples, seq_len=seq_len, batch_size=batch_size,
                 source_dtype_bytes=source_dtype_bytes, float_dtype_bytes=float_dtype_bytes,
                 shard_bytes=shard_bytes, device=device, shared_input_rows=shared_input_rows)
    hess, group = _hessian_parts(shape, s)
    every = {**_model_components(shape, s), **_layer_components(shape, s), **hess}
    components = {k: int(every.get(k, 0)) for k in MEANINGS if every.get(k, 0)}
    flops = layer_flops(shape, n_samples=s.n_samples, seq_len=s.seq_len, sequential=s.sequential, rows=s.rows,
                        heldout_rows=s.heldout_rows if s.by_error else 0, hessian=s.hessian, float_inputs=s.float_inputs)
    est = MemoryEstimate(shape, s, components, {}, {}, 0, "", 0, group, flops)
    only = {"layer: sequential": s.sequential, "layer: rows again": s.float_inputs, "layer: tune": s.tune_steps}
    for step, names in STEPS.items():
        if not only.get(step, True):
            continue
        est.steps[step] = sum(components.get(c, 0) for c in names if est.where(c) == "host")
        est.device_steps[step] = sum(components.get(c, 0) for c in names if est.where(c) == "gpu")
    est.peak_step = max(est.steps, key=est.steps.get)
    est.peak_bytes = est.steps[est.peak_step]
    est.device_peak_bytes = max(est.device_steps.values())
    return est


def _gib(b: int) -> str:
    return f"{b / GiB:8.3f}"


def _lives(name: str, est: MemoryEstimate) -> str:
    """In which phases (or, for a transient, which steps) a component lives."""
    steps = [s for s in est.steps if name in STEPS[s]]
    layer = [s for s in est.steps if s.startswith("layer")]
    if name == "baseline" or len(steps) == len(est.steps):
        return "all"
    out = [s for s in steps if not s.startswith("layer")]
    inside = [s for s in steps if s.startswith("layer")]
    if inside:
        out.append("layer" if len(inside) == len(layer) else "layer: " + ", ".join(i[7:] for i in inside))
    return "; ".join(out)


def _describe(est: MemoryEstimate) -> str:
    sh, s = est.shape, est.settings
    lines = [f"memory model: {sh.family}, {sh.layers} layers, hidden {sh.hidden}, MLP {sh.intermediate}, heads "
             f"{sh.heads}/{sh.kv_heads}, vocab {sh.vocab} ({'tied' if sh.tied else 'untied'}); calibration "
             f"{s.n_samples} x {s.seq_len}, batch {s.batch_size}; rows kept per "
             f"{'group' if s.shared_input_rows else 'linear'} input {s.rows} (+{s.heldout_rows} held out); "
             f"rotate {s.rotate}; source {s.source_dtype_bytes}-byte, stored floats {s.float_dtype_bytes}-byte; "
             f"shards {s.shard_bytes / MiB:.0f} MiB; device {s.device}",
             f"{'component':<22} {'GiB':>8}  {'where':<5} {'lives in':<34} meaning"]
    for name, b in est.components.items():
        lines.append(f"{name:<22} {_gib(b)}  {est.where(name):<5} {_lives(name, est):<34} {MEANINGS[name]}")
    gpu = s.device == "cuda"
    lines.append(f"{'step':<22} {'host GiB':>8}" + ("  GPU GiB" if gpu else ""))
    for step, b in est.steps.items():
        lines.append(f"{step:<22} {_gib(b)}" + (f" {_gib(est.device_steps[step])}" if gpu else ""))
    lines.append(f"peak: {est.peak_bytes / GiB:.2f} GiB host in '{est.peak_step}'"
                 + (f"; GPU {est.device_peak_bytes / GiB:.2f} GiB" if gpu else "")
                 + (f"; the Hessian components are the {est.hessian_group} group's" if est.hessian_group else ""))
    return "\n".join(lines)


class InsufficientMemory(MemoryError):
    """The memory model's peak exceeds the memory this machine has available (:func:`check_fits`)."""


#: what lowers a component (the message of :class:`InsufficientMemory`)
_LOWER = {"hidden_in": "--samples or --seq-len", "hidden_out": "--samples or --seq-len",
          "hidden_out_sequential": "--no-sequential", "captured_args": "--samples or --seq-len",
          "forward_work": "--batch-size", "kept_rows": "the kept rows (QuantConfig.gptq_rows / keep_rows) or --samples",
          "kept_rows_concat": "the kept rows (QuantConfig.gptq_rows / keep_rows) or --samples",
          "hessian_build": "the kept rows (QuantConfig.gptq_rows)", "shard_buffer": "the shard size",
          "shard_flush": "the shard size", "write_buffer": "the shard size",
          "nonlayer_stored": "--int8-embeddings", "rotation_transient": "--rotate none",
          "rotations": "--rotate none", "tune_inputs": "--sequential (which keeps them anyway) or --samples",
          "tune_autograd": "--batch-size", "tune_backward": "--batch-size"}


def mem_available(path: str = "/proc/meminfo") -> int | None:
    """MemAvailable in bytes, or None where it cannot be read (not Linux)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_fits(est: MemoryEstimate, available: int | None = None, device_available: int | None = None) -> int | None:
    """Raise :class:`InsufficientMemory` when ``est.peak_bytes`` exceeds ``available`` bytes (default:
    :func:`mem_available`; when that is None, nothing is checked and None is returned), or when
    ``device_available`` (the GPU's free bytes, e.g. ``torch.cuda.mem_get_info()[0]``; None: not checked) is
    below ``est.device_peak_bytes``. Returns the host margin (available - peak) in bytes. The message names
    the peak and its step, the available memory, the biggest components of that step and what lowers each."""
    if device_available is not None and est.device_peak_bytes > device_available:
        step = max(est.device_steps, key=est.device_steps.get)
        raise InsufficientMemory(
            f"quantizing this model needs about {est.device_peak_bytes / GiB:.2f} GiB of GPU memory at its peak "
            f"('{step}'), but {device_available / GiB:.2f} GiB is free on the GPU; lower --samples, --seq-len or "
            "--batch-size or the kept rows, or run on the CPU")
    if available is None:
        available = mem_available()
        if available is None:
            return None
    if est.peak_bytes <= available:
        return available - est.peak_bytes
    parts = []
    for name, b in est.biggest():
        hint = _LOWER.get(name, "fixed by the model's widths")
        parts.append(f"{name} {b / GiB:.2f} GiB ({MEANINGS[name]}; lower: {hint})")
    raise InsufficientMemory(
        f"quantizing this model needs about {est.peak_bytes / GiB:.2f} GiB at its peak ('{est.peak_step}'), but "
        f"{available / GiB:.2f} GiB is available; the biggest parts: " + "; ".join(parts)
        + ". Lower --samples, --seq-len or --batch-size, or the kept rows, or use a machine with more memory "
        "(--dry-run prints the whole table; --no-memory-check runs it anyway)")


#: LLaMA-2-70B's shape (the issue's projection): hidden 8192, MLP 28672, 80 layers, 64/8 heads, vocab 32000
LLAMA2_70B = {"model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
              "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 32000,
              "tie_word_embeddings": False}


def projection(cfg: dict = LLAMA2_70B, *, source_dtype_bytes: int = 2, rate=None, **kwargs) -> str:
    """The tables of ``cfg`` (default: LLaMA-2-70B, bf16 source) on a CPU machine and with the calibration
    forward and GPTQ on one GPU, default calibration (``kwargs``: :func:`estimate`'s), with the time at
    ``rate`` (None: no time)."""
    from ..defaults import CALIB_BATCH_SIZE, CALIB_SAMPLES, CALIB_SEQ_LEN

    base = dict(n_samples=CALIB_SAMPLES, seq_len=CALIB_SEQ_LEN, batch_size=CALIB_BATCH_SIZE)
    out = []
    for device in ("cpu", "cuda"):
        est = estimate(cfg, **{**base, "source_dtype_bytes": source_dtype_bytes, "device": device, **kwargs})
        out.append(est.describe())
        if rate is not None:
            t = est.time_estimate(rate)
            out.append("time (this machine's rates, CPU work): " + ", ".join(
                f"{k} {v:.1f} s" for k, v in t.items() if k != "total_s") + f"; all layers {t['total_s'] / 3600:.1f} h")
    return "\n\n".join(out)


if __name__ == "__main__":  # python -m fptq.models.memory [--time]: the 70B projection of docs/scale.md
    import sys

    print(projection(rate=measure_rate() if "--time" in sys.argv[1:] else None))
