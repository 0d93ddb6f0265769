"""Calibration statistics: per-channel input maxima of linear layers.

For a linear layer with input X [..., T, K] (K input channels, T token
positions), calibration keeps, over every batch it is shown::

    channel_max[j]           = max |X[..., t, j]|   over all tokens         float32 [K]
    channel_max_non_first[j] = max |X[..., t, j]|   over tokens at position >= 1

and the number of tokens seen. The maximum is exact in float32 and
order-free, so the statistics do not depend on how the calibration set is cut
into batches (bit for bit).

The second statistic leaves out the first position of every sequence: in
many LLMs the first token (BOS) is an attention sink whose activations are
orders of magnitude larger than any other token's (SmolLM2-135M: down_proj
input range 3065 with it, 45 without). Which statistic a plan uses is the
caller's choice; see :mod:`fptq.reference.plan`.

Statistics for several layers live in :class:`CalibrationStats`, a plain dict
``{layer name: LayerStats}`` with one helper.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..spec.formats import FLOAT
from ..spec.validate import check_finite

__all__ = ["NonFiniteError", "LayerStats", "CalibrationStats"]


class NonFiniteError(ValueError):
    """A calibration input (or, in the model pipeline, a weight) holds NaN or Inf; the message names it."""


@dataclass
class LayerStats:
    """Running per-channel statistics of one linear layer's input.

    Attributes:
        name: the layer's name (used in error messages).
        k: number of input channels K.
        non_first: keep ``channel_max_non_first`` too (default True; False saves a pass over x).
        channel_max: float32 [K], max |x| per channel over every token seen.
        channel_max_non_first: float32 [K], the same over tokens at sequence
            position >= 1 (zeros until such a token is seen).
        num_tokens: tokens seen (rows of x, i.e. ``prod(x.shape[:-1])``).
        num_non_first_tokens: tokens seen at position >= 1.
    """

    name: str
    k: int
    non_first: bool = True
    channel_max: np.ndarray = field(init=False)
    channel_max_non_first: np.ndarray = field(init=False)
    num_tokens: int = 0
    num_non_first_tokens: int = 0

    def __post_init__(self) -> None:
        if int(self.k) != self.k or self.k < 0:
            raise ValueError(f"layer {self.name!r}: K must be a non-negative integer, got {self.k!r}")
        self.channel_max = np.zeros(self.k, dtype=FLOAT)
        self.channel_max_non_first = np.zeros(self.k, dtype=FLOAT)

    def update(self, x, seq_start: int = 0) -> None:
        """Fold one batch of inputs into the statistics.

        Args:
            x: float32 [..., T, K] (or [K] for one token): the layer's input,
               the second-to-last axis being token positions; finite.
            seq_start: sequence position of ``x[..., 0, :]`` (0 when x holds
               whole sequences from their start; > 0 for a later chunk, whose
               tokens then all count as non-first).
        Raises:
            TypeError if x is not a real float/int array; :class:`NonFiniteError`
            (a ValueError) naming the layer and the first bad index if x has
            NaN/Inf; ValueError if its last axis is not K.
        """
        what = f"input of layer {self.name!r}"
        x = np.asarray(x)
        if x.dtype.kind not in "fiu" or x.dtype == np.bool_:
            raise TypeError(f"{what}: expected a float32 array, got dtype {x.dtype}")
        x = x.astype(FLOAT, copy=False)
        if x.ndim == 0 or x.shape[-1] != self.k:
            raise ValueError(f"{what}: expected shape [..., {self.k}], got {x.shape}")
        a = np.abs(x.reshape(1, self.k) if x.ndim == 1 else x)
        rows = a.reshape(-1, self.k)
        if rows.shape[0]:
            batch_max = rows.max(axis=0)
            if not np.isfinite(batch_max).all():  # NaN and Inf reach the maxima: one check of K values
                try:
                    check_finite(x, what)
                except ValueError as e:
                    raise NonFiniteError(str(e)) from None
            np.maximum(self.channel_max, batch_max, out=self.channel_max)
        if not self.non_first:
            self.num_tokens += rows.shape[0]
            return
        later = a[..., max(1 - int(seq_start), 0):, :].reshape(-1, self.k)
        if later.shape[0]:
            np.maximum(self.channel_max_non_first, later.max(axis=0), out=self.channel_max_non_first)
        self.num_tokens += rows.shape[0]
        self.num_non_first_tokens += later.shape[0]

    @property
    def v(self) -> np.float32:
        """The layer's input range ``v = max_j channel_max[j]`` (0 for K = 0)."""
        return FLOAT(self.channel_max.max(initial=FLOAT(0)))


class CalibrationStats(dict):
    """``{layer name: LayerStats}``; :meth:`observe` creates entries on first sight.

    ``CalibrationStats(non_first=False)`` keeps only ``channel_max`` (see :class:`LayerStats`).
    """

    def __init__(self, *args, non_first: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.non_first = non_first

    def observe(self, name: str, x, seq_start: int = 0) -> LayerStats:
        """``self[name].update(x, seq_start)``, creating ``self[name]`` with K = x.shape[-1]."""
        if name not in self:
            shape = np.shape(x)
            if not shape:
                raise ValueError(f"input of layer {name!r}: expected shape [..., K], got a scalar")
            self[name] = LayerStats(name, int(shape[-1]), self.non_first)
        self[name].update(x, seq_start)
        return self[name]

    def channel_maxima(self, non_first: bool = False) -> dict[str, np.ndarray]:
        """``{name: channel_max}`` (or ``channel_max_non_first`` when ``non_first``)."""
        attr = "channel_max_non_first" if non_first else "channel_max"
        return {name: getattr(st, attr) for name, st in self.items()}
