"""Paired comparison of two models on the same task examples: McNemar's exact test.

Two models scored on the same ``n`` examples give per-example outcomes ``a_i`` and ``b_i``
(the ``correct`` lists of :func:`fptq.eval.tasks.evaluate_examples`). Their 2 x 2 table::

    both   = #(a_i and b_i)        only_a = #(a_i and not b_i)
    only_b = #(b_i and not a_i)    neither = #(neither)

Under H0 (both models equally accurate on this population) each of the ``d = only_a + only_b``
discordant examples favours either model with probability 1/2, so ``only_a ~ Binomial(d, 1/2)``.
The exact two-sided p-value (McNemar's exact / the sign test on the discordant pairs) is::

    p = min(1, 2 * sum_{k=0}^{min(only_a, only_b)} C(d, k) / 2^d),   p = 1 when d = 0

computed in integers (``fractions.Fraction``) and rounded once to float. The concordant
examples carry no information on the difference; ``acc_a - acc_b = (only_a - only_b) / n``.

Command line, on two ``fptq eval --tasks lambada --json`` files of the same examples::

    python -m fptq.eval.paired FP32.json W4A8.json --task lambada [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
from fractions import Fraction
from pathlib import Path

__all__ = ["mcnemar_exact_p", "paired_table", "paired_test", "paired_test_files"]


def mcnemar_exact_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value from the two discordant counts (module docstring)."""
    for name, v in (("only_a", only_a), ("only_b", only_b)):
        if isinstance(v, bool) or int(v) != v or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    d, m = int(only_a) + int(only_b), min(int(only_a), int(only_b))
    if d == 0:
        return 1.0
    tail = Fraction(sum(math.comb(d, k) for k in range(m + 1)), 2 ** d)
    return float(min(Fraction(1), 2 * tail))


def paired_table(a, b) -> dict:
    """The 2 x 2 table of two equally long per-example outcome lists (bools, the same examples)."""
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"outcome lists differ in length: {len(a)} vs {len(b)} (not the same examples)")
    if not a:
        raise ValueError("no outcomes to compare")
    bad = next((i for i, x in enumerate(a + b) if not isinstance(x, bool)), None)
    if bad is not None:
        raise ValueError(f"outcomes must be bools; element {bad % len(a)} of "
                         f"{'a' if bad < len(a) else 'b'} is {(a + b)[bad]!r}")
    t = {"both": 0, "only_a": 0, "only_b": 0, "neither": 0}
    for x, y in zip(a, b):
        t["both" if x and y else "only_a" if x else "only_b" if y else "neither"] += 1
    return t


def paired_test(a, b) -> dict:
    """Table, accuracies, their difference and McNemar's exact p of outcomes ``a`` against ``b``."""
    t = paired_table(a, b)
    n = sum(t.values())
    acc_a, acc_b = (t["both"] + t["only_a"]) / n, (t["both"] + t["only_b"]) / n
    return {**t, "n": n, "acc_a": acc_a, "acc_b": acc_b, "diff": acc_a - acc_b,
            "discordant": t["only_a"] + t["only_b"], "p_value": mcnemar_exact_p(t["only_a"], t["only_b"]),
            "test": "McNemar exact (two-sided binomial on the discordant pairs)"}


def _outcomes(path, task: str) -> list:
    doc = json.loads(Path(path).read_text())
    r = doc.get("tasks", {}).get(task)
    if r is None:
        raise ValueError(f"{path}: no task {task!r} (has {sorted(doc.get('tasks', {}))})")
    if "correct" not in r:
        raise ValueError(f"{path}: task {task!r} has no per-example 'correct' list (written before it existed?)")
    return r["correct"]


def paired_test_files(path_a, path_b, task: str = "lambada") -> dict:
    """:func:`paired_test` of the ``task`` outcomes in two ``fptq eval --json`` files."""
    out = paired_test(_outcomes(path_a, task), _outcomes(path_b, task))
    return {"a": str(path_a), "b": str(path_b), "task": task, **out}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="McNemar's exact test of two fptq eval --json results")
    ap.add_argument("a", help="fptq eval --json file of model A (e.g. FP32)")
    ap.add_argument("b", help="fptq eval --json file of model B (e.g. W4A8), same task and examples")
    ap.add_argument("--task", default="lambada")
    ap.add_argument("--json", default=None, help="write the result here")
    args = ap.parse_args(argv)
    r = paired_test_files(args.a, args.b, args.task)
    print(f"{r['task']}, n = {r['n']}: A {100 * r['acc_a']:.1f}% vs B {100 * r['acc_b']:.1f}% "
          f"(A - B = {100 * r['diff']:+.1f} points); both {r['both']}, only A {r['only_a']}, "
          f"only B {r['only_b']}, neither {r['neither']}; McNemar exact p = {r['p_value']:.4g}")
    if args.json:
        from .runner import write_json

        write_json(args.json, r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
