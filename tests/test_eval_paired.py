"""fptq.eval.paired: McNemar's exact test on known tables, and the eval JSON files it reads."""

import json
from fractions import Fraction

import pytest

from fptq.eval.paired import main, mcnemar_exact_p, paired_table, paired_test, paired_test_files


def test_mcnemar_exact_p_known_tables():
    # 1 vs 7 discordant: 2 * (C(8,0) + C(8,1)) / 2^8 = 18/256, worked by hand
    assert mcnemar_exact_p(1, 7) == float(Fraction(18, 256)) == 0.0703125
    assert mcnemar_exact_p(7, 1) == 0.0703125  # two-sided: symmetric
    assert mcnemar_exact_p(0, 10) == 2 / 1024  # 2 * C(10,0) / 2^10
    # 5 vs 15: 2 * sum_{k<=5} C(20,k) / 2^20 = 2 * 21700 / 1048576
    assert mcnemar_exact_p(5, 15) == float(Fraction(2 * 21700, 2 ** 20))
    assert mcnemar_exact_p(3, 3) == 1.0  # 2 * 42/64 > 1: clipped
    assert mcnemar_exact_p(0, 0) == 1.0  # no discordant pairs: no evidence


def test_mcnemar_exact_p_large_counts_stay_exact():
    # 500 discordant pairs would overflow a float 2^d computed naively in some codes
    p = mcnemar_exact_p(200, 300)
    assert 0 < p < 1e-5
    assert mcnemar_exact_p(250, 250) == 1.0


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_mcnemar_exact_p_refuses_non_counts(bad):
    with pytest.raises((ValueError, TypeError)):
        mcnemar_exact_p(bad, 2)


def test_paired_table_counts_each_cell():
    a = [True, True, False, False, True, False]
    b = [True, False, True, False, False, False]
    assert paired_table(a, b) == {"both": 1, "only_a": 2, "only_b": 1, "neither": 2}


def test_paired_test_accuracies_and_p():
    a = [True] * 7 + [False] * 1 + [True] * 10 + [False] * 2  # only_a 7, only_b 1, both 10, neither 2
    b = [False] * 7 + [True] * 1 + [True] * 10 + [False] * 2
    r = paired_test(a, b)
    assert (r["both"], r["only_a"], r["only_b"], r["neither"], r["n"]) == (10, 7, 1, 2, 20)
    assert (r["acc_a"], r["acc_b"], r["discordant"]) == (17 / 20, 11 / 20, 8)
    assert r["p_value"] == 0.0703125


def test_paired_table_refuses_different_examples_and_non_bools():
    with pytest.raises(ValueError, match="differ in length"):
        paired_table([True, False], [True])
    with pytest.raises(ValueError, match="element 1 of b"):
        paired_table([True, False], [True, 1])
    with pytest.raises(ValueError, match="no outcomes"):
        paired_table([], [])


def _eval_json(path, correct):
    path.write_text(json.dumps({"tasks": {"lambada": {"acc": sum(correct) / len(correct), "correct": correct}}}))
    return path


def test_paired_test_files_and_main(tmp_path, capsys):
    a = _eval_json(tmp_path / "a.json", [True, True, True, False])
    b = _eval_json(tmp_path / "b.json", [True, False, False, False])
    r = paired_test_files(a, b, "lambada")
    assert (r["only_a"], r["only_b"], r["p_value"]) == (2, 0, 0.5)
    assert main([str(a), str(b), "--json", str(tmp_path / "out.json")]) == 0
    assert "only A 2, only B 0" in capsys.readouterr().out
    assert json.loads((tmp_path / "out.json").read_text())["p_value"] == 0.5
    with pytest.raises(ValueError, match="no task 'piqa'"):
        paired_test_files(a, b, "piqa")
    (tmp_path / "old.json").write_text(json.dumps({"tasks": {"lambada": {"acc": 0.5}}}))
    with pytest.raises(ValueError, match="no per-example 'correct'"):
        paired_test_files(a, tmp_path / "old.json")
