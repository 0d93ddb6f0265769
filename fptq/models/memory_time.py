"""The time side of the memory model (:mod:`fptq.models.memory`): the work of quantizing one decoder layer
counted in operations, and this machine's rates to divide them by.

Standard library only at import (:func:`measure_rate` imports NumPy when called). Counts, per layer: the
calibration forwards (2 x parameters x tokens per pass, plus causal attention), the error-selected plan's
candidate outputs, the Hessians' ``X^T X``, GPTQ's error feedback (~``N K^2``), its inverse Cholesky
(:data:`GPTQ_INVERSE_K3` ``K^3`` per linear, as :func:`fptq.reference.gptq._inverse_cholesky` computes it)
and its elementwise loops (:data:`GPTQ_ELEMENTWISE` per weight). An estimate, not a measurement: rates
measured on small matmuls overstate what a loaded machine gives.
"""

from __future__ import annotations

import itertools

__all__ = ["layer_flops", "measure_rate", "GPTQ_INVERSE_K3", "GPTQ_ELEMENTWISE"]


#: GPTQ's inverse Cholesky as :func:`fptq.reference.gptq._inverse_cholesky` computes it, in K^3 FLOPs: LAPACK
#: potrf (1/3), potri (2/3), potrf (1/3); once per linear
GPTQ_INVERSE_K3 = 4 / 3
#: elementwise operations per weight of GPTQ outside BLAS: the column loop's rank-1 updates within a block
#: of 128 columns (~128 per weight) and the clip search's 21 candidate ranges (~10 operations each)
GPTQ_ELEMENTWISE = 128 + 21 * 10


def layer_flops(shape, *, n_samples: int, seq_len: int, sequential: bool, rows: int, heldout_rows: int,
                hessian: bool, float_inputs: bool = False) -> dict:
    """name -> (operations per layer, rate kind): the calibration forwards (2 x params x tokens per pass, plus
    causal attention), the plan's candidate outputs on ``heldout_rows`` rows (0: no error-selected plan),
    the Hessians of ``rows`` rows (``hessian``), GPTQ's error feedback, inverse and elementwise loops.
    ``shape``: a :class:`~fptq.models.memory_shape.Shape`. ``float_inputs`` (GPTAQ): the float stream's pass, the
    layer run again up to each group after the first (its rows from the groups quantized before it,
    :func:`fptq.models.quantize.refresh_group_rows`; the rerun stops at the group) and each group's cross term
    (as many FLOPs as its Hessian) besides."""
    tokens, p = n_samples * seq_len, shape.layer_params()
    passes = 1 + (1 if sequential else 0) + (1 if float_inputs else 0)
    attention = 2 * n_samples * seq_len ** 2 * shape.q_width
    forward = passes * (2 * p * tokens + attention)
    if float_inputs:   # each rerun stops at its group: the groups up to it and the attention after the first
        done = list(itertools.accumulate(sum(n for _, n in lins) * k for _, k, lins in shape.groups()))
        forward += sum(2 * params * tokens + attention for params in done[1:])
    out = {"forward": (forward, "float32")}
    if heldout_rows:
        out["plan_judging"] = (8 * heldout_rows * p, "float32")  # 3 candidates + the float output, per linear
    if hessian:
        out["hessians"] = ((2 if float_inputs else 1) * sum(2 * rows * k * k for _, k, _ in shape.groups()), "float64")
        out["gptq_feedback"] = (sum(n * k * k for *_, n, k in shape.linears()), "float64")
        out["gptq_inverse"] = (sum(GPTQ_INVERSE_K3 * k ** 3 for *_, k in shape.linears()), "float64")
        out["gptq_elementwise"] = (GPTQ_ELEMENTWISE * p, "elementwise")
    return out


def measure_rate(seconds: float = 0.5) -> dict:
    """This machine's rates, timed in about ``seconds``: ``float32`` and ``float64`` matmul FLOP/s (NumPy,
    its BLAS threads) and ``elementwise`` float64 operations/s (``a -= b``)."""
    import time

    import numpy as np

    def rate(work, ops: float) -> float:
        work()  # warm up
        t0, count = time.perf_counter(), 0
        while (t := time.perf_counter() - t0) < seconds / 3 or count == 0:
            work()
            count += 1
        return ops * count / t

    n = 1024  # a layer's matmuls are this size or larger; 512 measured 5x slower per FLOP under load
    a32 = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a64, big, small = a32.astype(np.float64), np.ones(1 << 22), np.ones(1 << 22)
    return {"float32": rate(lambda: a32 @ a32, 2 * n ** 3), "float64": rate(lambda: a64 @ a64, 2 * n ** 3),
            "elementwise": rate(lambda: np.subtract(big, small, out=big), float(big.size))}
