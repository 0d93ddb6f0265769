"""Where a decoded token's time goes in the runtime: the whole forward and its parts timed alone.

:func:`token_breakdown` times (wall clock, median of ``reps``) one decoded token at context length
``context`` (the whole compiled forward), then the same token's parts, each in its own compiled call
on the same shapes: every W4A8 linear of every layer (M = 1), the attention of every layer over
``context`` cached positions, and the lm_head. ``other`` is the rest of the forward (embedding,
norms, online rotations, RoPE, activations, residual adds, one Python-to-Numba call), taken within one
mode of the linears (split where the tuner chooses: :func:`token_breakdown`).

:func:`prefill_breakdown` does the same for a prompt of ``tokens`` tokens: the whole prefill, then
layer 0's parts on the prefill's shapes (norms with their rotations, the seven linears in their four
groups as the forward runs them, :func:`fptq.runtime.forward.linear_group`, q/k norms and RoPE,
attention over the prompt, the MLP activation with ``Q_f``), each times the layer count;
``other`` is the rest (embedding, residual adds, the final norm and the last row's lm_head). Each
part timed alone also pays one Python-to-Numba call (tens of microseconds), so for a short prompt
the parts can add up to more than the whole and ``other`` comes out negative; at 512 tokens that is
under 1% of the total.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from . import decode
from . import forward as fw
from .head import head_logits
from .ops import F32, njit


@njit
def _all_linears(lins, n_layers, xh, xa, xf, threads, par_min, split_min):
    """Every layer's linears at M = 1 as the forward runs them (:func:`fptq.runtime.forward.linear_group`)."""
    lq, lk, lv, lo, lg, lu, ld = lins
    bad = 0
    for l in range(n_layers):
        bad += fw.linear_group(xh, lq, lk, lv, 3, l, threads, par_min, split_min)[3]
        bad += fw.linear_group(xa, lo, lo, lo, 1, l, threads, par_min, split_min)[3]
        bad += fw.linear_group(xh, lg, lu, lu, 2, l, threads, par_min, split_min)[3]
        bad += fw.linear_group(xf, ld, ld, ld, 1, l, threads, par_min, split_min)[3]
    return bad


@njit
def _all_attention(q, kc, vc, pos, nh, nkv, hd, scaling, window, softcap, threads):
    for l in range(kc.shape[0]):
        k = np.empty((1, nkv * hd), F32)
        v = np.empty((1, nkv * hd), F32)
        for h in range(nkv):
            k[0, h * hd:(h + 1) * hd] = kc[l, h, :, pos]
            v[0, h * hd:(h + 1) * hd] = vc[l, h, pos]
        fw.attention(q, k, v, kc[l], vc[l], pos, nh, nkv, hd, scaling[l], window[l], softcap, threads)


def _median_ms(fn, reps: int, clock=time.perf_counter) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return 1e3 * statistics.median(times)


def token_breakdown(rt, context: int = 128, reps: int = 20, seed: int = 0, clock=time.perf_counter) -> dict:
    """ms per decoded token: ``total`` and its parts ``linears``, ``attention``, ``lm_head``, ``other``
    (see the module docstring); the runtime's sequence is reset. ``clock``: ``time.process_time`` gives
    CPU time (on one thread, immune to other jobs' load), the default wall time.

    Where the runtime's :class:`~fptq.runtime.tuning.SplitTuner` chooses per token (two threads or more),
    ``total`` is timed as the tuner runs it (``split_tokens`` of them ran split) and again with each mode
    forced (``total_split_ms``, ``total_serial_ms``; the linears likewise), and ``other`` is the split
    token's rest (forced split total minus the split linears): a remainder taken across two modes, as
    before, came out as the two modes' difference whenever the tuner had switched."""
    w = rt.w
    rng = np.random.default_rng(seed)
    rt.reset()
    rt.forward(rng.integers(0, w.vocab, context))
    tok = np.array([int(rng.integers(0, w.vocab))], np.int64)
    split_ran = []

    def one_token():
        rt.pos = context
        rt.forward(tok)
        split_ran.append(int(w.dims[8]) < decode.NEVER)

    total = _median_ms(one_token, reps, clock)
    nh, nkv, hd = (int(v) for v in w.dims[:3])
    tuner = rt.tuner
    threads, par_min = int(w.dims[6]), int(w.dims[7])
    hidden = w.normw.shape[2]
    xh, xa, xf = (rng.standard_normal((1, n)).astype(F32) for n in (hidden, nh * hd, int(w.lins[4][9])))

    def linears(split_min):
        return _median_ms(lambda: _all_linears(w.lins, w.n_layers, xh, xa, xf, threads, par_min, split_min),
                          reps, clock)

    q = rng.standard_normal((1, nh * hd)).astype(F32)
    attention = _median_ms(lambda: _all_attention(q, rt.kc, rt.vc, context, nh, nkv, hd, w.scaling, w.window,
                                                  w.softcap, threads), reps, clock)
    h = rng.standard_normal((1, hidden)).astype(F32)
    head = _median_ms(lambda: head_logits(h, w.head, w.final_cap, threads), reps, clock)
    out = {"context": context, "total_ms": total, "attention_ms": attention, "lm_head_ms": head,
           "weight_bytes_per_token": w.weight_bytes()}
    if tuner.active:
        out.update(split_tokens=sum(split_ran[1:]), timed_tokens=len(split_ran) - 1)   # before the forced runs
        out.update(_both_modes(rt, one_token, linears, reps, clock))
        out["linears_ms"] = out["linears_split_ms"]
        out["other_ms"] = out["total_split_ms"] - out["linears_split_ms"] - attention - head
        out["linears_two_threads"] = True
    else:
        out["linears_ms"] = linears(tuner.threshold)
        out["other_ms"] = total - out["linears_ms"] - attention - head
        out["linears_two_threads"] = bool(threads > 1 and tuner.threshold < decode.NEVER)
    rt.reset()
    return out


