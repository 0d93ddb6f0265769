"""The one configuration object of a quantization run: :class:`QuantConfig`.

``fptq quantize`` builds it from its flags (the flags' defaults are its field
defaults), :func:`fptq.models.quantize.quantize_model` runs it, ``fptq compare``
derives every method's settings from it (:func:`dataclasses.replace`), and the
checkpoint records it (``quant_config`` in the metadata).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from .. import spec
from ..defaults import CALIB_SAMPLES, CALIB_SEQ_LEN, CALIB_SOURCE
from ..reference import WEIGHT_QUANTIZERS
from ..reference import weight_quantizer as registry_entry
from ..reference.plan import SELECTIONS
from ..spec import ActPolicy, WeightFormat
from .arch import LINEAR_GROUPS

__all__ = ["QuantConfig", "POLICY_SELECTIONS", "ROTATIONS", "WEIGHT_QUANTIZER_NAMES"]

#: the rotation modes (:func:`fptq.models.rotate.rotate_model`; ``none``: no rotation)
ROTATIONS = ("online", "residual", "none")

#: how a group's policy is chosen below v1 (see :class:`QuantConfig`)
POLICY_SELECTIONS = SELECTIONS

#: the weight quantizers of a run: the names of :data:`fptq.reference.WEIGHT_QUANTIZERS` (the registry,
#: :mod:`fptq.reference.quantizer_registry`, which says what each needs)
WEIGHT_QUANTIZER_NAMES = tuple(WEIGHT_QUANTIZERS)


@dataclass
class QuantConfig:
    """FPTQ settings (all written into the checkpoint).

    group_size: INT4 group size G along K (-1 = per-channel).
    weight_format: ``uint4_asym`` (default) or ``int4_sym`` (the paper's).
    weight_quantizer: a name of the registry (:data:`fptq.reference.WEIGHT_QUANTIZERS`, which says
        what each needs): ``gptq`` (default: second-order error feedback on the LAE-folded weights,
        :mod:`fptq.reference.gptq`; the Hessian is taken from ``gptq_rows`` calibration rows of
        the layer's own inputs), ``rtn`` (round to nearest, the paper's) or ``mse``
        (activation-aware clipping search, :mod:`fptq.reference.weight_quantizers`).
        GPTQ + ``uint4_asym`` is the default because it measured best on both models tried
        (docs/results.md "Weight quantizers": SmolLM2-135M and Gemma-3-270M, PTB and Wiki, 16
        windows, integer kernels); ``--weight-quantizer rtn --weight-format int4_sym
        --policy-select bands`` is the paper's configuration.
    gptq_act_order, gptq_damp, gptq_rows: GPTQ's column order (decreasing Hessian diagonal,
        static group scales), relative dampening and Hessian rows per linear input.
    gptq_clip: GPTQ takes each group's scale by a clipping search weighted by the Hessian
        diagonal (:func:`fptq.reference.gptq.hessian_clip_scale`; default) instead of the group's
        full range.
    gptaq_alpha: ``--weight-quantizer gptaq``'s share of the asymmetric correction
        (:func:`fptq.reference.gptaq.asymmetric_target`: 1 = the float model's outputs, 0 = plain GPTQ on the
        quantized model's inputs; GPTAQ's reference code uses 0.25).
    rotate: how the float model is rotated by a randomized Hadamard matrix before calibrating
        (:mod:`fptq.models.rotate`; seed ``rotation_seed``): ``online`` (default: each pre-norm's output is
        rotated at run time by one float32 ``Q`` stored in the checkpoint, q/k/v and gate/up read
        ``W Q``; value heads rotated; measured best on SmolLM2-135M and Gemma-3-270M,
        docs/results.md), ``residual`` (QuaRot's rotation of the residual stream with the norm
        gains folded into the weights; RMS-norm models; ruins Gemma-3's INT4 weights) or
        ``none``. ``True``/``False`` (checkpoints before 2026-11-30) read as
        ``residual``/``none``.
    rotation_seed: the random Hadamard matrices' seed (None, the default: ``seed``, as before the field
        existed), to try other rotations on the same calibration set.
    v0, v1: policy thresholds. n_samples, seq_len, calib, seed: the calibration set.
    sequential: calibrate layer i on the quantized layers' outputs (False, the default: on the
        float model's). With GPTQ + clip search it measured 1.2% better on SmolLM2-135M's PTB but
        9.5% worse on Gemma-3-270M's (docs/results.md), so it stays off.
    policy_select: ``error`` (default): v >= v1 per-token dynamic; below v1, static, LAE +
        static or per-token dynamic, whichever gives the smallest output error (INT4 weights
        included) on ``keep_rows`` rows of the ``holdout`` held-out calibration samples, each
        candidate's scales taken from the other samples; dynamic only where it is strictly
        better (so the plan is never measurably worse than per-token dynamic for a group);
        v0 unused. ``error_static``: the same between static and LAE + static only (the
        default until 2026-11-30, with ``holdout=0``). ``bands``: the paper's fixed bands
        (v < v0 static, v0 <= v < v1 LAE + static, v >= v1 dynamic), tuned on LLaMA-7B.
        ``all_static`` (``fptq quantize --activations static``): static or LAE + static for every
        group whatever its range, by the same held-out error; never per-token dynamic (v1 unused).
    keep_rows: calibration rows kept per linear input for the error selections.
    balanced_rows: which tokens the kept rows (``keep_rows``, ``gptq_rows``) are
        (:class:`fptq.models.layer_pass.RowStride`): False (the default), every ``stride``-th token of each
        calibration batch, the same positions of every sample, so each sample's first token (BOS) is among
        them and weighs ``stride`` times its share in GPTQ's Hessian; True, the positions move by one per
        sample, every position (BOS too) kept at its share of the tokens, the same number of rows.
    holdout: the fraction of calibration samples held out to judge the plan's candidates on
        (:meth:`holdout_samples`; 0 = judge on ``keep_rows`` rows of every sample, with scales
        from every sample).
    force_policy: one policy for every group (baselines), None = FPTQ.
    groups: which linear groups to quantize (the rest stay float; ablations).
    tune_scales_steps, tune_scales_lr: scale tuning after quantizing (:mod:`fptq.models.scale_tuning`): that
        many Adam steps (0, the default: off) on the INT4 group scales, codes and zero points frozen, toward
        the float model's next-token distribution on the calibration samples (KL per token), one sample per
        step, learning rate ``tune_scales_lr`` on ``ln s`` (a relative change per step). Needs the model
        whole and a float copy of it (``fptq quantize`` then loads the model whole; no ``--resume``).
    tune_layers_steps, tune_layers_lr: layer-wise scale tuning (:mod:`fptq.models.layer_tuning`): right after each
        decoder layer is quantized, that many Adam steps (0, the default: off), one per calibration batch in seeded
        order (``seed``), on the layer's INT4 group scales (codes and zero points frozen) toward the float layer's
        outputs (mean squared error), learning rate ``tune_layers_lr`` on ``ln s``. Layer by layer, so the streamed
        run and ``--resume`` support it; CPU calibration only (no ``device``).
    """

    group_size: int = spec.DEFAULT_GROUP_SIZE
    weight_format: str = WeightFormat.ASYMMETRIC.value
    weight_quantizer: str = "gptq"
    v0: float = spec.DEFAULT_V0
    v1: float = spec.DEFAULT_V1
    n_samples: int = CALIB_SAMPLES
    seq_len: int = CALIB_SEQ_LEN
    calib: str = CALIB_SOURCE
    seed: int = 0
    sequential: bool = False
    policy_select: str = "error"
    keep_rows: int = 2048
    holdout: float = 0.125
    force_policy: str | None = None
    groups: tuple[str, ...] = field(default_factory=lambda: LINEAR_GROUPS)
    gptq_act_order: bool = False
    gptq_damp: float = 0.01
    gptq_rows: int = 8192
    balanced_rows: bool = False
    gptq_clip: bool = True
    gptaq_alpha: float = 1.0
    rotate: str = "online"
    rotation_seed: int | None = None
    tune_scales_steps: int = 0
    tune_scales_lr: float = 1e-3
    tune_layers_steps: int = 0
    tune_layers_lr: float = 1e-3

    def __post_init__(self):
        if isinstance(self.rotate, bool):   # the field was a bool until 2026-11-30
            self.rotate = "residual" if self.rotate else "none"
        if self.rotate not in ROTATIONS:
            raise ValueError(f"rotate must be one of {ROTATIONS}, got {self.rotate!r}")
        WeightFormat(self.weight_format)
        registry_entry(self.weight_quantizer)  # a ValueError names the registry's choices
        if not self.gptq_damp > 0:
            raise ValueError(f"gptq_damp must be > 0, got {self.gptq_damp!r}")
        if not 0 <= self.gptaq_alpha <= 1:
            raise ValueError(f"gptaq_alpha must be in [0, 1], got {self.gptaq_alpha!r}")
        spec.select_policy(0.0, self.v0, self.v1)  # validates 0 <= v0 < v1
        if self.group_size != -1 and not 1 <= int(self.group_size) <= spec.MAX_GROUP_SIZE:
            raise ValueError(f"group size must be in [1, {spec.MAX_GROUP_SIZE}] or -1, got {self.group_size}")
        bad = set(self.groups) - set(LINEAR_GROUPS)
        if bad:
            raise ValueError(f"unknown linear groups {sorted(bad)}; choose from {LINEAR_GROUPS}")
        if self.policy_select not in POLICY_SELECTIONS:
            raise ValueError(f"policy_select must be one of {POLICY_SELECTIONS}, got {self.policy_select!r}")
        if self.force_policy is not None:
            ActPolicy(self.force_policy)
        for name in ("n_samples", "seq_len", "keep_rows", "gptq_rows"):
            if int(getattr(self, name)) < (0 if name == "keep_rows" else 1):
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.rotation_seed is not None and (type(self.rotation_seed) is not int or self.rotation_seed < 0):
            raise ValueError(f"rotation_seed must be None or an integer >= 0, got {self.rotation_seed!r}")
        if not 0 <= self.holdout < 1:
            raise ValueError(f"holdout must be a fraction in [0, 1), got {self.holdout!r}")
        for kind in ("scales", "layers"):
            steps, lr = getattr(self, f"tune_{kind}_steps"), getattr(self, f"tune_{kind}_lr")
            if type(steps) is not int or steps < 0:
                raise ValueError(f"tune_{kind}_steps must be an integer >= 0 (0: off), got {steps!r}")
            if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
                raise ValueError(f"tune_{kind}_lr must be a finite number > 0, got {lr!r}")

    @property
    def sequential_calibration(self) -> bool:
        """Whether the layers are calibrated on the quantized model's inputs: ``sequential``, or a weight
        quantizer whose entry needs them (``float_inputs``: GPTAQ)."""
        return bool(self.sequential or self.float_stream)

    @property
    def float_stream(self) -> bool:
        """Whether calibration also carries the float model's stream (a weight quantizer whose entry has
        ``float_inputs``: GPTAQ); the journal of a resumable run records it too."""
        return bool(registry_entry(self.weight_quantizer).float_inputs)

    @property
    def rotation_seed_used(self) -> int:
        """The rotation's seed: ``rotation_seed``, or ``seed`` when it is None."""
        return self.seed if self.rotation_seed is None else self.rotation_seed

    def holdout_samples(self, n_samples: int) -> int:
        """How many of ``n_samples`` calibration samples are held out: ``round(holdout * n)``,
        at least 1 and at most ``n - 1`` when ``holdout > 0`` (0 with fewer than 2 samples)."""
        if not self.holdout or n_samples < 2:
            return 0
        return min(max(1, round(self.holdout * n_samples)), n_samples - 1)

    @classmethod
    def default(cls, name: str):
        """The default value of field ``name`` (what the CLI flags default to)."""
        f = next(f for f in fields(cls) if f.name == name)
        return f.default_factory() if callable(f.default_factory) else f.default

    def to_json(self) -> dict:
        d = asdict(self)
        d["groups"] = list(self.groups)
        return d
