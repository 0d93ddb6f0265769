"""The runtime's state: weights, a preallocated KV cache and the position, around the compiled forward.

``Runtime.forward(ids)`` appends the tokens to the sequence (positions ``pos .. pos + M - 1``) and
returns their logits (the last token's, or every token's with ``all_logits``); ``reset()`` starts a new
sequence. The KV cache (float32: keys ``[layers, kv heads, head_dim, capacity]``, transposed for the
attention's loops; values ``[layers, kv heads, capacity, head_dim]``) and the RoPE tables
grow by doubling when a sequence outgrows them, up to the model's ``max_position_embeddings``.
A decoded token's linears run on two threads or one as :class:`fptq.runtime.tuning.SplitTuner` finds
faster on this machine at the time (``tuner``; the same bits either way). Constructing a runtime sets
glibc's malloc to keep freed memory for the next layer's activations (:func:`fptq.heap.keep_freed_memory`;
``keep_freed_memory=False`` leaves malloc as it is).
"""

from __future__ import annotations

import time

import numpy as np

from ..heap import keep_freed_memory as _keep_freed_memory
from . import forward as fw
from .tuning import SplitTuner
from .weights import RuntimeWeights, read_weights

__all__ = ["Runtime"]


class Runtime:
    """A W4A8 model run by one compiled forward per call (see :mod:`fptq.runtime`).

    Args:
        weights: :class:`fptq.runtime.weights.RuntimeWeights` (:meth:`from_model` reads them).
        capacity: initial KV cache length in tokens.
        max_positions: the longest sequence (default: the config's ``max_position_embeddings``).
        keep_freed_memory: set glibc's malloc thresholds so a forward's freed activations are reused, not
            faulted in again page by page (:func:`fptq.heap.keep_freed_memory`; process-wide).
    """

    def __init__(self, weights: RuntimeWeights, capacity: int = 256, max_positions: int | None = None,
                 keep_freed_memory: bool = True):
        if keep_freed_memory:
            _keep_freed_memory()
        self.w = weights
        self.tuner = SplitTuner(weights.dims)
        self.max_positions = int(max_positions or 1 << 20)
        self.pos = 0
        self._cap = 0
        self.kc = self.vc = self.cos = self.sin = None
        self._grow(max(1, min(int(capacity), self.max_positions)))

    @classmethod
    def from_model(cls, model, threads: int | None = None, int8_head: bool | str | None = None, capacity: int = 256,
                   par_min: int | None = None, split_decode: bool | None = None, hand_over: bool = False,
                   keep_freed_memory: bool = True):
        """The runtime of a model :func:`fptq.models.checkpoint.load_quantized` returned (raises
        :class:`fptq.runtime.weights.RuntimeUnsupported` when it cannot run it). ``threads``: numba's
        thread count (default: numba's current); ``split_decode``: a decoded token's linears on two
        threads, one region per group of linears sharing an input (same bits; None: where a group is
        large enough, :data:`fptq.runtime.decode.SPLIT_MIN_MACS`; True: always; False: never; where on,
        :attr:`tuner` still picks one thread for the tokens it measures faster so); ``hand_over``: the
        model's tensors that the runtime re-lays out are released as taken
        (:func:`fptq.runtime.weights.read_weights`); ``keep_freed_memory``: as in the class."""
        import numba

        threads = numba.get_num_threads() if threads is None else int(threads)
        w = read_weights(model, threads=threads, int8_head=int8_head, par_min=par_min, split_decode=split_decode,
                         hand_over=hand_over)
        return cls(w, capacity, getattr(model.config, "max_position_embeddings", None), keep_freed_memory)

    @property
    def capacity(self) -> int:
        return self._cap

    def _grow(self, need: int) -> None:
        if need <= self._cap:
            return
        if need > self.max_positions:
            raise ValueError(f"sequence of {need} tokens: the model takes at most {self.max_positions} positions")
        cap = max(need, 2 * self._cap, 16)
        cap = min(cap, self.max_positions)
        w = self.w
        kc = np.zeros((w.n_layers, w.n_kv, w.head_dim, cap), np.float32)     # keys transposed
        vc = np.zeros((w.n_layers, w.n_kv, cap, w.head_dim), np.float32)
        if self.kc is not None:
            kc[:, :, :, :self._cap] = self.kc
            vc[:, :, :self._cap] = self.vc
        self.kc, self.vc = kc, vc
        self.cos, self.sin = w.rope_fn(cap)
        self._cap = cap

    def reset(self) -> None:
        """Start a new sequence (the cache is overwritten from position 0)."""
        self.pos = 0

    def forward(self, ids, all_logits: bool = False) -> np.ndarray:
        """Logits float32 ``[M, V]`` (``all_logits``) or ``[1, V]`` (the last token) of ``ids``
        appended at the current position. Raises ArithmeticError when an activation holds NaN/Inf."""
        ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
        if ids.size == 0:
            raise ValueError("ids: expected at least one token")
        if ids.min() < 0 or ids.max() >= self.w.vocab:
            raise ValueError(f"ids: token ids must be in [0, {self.w.vocab}), got {ids.min()}..{ids.max()}")
        self._grow(self.pos + ids.size)
        w = self.w
        mode = self.tuner.pick() if ids.size == 1 else None
        t0 = time.perf_counter()
        logits, bad = fw.forward(ids, np.int64(self.pos), bool(all_logits), w.dims, w.eps, w.normw, w.qkn, w.rotk,
                                 w.rot_q, w.rot_f, w.window, w.ropek, w.scaling, w.softcap, self.cos, self.sin,
                                 w.lins, self.kc, self.vc, w.emb, w.embed_scale, w.use_scale, w.final_w, w.head,
                                 w.final_cap)
        if mode is not None:
            self.tuner.record(mode, time.perf_counter() - t0)
        if bad:
            raise ArithmeticError(f"runtime forward at positions {self.pos}..{self.pos + ids.size - 1}: "
                                  f"{bad} activation rows hold NaN/Inf")
        self.pos += ids.size
        return logits