def _both_modes(rt, one_token, linears, reps: int, clock) -> dict:
    """The token and its linears with the tuner's split forced on, then off (the tuner restored)."""
    tuner, w = rt.tuner, rt.w
    saved = tuner.active, int(w.dims[8])
    out = {}
    try:
        tuner.active = False
        for name, split_min in (("split", tuner.threshold), ("serial", decode.NEVER)):
            w.dims[8] = split_min
            out[f"total_{name}_ms"] = _median_ms(one_token, reps, clock)
            out[f"linears_{name}_ms"] = linears(split_min)
    finally:
        tuner.active, w.dims[8] = saved[0], saved[1]
    return out


def prefill_breakdown(rt, tokens: int = 512, reps: int = 5, seed: int = 0, clock=time.perf_counter) -> dict:
    """ms of a ``tokens``-token prefill: ``total`` and its parts (see the module docstring), with the
    runtime's threads; the runtime's sequence is reset."""
    w = rt.w
    ids = np.random.default_rng(seed).integers(0, w.vocab, tokens)

    def prefill():
        rt.reset()
        rt.forward(ids)

    total = _median_ms(prefill, reps, clock)
    rt.reset()
    rt._grow(tokens)
    nh, nkv, hd, act, has_qkn = (int(v) for v in w.dims[:5])
    threads, par_min = int(w.dims[6]), int(w.dims[7])
    x = fw.embed(ids, w.emb, w.embed_scale, w.use_scale)
    h = np.empty_like(x)
    lq, lk, lv, lo, lg, lu, ld = w.lins
    parts = {"norms_ms": 2 * _median_ms(lambda: fw.norm_rows(x, w.normw[0, 0], w.eps, w.rotk[0, 0], w.rot_q, h,
                                                               threads), reps, clock)}
    split_min = int(w.dims[8])
    q, k, v, _ = fw.linear_group(h, lq, lk, lv, 3, 0, threads, par_min, split_min)
    gt, up, _, _ = fw.linear_group(h, lg, lu, lu, 2, 0, threads, par_min, split_min)
    f = fw.mlp_rows(gt, up, act, w.rotk[0, 4], w.rot_f, threads)
    a = np.ascontiguousarray(q)
    parts["linears_ms"] = sum(_median_ms(lambda: fw.linear_group(xin, la, lb, lc, count, 0, threads, par_min,
                                                                 split_min), reps, clock)
                              for la, lb, lc, count, xin in ((lq, lk, lv, 3, h), (lo, lo, lo, 1, a), (lg, lu, lu, 2, h),
                                                             (ld, ld, ld, 1, f)))
    parts["qk_rope_ms"] = _median_ms(lambda: fw.qk_rope(q.copy(), k.copy(), w.qkn[0], w.eps, has_qkn, w.ropek[0],
                                                        rt.cos, rt.sin, 0, nh, nkv, hd), reps, clock)
    parts["attention_ms"] = _median_ms(lambda: fw.attention(q, k, v, rt.kc[0], rt.vc[0], 0, nh, nkv, hd, w.scaling[0],
                                                            w.window[0], w.softcap, threads), reps, clock)
    parts["mlp_activation_ms"] = _median_ms(lambda: fw.mlp_rows(gt, up, act, w.rotk[0, 4], w.rot_f, threads),
                                            reps, clock)
    parts = {key: val * w.n_layers for key, val in parts.items()}
    rt.reset()
    return {"tokens": tokens, "total_ms": total, **parts, "other_ms": total - sum(parts.values())}
