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

import functools
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["sylvester_hadamard", "HadamardFactors", "hadamard_factors", "hadamard_factors_of", "random_orthogonal", "MAX_HADAMARD_BLOCK",
           "hadamard_blocks", "apply_hadamard_factors", "fold_norm_weight", "rotate_input_side",
           "rotate_input_side_factored", "FACTORED_CHUNK_BYTES",
           "rotate_output_side", "rotate_head_rows", "rotate_head_columns"]


def sylvester_hadamard(n: int) -> np.ndarray:
    """The ``n x n`` Sylvester Hadamard matrix (entries ±1, ``H H^T = n I``); n a power of two."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"n: a Sylvester Hadamard matrix needs a power of two, got {n}")
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


@dataclass(frozen=True)
class HadamardFactors:
    """The factors of a randomized Hadamard rotation ``Q = diag(signs) (H_p2 / sqrt(p2)) ⊗ r``.

    ``signs``: float64 [n] of ±1; ``r``: float64 [m, m] orthogonal (``[[1]]`` for m = 1);
    ``p2 = n / m`` a power of two. ``x Q`` costs ``n (sum of the Hadamard block sizes + m)`` multiply-adds
    per row this way (:func:`apply_hadamard_factors`; 576 = 64 x 9: 8 + 8 + 9) instead of ``n^2``."""

    signs: np.ndarray
    r: np.ndarray

    @property
    def p2(self) -> int:
        return self.signs.shape[0] // self.r.shape[0]

    def dense(self) -> np.ndarray:
        """``Q`` as a float64 [n, n] matrix: ``signs[:, None] * kron(H / sqrt(p2), r)``, the signs applied in
        place (the same products; one [n, n] float64 while built, not two)."""
        q = np.kron(sylvester_hadamard(self.p2) / np.sqrt(self.p2), self.r)
        q *= self.signs[:, None]
        return q


def hadamard_factors(n: int, seed: int = 0) -> HadamardFactors:
    """The factors of :func:`random_orthogonal` ``(n, seed)`` (same random draws)."""
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
    signs = rng.choice([-1.0, 1.0], size=n)
    return HadamardFactors(signs, r)


def hadamard_factors_of(q, atol: float = 1e-6) -> HadamardFactors | None:
    """The factors of ``q`` [n, n] if it is a randomized Hadamard matrix ``diag(s) (H_p2 / sqrt(p2)) ⊗ r``
    (``p2`` the largest power of two dividing n) to within ``atol`` per entry, else None.

    Read from ``q`` itself (no seed needed), so a model and its reloaded checkpoint derive the same
    factors from the same stored float32 ``q``: the first row of ``H`` is all ones, so
    ``r' = sqrt(p2) q[:m, :m]`` (``r`` up to row signs) and each row's sign ``s'_i`` is the one that
    makes ``q[i, :m]`` a multiple of ``r'[i mod m]``; ``diag(s') (H / sqrt(p2)) ⊗ r'`` equals ``q``
    whenever ``q`` has the form."""
    q = np.asarray(q)
    if q.ndim != 2 or q.shape[0] != q.shape[1] or q.shape[0] < 1:
        return None
    n = q.shape[0]
    p2 = n & -n
    m = n // p2
    left = np.asarray(q[:, :m], dtype=np.float64)
    r = left[:m] * np.sqrt(p2)
    dots = np.einsum("ij,ij->i", left, np.tile(r, (p2, 1)))
    signs = np.where(dots < 0, -1.0, 1.0)
    f = HadamardFactors(signs, r)
    return f if _within(f, q, atol) else None


def _within(f: HadamardFactors, q, atol: float) -> bool:
    """``max |f.dense() - q| <= atol`` (float64; False for NaN), a band of rows at a time: the same products as
    :meth:`~HadamardFactors.dense` without its [n, n] float64 matrix and the temporaries of the difference
    (2.5 GB for n = 8960)."""
    h = sylvester_hadamard(f.p2) / np.sqrt(f.p2)
    m = f.r.shape[0]
    step = max(1, (1 << 20) // (m * q.shape[0]))  # rows of H per band: about 1M elements
    for i in range(0, f.p2, step):
        rows = slice(i * m, min(i + step, f.p2) * m)
        band = f.signs[rows, None] * np.kron(h[i:i + step], f.r)
        if not float(np.abs(band - np.asarray(q[rows], dtype=np.float64)).max()) <= atol:
            return False
    return True


def random_orthogonal(n: int, seed: int = 0) -> np.ndarray:
    """A randomized Hadamard rotation of width ``n`` (float64 [n, n], ``Q Q^T = I``); see the module docstring."""
    return hadamard_factors(n, seed).dense()


#: the largest Sylvester block :func:`hadamard_blocks` uses (measured fastest for widths 64-512 with torch
#: on one thread: [8, 512, 1536] in 54 ms vs 105 ms by butterflies and 191 ms densely)
MAX_HADAMARD_BLOCK = 32


def hadamard_blocks(p2: int, max_block: int = MAX_HADAMARD_BLOCK) -> list:
    """Sylvester Hadamard matrices (float64, ±1) of sizes as even as possible and at most ``max_block``,
    whose Kronecker product, first block outermost, is ``H_p2`` (p2 a power of two; ``[]`` for p2 = 1).
    ``H_{2^a} ⊗ H_{2^b} = H_{2^(a+b)}`` in Sylvester order, so any split of the exponent works."""
    p2, max_block = int(p2), int(max_block)
    if p2 < 1 or p2 & (p2 - 1) or max_block < 2 or max_block & (max_block - 1):
        raise ValueError(f"p2 and max_block must be powers of two (max_block >= 2), got {p2} and {max_block}")
    k, kb = p2.bit_length() - 1, max_block.bit_length() - 1
    n_blocks = -(-k // kb)
    return [sylvester_hadamard(2 ** (k // n_blocks + (i < k % n_blocks))) for i in range(n_blocks)]


@functools.lru_cache(maxsize=None)
def _numpy_blocks(p2: int, dtype: str) -> tuple:
    """:func:`hadamard_blocks` of ``p2`` as read-only NumPy arrays of ``dtype`` (±1: exact in any float
    dtype), made once: a decoded token makes 90 rotation products."""
    blocks = tuple(h.astype(dtype) for h in hadamard_blocks(p2))
    for h in blocks:
        h.setflags(write=False)
    return blocks


def apply_hadamard_factors(x, signs, r, blocks=None):
    """``x Q`` for ``Q = diag(signs) (H_p2 / sqrt(p2)) ⊗ r`` without forming ``Q``: ``x`` [..., n], ``signs``
    [n], ``r`` [m, m], ``blocks`` the :func:`hadamard_blocks` of ``p2 = n / m`` (NumPy arrays or torch
    tensors, all of ``x``'s dtype; default: NumPy's, of ``x``'s dtype).

    With ``X = x * signs`` as [..., p2, m]: ``x Q = (H X) (r / sqrt(p2))``, and ``H X`` is one small
    matrix product per block ``H_c`` (``X`` viewed as [..., pre, c, post * m``]: ``H_c @ X``), so the
    product costs ``sum(c) + m`` multiply-adds per entry and makes ``len(blocks) + 2`` full-size arrays.
    Same result as ``x @ Q`` up to float rounding."""
    n, m = x.shape[-1], r.shape[0]
    p2 = n // m
    if blocks is None:
        blocks = _numpy_blocks(p2, np.dtype(x.dtype).str)
    lead = tuple(x.shape[:-1])
    y = x * signs
    pre = 1
    for h in blocks:
        c = h.shape[0]
        y = h @ y.reshape(lead + (pre, c, (p2 // (pre * c)) * m))
        pre *= c
    if pre != p2:
        raise ValueError(f"blocks of sizes {[h.shape[0] for h in blocks]} do not make H_{p2}")
    y = y.reshape(lead + (p2, m))
    scaled_r = r * (1.0 / math.sqrt(p2))   # a Python float: keeps float32 inputs float32
    y = y * scaled_r.reshape(()) if m == 1 else y @ scaled_r   # m = 1: r is [[±1]]
    return y.reshape(x.shape)


def _f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def fold_norm_weight(w_linear, gain) -> np.ndarray:
    """``W[:, j] * gain_j``: a norm's per-channel gain moved into a linear that reads the norm."""
    return (_f64(w_linear) * _f64(gain)[None, :]).astype(np.float32)


def rotate_input_side(w, q) -> np.ndarray:
    """``W Q`` for a linear ``y = x W^T`` whose input becomes ``x Q`` (W [out, n], Q [n, n])."""
    return (_f64(w) @ _f64(q)).astype(np.float32)


#: float64 bytes of W one step of :func:`rotate_input_side_factored` works on (its intermediates: a few more)
FACTORED_CHUNK_BYTES = 32 << 20


def rotate_input_side_factored(w, f: HadamardFactors) -> np.ndarray:
    """``W Q`` (float32 [out, n]) for ``Q = f.dense()`` without forming ``Q``: blocks of W's rows in float64
    times ``Q`` through its factors (:func:`apply_hadamard_factors`: ``n (sum of block sizes + m)``
    multiply-adds per row instead of ``n^2``), rounded to float32. The same product as
    ``rotate_input_side(w, f.dense())`` in exact arithmetic; the float64 sums run in another order (~1e-16
    relative apart), below float32's half ulp except next to a rounding tie. Memory: the float32 result and
    one block of about :data:`FACTORED_CHUNK_BYTES` in float64 with its intermediates; no ``[n, n]``."""
    w = np.asarray(w)
    n = f.signs.shape[0]
    if w.ndim != 2 or w.shape[1] != n:
        raise ValueError(f"w: expected [out, {n}], got shape {w.shape}")
    out = np.empty(w.shape, np.float32)
    rows = max(1, FACTORED_CHUNK_BYTES // (8 * n))
    for i in range(0, w.shape[0], rows):
        out[i:i + rows] = apply_hadamard_factors(_f64(w[i:i + rows]), f.signs, f.r)
    return out


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
