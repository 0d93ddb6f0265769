"""One counted loop for fptq's LLVM IR intrinsics (llvmlite): ``for i = start; i + step <= stop; i += step``.

Used by the activation byte sums (:func:`fptq.backends.numba_kernels.blocked.byte_sum`) and the runtime's
float block product (:mod:`fptq.runtime.block_product`).
"""

from __future__ import annotations

__all__ = ["counted_loop"]


def counted_loop(b, name: str, start, stop, step, carried, body):
    """Emit, at the builder ``b``'s position, a loop over ``i = start, start + step, ...`` while
    ``i + step <= stop`` (every trip a whole step); ``carried``: the initial values of the loop-carried
    values; ``body(i, values)`` emits one trip and returns their next values. The builder is left after the
    loop. Returns ``(i, values)`` after the loop: the first ``i`` that did not run a trip, and the carried
    values (the initial ones if no trip ran)."""
    fn, pre = b.function, b.basic_block
    head, loop, done = (fn.append_basic_block(f"{name}.{p}") for p in ("head", "body", "done"))
    b.branch(head)
    b.position_at_end(head)
    i = b.phi(start.type)
    i.add_incoming(start, pre)
    phis = []
    for v in carried:
        p = b.phi(v.type)
        p.add_incoming(v, pre)
        phis.append(p)
    b.cbranch(b.icmp_signed("<=", b.add(i, step), stop), loop, done)
    b.position_at_end(loop)
    nxt = body(i, phis)
    end = b.basic_block
    i.add_incoming(b.add(i, step), end)
    for p, v in zip(phis, nxt):
        p.add_incoming(v, end)
    b.branch(head)
    b.position_at_end(done)
    return i, phis
