"""benchmarks/heldout_table.py: the held-out rows of docs/evaluation.md section 7 from eval JSONs."""

import importlib.util
import json
from pathlib import Path

_SPEC = importlib.util.spec_from_file_location(
    "heldout_table", Path(__file__).resolve().parents[1] / "benchmarks" / "heldout_table.py")
heldout_table = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(heldout_table)


def _json(path, **ppl):
    path.write_text(json.dumps({"perplexity": {t: {"ppl": v} for t, v in ppl.items()}}))
    return str(path)


def test_rows_losses_calib_marks_and_ratio(tmp_path, capsys):
    fp32 = _json(tmp_path / "fp32a.json", ptb=50.0, wiki=10.0) + "," + _json(
        tmp_path / "fp32b.json", science=20.0, fiction=40.0, wiki=99.0)   # the first file's wiki wins
    wiki = _json(tmp_path / "w.json", ptb=55.0, wiki=11.0, science=22.0, fiction=46.0)
    mix = _json(tmp_path / "m.json", ptb=52.0, wiki=10.5, science=21.0, fiction=44.0)
    heldout_table.main(["--model", "M", "--fp32", fp32, "--row", f"d:wiki:{wiki}", "--row", f"d:mix:{mix}"])
    rows = capsys.readouterr().out.splitlines()
    assert rows[0] == "| M | FP32 | - | 50.00 | 10.00 | 20.00 | **40.00** | - | - |"
    # wiki: d = +10% on wiki (its only calib text), fiction +15% -> ratio 1.50
    assert rows[1] == ("| M | d | `wiki` | 55.00 (+10.0%) | 11.00 (+10.0%) (c) | 22.00 (+10.0%) | "
                       "**46.00 (+15.0%)** | +10.0% | 1.50 |")
    # mix: calib loss = mean(4%, 5%, 5%) = 4.667%, fiction +10% -> ratio 2.14
    assert rows[2] == ("| M | d | `mix` | 52.00 (+4.0%) (c) | 10.50 (+5.0%) (c) | 21.00 (+5.0%) (c) | "
                       "**44.00 (+10.0%)** | +4.7% | 2.14 |")
