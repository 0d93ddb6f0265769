"""Orthogonal rotations of a transformer's residual stream and attention heads, as weight arithmetic.

A decoder whose norms carry no per-channel weight (RMSNorm with ``w = 1``,
after folding ``w`` into the linears that read the norm) is invariant under an
orthogonal change of basis ``Q`` of its residual stream (QuaRot, Ashkboos et
al. 2024, arXiv 2404.00456; SliceGPT): ``rms(x Q) = rms(x)``, so with

* every linear that **reads** the stream (q/k/v, gate/up, lm_head):
  ``W' = W Q``  (:func:`rotate_input_side`),
* every linear that **writes** it (o_proj, down_proj) and the embeddings:
  ``W' = Q^T W``, ``b' = b Q``  (:func:`rotate_output_side`; embeddings
  ``E' = E Q``),

the rotated model computes ``x Q`` wherever the original computed ``x`` and
its logits are unchanged. The rotation spreads a few loud channels over all
of them, which is what makes INT8 activations and INT4 weights easier.

Within attention, the values of every head can be rotated by one orthogonal
``Q_h`` [hd, hd] (:func:`rotate_head_rows` on v_proj's output rows,
:func:`rotate_head_columns` on o_proj's input columns): attention mixes value
rows, so ``(A V Q_h) (Q_h^T W_o) = A V W_o``.

:func:`random_orthogonal` builds ``Q`` as a randomized Hadamard transform:
``Q = D (H_{2^a} / sqrt(2^a)) ⊗ R_m`` for ``n = 2^a m`` with ``m`` odd, where
``D`` is a random ±1 diagonal, ``H`` the Sylvester Hadamard matrix and ``R_m``
a random orthogonal ``m x m`` matrix (QR of a Gaussian; ``R_1 = [1]``). For a
power-of-two width this is exactly QuaRot's randomized Hadamard matrix; for
widths like 576 = 64 * 9 it keeps the Hadamard's flat spreading along the
power-of-two factor.

All arithmetic is float64; results are returned as float32.
"""

from __future__ import annotations

import numpy as np

__all__ = ["sylvester_hadamard", "random_orthogonal", "fold_norm_weight", "rotate_input_side",
           "rotate_output_side", "rotate_head_rows", "rotate_head_columns"]


def sylvester_hadamard(n: int) -> np.ndarray:
    """The ``n x n`` Sylvester Hadamard matrix (entries ±1, ``H H^T = n I``); n a power of two."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"n: a Sylvester Hadamard matrix needs a power of two, got {n}")
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def random_orthogonal(n: int, seed: int = 0) -> np.ndarray:
    """A randomized Hadamard rotation of width ``n`` (float64 [n, n], ``Q Q^T = I``); see the module docstring."""
    n = int(n)
    if n < 1:
        raise ValueError(f"n: expected a positive width, got {n}")
    rng = np.random.default_rng(seed)
    p2 = n & -n                     # largest power of two dividing n
    m = n // p2
    if m == 1:
        r = np.ones((1, 1))
    else:
        qr, tri = np.linalg.qr(rng.standard_normal((m, m)))
        r = qr * np.sign(np.diag(tri))  # Haar-distributed
    q = np.kron(sylvester_hadamard(p2) / np.sqrt(p2), r)
    signs = rng.choice([-1.0, 1.0], size=n)
    return signs[:, None] * q


def _f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def fold_norm_weight(w_linear, gain) -> np.ndarray:
    """``W[:, j] * gain_j``: a norm's per-channel gain moved into a linear that reads the norm."""
    return (_f64(w_linear) * _f64(gain)[None, :]).astype(np.float32)


def rotate_input_side(w, q) -> np.ndarray:
    """``W Q`` for a linear ``y = x W^T`` whose input becomes ``x Q`` (W [out, n], Q [n, n])."""
    return (_f64(w) @ _f64(q)).astype(np.float32)


def rotate_output_side(w, q, bias=None):
    """``(Q^T W, b Q)`` for a linear whose output ``y`` becomes ``y Q`` (W [n, in], b [n] or None)."""
    w2 = (_f64(q).T @ _f64(w)).astype(np.float32)
    b2 = None if bias is None else (_f64(bias) @ _f64(q)).astype(np.float32)
    return w2, b2


def rotate_head_rows(w, qh, bias=None):
    """Rotate every head's output rows by ``Q_h``: rows ``[h*hd, (h+1)*hd)`` become ``Q_h^T W_h``."""
    w = _f64(w)
    hd = qh.shape[0]
    if w.shape[0] % hd:
        raise ValueError(f"w: {w.shape[0]} output rows are not a whole number of heads of {hd}")
    heads = w.reshape(-1, hd, w.shape[1])
    w2 = np.einsum("ji,hjk->hik", _f64(qh), heads).reshape(w.shape).astype(np.float32)
    b2 = None if bias is None else (_f64(bias).reshape(-1, hd) @ _f64(qh)).reshape(-1).astype(np.float32)
    return w2, b2


def rotate_head_columns(w, qh) -> np.ndarray:
    """Rotate every head's input columns by ``Q_h``: columns of head h become ``W_h Q_h``."""
    w = _f64(w)
    hd = qh.shape[0]
    if w.shape[1] % hd:
        raise ValueError(f"w: {w.shape[1]} input columns are not a whole number of heads of {hd}")
    heads = w.reshape(w.shape[0], -1, hd)
    return np.einsum("ohj,jk->ohk", heads, _f64(qh)).reshape(w.shape).astype(np.float32)
